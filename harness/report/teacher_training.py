"""The report's section on the teacher's training as a control: does a conversion's gap depend on how
far its teacher trained?

The paper converts Pythia's finished checkpoints (Sec. 4, Table 1); the grid's teacher is shipped
below convergence (16M tokens). ``recipes_controls_trained_teacher*`` (profile ``grid-64m``) convert
the same shape trained on 64M tokens at 1/64, 1/16 and 1/4 of them: 1M, 4M and 16.8M tokens per run,
the tokens of the grid's 1/16 (``recipes_controls``), 1/4 (``recipes_controls_extended*``) and 1/1
budgets. :func:`trained_teacher_lines` sets the two side by side at each budget both ran, cell
by cell (method, recipe, seed): converted bits per byte, the gap to each one's own teacher, and
recovery ``(scratch - converted) / (scratch - teacher)``, each difference with Welch's t-test over
seeds. First it checks that both converted on the same data: the from-scratch controls (which train
no teacher, so are the same runs) must agree, or nothing is compared.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd

from harness.report.controls import (
    POOL_TOLERANCE,
    THREAD_TOLERANCE,
    mean_se,
    one_run_per_cell,
    welch_difference,
    welch_p,
)
from harness.report.markdown import md_table, read_table
from harness.report.stats import ALPHA, format_p

#: a cell is matched on these columns across the two teachers (the budget fractions differ: 1/4 of
#: 16M tokens and 1/16 of 64M are the same tokens)
CELL = ["method", "recipe", "seed", "tokens"]


def _pooled(outs: list[Path]) -> pd.DataFrame | None:
    """The per-seed results of several experiments of one teacher, one row per cell, each cell's seeds
    from one experiment (:func:`one_run_per_cell`)."""
    frames = [f for out in outs if (f := read_table(out / "results.csv")) is not None]
    if not frames:
        return None
    return one_run_per_cell(frames, tuple(c for c in CELL if c != "seed"))


def _relative_gap(frame: pd.DataFrame) -> pd.Series:
    """Each converted model's bits per byte over its own teacher's, minus 1."""
    return frame["converted_bpb"] / frame["teacher_bpb"] - 1


def trained_teacher_lines(out: Path, base_outs: list[Path]) -> list[str]:
    """This experiment's conversions (a more trained teacher) beside ``base_outs``' at the same tokens
    (the grid's teacher), budget by budget: the shared-controls check, the two teachers, a table per
    cell and, per method and recipe, whether the better teacher gives a better converted model and a
    smaller gap."""
    mine, base = read_table(out / "results.csv"), _pooled(base_outs)
    if mine is None or base is None:
        return []
    lines: list[str] = []
    for tokens, at in mine.groupby("tokens", sort=True):
        lines += _budget_lines(at, base[base["tokens"] == tokens])
    return lines


def _fraction(f: float) -> str:
    """A budget fraction as the report names it: 1/16, 1/4, 1."""
    q = Fraction(f).limit_denominator(4096)
    return str(q.numerator) if q.denominator == 1 else f"{q.numerator}/{q.denominator}"


def _budget_lines(mine: pd.DataFrame, base: pd.DataFrame) -> list[str]:
    """:func:`trained_teacher_lines` at one budget (``mine`` and ``base``: the cells of that many tokens)."""
    tokens = int(mine["tokens"].iloc[0])
    shared = mine.drop_duplicates(["method", "seed"]).merge(
        base.drop_duplicates(["method", "seed"]), on=["method", "seed"], suffixes=("", "_base")
    )
    if shared.empty:
        return [
            f"- No conversion of the grid's teacher (`results/grid`) ran at these tokens ({tokens:,d}): nothing to "
            "compare the teachers on.",
            "",
        ]
    rated = "scratch_lr" in shared.columns and "scratch_lr_base" in shared.columns
    same_rate = shared[shared["scratch_lr"] == shared["scratch_lr_base"]] if rated else shared
    spread = (
        float((same_rate["scratch_bpb"] - same_rate["scratch_bpb_base"]).abs().max()) if len(same_rate) else math.nan
    )
    if not spread <= THREAD_TOLERANCE:
        return [
            f"- The from-scratch controls of the two teachers' conversions at {tokens:,d} tokens "
            + (
                f"differ by up to {spread:.3f} bits per byte"
                if len(same_rate)
                else "never ran at the same learning rate"
            )
            + ": they cannot show that both trained on the same data, so the teachers are not compared.",
            "",
        ]
    t_base, t_mine = float(base["teacher_bpb"].iloc[0]), float(mine["teacher_bpb"].iloc[0])
    exact = (
        ""
        if spread <= POOL_TOLERANCE
        else f" (within the {THREAD_TOLERANCE:g} by which a torch thread count alone moves a run)"
    )
    lines = [
        f"**Against the grid's teacher at the same {tokens:,d} tokens** (the grid's "
        f"{_fraction(base['fraction'].iloc[0])}; here {_fraction(mine['fraction'].iloc[0])}). The "
        f"{len(same_rate)} from-scratch controls both ran (method, seed) at the same rate agree to {spread:.1e} bits "
        f"per byte{exact}, so both teachers were converted on the same data. Held-out bits per byte: the grid's "
        f"teacher {t_base:.3f}, this teacher {t_mine:.3f} ({t_mine / t_base - 1:+.1%}). Means ± standard error over "
        "seeds; each difference is this teacher's minus the grid's, with Welch's t-test over seeds.",
        "",
    ]
    for r in shared[~shared.index.isin(same_rate.index)].drop_duplicates("method").itertuples():
        lines += [
            f"- {r.method}'s from-scratch control chose another rate here ({r.scratch_lr:g}) than in the grid "
            f"({r.scratch_lr_base:g}; each sweep's choice), so its recovery columns rest on different controls.",
            "",
        ]
    rows, verdicts = [], []
    for (method, recipe), g in mine.groupby(["method", "recipe"], sort=False):
        b = base[(base["method"] == method) & (base["recipe"] == recipe)]
        if b.empty:
            continue
        conv = welch_difference(g["converted_bpb"].to_numpy(), b["converted_bpb"].to_numpy())
        rows.append(
            {
                "method": method,
                "recipe": recipe,
                "converted (grid)": mean_se(b["converted_bpb"], 3),
                "converted (this)": mean_se(g["converted_bpb"], 3),
                "difference": conv,
                "gap to teacher (grid)": _percent(_relative_gap(b)),
                "gap to teacher (this)": _percent(_relative_gap(g)),
                "recovery (grid)": mean_se(b["recovery"]),
                "recovery (this)": mean_se(g["recovery"]),
            }
        )
        verdicts.append(_verdict(method, recipe, g, b))
    if not rows:
        return lines
    return lines + [md_table(pd.DataFrame(rows)), "", *verdicts, ""]


def _percent(gaps: pd.Series) -> str:
    v = gaps.dropna().to_numpy()
    se = f" ± {100 * v.std(ddof=1) / np.sqrt(len(v)):.1f}" if len(v) > 1 else ""
    return f"{100 * v.mean():+.1f}{se} %"


def _verdict(method: str, recipe: str, mine: pd.DataFrame, base: pd.DataFrame) -> str:
    """One line: does the more trained teacher give a better converted model, and a smaller gap to its
    teacher (both by Welch's t-test over seeds, at the report's alpha)?"""

    def judged(a: np.ndarray, b: np.ndarray, lower: str, higher: str) -> str:
        p = welch_p(a, b)
        if p is None:
            return f"{lower if a.mean() < b.mean() else higher} (one seed: untested)"
        if p > ALPHA:
            return f"not significantly different ({format_p(p)})"
        return f"{lower if a.mean() < b.mean() else higher} ({format_p(p)})"

    conv = judged(mine["converted_bpb"].to_numpy(), base["converted_bpb"].to_numpy(), "better", "worse")
    gap = judged(_relative_gap(mine).to_numpy(), _relative_gap(base).to_numpy(), "smaller", "larger")
    return (
        f"- **{method} / {recipe}**: from the more trained teacher, the converted model is {conv}, and its gap "
        f"to its own teacher is {gap}."
    )
