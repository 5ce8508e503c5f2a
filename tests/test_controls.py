"""Controls and hybrids of the pipeline: the controls train on exactly what the conversion trained
on; the recovery score and the Pareto front give known answers on known inputs."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest

from harness.pipeline import stages
from harness.pipeline.controls_runner import recovery
from harness.pipeline.hybrid_runner import pareto_front
from harness.pipeline.spec import load_profile

SAME = ("data", "tokenizer", "tokens", "block_size", "batch_size", "seed")


@pytest.fixture
def captured(monkeypatch, tmp_path):
    configs = {}

    def fake_run(ctx, label, config, method):
        configs[label] = config
        result = SimpleNamespace(model_dir=f"/runs/{label}/model", out_dir=f"/runs/{label}")
        return stages.Run(label=label, result=result, method=method, tokens=config.tokens)  # type: ignore[arg-type]

    monkeypatch.setattr(stages, "_run", fake_run)
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
    import harness.factory
    import harness.recipes

    ctx, configs = captured
    monkeypatch.setattr(harness.factory, "load_model", lambda path: None)
    monkeypatch.setattr(harness.recipes, "mixer_share", lambda model: 0.25)
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
