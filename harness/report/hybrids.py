"""The hybrids' section of the report: which configurations are on the quality-speed front, what each
softmax layer kept buys, the layer criterion against its control and, with seeds, every hybrid against
the plain conversion and the no-op control, every window hybrid against its window-only control and
every configuration under another recipe against the paper's (Welch over seeds); and the whole split
against the sample."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from harness.report.controls import mean_se, welch_difference
from harness.report.markdown import md_table, read_table

#: the no-op control's label (the teacher fine-tuned on the same tokens)
NOOP = "no-op"
#: the criterion of a window's control (softmax over the window alone, :mod:`harness.pipeline.runners.hybrid`)
WINDOW_ONLY = "window-only"
#: the recipe of a table without a recipe column (one recipe, the paper's)
PAPER = "paper"


def recipes(table: pd.DataFrame) -> pd.Series:
    """Each configuration's conversion recipe (``paper`` where the table has none)."""
    if "recipe" not in table.columns:
        return pd.Series(PAPER, index=table.index)
    return table["recipe"].fillna(PAPER).astype(str)


def is_hybrid_table(out: Path) -> bool:
    """Whether ``out`` holds a hybrid experiment's table (its configurations on a Pareto front), e.g. a
    whole-split experiment of one, single-seed or not."""
    table = read_table(out / "table.csv")
    return table is not None and "on_front" in table.columns


def per_seed_bpb(per_seed: pd.DataFrame | None) -> dict[str, pd.Series]:
    """Each configuration's held-out bits per byte per seed (``per_seed.csv``), for the labels with more
    than one seed (a test needs two); empty without the table."""
    if per_seed is None or "seed" not in per_seed.columns:
        return {}
    rows = per_seed[per_seed["seed"].notna()]
    return {str(k): g["bpb"].reset_index(drop=True) for k, g in rows.groupby("label", sort=False) if len(g) > 1}


def control_lines(table: pd.DataFrame, seeds: dict[str, pd.Series]) -> list[str]:
    """Each configuration against the plain conversion of its method (k = 0, no window) and against the
    no-op control, where both have seeds: the difference in bits per byte and Welch's test."""
    table = table.assign(recipe=recipes(table))
    plain: dict[tuple[str, str], str] = {}  # per method and recipe, the first label of its plain conversion
    for r in table.itertuples():
        if r.criterion not in ("teacher", NOOP, "window", WINDOW_ONLY) and r.k == 0 and r.label in seeds:
            plain.setdefault((r.method, r.recipe), r.label)

    def against(label: str, other: str) -> str:
        return f"{welch_difference(seeds[label].to_numpy(), seeds[other].to_numpy())} against {other}"

    lines = []
    for r in table.itertuples():
        if r.label not in seeds or r.criterion in ("teacher", NOOP):
            continue
        hybrid = r.k != 0 or not pd.isna(r.window)  # k = 0 and no window: the plain conversion itself
        base = plain.get((r.method, r.recipe))
        if not hybrid and r.label != base:  # the plain conversion under another criterion's label: said once
            continue
        parts = [against(r.label, base) + " (the plain conversion)"] if hybrid and base is not None else []
        if NOOP in seeds:
            parts.append(against(r.label, NOOP) + " (the no-op control)")
        if parts:
            lines.append(f"- {r.label}: " + "; ".join(parts) + ".")
    return lines


def difference(row: Any, other: Any, seeds: dict[str, pd.Series]) -> str:
    """``row``'s bits per byte minus ``other``'s (table rows): Welch's test over their seeds where both
    have them, else the difference of the two runs, untested."""
    if row.label in seeds and other.label in seeds:
        return f"{welch_difference(seeds[row.label].to_numpy(), seeds[other.label].to_numpy())} (Welch over seeds)"
    return f"{row.bpb - other.bpb:+.3f} bpb (one seed each: no significance test)"


def window_only_lines(table: pd.DataFrame, seeds: dict[str, pd.Series]) -> list[str]:
    """Each window hybrid (window + linear) against its window-only control (the teacher's softmax over
    the same window and nothing beyond): what the linear part adds, Welch over seeds (or the difference
    alone, one seed each)."""
    only = {r.window: r for r in table[table["criterion"] == WINDOW_ONLY].itertuples()}
    lines = []
    for r in table[table["criterion"] == "window"].itertuples():
        control = only.get(r.window)
        if control is None:
            continue
        what = difference(r, control, seeds)
        lines.append(f"- {r.label} against {control.label} (the window alone, nothing beyond it): {what}.")
    return lines


def recipe_lines(table: pd.DataFrame, seeds: dict[str, pd.Series]) -> list[str]:
    """Each configuration trained with another recipe against the same configuration with the paper's
    fine-tune (the row whose label it extends), Welch over seeds."""
    table = table.assign(recipe=recipes(table))
    by_label = {r.label: r for r in table.itertuples()}
    lines = []
    for r in table[table["recipe"] != PAPER].itertuples():
        suffix = f"-{r.recipe}-recipe"
        paper = by_label.get(r.label[: -len(suffix)]) if r.label.endswith(suffix) else None
        if paper is None:
            continue
        what = difference(r, paper, seeds)
        lines.append(f"- {r.label} against {paper.label} (the {r.recipe} recipe against the paper's): {what}.")
    return lines


