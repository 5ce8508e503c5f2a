"""Code fingerprints in the reuse keys (harness/training/fingerprint.py): editing a method's source changes
the keys of exactly the experiments and training runs that use it; editing a runner's module
(harness/pipeline/runners/<runner>.py) the keys of the experiments that run it; editing core model
code or the runners' shared base changes every key; editing the report changes none. Checked on an
edited copy of the source tree."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.pipeline.reproduce import code_fingerprint
from harness.pipeline.runners import RUNNERS, load_experiment, runner_params
from harness.pipeline.spec import experiment_names
from harness.training import fingerprint
from harness.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tree(tmp_path, monkeypatch) -> Path:
    """A copy of the suite's packages, which the fingerprints then read."""
    for pkg in ROOT.iterdir():
        if pkg.is_dir() and (pkg / "__init__.py").is_file() and pkg.name not in fingerprint.NOT_CODE:
            shutil.copytree(pkg, tmp_path / pkg.name, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(fingerprint, "SOURCE_ROOT", tmp_path)
    return tmp_path


def edit(path: Path) -> None:
    path.write_text(path.read_text() + "\n# edited\n")


def experiment_keys() -> dict[str, str]:
    return {n: code_fingerprint(load_experiment(n, "smoke")).digest for n in experiment_names()}


def uses(name: str, method: str) -> bool:
    exp = load_experiment(name, "smoke")
    return method in RUNNERS[exp.runner].methods(exp, runner_params(exp))


def train_key(mixer: str) -> str:
    return TrainConfig(mixer=mixer, tokens=4096, block_size=64, batch_size=8).config_hash()


def test_editing_a_method_reruns_what_uses_it_and_nothing_else(tree):
    before = experiment_keys()
    runs_before = {m: train_key(m) for m in ("softmax", "cosformer", "dijiang")}
    edit(tree / "baselines" / "cosformer.py")
    after = experiment_keys()
    changed = {n for n in before if before[n] != after[n]}
    assert changed == {n for n in before if uses(n, "cosformer")}
    assert "table2_methods" in changed and "fig2_curves" in changed  # fig 2 plots table 2's runs
    assert "kernel_ablation" not in changed and "mqar" not in changed
    assert train_key("cosformer") != runs_before["cosformer"]
    assert train_key("softmax") == runs_before["softmax"] and train_key("dijiang") == runs_before["dijiang"]


def test_a_module_a_method_imports_counts_as_the_method(tree):
    before = experiment_keys()
    runs_before = {m: train_key(m) for m in ("softmax", "cosformer", "dijiang", "pff")}
    edit(tree / "dijiang" / "features.py")
    after = experiment_keys()
    assert {n for n in before if before[n] != after[n]} >= {n for n in before if uses(n, "dijiang")}
    assert train_key("dijiang") != runs_before["dijiang"] and train_key("pff") != runs_before["pff"]
    assert train_key("softmax") == runs_before["softmax"] and train_key("cosformer") == runs_before["cosformer"]


def test_core_code_changes_every_key_and_the_report_none(tree):
    before, run_before = experiment_keys(), train_key("softmax")
    edit(tree / "harness" / "report" / "report.py")
    assert experiment_keys() == before and train_key("softmax") == run_before
    edit(tree / "harness" / "core" / "modeling.py")
    after = experiment_keys()
    assert all(after[n] != before[n] for n in before)
    assert train_key("softmax") != run_before


def test_a_runner_module_counts_for_its_own_experiments(tree):
    """One module per runner: editing one re-runs the experiments of that runner (and those importing
    it), the shared base every experiment, the package's ``__init__`` (which only imports its modules) none."""
    runners = tree / "harness" / "pipeline" / "runners"
    by_runner: dict[str, set[str]] = {}
    for n in experiment_names():
        by_runner.setdefault(load_experiment(n, "smoke").runner, set()).add(n)
    keys = experiment_keys()
    edit(runners / "mqar.py")
    after = experiment_keys()
    assert {n for n in keys if keys[n] != after[n]} == by_runner["mqar"] == {"mqar"}
    edit(runners / "methods.py")
    keys, after = after, experiment_keys()
    assert {n for n in keys if keys[n] != after[n]} == {"table2_methods", "fig2_curves"}  # fig 2 plots table 2's runs
    edit(runners / "__init__.py")
    keys, after = after, experiment_keys()
    assert keys == after
    edit(runners / "base.py")
    keys, after = after, experiment_keys()
    assert all(after[n] != keys[n] for n in keys)


def test_the_benchmark_command_counts_for_fig4_and_not_for_the_hybrids(tree):
    """The hybrids time decoding with the benchmark's workloads, not its command: editing the command
    line or its summary re-runs Fig. 4 only (``harness/bench/__init__.py`` imports nothing); editing the
    workloads re-runs both."""
    keys = experiment_keys()
    edit(tree / "harness" / "bench" / "cli.py")
    edit(tree / "harness" / "bench" / "summary.py")
    after = experiment_keys()
    assert {n for n in keys if keys[n] != after[n]} == {"fig4_speed_memory"}
    edit(tree / "harness" / "bench" / "workloads.py")
    keys, after = after, experiment_keys()
    changed = {n for n in keys if keys[n] != after[n]}
    assert {"fig4_speed_memory", "hybrid_pareto", "hybrid_trained_teacher"} <= changed


def test_the_change_is_named():
    old = fingerprint.Fingerprint("a", {"x.py": "1", "y.py": "2"})
    new = fingerprint.Fingerprint("b", {"x.py": "1", "y.py": "3", "z.py": "4"})
    assert new.changed_files(old.files) == ["y.py", "z.py"]
    assert fingerprint.describe_change(["a", "b", "c", "d", "e"]) == "a, b, c and 2 more"


def test_relative_and_function_level_imports_are_followed(tmp_path, monkeypatch):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from . import b\n    return b\n")
    (pkg / "b.py").write_text("from pkg.c import x\n")
    (pkg / "c.py").write_text("x = 1\n")
    (pkg / "d.py").write_text("y = 2\n")
    monkeypatch.setattr(fingerprint, "SOURCE_ROOT", tmp_path)
    assert fingerprint.closure(["pkg.a"]) == ["pkg", "pkg.a", "pkg.b", "pkg.c"]
    assert fingerprint.closure(["pkg.a"], shallow=["pkg.a"]) == ["pkg.a"]
    before = fingerprint.fingerprint(["pkg.a"]).digest
    edit(pkg / "d.py")
    assert fingerprint.fingerprint(["pkg.a"]).digest == before
    edit(pkg / "c.py")
    assert fingerprint.fingerprint(["pkg.a"]).digest != before


def test_a_hybrid_run_depends_on_every_method_it_names(tree):
    hybrid = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "mixer": "softmax"}
    hybrid["layer_mixers"] = {"1": {"mixer": "retnet"}}
    config = TrainConfig(model=hybrid, tokens=4096, block_size=64, batch_size=8)
    assert config.methods() == ["retnet", "softmax"]
    before, plain = config.config_hash(), train_key("softmax")
    edit(tree / "baselines" / "retnet.py")
    assert config.config_hash() != before and train_key("softmax") == plain


def test_a_method_package_outside_the_repository_is_fingerprinted(tmp_path, monkeypatch):
    from harness.core import registry

    if not hasattr(registry, "method_packages"):
        pytest.skip("this registry has no outside method packages")
    pkg = tmp_path / "outside_methods"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mine.py").write_text("from outside_methods import helper\n")
    (pkg / "helper.py").write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(registry.EXTRA_PACKAGES_ENV, "outside_methods")
    found = fingerprint.fingerprint(["outside_methods.mine"])
    assert sorted(found.files) == sorted((pkg / f).as_posix() for f in ("__init__.py", "helper.py", "mine.py"))
    edit(pkg / "helper.py")
    assert fingerprint.fingerprint(["outside_methods.mine"]).digest != found.digest
