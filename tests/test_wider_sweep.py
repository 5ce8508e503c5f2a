"""The wider learning-rate sweep beside the sweep it widens (:func:`harness.report.controls.wider_sweep_lines`),
on synthetic results whose answers are known: the shared sweep points must reproduce, a cell
whose rate moves is named with its validation gain, and the conclusions (DiJiang's rank, the best
recipe, conversions beating scratch) are compared under both rate choices."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.report.controls import wider_sweep_lines

SCRATCH = {"dijiang": 3.3, "retnet": 3.2}


def experiment(
    folder: Path,
    sweep: dict[tuple[str, str], dict[float, float]],
    converted: dict[tuple[str, str], list[float]],
    noop: tuple[float, ...] = (1.16, 1.17),
) -> Path:
    """An experiment folder: ``lr_sweep.csv`` (the lowest validation bpb chosen per cell) and the
    per-seed ``results.csv`` at 1/64."""
    folder.mkdir()
    points = [
        dict(method=m, recipe=r, fraction=0.015625, lr=lr, val_bpb=v, chosen=v == min(rates.values()))
        for (m, r), rates in sweep.items()
        for lr, v in rates.items()
    ]
    pd.DataFrame(points).to_csv(folder / "lr_sweep.csv", index=False)
    rows = [
        dict(
            method=m,
            recipe=r,
            fraction=0.015625,
            seed=s,
            converted_bpb=v,
            scratch_bpb=SCRATCH[m],
            teacher_bpb=1.2,
            recovery=(SCRATCH[m] - v) / (SCRATCH[m] - 1.2),
            noop_bpb=noop[s],
        )
        for (m, r), vals in converted.items()
        for s, v in enumerate(vals)
    ]
    pd.DataFrame(rows).to_csv(folder / "results.csv", index=False)
    return folder


BASE_SWEEP = {
    ("dijiang", "paper"): {3e-3: 3.45, 6e-3: 3.40},
    ("retnet", "paper"): {3e-3: 3.26, 6e-3: 3.30},
    ("dijiang", "transfer"): {3e-3: 3.38, 6e-3: 3.33},
}
BASE = {("dijiang", "paper"): [2.70, 2.72], ("retnet", "paper"): [2.50, 2.52], ("dijiang", "transfer"): [2.64, 2.66]}


def test_a_wider_sweep_names_the_cells_whose_rate_moved_and_what_changed(tmp_path):
    base = experiment(tmp_path / "recipes_controls", BASE_SWEEP, BASE)
    wider_sweep = {k: {**v} for k, v in BASE_SWEEP.items()}
    wider_sweep[("dijiang", "paper")][1.2e-2] = 3.30  # beyond the old edge, and better
    wider_sweep[("retnet", "paper")][1.2e-2] = 3.50
    wider_sweep[("dijiang", "transfer")][1.2e-2] = 3.35
    converted = {**BASE, ("dijiang", "paper"): [2.40, 2.42]}  # dijiang/paper now beats retnet and transfer
    wider = experiment(tmp_path / "wider", wider_sweep, converted, noop=(1.15, 1.16))
    text = "\n".join(wider_sweep_lines(wider, base))
    assert "The 6 sweep points both tried reproduce" in text and "agree to 0.0e+00" in text
    assert "1 of 3 cells chose another rate" in text and "dijiang/paper 0.006 → 0.012 (3.400 → 3.300, -0.100)" in text
    assert "| dijiang  | paper    |" in text and "-0.300 bpb" in text  # wider minus base, with its Welch test
    assert "Rank of dijiang**: changed in 0.015625 paper: 2 of 2 → 1 of 2." in text
    assert "Best recipe**: changed in dijiang 0.015625: transfer → paper." in text
    assert "the base sweep's rates, 3 of 3 conversions beat scratch" in text
    assert "**No-op control at 0.015625**: 1.1650 → 1.1550 held-out bits per byte (wider minus base -0.010 bpb" in text


def test_an_unchanged_sweep_says_so_and_other_runs_are_not_compared(tmp_path):
    base = experiment(tmp_path / "recipes_controls", BASE_SWEEP, BASE)
    same = experiment(tmp_path / "same", BASE_SWEEP, BASE)
    text = "\n".join(wider_sweep_lines(same, base))
    assert "0 of 3 cells chose another rate" in text and "unchanged in every group" in text
    shifted = {k: {lr: v + 0.01 for lr, v in rates.items()} for k, rates in BASE_SWEEP.items()}
    other = experiment(tmp_path / "other", shifted, BASE)
    refused = "\n".join(wider_sweep_lines(other, base))
    assert "disagree with `recipes_controls` by up to 0.010" in refused and "Rates" not in refused
    assert wider_sweep_lines(same, tmp_path / "missing") == []
