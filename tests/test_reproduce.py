"""The experiment pipeline: every experiment at the smoke profile, end to end, then the notebooks.

One smoke run (~140 s on one torch thread: the slowest fixture of the suite) feeds every test here; a second run must
reuse all of it, and the run is compared with the committed smoke reference ``results/smoke/``.
When the code changes what the tables hold, regenerate that reference (results/README.md):
``python -m harness reproduce --profile smoke --results-dir results``. The notebooks run headless
(nbclient) against the smoke results.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from harness.cli import main
from harness.pipeline.reproduce import heldout_text, ordered
from harness.pipeline.runners import RUNNERS, load_experiment, runner_params
from harness.pipeline.spec import SpecError, experiment_names, load_profile
from harness.training import fingerprint

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
REFERENCE = ROOT / "results" / "smoke"
#: the committed smoke reference must stay small (tables, metadata, REPORT.md; no weights). Its size grows
#: with the number of experiments, so the budget does too: a fixed part for Fig. 4's benchmark sweep
#: (~180 KB) and the report's preamble, and a share per experiment (its meta.json of ~6 KB, its tables,
#: its REPORT.md section). 33 experiments came to 582,159 bytes (2026-12-03): ~12 KB each beyond the fixed
#: part. An experiment that commits far more than its share (say, a table per training step) fails here.
REFERENCE_FIXED_BYTES = 200_000
REFERENCE_BYTES_PER_EXPERIMENT = 15_000
#: no experiment folder but Fig. 4's (its benchmark sweep) may hold more than this
REFERENCE_EXPERIMENT_MAX_BYTES = 40_000
#: differences this small between the smoke reference and a fresh run are floating-point noise
FLOAT_NOISE = 1e-5


def copy_sources(dest: Path, source: Path = ROOT) -> Path:
    """A copy of the suite's packages (what code fingerprints read)."""
    for pkg in source.iterdir():
        if pkg.is_dir() and (pkg / "__init__.py").is_file() and pkg.name not in fingerprint.NOT_CODE:
            shutil.copytree(pkg, dest / pkg.name, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """The code fingerprints of this module's runs read a copy of the sources taken at its start, so
    an edit elsewhere while the tests run does not make the smoke run look stale."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fingerprint, "SOURCE_ROOT", copy_sources(tmp_path_factory.mktemp("sources")))
        yield fingerprint.SOURCE_ROOT


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, sources) -> Path:
    """A fresh smoke run into a temporary results folder; what it printed is in ``first-run.txt``."""
    out = tmp_path_factory.mktemp("results")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["reproduce", "--profile", "smoke", "--results-dir", str(out)]) == 0
    (out / "first-run.txt").write_text(printed.getvalue())
    return out


def test_every_experiment_writes_results_and_report(smoke):
    for name in experiment_names():
        folder = smoke / "smoke" / name
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["profile"] == "smoke" and meta["environment"]["torch"]
        assert (folder / "results.csv").stat().st_size > 0, name
        for fig in meta["figures"]:
            assert (folder / fig).exists(), (name, fig)
    report = (smoke / "smoke" / "REPORT.md").read_text()
    for name in experiment_names():
        assert f"## {name}" in report
    assert "Kendall" in report
    # the held-out text is named, with its size: smoke's is 2 documents of at most 1,000 characters
    (held,) = [ln for ln in report.splitlines() if ln.startswith("Held-out bits per byte are scored on ")]
    assert "the first 1000 characters of the first 2 documents of the test split (2 documents, " in held
    assert 1000 < int(held.split("documents, ")[1].split(" bytes")[0].replace(",", "")) <= 2000
    speed = report.split("## fig4_speed_memory")[1].split("\n## ")[0]  # throughput against softmax, per phase
    for phase in ("prefill", "decode"):
        assert f"{phase}** — tokens/s (x softmax, same sweep)" in speed
    assert "| softmax" in speed and "(1.00x)" in speed and "prefill peak memory" in speed
    kernel = report.split("## kernel_ablation")[1].split("\n## ")[0]  # a verdict per input set
    assert kernel.count("the claimed ~1/m rate") == 2 and "gaussian std" in kernel


def test_each_profile_names_the_held_out_text_it_scores():
    """tiny scores every test document's first 8,000 characters, the grids their 16-document sample,
    and a profile without held-out perplexity names none."""
    assert heldout_text(load_profile("tiny")) == (
        "the first 8000 characters of every document of the test split (35 documents, 211,480 bytes)"
    )
    assert heldout_text(load_profile("grid-64m")).startswith("the first 4000 characters of the first 16 documents")
    assert heldout_text(load_profile("paper-offline")) is None


def test_first_run_trains_quietly_and_is_compared_with_the_reference(smoke):
    """The status lines (experiment k/n, training runs) on stdout; the experiments' own output in
    the log; at the end one line comparing the run with the committed reference."""
    printed = (smoke / "first-run.txt").read_text()
    n = len(experiment_names())
    for k, name in enumerate(ordered(experiment_names()), start=1):
        assert f"[reproduce] [{k}/{n}] {name}: running" in printed
    assert "[reproduce]     training teacher-s-s0" in printed
    assert "Loading weights" not in printed and "Running loglikelihood" not in printed
    log = (smoke / "smoke" / "reproduce.log").read_text()
    assert "bench: wrote" in log
    verdict = [line for line in printed.splitlines() if "compared with the reference" in line]
    assert len(verdict) == 1 and "results/smoke" in verdict[0], printed[-2000:]
    assert (smoke / "smoke" / "COMPARE.md").is_file()
    # the tables agree with the reference: every row matched, nothing differs beyond its noise but
    # floating-point noise (the reference ran on 2 threads, the tests on 1; other machines differ too)
    from harness.report.compare import compare

    frame, _ = compare(REFERENCE, smoke / "smoke")
    assert len(frame) and (frame["rows"] == frame["of"]).all(), frame
    real = frame[(frame["verdict"] == "DIFFERS") & (frame["max |A-B|"] > FLOAT_NOISE)]
    assert real.empty, real.to_string()


def test_second_run_reuses_everything(smoke, capsys):
    before = {p: p.stat().st_mtime_ns for p in (smoke / "smoke").glob("*/meta.json")}
    runs = sorted((smoke / "smoke" / "runs").iterdir())
    assert main(["reproduce", "--profile", "smoke", "--results-dir", str(smoke)]) == 0
    out = capsys.readouterr().out
    assert out.count("up to date") == len(experiment_names())
    assert "0 experiment(s) ran" in out and "training" not in out
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert sorted((smoke / "smoke" / "runs").iterdir()) == runs


def test_editing_a_method_reruns_what_uses_it(smoke, sources, tmp_path, monkeypatch, capsys):
    """With cosformer's source edited, the experiments that use it run again (with a new cosformer
    run, saying why), the others stay up to date."""
    results = tmp_path / "results"
    shutil.copytree(smoke / "smoke", results / "smoke")
    tree = copy_sources(tmp_path / "tree", sources)
    source = tree / "baselines" / "cosformer.py"
    source.write_text(source.read_text() + "\n# edited\n")
    monkeypatch.setattr(fingerprint, "SOURCE_ROOT", tree)
    assert main(["reproduce", "--profile", "smoke", "--results-dir", str(results), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "table2_methods: would run: the code changed (baselines/cosformer.py)" in out
    assert "kernel_ablation: up to date" in out and "mqar: up to date" in out
    assert main(["reproduce", "--profile", "smoke", "--results-dir", str(results), "--only", "fig2_curves"]) == 0
    out = capsys.readouterr().out
    assert "fig2_curves: re-running: the code changed (baselines/cosformer.py)" in out
    assert "training convert-s-cosformer-" in out and "training convert-s-dijiang-" not in out
    assert len(list((results / "smoke" / "runs").glob("convert-s-cosformer-f0.0625-s0-*"))) == 2


def test_own_corpus_is_kept_apart_and_not_compared(tmp_path, capsys):
    """``--data``: the profile on a folder of text files, in ``data-<hash>/<profile>/``."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "north", "seven", "quiet"]
    rng = random.Random(0)
    for i in range(80):
        (corpus / f"doc{i:02d}.txt").write_text(" ".join(rng.choice(words) for _ in range(400)) + "\n")
    results = tmp_path / "results"
    argv = ["reproduce", "--profile", "smoke", "--only", "kernel_ablation", "--results-dir", str(results)]
    assert main([*argv, "--data", str(corpus)]) == 0
    out = capsys.readouterr().out
    (folder,) = results.glob("data-*")
    meta = json.loads((folder / "smoke" / "kernel_ablation" / "meta.json").read_text())
    assert str(corpus) in meta["notes"][0] and meta["corpus"]["spec"] == str(corpus)
    (teacher,) = (folder / "smoke" / "runs").glob("teacher-s-s0-*")
    assert json.loads((teacher / "config.json").read_text())["config"]["data"] == str(corpus)
    assert not (results / "smoke").exists()
    assert "not compared with the reference" in out and "kernel_ablation: running" in out
    assert main([*argv, "--data", str(corpus)]) == 0
    assert "kernel_ablation: up to date" in capsys.readouterr().out


