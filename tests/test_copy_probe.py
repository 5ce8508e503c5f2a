"""The long-range copy probe (:mod:`analyses.copy_probe`) and its runner
(:mod:`harness.pipeline.runners.copy_probe`): the two sequences of an example differ only where the
first copy is, a model that copies from no further than K tokens back gains exactly nothing beyond K,
and the runner probes the models another experiment scores without training anything new."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from analyses.copy_probe import (
    CopyProbeConfig,
    CopyProbeError,
    copy_gains,
    decode_gains,
    encode_gains,
    probe_batches,
)
from harness.pipeline import stages
from harness.pipeline.runners import get_runner, load_experiment, runner_params
from harness.pipeline.runners.copy_probe import gain_table, scored_models
from harness.pipeline.spec import SpecError, load_profile, read_experiment

PROBE = "copy_probe_hybrid_window_controls"


def documents(n_docs: int = 6, length: int = 300, vocab: int = 200, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (length,), generator=g).tolist() for _ in range(n_docs)]


class LookbackCopier(torch.nn.Module):
    """A model that copies: at each position, if the current token occurred within the last ``reach``
    tokens, it predicts the token that followed that occurrence (else every token alike)."""

    def __init__(self, reach: int, vocab: int = 200) -> None:
        super().__init__()
        self.reach, self.vocab = reach, vocab
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        b, n = input_ids.shape
        logits = torch.zeros(b, n, self.vocab)
        for i in range(b):
            x = input_ids[i].tolist()
            for t in range(n):
                for s in range(t - 1, max(-1, t - self.reach), -1):
                    if x[s] == x[t]:
                        logits[i, t, x[s + 1]] = 20.0
                        break
        return SimpleNamespace(logits=logits)


def test_copy_and_control_differ_only_where_the_first_copy_is():
    config = CopyProbeConfig(distances=(8, 20, 40), span=6, examples=5, seed=3)
    batches = probe_batches(documents(), config)
    assert [b.distance for b in batches] == [8, 20, 40]
    for b in batches:
        assert b.copy.shape == b.control.shape == (5, b.distance + 6)
        assert torch.equal(b.copy[:, 6:], b.control[:, 6:])  # the same text after the first span
        assert not torch.equal(b.copy[:, :6], b.control[:, :6])
        assert torch.equal(b.copy[:, -6:], b.copy[:, :6])  # the second copy repeats the first
        assert torch.equal(b.control[:, -6:], b.copy[:, :6])  # ...and the control's last span is the same
    # one stretch per example, shared by every distance: the shorter sequences are its prefixes
    assert torch.equal(batches[0].copy[:, :8], batches[2].copy[:, :8])
    again = probe_batches(documents(), config)
    assert all(torch.equal(a.copy, b.copy) and torch.equal(a.control, b.control) for a, b in zip(batches, again))


def test_a_copier_gains_within_its_reach_and_exactly_nothing_beyond():
    config = CopyProbeConfig(distances=(8, 30), span=6, examples=12, seed=1)
    batches = probe_batches(documents(), config)
    near, far = copy_gains(LookbackCopier(reach=16), batches, config.span)
    assert near["distance"] == 8 and near["gain"] > 5.0  # it copies most of the span
    assert near["bits_copy"] < near["bits_control"]
    assert len(decode_gains(encode_gains(near["items"]))) == near["n"] == 12
    # beyond its reach the copy and the control look the same to it: no gain at all, not just a small one
    assert far["distance"] == 30 and far["gain"] == 0.0 and far["gain_se"] == 0.0
    assert copy_gains(LookbackCopier(reach=64), batches, config.span)[1]["gain"] > 5.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"distances": (4, 16), "span": 8}, "shorter than the span"),
        ({"distances": (), "span": 8}, "distances is empty"),
        ({"distances": (16,), "span": 1}, "at least 2 tokens"),
        ({"distances": (16,), "span": 8, "examples": 1}, "at least 2 examples"),
    ],
)
def test_a_setting_that_cannot_be_built_is_refused(kwargs, message):
    with pytest.raises(CopyProbeError, match=message):
        CopyProbeConfig(**kwargs)


def test_text_too_short_for_the_distances_is_refused():
    with pytest.raises(CopyProbeError, match="lower the distances"):
        probe_batches([[1, 2, 3]] * 3, CopyProbeConfig(distances=(8,), span=4, examples=2))


def test_the_recorder_sees_every_scored_model_and_puts_the_function_back():
    original = stages.evaluate_model
    calls = []

    def scores(ctx, run, name, method, tasks=None):
        calls.append(name)
        return [{"task": "heldout_ppl", "metric": "bits_per_byte", "value": 1.5 + len(calls)}]

    stages.evaluate_model = scores
    stub = stages.evaluate_model
    try:
        with scored_models() as seen:
            assert stages.evaluate_model(None, "teachers/x", "teacher", "softmax")[0]["value"] == 2.5
            stages.evaluate_model(None, "runs/y", "dijiang-window64", "dijiang")
        assert stages.evaluate_model is stub  # restored
        assert [(m.label, m.method, m.path, m.seed, m.bpb) for m in seen] == [
            ("teacher", "softmax", "teachers/x", None, 2.5),
            ("dijiang-window64", "dijiang", "runs/y", None, 3.5),
        ]
        assert calls == ["teacher", "dijiang-window64"]  # the scores themselves still computed
    finally:
        stages.evaluate_model = original


def test_the_table_averages_seeds_and_keeps_their_spread():
    results = pd.DataFrame(
        [
            {
                "label": "a",
                "method": "m",
                "seed": s,
                "distance": d,
                "gain": g,
                "bits_copy": 1.0,
                "bits_control": 1.0 + g,
            }
            for s, gains in enumerate([[0.5, 0.0], [0.7, 0.2]])
            for d, g in zip([16, 96], gains)
        ]
    )
    table = gain_table(results)
    assert table["gain"].round(6).tolist() == [0.6, 0.1]
    assert table["seeds"].tolist() == [2, 2]
    assert table["gain_sd"].round(4).tolist() == [0.1414, 0.1414]
    one_seed = gain_table(results[results["seed"] == 0])
    assert "gain_sd" not in one_seed and one_seed["gain"].tolist() == [0.5, 0.0]


def test_the_probe_stays_within_the_trained_length():
    exp = read_experiment(PROBE, "smoke")
    exp = exp.__class__(**{**exp.__dict__, "params": {**exp.params, "distances": [8, 60]}})
    with pytest.raises(SpecError, match="longer than the 64 tokens the models are trained on; lower the distances"):
        get_runner(exp).validate(exp, runner_params(exp))
    bad = exp.__class__(**{**exp.__dict__, "params": {**exp.params, "distances": [4], "span": 8}})
    with pytest.raises(SpecError, match="shorter than the span"):
        get_runner(bad).validate(bad, runner_params(bad))


def test_it_plans_runs_of_the_experiment_it_probes_only():
    profile = load_profile("grid-64m")
    probe = load_experiment(PROBE, profile)
    inner = load_experiment("hybrid_window_controls", profile)
    ours = [r.label for r in get_runner(probe).plan(probe, runner_params(probe))]
    theirs = [r.label for r in get_runner(inner).plan(inner, runner_params(inner))]
    assert ours and set(ours) < set(theirs)


def probe_results(folder, gains: dict[str, list[list[float]]], items_per_seed: int = 4):
    """A probe's ``results.csv`` and ``configs.csv``: per label, per seed, its gain at d = 16 and d = 96
    (the 64-token window's inside and beyond); each example's gain equal to the seed's, plus a spread."""
    folder.mkdir(parents=True, exist_ok=True)
    spread = [(-1) ** i * 0.01 * (i + 1) for i in range(items_per_seed)]
    spread = [s - sum(spread) / len(spread) for s in spread]
    rows = []
    for label, per_seed in gains.items():
        method = "softmax" if label == "no-op" else ("sliding-window" if label.startswith("sliding") else "dijiang")
        for seed, (inside, beyond) in enumerate(per_seed):
            for d, g in ((16, inside), (96, beyond)):
                scale = 1.2 if method == "dijiang" else 1.0  # not the same spread: the pairs differ
                items = encode_gains([g + scale * s for s in spread])
                bpb = {"dijiang": 1.358, "sliding-window": 1.308}.get(method, 1.289) + 0.001 * (seed - 1)
                rows.append(
                    dict(label=label, method=method, seed=seed, bpb=bpb, distance=d, gain=g, gain_se=0.005, items=items)
                )
    pd.DataFrame(rows).to_csv(folder / "results.csv", index=False)
    configs = [
        dict(label="dijiang-window64", method="dijiang", criterion="window", window=64),
        dict(label="sliding-window64", method="sliding-window", criterion="window-only", window=64),
        dict(label="no-op", method="softmax", criterion="no-op", window=None),
    ]
    pd.DataFrame([c for c in configs if c["label"] in gains]).to_csv(folder / "configs.csv", index=False)
    return folder


def test_the_report_weighs_each_window_hybrid_against_the_window_alone(tmp_path):
    from harness.report.copy_probe import copy_probe_section

    out = probe_results(
        tmp_path / "probe",
        {
            "dijiang-window64": [[0.80, 0.30], [0.82, 0.32], [0.81, 0.31]],  # recalls beyond its window
            "sliding-window64": [[0.81, 0.00], [0.80, 0.01], [0.82, 0.00]],  # the same inside, nothing beyond
            "no-op": [[0.90, 0.85], [0.91, 0.86], [0.92, 0.84]],
        },
    )
    lines = "\n".join(copy_probe_section(out)).splitlines()
    (row,) = [line for line in lines if line.startswith("| dijiang-window64")]
    assert "+0.810 ± 0.006" in row and "+0.310 ± 0.006" in row and " 1.358 |" in row
    (verdict,) = [line for line in lines if line.startswith("- **dijiang-window64**")]
    assert "inside the window (d = 16) +0.000 bits per token (p = 1, not significant; Welch over seeds)" in verdict
    assert "beyond the window (d = 96) +0.307 bits per token (p < 0.001, significant; Welch over seeds)" in verdict
    (reference,) = [line for line in lines if line.startswith("- Full softmax attention")]
    assert "no-op +0.850" in reference


def test_with_one_seed_the_examples_are_paired(tmp_path):
    from harness.report.copy_probe import copy_probe_section

    out = probe_results(tmp_path / "probe", {"dijiang-window64": [[0.80, 0.05]], "sliding-window64": [[0.80, 0.00]]})
    (verdict,) = [
        line for line in "\n".join(copy_probe_section(out)).splitlines() if line.startswith("- **dijiang-window64**")
    ]
    # every example about 0.05 higher: a paired test over the 4 examples finds it (Welch would need seeds)
    assert "beyond the window (d = 96) +0.050 bits per token (p < 0.001" in verdict
    assert "significant; paired over 4 examples, one seed)" in verdict
    assert "inside the window (d = 16) +0.000 bits per token (p = 1, not significant; paired" in verdict


def test_of_params_narrow_the_probed_experiment_and_are_checked():
    profile = load_profile("grid-64m")
    probe = load_experiment(PROBE, profile)
    planned = [r.label for r in get_runner(probe).plan(probe, runner_params(probe))]
    assert planned and not any("transfer-recipe" in label for label in planned)  # recipes: [paper]
    assert any("sliding-window64" in label for label in planned) and any(
        "dijiang-window64" in label for label in planned
    )
    assert not any("no-op" in label or "-k0" in label for label in planned)  # noop: false, ks: []
    exp = read_experiment(PROBE, profile)
    bad = exp.__class__(**{**exp.__dict__, "params": {**exp.params, "of_params": {"recipe": ["paper"]}}})
    with pytest.raises(SpecError, match=r"of_params \['recipe'\] are not parameters of 'hybrid_window_controls'"):
        get_runner(bad).validate(bad, runner_params(bad))


def test_an_experiment_that_scores_no_model_is_named(tmp_path, monkeypatch):
    from harness.pipeline.runners.base import Output

    profile = load_profile("smoke")
    probe = load_experiment(PROBE, profile)
    inner_runner = get_runner(load_experiment("hybrid_window_controls", profile))
    monkeypatch.setattr(type(inner_runner), "run", lambda self, exp, p, ctx: Output())  # trains and scores nothing
    ctx = stages.Context(profile=profile, results_dir=tmp_path)
    with pytest.raises(SpecError, match="'hybrid_window_controls' scores no model"):
        get_runner(probe).run(probe, runner_params(probe), ctx)
