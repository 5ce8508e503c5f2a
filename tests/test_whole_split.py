"""The control of the held-out metric's sample (:mod:`harness.pipeline.runners.whole_split`): another
experiment's models scored on the whole split, nothing trained again, stale when the experiment it
re-scores changes; and the report's side-by-side (:func:`harness.report.controls.whole_split_lines`),
on synthetic results whose answers are known."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness.cli import main
from harness.pipeline.runners import get_runner, load_experiment, runner_params
from harness.pipeline.runners.whole_split import sample_rows, whole_split_profile
from harness.pipeline.spec import EXPERIMENTS_DIR, SpecError, load_profile
from harness.report.controls import whole_split_lines
from tests.controls_results import write_results

WRAPPER, INNER = "whole_split_trained_teacher_large", "recipes_controls_trained_teacher_large"


def results(folder: Path, converted: dict[str, list[float]], scratch: dict[str, list[float]]) -> Path:
    """A controls experiment's ``results.csv``: per method, its seeds' converted and scratch bpb at 1/4."""
    return write_results(folder, {m: (converted[m], scratch[m]) for m in converted})


def test_a_verdict_that_rests_on_the_sample_is_named(tmp_path):
    # on the sample DiJiang's conversion ties its scratch control; on the whole split it is clearly better
    sample = results(
        tmp_path / "sample",
        {"dijiang": [1.04, 1.05], "retnet": [1.05, 1.06]},
        {"dijiang": [1.05, 1.04], "retnet": [1.25, 1.26]},
    )
    whole = results(
        tmp_path / "whole",
        {"dijiang": [1.43, 1.432], "retnet": [1.48, 1.484]},
        {"dijiang": [1.48, 1.482], "retnet": [1.69, 1.70]},
    )
    lines = whole_split_lines(whole, sample)
    (cell,) = [line for line in lines if line.startswith("- **dijiang / paper at 0.25**")]
    assert "converted 1.045 → 1.431" in cell and "from scratch 1.045 → 1.481" in cell
    assert "converted minus scratch +0.000 bpb (p = 1, not significant) → -0.050 bpb (p < 0.001, significant)" in cell
    (pair,) = [line for line in lines if "retnet minus dijiang" in line]
    assert pair.endswith("+0.010 bpb (p = 0.29, not significant) → +0.051 bpb (p = 0.0075, significant).")
    (verdict,) = [line for line in lines if line.startswith("- **Verdicts that rest on the sample**")]
    # RetNet beats its scratch control on both, so only DiJiang's verdict and the pair's are named
    assert "dijiang / paper at 0.25 against scratch (significant on the whole split only)" in verdict
    assert "retnet against dijiang, paper at 0.25 (significant on the whole split only)" in verdict
    assert "retnet / paper at 0.25 against scratch" not in verdict


def test_verdicts_that_hold_on_both_are_said_to_hold(tmp_path):
    sample = results(tmp_path / "sample", {"retnet": [1.05, 1.06]}, {"retnet": [1.25, 1.26]})
    whole = results(tmp_path / "whole", {"retnet": [1.48, 1.484]}, {"retnet": [1.69, 1.70]})
    assert whole_split_lines(whole, sample)[-2].endswith("none: every verdict holds on the whole split.")
    assert whole_split_lines(whole, tmp_path / "missing") == []
    one_seed = results(tmp_path / "one", {"retnet": [1.48]}, {"retnet": [1.69]})
    assert whole_split_lines(one_seed, sample)[-2].endswith("none to compare (one seed: no test).")


def recipes(folder: Path, converted: dict[str, list[float]], scratch: float = 2.3) -> Path:
    """``results.csv`` of one method (Performer) under several recipes at 1/16: its seeds' converted bpb (from
    scratch ``scratch``, 0.01 apart per seed)."""
    folder.mkdir()
    rows = [
        dict(
            method="performer",
            recipe=recipe,
            fraction=0.0625,
            seed=seed,
            converted_bpb=c,
            scratch_bpb=scratch + 0.01 * seed,
            teacher_bpb=0.9,
            recovery=(scratch + 0.01 * seed - c) / (scratch + 0.01 * seed - 0.9),
        )
        for recipe, values in converted.items()
        for seed, c in enumerate(values)
    ]
    pd.DataFrame(rows).to_csv(folder / "results.csv", index=False)
    return folder


def test_a_recipe_verdict_that_rests_on_the_sample_is_named(tmp_path):
    # distill is clearly behind paper on the sample, and within noise of it on the whole split
    sample = recipes(tmp_path / "sample", {"paper": [1.33, 1.331, 1.335], "distill": [1.37, 1.372, 1.374]})
    whole = recipes(tmp_path / "whole", {"paper": [1.67, 1.69, 1.66], "distill": [1.70, 1.66, 1.73]})
    lines = whole_split_lines(whole, sample)
    (pair,) = [line for line in lines if "distill minus paper" in line]
    assert pair.startswith("- **performer at 0.0625, distill minus paper** (recipes, converted; paper is the best")
    assert "(p < 0.001, significant) → +0.023 bpb (p = 0.38, not significant)." in pair
    (verdict,) = [line for line in lines if line.startswith("- **Verdicts that rest on the sample**")]
    assert "distill against paper, performer at 0.0625 (significant on the sample only)" in verdict


def test_the_whole_split_is_more_text_than_the_profiles_sample():
    profile = load_profile("grid-64m")
    sample, whole = sample_rows(profile), sample_rows(whole_split_profile(profile))
    assert len(sample) == profile.eval["data"]["ppl_max_docs"] < len(whole)
    assert all(len(r["text"]) <= profile.eval["data"]["ppl_max_chars"] for r in sample)
    # the sample is the openings of the split's first documents
    assert [r["source"] for r in sample] == [r["source"] for r in whole[: len(sample)]]
    assert all(whole[i]["text"].startswith(r["text"]) for i, r in enumerate(sample))


def copy_of_experiments(tmp_path: Path) -> Path:
    folder = tmp_path / "experiments"
    shutil.copytree(EXPERIMENTS_DIR, folder, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return folder


@pytest.mark.parametrize("of", [WRAPPER, "no_such_experiment", "fig4_speed_memory"])
def test_of_must_name_another_experiment_defined_for_the_profile(tmp_path, of):
    folder = copy_of_experiments(tmp_path)
    spec = yaml.safe_load((folder / f"{WRAPPER}.yaml").read_text())
    spec["params"]["of"] = of
    (folder / f"{WRAPPER}.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError, match=of if of != "fig4_speed_memory" else "not defined for profile 'grid-64m'"):
        load_experiment(WRAPPER, "grid-64m", folder)


def test_the_results_go_stale_when_the_experiment_they_rescore_changes(tmp_path):
    folder = copy_of_experiments(tmp_path)

    def fingerprint() -> str:
        exp = load_experiment(WRAPPER, "grid-64m", folder)
        return get_runner(exp).code_fingerprint(exp, runner_params(exp)).digest

    before = fingerprint()
    spec = yaml.safe_load((folder / f"{INNER}.yaml").read_text())
    spec["params"]["seeds"] = [0, 1, 2]
    (folder / f"{INNER}.yaml").write_text(yaml.safe_dump(spec))
    assert fingerprint() != before


def test_it_trains_nothing_and_scores_every_model_on_the_larger_sample(tmp_path):
    def reproduce(name: str) -> None:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert main(["reproduce", "--profile", "smoke", "--results-dir", str(tmp_path), "--only", name]) == 0

    reproduce(INNER)
    runs = tmp_path / "smoke" / "runs"
    trained = {p: p.stat().st_mtime_ns for p in runs.glob("*/summary.json")}
    reproduce(WRAPPER)
    assert {p: p.stat().st_mtime_ns for p in runs.glob("*/summary.json")} == trained  # no run added or re-trained
    inner, wrapper = (pd.read_csv(tmp_path / "smoke" / n / "results.csv") for n in (INNER, WRAPPER))
    keys = ["method", "recipe", "fraction", "seed"]
    assert inner[keys].equals(wrapper[keys]) and inner["lr"].equals(wrapper["lr"])
    # every score differs: each model was scored again, on other text
    for column in ("converted_bpb", "scratch_bpb", "teacher_bpb", "noop_bpb", "step0_bpb"):
        assert (inner[column] != wrapper[column]).all(), column
    meta = json.loads((tmp_path / "smoke" / WRAPPER / "meta.json").read_text())
    assert "3 documents, 9,000 bytes" in meta["notes"][0] and "2 documents, 2,000 bytes" in meta["notes"][0]


def test_a_flip_says_which_way(tmp_path):
    sample = results(tmp_path / "sample", {"retnet": [1.0, 1.01]}, {"retnet": [1.2, 1.21]})
    opposite = results(tmp_path / "opposite", {"retnet": [1.5, 1.51]}, {"retnet": [1.3, 1.31]})
    vanished = results(tmp_path / "vanished", {"retnet": [1.2, 1.5]}, {"retnet": [1.3, 1.6]})
    assert "(opposite signs)" in whole_split_lines(opposite, sample)[-2]
    assert "(significant on the sample only)" in whole_split_lines(vanished, sample)[-2]


def test_long_context_scores_the_models_at_its_length_and_refuses_one_no_longer_than_training(monkeypatch):
    """long_context is whole_split with the scoring window raised: the inner runner sees a profile whose
    evaluation context is max_length (so every score is computed again, under another cache key), and a
    max_length no longer than the training blocks is refused in one line."""
    from harness.pipeline import stages
    from harness.pipeline.runners.base import Output
    from harness.pipeline.runners.long_context import LongContextRunner
    from harness.pipeline.runners.whole_split import WholeSplitRunner

    exp = load_experiment("long_context_hybrid_window_controls", "grid-64m")
    p = runner_params(exp)
    runner = get_runner(exp)
    assert isinstance(runner, LongContextRunner) and p.max_length == 512 > exp.profile.block_size
    runner.validate(exp, p)
    seen = {}

    def inner_run(self, exp, p, ctx):
        seen["max_length"], seen["tasks"] = ctx.profile.eval["max_length"], ctx.profile.eval["tasks"]
        return Output(tables={}, notes=["whole split"])

    monkeypatch.setattr(WholeSplitRunner, "run", inner_run)
    ctx = stages.Context(profile=exp.profile)
    out = runner.run(exp, p, ctx)
    assert seen == {"max_length": 512, "tasks": ["heldout_ppl"]} and "max_length" not in exp.profile.eval
    assert "up to 512 tokens" in out.notes[0] and "128-token blocks" in out.notes[0]
    p.max_length = 128
    with pytest.raises(SpecError, match="max_length 128 is not longer than the 128 tokens"):
        runner.validate(exp, p)