def whole_split_hybrid_lines(
    out: Path, base: Path, names: tuple[str, str] = ("on the sample", "on the whole split")
) -> list[str]:
    """Each configuration's bits per byte on the profile's sample (``base``, the hybrid experiment) and
    on the whole split (``out``), and its gap to the teacher and to the no-op control on each (also as a
    fraction of theirs): a gap read off the sample means something about the held-out text only if the
    whole split shows it too. ``names`` say what ``base`` and ``out`` scored (e.g. the same split at two
    context lengths)."""
    whole, sample = read_table(out / "table.csv"), read_table(base / "table.csv")
    if whole is None or sample is None:
        return [f"- (nothing to set beside it: `{base.name}` has no results here; run it too)"]
    both = sample.set_index("label")["bpb"].to_frame("sample").join(whole.set_index("label")["bpb"].rename("whole"))
    if "teacher" not in both.index:
        return []
    lines = []
    for label, r in both.drop(index="teacher").iterrows():
        gaps = [_gap(r, both.loc["teacher"], "the teacher")]
        if NOOP in both.index and label != NOOP:
            gaps.append(_gap(r, both.loc[NOOP], "the no-op control"))
        lines.append(f"- {label}: {r['sample']:.3f} {names[0]}, {r['whole']:.3f} {names[1]}; " + "; ".join(gaps) + ".")
    return lines


def _gap(r: Any, other: Any, name: str) -> str:
    """``against NAME +a and +b (+x% and +y%)``: the gap on the sample and on the whole split, and each as a
    fraction of ``other``'s bits per byte there."""
    ds, dw = r["sample"] - other["sample"], r["whole"] - other["whole"]
    return f"against {name} {ds:+.3f} and {dw:+.3f} ({ds / other['sample']:+.1%} and {dw / other['whole']:+.1%})"


def hybrid_section(out: Path) -> list[str]:
    """The hybrid configurations and which of them are on the quality-speed Pareto front; with
    several seeds (``per_seed.csv``), each configuration against the plain conversion and the no-op
    control, with Welch's test over seeds."""
    table = read_table(out / "table.csv")
    if table is None:
        return ["(not run)"]
    per_seed = read_table(out / "per_seed.csv")
    seeds = per_seed_bpb(per_seed)
    lines = [md_table(table), ""]
    teacher = table[table["label"] == "teacher"]
    front = table[table["on_front"]]
    lines.append(f"- On the Pareto front: {', '.join(front['label'])}.")
    speed = [c for c in table.columns if c.startswith("decode_tokens_per_s_")]
    if len(teacher) and speed:
        t = teacher.iloc[0]
        for r in table[table["label"] != "teacher"].itertuples():
            d = r._asdict()
            gap = f"{r.bpb - t.bpb:+.3f}" if r.label not in seeds else mean_se(seeds[r.label] - t.bpb, 3, signed=True)
            lines.append(
                f"- {r.label}: {gap} bpb against the teacher; decode "
                + ", ".join(f"{d[c] / t[c]:.2f}x at {c.rsplit('_', 1)[1]}" for c in speed)
                + " the teacher's speed."
            )
    lines += criterion_lines(table, seeds) + control_lines(table, seeds)
    lines += window_only_lines(table, seeds) + recipe_lines(table, seeds) + per_layer_lines(table, speed)
    return lines + [""]


def _layer_list(value: Any) -> str:
    """Layer indices as written in a table cell ("1", "0,2"; a float a CSV made of one index)."""
    if isinstance(value, float):
        return "none" if math.isnan(value) else str(int(value)) if value.is_integer() else str(value)
    return str(value) if str(value) else "none"


def criterion_lines(table: pd.DataFrame, seeds: dict[str, pd.Series] | None = None) -> list[str]:
    """The layer-choice criterion against its control (evenly spaced), at each method and k: with
    ``seeds`` (each configuration's bits per byte per seed), Welch's test over them."""
    seeds = seeds or {}
    lines = []
    layers = table[table["criterion"].isin(["transfer", "entropy", "even"])]
    for (method, k), g in layers.groupby(["method", "k"], sort=False):
        even = g[g["criterion"] == "even"]
        if not len(even):
            continue
        e = even.iloc[0]
        for r in g[g["criterion"] != "even"].itertuples():
            mine, control = _layer_list(r.softmax_layers), _layer_list(e.softmax_layers)
            lines.append(
                f"- {method}, k = {int(k)}: {r.criterion} keeps layer(s) {mine}, evenly spaced {control}: "
                + (
                    "the same layers, so no gain to measure."
                    if mine == control
                    else f"{welch_difference(seeds[r.label].to_numpy(), seeds[e.label].to_numpy())} against evenly "
                    "spaced (Welch over seeds)."
                    if r.label in seeds and e.label in seeds
                    else f"{r.bpb - e.bpb:+.3f} bpb against evenly spaced (one seed each: no significance test)."
                )
            )
    return lines


def per_layer_lines(table: pd.DataFrame, speed: list[str]) -> list[str]:
    """What each softmax layer kept buys: bits per byte gained and decode speed and state paid, from one k
    to the next (per method, criterion and recipe), at the longest context measured."""
    if not speed or "k" not in table.columns:
        return []
    longest = max(speed, key=lambda c: int(c.rsplit("_", 1)[1]))
    length = longest.rsplit("_", 1)[1]
    state = f"state_{length}"
    lines = []
    table = table.assign(recipe=recipes(table))
    kept = table[table["criterion"].isin(["transfer", "entropy", "even"]) & table["k"].notna()]
    for (method, criterion, _), g in kept.groupby(["method", "criterion", "recipe"], sort=False):
        g = g.sort_values("k")
        for a, b in zip(g.itertuples(), list(g.itertuples())[1:]):
            d = b._asdict()
            e = a._asdict()
            lines.append(
                f"- {method} ({criterion}), k {int(a.k)} -> {int(b.k)}: {b.bpb - a.bpb:+.3f} bpb for "
                f"{d[longest] / e[longest]:.2f}x the decode speed and {d[state] / e[state]:.2f}x the state at "
                f"{length} tokens."
            )
    return lines