def test_committed_smoke_reference_is_complete_small_and_self_consistent():
    """``results/smoke/`` holds every experiment's tables and metadata, no weights, within budget,
    and compares equal with itself."""
    from harness.report.compare import compare

    for name in experiment_names():
        meta = json.loads((REFERENCE / name / "meta.json").read_text())
        assert meta["profile"] == "smoke" and meta["code_fingerprint"], name
        for table in meta["tables"]:
            assert (REFERENCE / name / f"{table}.csv").stat().st_size > 0, (name, table)
    assert (REFERENCE / "REPORT.md").is_file()
    kept = [
        p
        for p in REFERENCE.rglob("*")
        if p.is_file()
        and "runs" not in p.relative_to(REFERENCE).parts
        and p.suffix not in (".png", ".pdf", ".log")
        and ".bak-" not in p.name  # a re-run's backup of a benchmark sweep: ignored by git, never committed
    ]
    assert not [p for p in kept if p.suffix in (".safetensors", ".bin", ".pt")]
    budget = REFERENCE_FIXED_BYTES + REFERENCE_BYTES_PER_EXPERIMENT * len(experiment_names())
    assert sum(p.stat().st_size for p in kept) < budget
    per_experiment: Counter[str] = Counter()
    for p in kept:
        parts = p.relative_to(REFERENCE).parts
        if len(parts) > 1 and parts[0] != "fig4_speed_memory":
            per_experiment[parts[0]] += p.stat().st_size
    too_big = {k: v for k, v in per_experiment.items() if v > REFERENCE_EXPERIMENT_MAX_BYTES}
    assert not too_big, too_big
    frame, ok = compare(REFERENCE, REFERENCE)
    assert ok and len(frame) and (frame["max |A-B|"].fillna(0) == 0).all()


