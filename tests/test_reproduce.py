"""The experiment pipeline: every experiment at the smoke profile, end to end, then the notebooks.

One smoke run (a few minutes on 2 CPU cores) feeds every test here; a second run must reuse all of
it. The notebooks run headless (nbclient) against the smoke results.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness.cli import main
from harness.pipeline.spec import SpecError, experiment_names, load_experiment, load_profile

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("results")
    assert main(["reproduce", "--profile", "smoke", "--results-dir", str(out)]) == 0
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
    speed = report.split("## fig4_speed_memory")[1].split("\n## ")[0]  # throughput against softmax, per phase
    for phase in ("prefill", "decode"):
        assert f"{phase}** — tokens/s (x softmax, same sweep)" in speed
    assert "| softmax" in speed and "(1.00x)" in speed and "prefill peak memory" in speed
    kernel = report.split("## kernel_ablation")[1].split("\n## ")[0]  # a verdict per input set
    assert kernel.count("the claimed ~1/m rate") == 2 and "gaussian std" in kernel


def test_second_run_reuses_everything(smoke, capsys):
    before = {p: p.stat().st_mtime_ns for p in (smoke / "smoke").glob("*/meta.json")}
    assert main(["reproduce", "--profile", "smoke", "--results-dir", str(smoke)]) == 0
    out = capsys.readouterr().out
    assert out.count("up to date") == len(experiment_names())
    assert {p: p.stat().st_mtime_ns for p in before} == before


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


def test_unknown_method_in_an_experiment_is_explained(tmp_path):
    src = Path(__file__).resolve().parents[1] / "experiments"
    (tmp_path / "profiles.yaml").write_text((src / "profiles.yaml").read_text())
    (tmp_path / "table2_methods.yaml").write_text(
        (src / "table2_methods.yaml").read_text().replace("cosformer", "cosfomer")
    )
    with pytest.raises(SpecError, match="unknown method 'cosfomer'"):
        load_experiment("table2_methods", "smoke", directory=tmp_path)


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
