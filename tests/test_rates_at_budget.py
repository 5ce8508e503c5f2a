"""Rates swept at the budget itself beside rates swept at a smaller budget
(:func:`harness.report.controls.rates_at_budget_lines`), on synthetic results whose answers are known: a
from-scratch control whose rate moves and improves must show as a from-scratch difference, and the
recovery and the verdict against scratch are given under both rate choices."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.report.controls import rates_at_budget_lines
from tests.controls_results import write_results


def experiment(folder: Path, fraction: float, rates: dict[str, float], converted: list[float], scratch: list[float]):
    """An experiment folder: its sweep's chosen rates (``lr_sweep.csv``, one point per cell, at
    ``fraction``) and RetNet's per-seed results at 1/4 (``results.csv``)."""
    folder.mkdir()
    sweep = [
        dict(method="retnet", recipe=r, fraction=fraction, lr=lr, val_bpb=3.0, chosen=True) for r, lr in rates.items()
    ]
    pd.DataFrame(sweep).to_csv(folder / "lr_sweep.csv", index=False)
    return write_results(folder, {"retnet": (converted, scratch)})


def test_a_control_tuned_at_the_budget_shows_what_the_small_budgets_rate_cost(tmp_path):
    base = experiment(tmp_path / "base", 0.00390625, {"paper": 3e-3, "scratch": 2e-3}, [1.05, 1.06], [1.25, 1.26])
    out = experiment(tmp_path / "out", 0.25, {"paper": 3e-3, "scratch": 4e-3}, [1.05, 1.06], [1.04, 1.05])
    lines = rates_at_budget_lines(out, base)
    text = "\n".join(lines)
    assert "retnet/scratch 0.002 at 0.00390625 → 0.004 at 0.25" in text
    assert "retnet/paper 0.003 at 0.00390625 → 0.003 at 0.25" in text
    (cell,) = [line for line in lines if line.startswith("- **retnet / paper at 0.25**")]
    assert "converted 1.055 → 1.055 (+0.000 bpb" in cell
    assert "from scratch 1.255 → 1.045 (-0.210 bpb (p = 0.0011, significant))" in cell
    assert "does not beat scratch" in cell and "converted minus scratch: +0.010 bpb" in cell
    # recovery 0.56 under the small budget's rates, below zero under the budget's own
    assert "recovery 0.56 ± 0.01 → -0.07 ± 0.00" in cell


def test_nothing_in_common_is_said_plainly(tmp_path):
    base = experiment(tmp_path / "base", 0.00390625, {"transfer": 3e-3}, [1.05, 1.06], [1.25, 1.26])
    out = experiment(tmp_path / "out", 0.25, {"paper": 3e-3}, [1.05, 1.06], [1.04, 1.05])
    assert rates_at_budget_lines(out, base) == ["- No cell in common with `base`: nothing to compare.", ""]
    assert rates_at_budget_lines(out, tmp_path / "missing") == []
