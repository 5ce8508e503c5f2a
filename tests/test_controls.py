"""Controls and hybrids of the pipeline: the controls train on exactly what the conversion trained
on; the recovery score and the Pareto front give known answers on known inputs."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest

from harness.pipeline import stages
from harness.pipeline.runners.controls import recovery
from harness.pipeline.runners.hybrid import pareto_front
from harness.pipeline.spec import load_profile

SAME = ("data", "tokenizer", "tokens", "block_size", "batch_size", "seed")


@pytest.fixture
def captured(monkeypatch, tmp_path):
    configs = {}

    def fake_run(ctx, label, config, method):
        configs[label] = config
        result = SimpleNamespace(model_dir=f"/runs/{label}/model", out_dir=f"/runs/{label}")
        return stages.Run(label=label, result=result, method=method, tokens=config.tokens)  # type: ignore[arg-type]

    monkeypatch.setattr(stages, "run_training", fake_run)
    ctx = stages.Context(load_profile("tiny"), results_dir=tmp_path)
    return ctx, configs


@pytest.mark.parametrize("fraction", [0.015625, 0.25])
def test_controls_train_on_the_conversions_data_and_tokens(captured, fraction):
    ctx, configs = captured
    t = ctx.profile.teacher("tiny-m")
    conv = stages.convert(ctx, t, "/teacher/model", "dijiang", fraction, seed=1)
    scratch = stages.scratch_control(ctx, t, "/teacher/model", "dijiang", fraction, seed=1)
    noop = stages.convert(ctx, t, "/teacher/model", "softmax", fraction, seed=1)
    a, b, c = (configs[r.label] for r in (conv, scratch, noop))
    for key in SAME:
        assert getattr(a, key) == getattr(b, key) == getattr(c, key), key
    assert a.tokens == math.ceil(t.tokens * fraction)
    assert b.model == t.shape and b.mixer == "dijiang" and a.model == "/teacher/model"  # fresh vs converted
    assert c.mixer == "softmax" and c.model == "/teacher/model"


def test_recipes_chain_their_stages_from_the_teacher(captured, monkeypatch):
    import harness.conversion.factory
    import harness.training.recipes

    ctx, configs = captured
    monkeypatch.setattr(harness.conversion.factory, "load_teacher", lambda path: None)
    monkeypatch.setattr(harness.training.recipes, "mixer_share", lambda model: 0.25)
    t = ctx.profile.teacher("tiny-m")
    stages.convert_with_recipe(ctx, t, "/teacher/model", "dijiang", 0.0625, "transfer", seed=0)
    first, second = (configs[k] for k in sorted(configs))
    assert (first.objective, first.mixer, first.model) == ("transfer", "dijiang", "/teacher/model")
    assert first.teacher == "/teacher/model"
    assert second.objective == "lm" and second.mixer is None and second.model.endswith("transfer1/model")
    assert first.data == second.data and first.seed == second.seed


def test_recovery_score():
    assert recovery(scratch=3.0, converted=2.0, teacher=2.0) == 1.0
    assert recovery(scratch=3.0, converted=3.0, teacher=2.0) == 0.0
    assert recovery(scratch=3.0, converted=3.5, teacher=2.0) == -0.5
    assert math.isnan(recovery(scratch=2.0, converted=2.5, teacher=2.5))


def test_pareto_front():
    pts = pd.DataFrame(
        {"speed": [10, 20, 30, 15, 30], "bpb": [1.0, 1.5, 2.0, 1.6, 2.5]}, index=["a", "b", "c", "d", "e"]
    )
    assert pareto_front(pts, "speed").to_dict() == {"a": True, "b": True, "c": True, "d": False, "e": False}


def test_dirty_means_source_changes_only(tmp_path):
    """A run is marked dirty by uncommitted code or definitions, not by edited results or docs."""
    import subprocess

    from harness.util.provenance import git_commit

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "harness").mkdir()
    (tmp_path / "harness" / "m.py").write_text("x = 1\n")
    (tmp_path / "README.md").write_text("readme\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    assert git_commit(tmp_path)[1] is False
    (tmp_path / "README.md").write_text("edited\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "new.csv").write_text("a\n")
    assert git_commit(tmp_path)[1] is False
    (tmp_path / "harness" / "new_method.py").write_text("y = 2\n")
    assert git_commit(tmp_path)[1] is True
    (tmp_path / "harness" / "new_method.py").unlink()
    (tmp_path / "harness" / "m.py").write_text("x = 2\n")
    assert git_commit(tmp_path)[1] is True


def _fake_train(calls, val):
    def train(lr, seed, fraction):
        calls.append((lr, seed, fraction))
        lr = 1e-3 if lr is None else lr
        return SimpleNamespace(result=SimpleNamespace(val_loss=val[lr] * math.log(2)))

    return train


@pytest.mark.parametrize("at_in_table", [True, False])
def test_a_rate_swept_at_one_budget_is_reused_at_the_others(at_in_table):
    from harness.pipeline.runners.controls import RateSweep

    calls: list = []
    train = _fake_train(calls, {1e-4: 3.0, 1e-3: 2.0, 1e-2: 2.5})
    rates = RateSweep([1e-4, 1e-3, 1e-2], [0, 1], at=0.015625)
    fractions = [0.015625, 0.0625] if at_in_table else [0.0625, 0.25]
    runs = {f: rates.runs(("dijiang", "paper"), f, train) for f in fractions}
    sweep_calls = [(lr, 0, 0.015625) for lr in (1e-4, 1e-3, 1e-2)]
    if at_in_table:  # the sweep's run at the chosen rate is seed 0 of the sweep budget
        expected = [*sweep_calls, (1e-3, 1, 0.015625), (1e-3, 0, 0.0625), (1e-3, 1, 0.0625)]
    else:  # sweep-only runs, then every seed at every budget of the table
        expected = [*sweep_calls, *[(1e-3, s, f) for f in fractions for s in (0, 1)]]
    assert calls == expected
    assert all(set(r) == {0, 1} for r in runs.values())
    assert rates.chosen == {("dijiang", "paper"): 1e-3}
    assert {p["fraction"] for p in rates.points} == {0.015625} and len(rates.points) == 3


def test_without_a_sweep_budget_every_budget_sweeps_its_own():
    from harness.pipeline.runners.controls import RateSweep

    calls: list = []
    rates = RateSweep([1e-4, 1e-3], [0], at=None)
    for f in (0.0625, 0.25):
        rates.runs(("retnet", "paper"), f, _fake_train(calls, {1e-4: 3.0, 1e-3: 2.0}))
    assert calls == [(1e-4, 0, 0.0625), (1e-3, 0, 0.0625), (1e-4, 0, 0.25), (1e-3, 0, 0.25)]
    assert sorted({p["fraction"] for p in rates.points}) == [0.0625, 0.25]


def test_a_reused_rate_that_diverges_falls_back_to_the_next_lower_rate():
    """The rate chosen at the sweep budget can diverge on another seed or budget: that seed retrains at
    the next lower rate swept instead of stopping the grid."""
    from harness.pipeline.runners.controls import RateSweep, at_rate_or_lower
    from harness.training.config import TrainingDiverged

    calls: list = []
    good = _fake_train(calls, {1e-4: 3.0, 1e-3: 2.5, 1e-2: 2.0})

    def train(lr, seed, fraction):
        if lr == 1e-2 and (seed, fraction) != (0, 0.015625):
            calls.append((lr, seed, fraction))
            raise TrainingDiverged("nan")
        return good(lr, seed, fraction)

    rates = RateSweep([1e-4, 1e-3, 1e-2], [0, 1], at=0.015625)
    rates.runs(("dijiang", "paper"), 0.015625, train)
    assert calls[3:] == [(1e-2, 1, 0.015625), (1e-3, 1, 0.015625)]  # seed 1 of the sweep budget
    calls.clear()
    rates.runs(("dijiang", "paper"), 0.0625, train)
    assert calls == [(1e-2, 0, 0.0625), (1e-3, 0, 0.0625), (1e-2, 1, 0.0625), (1e-3, 1, 0.0625)]
    assert rates.chosen == {("dijiang", "paper"): 1e-2}  # the choice stays what the sweep measured

    def always(lr, seed):
        calls.append(lr)
        raise TrainingDiverged("nan")

    calls.clear()
    with pytest.raises(TrainingDiverged, match="every lower rate"):
        at_rate_or_lower(always, 1e-3, [1e-4, 1e-3, 1e-2], 0)
    assert calls == [1e-3, 1e-4]  # never a higher rate than the one chosen


@pytest.mark.parametrize("profile", ["tiny", "grid"])
def test_the_plan_counts_the_runs_the_sweep_makes(profile):
    """--dry-run's plan of recipes_controls holds exactly the runs RateSweep trains."""
    from harness.pipeline.runners.base import load_experiment, runner_params
    from harness.pipeline.runners.controls import ControlsRunner, RateSweep

    exp = load_experiment("recipes_controls", load_profile(profile))
    p = runner_params(exp)
    planned = ControlsRunner().plan(exp, p)
    made = []
    conv, scratch = (
        RateSweep(p.convert_lrs, p.seeds, p.sweep_fraction),
        RateSweep(p.scratch_lrs, p.seeds, p.sweep_fraction),
    )
    val = dict.fromkeys(p.convert_lrs + p.scratch_lrs + [1e-3], 1.0)
    for f in sorted(p.fractions, key=lambda f: f != p.sweep_fraction):
        conv.runs(("softmax", "no-op"), f, _fake_train(made, val))
        for m in p.methods:
            scratch.runs((m, "scratch"), f, _fake_train(made, val))
            for r in p.recipes:
                conv.runs((m, r), f, _fake_train(made, val))
    assert len(planned) == len(made)
    assert sorted(r.tokens for r in planned) == sorted(exp.profile.teacher(p.teacher).tokens * f for _, _, f in made)


