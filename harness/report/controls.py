"""The report's sections on conversion recipes and their controls (the ``controls`` runner's output):
does conversion beat training from scratch, which recipe recovers the most, where DiJiang ranks (with
Welch's t-test over seeds), how recovery moves with the budget, experiments of one budget pooled,
and whether the learning rates behind it all were swept wide enough.

Recovery is ``(scratch - converted) / (scratch - teacher)`` in held-out bits per byte
(:func:`harness.pipeline.runners.controls.recovery`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from harness.report.figures import plot_recipe_recovery
from harness.report.markdown import md_table, read_table, value_cell
from harness.report.paper_numbers import PAPER_BEST
from harness.report.stats import ALPHA, format_p

#: "near-equal" in the paper's claim, as we test it: converted within this fraction of the teacher's bpb
NEAR_EQUAL = 0.02
#: bits per byte by which experiments' shared controls may differ and still be pooled. The same run
#: repeats exactly on the same code, torch thread count and CPU; on another thread count or CPU it can move
#: by more (RetNet at 1/64: 0.005, one thread against two; RetNet from scratch in tiny: 0.021 on another
#: CPU, results/tiny/repeat), as much as the seed spread of some cells.
POOL_TOLERANCE = 1e-3
#: bits per byte by which the same run (code, data, rate, seed) can move between torch thread counts
#: (RetNet at 1/64: 0.005, one thread against two): the most two experiments' shared controls may differ
#: and still be said to have trained on the same data, where they ran on different thread counts. A run
#: can move further (DiJiang from scratch at 4M tokens: 0.016, results/grid-64m's three-seed first run;
#: 0.024 from one CPU to another), so a gap beyond it refuses a comparison without showing that the data
#: differed.
THREAD_TOLERANCE = 5e-3


def controls_section(out: Path) -> list[str]:
    """Recipes against their controls, and a verdict written from the numbers: does conversion beat
    training from scratch, which recipe recovers the most, and is "near-equal at 1/16" reproduced."""
    table = read_table(out / "table.csv")
    if table is None:
        return ["(not run)"]
    lines = [md_table(table), ""]
    per_seed = read_table(out / "results.csv")
    ok = table[table["converted_bpb"].notna()]
    for (method, fraction), g in ok.groupby(["method", "fraction"], sort=False):
        # recovery is undefined where scratch on these tokens is as good as the teacher (at 1/1 it is the
        # teacher's own budget): the best recipe is then the one with the lowest bits per byte
        defined = g["recovery"].notna().any()
        best = g.loc[g["recovery"].idxmax()] if defined else g.loc[g["converted_bpb"].idxmin()]
        beats = ", ".join(
            f"{r['recipe']} {'beats' if r['converted_bpb'] < r['scratch_bpb'] else 'does not beat'} scratch "
            f"({r['converted_bpb']:.3f} vs {r['scratch_bpb']:.3f} bpb; "
            + (
                f"recovery {value_cell(r['recovery'], r.get('recovery sd'), 2)}, ± the SD over seeds)"
                if pd.notna(r["recovery"])
                else "recovery undefined)"
            )
            + _against_scratch(per_seed, r)
            for _, r in g.iterrows()
        )
        gap = best.converted_bpb / best.teacher_bpb - 1
        verdict = "reproduced" if gap <= NEAR_EQUAL else "not reproduced"
        lines.append(
            f"- **{method} at {fraction:g} of the teacher's tokens**: {beats}. "
            + (
                f"Most recovered: {best.recipe}. "
                if defined
                else f"Recovery undefined (scratch is no worse than the teacher here); lowest bpb: {best.recipe}. "
            )
            + f"Best converted model {best.converted_bpb:.3f} bpb against the teacher's {best.teacher_bpb:.3f} "
            f'({gap:+.1%}); "near-equal" (within {NEAR_EQUAL:.0%}) is **{verdict}**.'
        )
    skipped = table[table["converted_bpb"].isna()]
    for r in skipped.itertuples():
        lines.append(f"- {r.method} / {r.recipe}: not applicable (no parameters of its own to transfer).")
    results = read_table(out / "results.csv")
    lines += ranking_lines(results) + recipe_lines(results)
    lines += [""] + lr_sweep_lines(out)
    if "seeds" in table.columns and (table["seeds"] < 2).any():
        lines.append("- Rows with one seed carry no uncertainty on the recovery score (± is the spread over seeds).")
    return lines + [""]


def _against_scratch(per_seed: pd.DataFrame | None, cell: pd.Series) -> str:
    """`` (converted minus scratch: <difference with Welch's test over seeds>)`` for one cell of the
    controls table, from the per-seed results; empty where they are missing."""
    if per_seed is None:
        return ""
    keys = (per_seed["method"] == cell["method"]) & (per_seed["recipe"] == cell["recipe"])
    seeds = per_seed[keys & np.isclose(per_seed["fraction"], cell["fraction"])].dropna(subset=["converted_bpb"])
    if seeds.empty:
        return ""
    diff = welch_difference(seeds["converted_bpb"].to_numpy(), seeds["scratch_bpb"].to_numpy())
    return f" (converted minus scratch: {diff})"


def budget_trend_lines(out: Path, bases: list[Path]) -> list[str]:
    """An extension's budgets beside those of the experiments that converted the same teacher at other
    budgets (``bases``: ``recipes_controls`` and the other extensions), one line per method and recipe
    the extension ran: the recovery and converted bits per byte at every budget, the smallest first (±
    the SD over seeds where there are several; the teacher is the same). A budget two of them ran is
    read from the first that has it, the extension itself first."""
    ext = read_table(out / "table.csv")
    others = {b.name: t for b in bases if (t := read_table(b / "table.csv")) is not None}
    if ext is None or not others:
        return []
    both = pd.concat([ext, *others.values()], keys=[out.name, *others], names=["experiment", None])
    both = both.reset_index(level=0).dropna(subset=["converted_bpb"])
    both = both.drop_duplicates(["method", "recipe", "fraction"])
    lines = []
    for method, recipe in ext[["method", "recipe"]].drop_duplicates().itertuples(index=False):
        g = both[(both["method"] == method) & (both["recipe"] == recipe)].sort_values("fraction")
        if g["fraction"].nunique() < 2:
            continue
        points = ", ".join(
            f"{value_cell(r['recovery'], r.get('recovery sd'), 2)} ({r['converted_bpb']:.3f} bpb) at {r['fraction']:g}"
            for _, r in g.iterrows()
        )
        with_ = ", ".join(f"`{n}`" for n in dict.fromkeys(g["experiment"]) if n != out.name)
        lines.append(
            f"- **{method} / {recipe} across budgets** (with {with_}): recovery {points}; "
            f"the teacher is at {g['teacher_bpb'].iloc[0]:.3f} bpb."
        )
    return lines + [""] if lines else []


def png_only(drawn: list[Path]) -> Path:
    """The PNG of a figure the report draws and links, its other formats deleted: a PDF would change on
    every render (matplotlib stamps its creation date), so a re-rendered report would churn in git."""
    for other in (p for p in drawn if p.suffix != ".png"):
        other.unlink()
    (png,) = [p for p in drawn if p.suffix == ".png"]
    return png


#: a cell of a recipes table: one method under one recipe at one budget (its seeds are its rows)
RECIPE_CELL: tuple[str, ...] = ("method", "recipe", "fraction")


def one_run_per_cell(frames: list[pd.DataFrame], cell: tuple[str, ...] = RECIPE_CELL) -> pd.DataFrame:
    """The per-seed results of several experiments of one teacher, each cell (method, recipe, budget)
    taken whole from one experiment: the one that ran the most seeds of it, the first of those on a tie.
    Seeds of one cell from two runs could stand beside controls trained at other rates or on another
    CPU; from one run they share them."""
    tagged = pd.concat([f.assign(_source=i) for i, f in enumerate(frames)], ignore_index=True)
    seeds = tagged.groupby([*cell, "_source"])["seed"].nunique().rename("_seeds").reset_index()
    chosen = seeds.sort_values(["_seeds", "_source"], ascending=[False, True]).drop_duplicates(list(cell))
    return tagged.merge(chosen[[*cell, "_source"]], on=[*cell, "_source"]).drop(columns="_source")


def recovery_curve_lines(outs: list[Path], stem: Path) -> list[str]:
    """The recovery curve over every budget that ``outs`` (experiments converting one teacher) ran,
    pooled: held-out bits per byte against the budget, one panel per recipe, each conversion beside the
    same architecture from scratch and the teacher (:func:`plot_recipe_recovery`), drawn to ``stem``
    (.png), each cell from one experiment (:func:`one_run_per_cell`). Nothing is drawn from fewer than
    two budgets or from experiments whose teachers differ."""
    frames = [f for out in outs if (f := read_table(out / "results.csv")) is not None]
    if not frames:
        return []
    pooled = one_run_per_cell(frames)
    if pooled["fraction"].nunique() < 2:
        return []
    spread = float(pooled["teacher_bpb"].max() - pooled["teacher_bpb"].min())
    if spread > POOL_TOLERANCE:
        return [f"- Their teachers differ by {spread:.3f} bits per byte: no pooled recovery curve.", ""]
    png = png_only(plot_recipe_recovery(pooled, stem))
    budgets = ", ".join(f"{f:g}" for f in sorted(pooled["fraction"].unique()))
    names = ", ".join(f"`{out.name}`" for out in outs)
    return [
        f"**The recovery curve, pooled** ({names}): held-out bits per byte at every budget they ran ({budgets} of "
        "the teacher's tokens), one panel per recipe; dashed: the same architecture from scratch on the same "
        "tokens; gray: the teacher; bars: min-max over seeds.",
        "",
        f"![recovery curve over every budget]({png.parent.name}/{png.name})",
        "",
    ]


#: the controls that experiments converting one teacher at one budget share, and the keys they are shared on
SHARED_CONTROLS: tuple[tuple[list[str], list[str]], ...] = (
    (["fraction", "seed"], ["teacher_bpb", "noop_bpb"]),  # the teacher, and the teacher fine-tuned (no-op)
    (["method", "fraction", "seed"], ["scratch_bpb"]),  # the same architecture trained from scratch
)


def pooled_extension_lines(outs: list[Path], best: str = PAPER_BEST) -> list[str]:
    """Experiments that convert the same teacher at the same budget for different methods or recipes
    (the ``recipes_controls_extended*``), pooled: where ``best`` ranks among all their methods
    (:func:`ranking_lines`) and which recipe recovers the most (:func:`recipe_lines`). First a check
    that they share their data: the controls that several of them ran (the teacher, the no-op control
    per budget and seed, the from-scratch control per method, budget and seed: the same runs) must
    agree in bits per byte; where any does not, nothing is pooled."""
    frames = {out.name: f for out in outs if (f := read_table(out / "results.csv")) is not None}
    if len(frames) < 2:
        return []
    names = ", ".join(f"`{name}`" for name in frames)
    pooled = pd.concat(frames.values(), keys=list(frames), names=["experiment", None]).reset_index(level=0)
    gap, checked = 0.0, 0
    for keys, columns in SHARED_CONTROLS:
        runs = pooled.drop_duplicates(["experiment", *keys])
        by = runs.groupby(keys)
        shared = by["experiment"].nunique() > 1
        if shared.any():
            spread = (by[columns].max() - by[columns].min())[shared]
            gap, checked = max(gap, float(spread.to_numpy().max())), checked + int(shared.sum()) * len(columns)
    if not checked:
        return [f"- {names} share no control: nothing to pool.", ""]
    if gap > POOL_TOLERANCE:
        return [
            f"- {names} disagree on a shared control by {gap:.3f} bits per byte: they did not run on the same "
            "data and rates, so they are not pooled.",
            "",
        ]
    pooled = pooled.drop_duplicates(["method", "recipe", "fraction", "seed"])
    return [
        f"- **Pooled**: {names} share their teacher and data: the {checked} controls that more than one of them "
        f"ran (teacher, no-op and from-scratch bits per byte, per budget and seed) agree to {gap:.1e} bits per byte.",
        *ranking_lines(pooled, best),
        *recipe_lines(pooled),
        "",
    ]


#: a cell that two experiments can both have run: the same conversion of the same teacher, budget and seed
REPEAT_KEYS = ["method", "recipe", "fraction", "seed"]
#: the held-out bits per byte a repeated cell carries, and what each is
REPEAT_COLUMNS = {
    "converted_bpb": "converted",
    "scratch_bpb": "from scratch",
    "noop_bpb": "no-op",
    "teacher_bpb": "teacher",
}


def repeated_cells_lines(out: Path, earlier: list[Path]) -> list[str]:
    """The cells (method, recipe, budget, seed) that ``out`` ran again after an ``earlier`` experiment
    of the same teacher had run them: per earlier experiment and column (the converted model, its
    from-scratch and no-op controls, the teacher), how far the two runs of each cell are apart in
    held-out bits per byte. The same run on the same code, rate, torch thread count and CPU repeats to
    the bit; on another thread count or CPU it need not (by 0.012-0.016 for DiJiang from scratch at 4M
    tokens, one thread against two: ``results/grid-64m``, the three-seed first run; by up to 0.021 for
    RetNet from scratch in tiny on another CPU: ``results/tiny/repeat``)."""
    mine = read_table(out / "results.csv")
    if mine is None:
        return []
    lines: list[str] = []
    for base in earlier:
        theirs = read_table(base / "results.csv")
        if theirs is None or not set(REPEAT_KEYS) <= set(theirs.columns) & set(mine.columns):
            continue
        both = mine.merge(theirs, on=REPEAT_KEYS, suffixes=("", " before"))
        if both.empty:
            continue
        parts = []
        for column, label in REPEAT_COLUMNS.items():
            gap = float((both[column] - both[f"{column} before"]).abs().max())
            worded = "to the bit" if gap == 0 else f"within {gap:.1e}" if gap <= POOL_TOLERANCE else f"{gap:.3f} apart"
            parts.append(f"{label} {worded}")
        rated = [c for c in ("lr", "scratch_lr") if c in both.columns and f"{c} before" in both.columns]
        moved = both[(both[rated] != both[[f"{c} before" for c in rated]].to_numpy()).any(axis=1)]
        rates = f"; {len(moved)} of them at another learning rate" if len(moved) else ", at the same rates"
        lines.append(
            f"- **Repeats `{base.name}`**: {len(both)} cell{'s' if len(both) > 1 else ''} "
            f"(method, recipe, budget, seed) ran in both{rates}. "
            f"Held-out bits per byte, at most: {'; '.join(parts)} (the same run on the same code, rate, torch "
            "thread count and CPU repeats to the bit; on another thread count or CPU it need not)."
        )
    return lines + [""] if lines else []


def lr_sweep_lines(out: Path) -> list[str]:
    """The learning-rate sweep behind the controls: validation bits per byte per rate, chosen in bold."""
    sweep = read_table(out / "lr_sweep.csv")
    if sweep is None or not len(sweep):
        return []
    cells = sweep.assign(
        cell=[f"**{v:.3f}**" if c else f"{v:.3f}" for v, c in zip(sweep["val_bpb"], sweep["chosen"].astype(bool))]
    )
    wide = cells.pivot_table(
        index=["fraction", "method", "recipe"], columns="lr", values="cell", aggfunc="first", sort=False
    )
    wide = wide[sorted(wide.columns)]
    wide.columns = [f"lr {c:g}" for c in wide.columns]
    return [
        "Learning-rate sweep (validation-split bits per byte on the first seed; the chosen rate in bold):",
        "",
        md_table(wide.reset_index()),
        "",
        *sweep_edge_lines(sweep),
    ]


def sweep_edge_lines(sweep: pd.DataFrame) -> list[str]:
    """The cells whose chosen rate is the highest or lowest one swept: the optimum may lie beyond the
    sweep, so the cell may be under-tuned (a warning, not a verdict)."""
    edges = []
    for (fraction, method, recipe), g in sweep.groupby(["fraction", "method", "recipe"], sort=False):
        tried = g[np.isfinite(g["val_bpb"].astype(float))]["lr"]
        chosen = g[g["chosen"].astype(bool)]["lr"]
        if len(tried) < 2 or not len(chosen):
            continue
        lr = float(chosen.iloc[0])
        side = "highest" if lr == tried.max() else "lowest" if lr == tried.min() else None
        if side:
            edges.append(f"{method}/{recipe} at {fraction:g} ({side}, {lr:g})")
    if not edges:
        return []
    return [
        f"- **At the edge of the sweep**: {len(edges)} of {sweep.groupby(['fraction', 'method', 'recipe']).ngroups} "
        f"cells chose the highest or lowest rate tried, so a rate beyond the sweep may do better and these "
        f"cells may be under-tuned: {'; '.join(edges)}.",
        "",
    ]


def ranking_lines(results: pd.DataFrame | None, best: str = PAPER_BEST) -> list[str]:
    """Where ``best`` (DiJiang) ranks among the converted methods, per budget and recipe, by held-out
    bits per byte, with Welch's t-test over seeds against each method that beats it or that it beats
    next (two-sided; significant at ``ALPHA``)."""
    lines = []
    for (fraction, recipe), g, means in _mean_bpb_by(results, ["fraction", "recipe"], "method"):
        if best not in means.index or len(means) < 2:
            continue
        rank = list(means.index).index(best) + 1
        mine = g[g["method"] == best]["converted_bpb"].to_numpy()
        parts = [
            f"{other} {welch_difference(g[g['method'] == other]['converted_bpb'].to_numpy(), mine)}"
            for other in means.index
            if other != best
        ]
        lines.append(
            f"- {best} ranks **{rank} of {len(means)}** at {fraction:g} with the {recipe} recipe "
            f"(lower bpb is better; each method minus {best}: {'; '.join(parts)})."
        )
    return lines


def _mean_bpb_by(
    results: pd.DataFrame | None, keys: list[str], over: str
) -> Iterator[tuple[tuple, pd.DataFrame, pd.Series]]:
    """Per group of ``keys`` in the per-seed ``results`` (converted models only): its key, its rows
    and the mean converted bits per byte of each ``over`` value, best first; nothing without seeds."""
    if results is None or "seed" not in results.columns:
        return
    ok = results[results["converted_bpb"].notna()]
    for key, g in ok.groupby(keys, sort=False):
        yield key, g, g.groupby(over)["converted_bpb"].mean().sort_values()


def welch_p(a: np.ndarray, b: np.ndarray) -> float | None:
    """Welch's two-sided t-test p-value for ``mean(a) - mean(b)`` over seeds; None with one seed on a side."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy.stats import ttest_ind

    return float(ttest_ind(a, b, equal_var=False).pvalue)


def welch_difference(theirs: np.ndarray, mine: np.ndarray) -> str:
    """``mean(theirs) - mean(mine)`` in bits per byte with Welch's two-sided t-test over seeds
    (significant at ``ALPHA``), or a note that one seed allows no test."""
    diff, p = float(np.mean(theirs) - np.mean(mine)), welch_p(theirs, mine)
    if p is None:
        return f"{diff:+.3f} (one seed: no test)"
    return f"{diff:+.3f} bpb ({format_p(p)}, {'significant' if p <= ALPHA else 'not significant'})"


def recipe_lines(results: pd.DataFrame | None) -> list[str]:
    """Which recipe recovers the most, per method and budget, and whether it is significantly better:
    each recipe's recovery (mean ± standard error over seeds), then the best recipe against each
    other one on held-out bits per byte (Welch's t-test over seeds)."""
    lines = []
    for (method, fraction), g, means in _mean_bpb_by(results, ["method", "fraction"], "recipe"):
        if len(means) < 2:
            continue
        rec = g.groupby("recipe")["recovery"].agg(["mean", "std", "count"])
        scores = ", ".join(
            f"{r} {rec.at[r, 'mean']:.3f} "
            + (f"± {rec.at[r, 'std'] / np.sqrt(rec.at[r, 'count']):.3f}" if rec.at[r, "count"] > 1 else "(one seed)")
            for r in means.index
        )
        best = means.index[0]
        mine = g[g["recipe"] == best]["converted_bpb"].to_numpy()
        parts = [
            f"{other} {welch_difference(g[g['recipe'] == other]['converted_bpb'].to_numpy(), mine)}"
            for other in means.index[1:]
        ]
        lines.append(
            f"- Recipes for **{method} at {fraction:g}**: recovery (± standard error over seeds) {scores}; "
            f"best {best}; each other recipe minus {best}: {'; '.join(parts)}."
        )
    return lines


def wider_sweep_lines(out: Path, base: Path, best: str = PAPER_BEST) -> list[str]:
    """A wider learning-rate sweep (``out``, e.g. ``recipes_controls_wider_sweep``) beside the sweep it
    widens (``base``, ``recipes_controls``), at the budgets both ran:

    * the sweep points both tried must reproduce (the same training runs, repeated): their validation
      bits per byte agree within :data:`POOL_TOLERANCE`, or nothing is compared;
    * per cell (method x recipe, the from-scratch and no-op controls included): the rate each sweep
      chose and its validation bits per byte;
    * per converted cell: held-out converted and from-scratch bits per byte and recovery under both
      rate choices, the converted difference with Welch's test over seeds;
    * whether the conclusions hold: ``best``'s rank per recipe, each method's best recipe, and how many
      conversions beat scratch."""
    sweeps = read_table(out / "lr_sweep.csv"), read_table(base / "lr_sweep.csv")
    results = read_table(out / "results.csv"), read_table(base / "results.csv")
    if any(f is None for f in (*sweeps, *results)):
        return []
    wide, narrow = sweeps
    common = wide.merge(narrow, on=["method", "recipe", "fraction", "lr"], suffixes=(" wider", " base"))
    finite = common[np.isfinite(common["val_bpb wider"]) & np.isfinite(common["val_bpb base"])]
    if not len(finite):
        return [f"- No sweep point in common with `{base.name}`: nothing to compare.", ""]
    gap = float((finite["val_bpb wider"] - finite["val_bpb base"]).abs().max())
    if gap > POOL_TOLERANCE:
        return [
            f"- The sweep points both tried disagree with `{base.name}` by up to {gap:.3f} validation bits per "
            "byte: they are not the same runs (other data, code or thread count), so nothing is compared.",
            "",
        ]
    lines = [
        f"**Beside `{base.name}`** (the sweep this one widens). The {len(finite)} sweep points both tried "
        f"reproduce: their validation bits per byte agree to {gap:.1e}.",
        "",
        *_rate_lines(wide, narrow),
    ]
    wide_res, base_res = (
        r[r["fraction"].isin(set(results[0]["fraction"]) & set(results[1]["fraction"]))] for r in results
    )
    lines += _outcome_lines(wide_res, base_res, best) + _noop_lines(wide_res, base_res)
    return lines + [""]


def rates_at_budget_lines(out: Path, base: Path) -> list[str]:
    """An experiment whose rates were swept at its own budget (``out``) beside one that used rates swept
    at a smaller budget (``base``), for the cells both ran: each cell's chosen rate under both sweeps,
    then per conversion the held-out converted and from-scratch bits per byte and recovery under both,
    each difference with Welch's test over seeds. A rate that does not carry from the small budget to
    the large one shows as a moved rate, and a control that was under-tuned as a from-scratch difference."""
    sweeps = read_table(out / "lr_sweep.csv"), read_table(base / "lr_sweep.csv")
    results = read_table(out / "results.csv"), read_table(base / "results.csv")
    if any(f is None for f in (*sweeps, *results)):
        return []
    here, there = (s[s["chosen"].astype(bool)].set_index(["method", "recipe"]) for s in sweeps)
    cells = here.index.intersection(there.index)
    if not len(cells):
        return [f"- No cell in common with `{base.name}`: nothing to compare.", ""]
    rates = "; ".join(
        f"{m}/{r} {there.loc[(m, r), 'lr']:g} at {there.loc[(m, r), 'fraction']:g} → "
        f"{here.loc[(m, r), 'lr']:g} at {here.loc[(m, r), 'fraction']:g}"
        for m, r in cells
    )
    lines = [f"**Beside `{base.name}`** (rates chosen on the validation split at a smaller budget).", ""]
    lines += [f"- **Chosen rates**: {rates}."]
    mine, theirs = results
    keys = ["method", "recipe", "fraction"]
    for key, m in mine[mine["converted_bpb"].notna()].groupby(keys, sort=False):
        t = theirs[(theirs[keys] == pd.Series(key, index=keys)).all(axis=1)]
        if not len(t):
            continue
        lines.append(
            f"- **{key[0]} / {key[1]} at {key[2]:g}**: converted {_change(t, m, 'converted_bpb')}; from scratch "
            f"{_change(t, m, 'scratch_bpb')}; recovery "
            f"{mean_se(t['recovery'])} → {mean_se(m['recovery'])} (± the standard error over seeds); "
            f"the conversion {'beats' if m['converted_bpb'].mean() < m['scratch_bpb'].mean() else 'does not beat'} "
            f"scratch with the rates chosen at {key[2]:g}{_against_scratch(mine, m.iloc[0])}."
        )
    return lines + [""]


def whole_split_lines(out: Path, base: Path) -> list[str]:
    """The same models scored on the whole held-out split (``out``, the ``whole_split`` runner) beside
    the profile's sample of it (``base``, the experiment they come from): per cell the teacher's,
    converted and from-scratch bits per byte and the recovery under both, converted minus scratch with
    Welch's test over seeds under both, each method against the first under both, and per method each
    recipe against the one best on the sample, under both. A verdict read off the sample that flips on
    the whole split is named: it rested on the sample."""
    whole, sample = read_table(out / "results.csv"), read_table(base / "results.csv")
    if whole is None or sample is None:
        return []
    keys = ["method", "recipe", "fraction", "seed"]
    both = sample.merge(whole, on=keys, suffixes=(" sample", " whole")).dropna(
        subset=["converted_bpb sample", "converted_bpb whole"]
    )
    if both.empty:
        return [f"- No model in common with `{base.name}`: nothing to compare.", ""]
    teacher = both[["teacher_bpb sample", "teacher_bpb whole"]].iloc[0]
    lines = [
        f"**Beside `{base.name}`** (the same models, scored on the profile's sample of the split). The teacher: "
        f"{teacher['teacher_bpb sample']:.3f} bits per byte on the sample, {teacher['teacher_bpb whole']:.3f} on "
        "the whole split.",
        "",
    ]
    flipped = []
    for (method, recipe, fraction), g in both.groupby(["method", "recipe", "fraction"], sort=False):
        verdicts = _on_both(lambda w, g=g: (g[f"converted_bpb {w}"].to_numpy(), g[f"scratch_bpb {w}"].to_numpy()))
        lines.append(
            f"- **{method} / {recipe} at {fraction:g}**: converted {g['converted_bpb sample'].mean():.3f} → "
            f"{g['converted_bpb whole'].mean():.3f}; from scratch {g['scratch_bpb sample'].mean():.3f} → "
            f"{g['scratch_bpb whole'].mean():.3f}; converted minus scratch {verdicts['sample'][0]} → "
            f"{verdicts['whole'][0]}; recovery {mean_se(g['recovery sample'])} → {mean_se(g['recovery whole'])} "
            "(sample → whole split; ± the standard error over seeds)."
        )
        if verdicts["sample"][1] != verdicts["whole"][1]:
            flipped.append(f"{method} / {recipe} at {fraction:g} against scratch ({_flip(verdicts)})")
    for (recipe, fraction), g in both.groupby(["recipe", "fraction"], sort=False):
        methods = list(dict.fromkeys(g["method"]))
        for other in methods[1:]:
            pair = _converted_on_both(g, "method", other, methods[0])
            lines.append(
                f"- **{recipe} at {fraction:g}, {other} minus {methods[0]}** (converted): {pair['sample'][0]} → "
                f"{pair['whole'][0]}."
            )
            if pair["sample"][1] != pair["whole"][1]:
                flipped.append(f"{other} against {methods[0]}, {recipe} at {fraction:g} ({_flip(pair)})")
    for (method, fraction), g in both.groupby(["method", "fraction"], sort=False):
        means = g.groupby("recipe", sort=False)["converted_bpb sample"].mean()
        if len(means) < 2:
            continue
        best = means.idxmin()
        for other in means.index.drop(best):
            pair = _converted_on_both(g, "recipe", other, best)
            lines.append(
                f"- **{method} at {fraction:g}, {other} minus {best}** (recipes, converted; {best} is the best on "
                f"the sample): {pair['sample'][0]} → {pair['whole'][0]}."
            )
            if pair["sample"][1] != pair["whole"][1]:
                flipped.append(f"{other} against {best}, {method} at {fraction:g} ({_flip(pair)})")
    if both.groupby(["method", "recipe", "fraction"])["seed"].nunique().max() < 2:
        return lines + ["- **Verdicts that rest on the sample**: none to compare (one seed: no test).", ""]
    lines.append(
        "- **Verdicts that rest on the sample** (a significant difference on one and not the other, or of "
        "opposite sign): " + ("; ".join(flipped) + "." if flipped else "none: every verdict holds on the whole split.")
    )
    return lines + [""]


def _on_both(arrays: Callable[[str], tuple[np.ndarray, np.ndarray]]) -> dict[str, tuple[str, int]]:
    """Per split ("sample", "whole"): ``a - b`` with Welch's test in words, and its significant sign
    (:func:`_significant_sign`), where ``arrays(split)`` gives the two per-seed arrays."""
    return {w: (welch_difference(*arrays(w)), _significant_sign(*arrays(w))) for w in ("sample", "whole")}


def _converted_on_both(g: pd.DataFrame, by: str, a: str, b: str) -> dict[str, tuple[str, int]]:
    """Converted bits per byte of the rows of ``g`` whose ``by`` column is ``a`` minus those where it is
    ``b``, on the sample and on the whole split (:func:`_on_both`)."""
    return _on_both(
        lambda w: (
            g[g[by] == a][f"converted_bpb {w}"].to_numpy(),
            g[g[by] == b][f"converted_bpb {w}"].to_numpy(),
        )
    )


def _flip(verdicts: dict[str, tuple[str, int]]) -> str:
    """How a verdict differs between the sample and the whole split (their significant signs differ)."""
    sample, whole = verdicts["sample"][1], verdicts["whole"][1]
    if sample and whole:
        return "opposite signs"
    return "significant on the sample only" if sample else "significant on the whole split only"


def _significant_sign(a: np.ndarray, b: np.ndarray) -> int:
    """+1 / -1 where ``mean(a) - mean(b)`` is significant by Welch's test over seeds (at ``ALPHA``), else 0."""
    p = welch_p(a, b)
    if p is None or p > ALPHA:
        return 0
    return 1 if float(np.mean(a) - np.mean(b)) > 0 else -1


def _change(before: pd.DataFrame, after: pd.DataFrame, column: str) -> str:
    """``column``'s mean over seeds before → after, and after minus before with Welch's test."""
    b, a = before[column].to_numpy(), after[column].to_numpy()
    return f"{b.mean():.3f} → {a.mean():.3f} ({welch_difference(a, b)})"


def _noop_lines(wide: pd.DataFrame, narrow: pd.DataFrame) -> list[str]:
    """The no-op control (the teacher fine-tuned on the same tokens) per budget under both rate
    choices, in held-out bits per byte (mean over seeds; wider minus base with Welch's test)."""
    if "noop_bpb" not in wide.columns or "noop_bpb" not in narrow.columns:
        return []
    lines = []
    for fraction, w in wide.drop_duplicates(["fraction", "seed"]).groupby("fraction"):
        n = narrow.drop_duplicates(["fraction", "seed"])
        n = n[n["fraction"] == fraction]
        if len(n) and w["noop_bpb"].notna().any():
            before, after = n["noop_bpb"].to_numpy(), w["noop_bpb"].to_numpy()
            lines.append(
                f"- **No-op control at {fraction:g}**: {before.mean():.4f} → {after.mean():.4f} held-out bits per "
                f"byte (wider minus base {welch_difference(after, before)})."
            )
    return lines


def _rate_lines(wide: pd.DataFrame, narrow: pd.DataFrame) -> list[str]:
    """Each cell's chosen rate and validation bits per byte under both sweeps, and which moved."""

    def chosen(sweep: pd.DataFrame) -> pd.DataFrame:
        return sweep[sweep["chosen"].astype(bool)].set_index(["method", "recipe", "fraction"])[["lr", "val_bpb"]]

    rates = chosen(narrow).join(chosen(wide), lsuffix=" base", rsuffix=" wider", how="inner").reset_index()
    moved = rates[rates["lr base"] != rates["lr wider"]]
    listed = "; ".join(
        f"{r['method']}/{r['recipe']} {r['lr base']:g} → {r['lr wider']:g} "
        f"({r['val_bpb base']:.3f} → {r['val_bpb wider']:.3f}, {r['val_bpb wider'] - r['val_bpb base']:+.3f})"
        for _, r in moved.iterrows()
    )
    return [
        md_table(rates.rename(columns={"val_bpb base": "val bpb base", "val_bpb wider": "val bpb wider"})),
        "",
        f"- **Rates**: {len(moved)} of {len(rates)} cells chose another rate in the wider sweep"
        + (f" (validation bits per byte at the sweep budget): {listed}." if len(moved) else "."),
    ]


def _outcome_lines(wide: pd.DataFrame, narrow: pd.DataFrame, best: str) -> list[str]:
    """Held-out converted and from-scratch bits per byte and recovery per converted cell under both
    rate choices, and whether the conclusions drawn from them hold."""
    keys = ["method", "recipe", "fraction"]
    ok_w, ok_n = wide[wide["converted_bpb"].notna()], narrow[narrow["converted_bpb"].notna()]
    rows = []
    for key, w in ok_w.groupby(keys, sort=False):
        n = ok_n[(ok_n[keys] == pd.Series(key, index=keys)).all(axis=1)]
        if not len(n):
            continue
        rows.append(
            {
                **dict(zip(keys, key)),
                "converted base": n["converted_bpb"].mean(),
                "converted wider": w["converted_bpb"].mean(),
                "wider − base": welch_difference(w["converted_bpb"].to_numpy(), n["converted_bpb"].to_numpy()),
                "scratch base": n["scratch_bpb"].mean(),
                "scratch wider": w["scratch_bpb"].mean(),
                "recovery base": mean_se(n["recovery"]),
                "recovery wider": mean_se(w["recovery"]),
            }
        )
    if not rows:
        return []
    table = pd.DataFrame(rows)
    lines = ["", md_table(table), ""]
    for label, a in (("base", ok_n), ("wider", ok_w)):
        beats = (a["converted_bpb"] < a["scratch_bpb"]).groupby([a[k] for k in keys]).all()
        lines.append(f"- With the {label} sweep's rates, {int(beats.sum())} of {len(beats)} conversions beat scratch.")
    for what, group, over in (
        ("rank of " + best, ["fraction", "recipe"], "method"),
        ("best recipe", ["method", "fraction"], "recipe"),
    ):
        before, after = _orders(ok_n, group, over), _orders(ok_w, group, over)
        changed = {
            k: f"{_summary(before[k], over, best)} → {_summary(after[k], over, best)}"
            for k in after
            if k in before and _summary(before[k], over, best) != _summary(after[k], over, best)
        }
        where = "; ".join(f"{' '.join(str(x) for x in k)}: {v}" for k, v in changed.items())
        lines.append(
            f"- **{what.capitalize()}**: " + (f"changed in {where}." if changed else "unchanged in every group.")
        )
    return lines


def mean_se(values: pd.Series, digits: int = 2, signed: bool = False) -> str:
    """Mean ± standard error over seeds (the mean alone for one seed); ``signed``: a difference, with its sign."""
    v = values.dropna().to_numpy()
    se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None
    return value_cell(float(v.mean()), se, digits, signed) if len(v) else ""


def _orders(results: pd.DataFrame, group: list[str], over: str) -> dict[tuple, list[str]]:
    """Per group, the ``over`` values ordered by mean converted bits per byte, best first."""
    return {
        k if isinstance(k, tuple) else (k,): list(g.groupby(over)["converted_bpb"].mean().sort_values().index)
        for k, g in results.groupby(group, sort=False)
    }


def _summary(order: list[str], over: str, best: str) -> str:
    """A ranking summarized: ``best``'s rank among methods, or the best recipe."""
    if over == "method":
        return f"{order.index(best) + 1} of {len(order)}" if best in order else "not ranked"
    return order[0]