def test_fresh_runs_default_to_their_own_folder(capsys):
    assert main(["reproduce", "--profile", "smoke", "--dry-run"]) == 0
    out = capsys.readouterr().out
    (line,) = [ln for ln in out.splitlines() if "run folder:" in ln]
    assert line.rstrip().endswith(os.path.join("runs", "smoke")) and "results" not in line


@pytest.mark.parametrize("notebook", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_notebook_runs_headless(smoke, notebook, monkeypatch, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("SUITE_RESULTS", str(smoke))
    monkeypatch.setenv("SUITE_PROFILE", "smoke")
    monkeypatch.setenv("PYTHONPATH", str(NOTEBOOKS.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    nb = nbformat.read(NOTEBOOKS / notebook, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors


def test_paper_profile_dry_run_prints_a_plan(capsys):
    assert main(["reproduce", "--profile", "paper", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "GPU-hours" in out and "convert-llama2-7b-dijiang" in out
    # the memory plan: per model trained, every strategy with and without activation checkpointing
    plan = out.split("memory plan of llama2-7b -> dijiang:", 1)[1].split("\n\n", 1)[0]
    rows = {tuple(line.split()[:2]): line.split() for line in plan.splitlines()[2:-1]}
    assert set(rows) == {(s, c) for s in ("ddp", "zero2", "fsdp", "zero3") for c in ("no", "yes")}
    total = {k: float(v[7]) for k, v in rows.items()}
    assert total[("fsdp", "no")] < total[("ddp", "no")] and total[("fsdp", "yes")] < total[("fsdp", "no")]
    assert rows[("ddp", "no")][8] == "none"  # replicated 7B training states never fit one 80 GB GPU
    assert 1 < int(rows[("fsdp", "yes")][8]) <= 8  # sharded, they do on a few


def test_unknown_experiment_is_explained():
    with pytest.raises(SpecError, match="unknown experiment 'table9'; defined: .*table2_methods"):
        load_experiment("table9", "smoke")


def test_unknown_profile_is_explained():
    with pytest.raises(SpecError, match="unknown profile 'huge'"):
        load_profile("huge")


def test_bad_parameter_is_explained(tmp_path):
    src = Path(__file__).resolve().parents[1] / "experiments"
    (tmp_path / "profiles.yaml").write_text((src / "profiles.yaml").read_text())
    text = (src / "table2_methods.yaml").read_text().replace("conversion_fraction", "conversion_fractoin")
    (tmp_path / "table2_methods.yaml").write_text(text)
    with pytest.raises(SpecError, match="unknown parameter.*conversion_fractoin"):
        load_experiment("table2_methods", "smoke", directory=tmp_path)


def edited_experiment(tmp_path: Path, name: str, old: str, new: str) -> Path:
    """A copy of the experiments folder with ``old`` replaced by ``new`` in experiment ``name``."""
    src = ROOT / "experiments"
    (tmp_path / "profiles.yaml").write_text((src / "profiles.yaml").read_text())
    text = (src / f"{name}.yaml").read_text()
    assert old in text, (name, old)
    (tmp_path / f"{name}.yaml").write_text(text.replace(old, new))
    return tmp_path


@pytest.mark.parametrize(
    ("profile", "old", "new"),
    [
        ("tiny", "methods: [performer, retnet", "methods: [performer, retnt"),
        ("smoke", "window-linear]", "window-linaer]"),
    ],
)
def test_unknown_method_in_an_experiment_is_explained(tmp_path, profile, old, new):
    """A misspelt method in a list (the tiny recovery curve) or in an exclusion (Table 2)."""
    name = "recovery_curve" if profile == "tiny" else "table2_methods"
    directory = edited_experiment(tmp_path, name, old, new)
    bad = new.rstrip("]").split()[-1]
    with pytest.raises(SpecError, match=f"unknown method '{bad}'; registered: .*dijiang"):
        load_experiment(name, profile, directory=directory)


def test_unknown_runner_is_explained(tmp_path):
    directory = edited_experiment(tmp_path, "table2_methods", "runner: methods", "runner: method")
    with pytest.raises(SpecError, match=r"table2_methods.yaml: unknown runner 'method'; known: \[.*'methods'"):
        load_experiment("table2_methods", "smoke", directory=directory)


def test_all_is_every_method_the_runner_takes_less_the_exclusions():
    """``methods: all`` is resolved on load, once (:func:`harness.pipeline.runners.runner_params`):
    Table 2 converts every convertible method and trains the others from scratch; MQAR and Fig. 4 take
    every registered method; tiny's Table 2 too, its recovery curve an explicit list."""
    from harness.core.registry import capabilities, list_methods

    convertible = [m for m in list_methods() if capabilities(m)["convertible"]]
    hybrids = ["sliding-window", "window-linear"]
    table2 = runner_params(load_experiment("table2_methods", "paper"))
    assert table2.methods == [m for m in convertible if m not in ["softmax", *hybrids]]
    assert table2.from_scratch == [m for m in list_methods() if m not in convertible] == ["mamba"]
    assert runner_params(load_experiment("table2_methods", "smoke")).methods == table2.methods
    assert runner_params(load_experiment("recovery_curve", "paper")).methods == table2.methods
    assert runner_params(load_experiment("mqar", "paper")).methods == [m for m in list_methods() if m not in hybrids]
    for profile in ("smoke", "paper"):
        assert runner_params(load_experiment("fig4_speed_memory", profile)).methods == list_methods()
    assert runner_params(load_experiment("table2_methods", "tiny")).methods == table2.methods
    assert runner_params(load_experiment("recovery_curve", "tiny")).methods == ["performer", "retnet", "dijiang"]


def test_all_where_a_runner_takes_only_a_list_is_explained(tmp_path):
    listed = "methods: [softmax, performer, dijiang]"
    directory = edited_experiment(tmp_path, "fig3_attention_maps", listed, "methods: all")
    with pytest.raises(SpecError, match="runner 'attention_maps' takes an explicit list in 'methods', not 'all'"):
        load_experiment("fig3_attention_maps", "smoke", directory=directory)


def test_a_new_runner_module_registers_itself(tmp_path):
    """A runner module and an experiment YAML, and nothing else, make a new experiment: in a copy of
    the suite, ``reproduce --dry-run`` plans it."""
    tree = copy_sources(tmp_path / "tree")
    (tree / "harness" / "pipeline" / "runners" / "echo.py").write_text(
        '''"""A throwaway runner."""

from dataclasses import dataclass

from harness.pipeline.runners.base import PlannedRun, Runner, register_runner


@dataclass
class EchoParams:
    teacher: str


@register_runner("echo")
class EchoRunner(Runner):
    Params = EchoParams

    def plan(self, exp, p):
        return [PlannedRun(f"echo-{p.teacher}", "pretrain", 1.0, 1.0)]
'''
    )
    (tree / "experiments" / "echo.yaml").write_text(
        "name: echo\npaper_ref: none\nrunner: echo\ndescription: a test\nparams: {}\nprofiles: {smoke: {teacher: s}}\n"
    )
    argv = ["reproduce", "--profile", "smoke", "--only", "echo", "--dry-run", "--results-dir", str(tmp_path / "out")]
    out = subprocess.run(
        [sys.executable, "-m", "harness", *argv],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "echo-s" in out.stdout and "echo: would run: not run yet" in out.stdout
    assert "echo" not in RUNNERS  # the copy's runner, not this tree's


def test_method_options_reach_the_conversion_and_are_validated(smoke, tmp_path):
    """The smoke profile converts Linformer with its method_options (block 4 of a 64-token window),
    and an unknown method under method_options is explained."""
    configs = [json.loads(p.read_text()) for p in (smoke / "smoke" / "runs").glob("convert-*-linformer-*/config.json")]
    options = [c["config"]["mixer_options"] for c in configs]
    assert options and all(o == {"block_size": 4, "compressed_dim": 8} for o in options), options
    src = Path(__file__).resolve().parents[1] / "experiments"
    text = (src / "profiles.yaml").read_text().replace("method_options: {linformer:", "method_options: {linformformer:")
    (tmp_path / "profiles.yaml").write_text(text)
    with pytest.raises(SpecError, match="method_options.linformformer must map a registered method"):
        load_profile("smoke", directory=tmp_path)