def test_hybrid_windows_with_a_method_window_linear_refuses_fail_before_training():
    from harness.pipeline.runners.base import load_experiment, runner_params
    from harness.pipeline.runners.hybrid import HybridRunner
    from harness.pipeline.spec import SpecError

    exp = load_experiment("hybrid_pareto", load_profile("grid"))
    p = runner_params(exp)
    HybridRunner().validate(exp, p)  # the grid as committed: windows for dijiang only
    assert all("retnet-window" not in r.label for r in HybridRunner().plan(exp, p))
    p.window_methods = None  # windows for every method, retnet included
    with pytest.raises(SpecError, match="retnet.*not normalised.*window_methods"):
        HybridRunner().validate(exp, p)


def test_the_hybrid_table_is_the_mean_over_seeds_with_its_spread_and_the_front_on_the_mean():
    """One row per configuration: bits per byte averaged over its seeds (with their standard deviation
    and count), its chosen rate, decode speed by context; the front uses the mean."""
    from harness.pipeline.runners.hybrid import HybridParams, HybridRunner

    p = HybridParams(
        teacher="t", methods=["dijiang"], ks=[0], seeds=[0, 1], lrs=[1e-3, 3e-3], contexts=[64], front_context=64
    )
    per_seed = pd.DataFrame(
        [
            dict(label="teacher", method="softmax", criterion="teacher", bpb=1.0, seed=None, lr=None),
            dict(label="dj-k0", method="dijiang", criterion="transfer", bpb=2.0, seed=0, lr=3e-3),
            dict(label="dj-k0", method="dijiang", criterion="transfer", bpb=2.2, seed=1, lr=3e-3),
            dict(label="dj-w8", method="dijiang", criterion="window", bpb=0.9, seed=0, lr=1e-3),
            dict(label="dj-w8", method="dijiang", criterion="window", bpb=1.3, seed=1, lr=1e-3),
        ]
    )
    decode = pd.DataFrame(
        [
            dict(label=lab, context=64, tokens_per_s=s, state_numbers=n)
            for lab, s, n in [("teacher", 100.0, 9), ("dj-k0", 300.0, 1), ("dj-w8", 90.0, 2)]
        ]
    )
    table = HybridRunner._table(per_seed, decode, p).set_index("label")
    assert table.loc["dj-k0", "bpb"] == pytest.approx(2.1) and table.loc["dj-w8", "bpb"] == pytest.approx(1.1)
    assert table.loc["dj-w8", "bpb_sd"] == pytest.approx(0.2828427, rel=1e-6) and table.loc["dj-w8", "seeds"] == 2
    assert table.loc["dj-w8", "lr"] == 1e-3 and table.loc["dj-k0", "decode_tokens_per_s_64"] == 300.0
    # on the mean, w8 (1.1) is worse and slower than the teacher (1.0, 100 tokens/s): off the front (its
    # first seed alone, 0.9, would be on it)
    assert list(table["on_front"]) == [True, True, False]


def test_hybrid_window_controls_plan_every_window_its_control_and_every_linear_configuration_each_recipe():
    """window_only adds one sliding-window control per window (paper only: nothing new to transfer);
    recipes train every configuration with a linear layer under each recipe, the no-op under paper only;
    one recipe keeps the labels (and so the runs) the experiments had before."""
    from harness.pipeline.runners.base import load_experiment, runner_params
    from harness.pipeline.runners.hybrid import HybridRunner, has_linear_layer, recipe_label

    exp = load_experiment("hybrid_window_controls", load_profile("grid-64m"))
    p = runner_params(exp)
    HybridRunner().validate(exp, p)
    at = {r.label.rsplit("-f", 1)[0] for r in HybridRunner().plan(exp, p) if "f0.0625" in r.label}
    want = {"dijiang-even-k0", "dijiang-window64", "dijiang-even-k0-transfer-recipe"}
    want |= {"dijiang-window64-transfer-recipe", "sliding-window64", "no-op"}
    assert at == {f"hybrid-tiny-m-{label}" for label in want}
    assert "sliding-window" in HybridRunner().methods(exp, p)
    assert recipe_label("x", "paper") == "x" and recipe_label("x", "distill") == "x-distill-recipe"
    window = {"mixer": "sliding-window", "options": {"window": 8}}
    assert not has_linear_layer("dijiang", {0: window, 1: {"mixer": "softmax"}}, 2)
    assert has_linear_layer("dijiang", {0: window}, 2) and not has_linear_layer("softmax", {}, 3)
    before = load_experiment("hybrid_trained_teacher", load_profile("grid-64m"))
    labels = {r.label for r in HybridRunner().plan(before, runner_params(before))}
    assert not any("recipe" in lab or "sliding" in lab for lab in labels)


def test_hybrid_window_controls_refuse_a_bad_recipe_or_a_control_without_a_window():
    from harness.pipeline.runners.base import load_experiment, runner_params
    from harness.pipeline.runners.hybrid import HybridRunner
    from harness.pipeline.spec import SpecError

    exp = load_experiment("hybrid_window_controls", load_profile("grid-64m"))
    p = runner_params(exp)
    p.recipes = ["paper", "lolcats"]
    with pytest.raises(SpecError, match="recipes.*choose one or more of"):
        HybridRunner().validate(exp, p)
    p = runner_params(exp)
    p.windows = []
    with pytest.raises(SpecError, match="window_only is the control of a window"):
        HybridRunner().validate(exp, p)
