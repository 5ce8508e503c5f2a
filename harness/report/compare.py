"""Do two runs of a profile agree up to their noise? (``python -m harness compare A B``, :mod:`harness.cli.compare`)

A reproduction is only useful if a second run gives the same tables. This compares the ``table.csv``
of every experiment two results folders share (``A``/``B``: a ``results`` folder holding
``<profile>/``, or the profile folder itself): rows are matched on their key columns (text columns
and :data:`KEY_COLUMNS`), and each metric's difference is set against its noise, row by row.

The noise of a metric comes from the runs themselves, never from a constant:

* **Per-item standard errors.** An accuracy scored on items (``<metric> stderr`` beside it; the
  per-item results in ``results.csv``) has a paired standard error of A − B over the items both runs
  scored (:func:`harness.report.stats.paired_difference`); without per-item results, the two runs'
  standard errors in quadrature. Bits per byte and ``avg`` (the mean over tasks) are paired the same
  way. MQAR's ``mean`` has its binomial standard error (``mean stderr``).
* **Seed noise.** Table 2 trains every method with several seeds and records the standard deviation
  across seeds of each metric (``<metric> sd``). A mean over ``n`` seeds then differs between two runs
  by about ``sd * sqrt(2 / n)`` and a single run by ``sd * sqrt(2)``; the median over Table 2's methods
  stands for the metric's seed noise in the other tables. A table whose own ``results.csv`` holds one
  row per seed (the recipes and controls: a ``seed`` column beside the table's metrics) is judged by
  its own spread instead: per cell the standard deviation across seeds, the median over cells
  (:func:`table_seed_noise`), as the grid profiles have no Table 2.

A difference within ``--k`` (3) combined standard errors passes ("within seed noise"; the word
covers both parts). Counts that must match exactly (items per task, tasks averaged, parameters,
tokens) are compared exactly. A metric with no noise estimate is **not** passed: unless the two runs
agree exactly it is listed as "no noise estimate" and the comparison fails (``--allow-unjudged``
accepts such metrics unjudged). Timings (wall time, tokens/s) depend on the machine and are not
compared.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from harness.evaluation.items import Items, decode_items
from harness.evaluation.lm_eval_tasks import OFFLINE_TASKS
from harness.report.stats import paired_difference

#: numeric columns that identify a row rather than measure something
KEY_COLUMNS: frozenset[str] = frozenset(
    {"fraction", "seed", "seeds", "d_model", "state_size", "seq_len", "m", "L", "k", "window", "context", "distance"}
)
#: numeric columns that must be equal in both runs (counts and configuration, not measurements)
EXACT_COLUMNS: frozenset[str] = frozenset({"params", "train_tokens", "avg tasks", "count", "layer", "tokens"})
#: substrings of machine-dependent columns (not compared)
TIMING_MARKERS: tuple[str, ...] = ("wall", "tokens_per_s", "time")
#: columns computed from compared metrics (a verdict, a ratio of them): not compared themselves
DERIVED_COLUMNS: frozenset[str] = frozenset({"recovery", "on_front", "beats_scratch"})
#: the seed noise of Table 2's held-out bits per byte judges every other bits-per-byte column
BPB_NOISE = "heldout_ppl bpb"
NOISE_TABLE = "table2_methods"
#: differences at or below this fraction of a value (at least of 1) are float rounding, not a
#: difference: the same computation summed in another order (float32 epsilon is 1.2e-7)
FLOAT_RTOL = 1e-6
#: verdicts (the first two are what "judged" means)
WITHIN, DIFFERS, IDENTICAL, UNJUDGED = "within seed noise", "DIFFERS", "identical", "no noise estimate"
#: the verdict of a derived column: how far it moved is shown, and its inputs carry the judgement
FOLLOWS = "derived: not judged"


def profile_dir(path: Path, profile: str) -> Path:
    """``path/<profile>`` if it exists, else ``path`` (already a profile folder)."""
    return path / profile if (path / profile).is_dir() else path


def seed_noise(root: Path) -> dict[str, tuple[float, int]]:
    """metric -> (median per-seed standard deviation over Table 2's methods, seeds per mean)."""
    table = root / NOISE_TABLE / "table.csv"
    if not table.exists():
        return {}
    t = pd.read_csv(table)
    n = int(t["seeds"].max()) if "seeds" in t.columns else 1
    return {c[: -len(" sd")]: (float(t[c].median()), n) for c in t.columns if c.endswith(" sd") and t[c].notna().any()}


def table_seed_noise(per_seed: pd.DataFrame | None, table: pd.DataFrame) -> dict[str, tuple[float, int]]:
    """metric -> (median over the table's cells of the standard deviation across seeds, seeds per
    cell), from the experiment's ``results.csv`` (``per_seed``) when it holds one row per seed of the
    table's cells (a ``seed`` column, the table's key columns and metrics); empty otherwise. A cell is
    a row of ``table``: its key columns, less ``seed``; cells with one seed carry no spread."""
    if per_seed is None or "seed" not in per_seed.columns:
        return {}
    keys = [c for c in _key_columns(table) if c in per_seed.columns and c not in ("seed", "seeds")]
    metrics = [c for c in _metric_columns(table, keys) if c in per_seed.columns and not _is_exact(c)]
    if not keys or not metrics:
        return {}
    grouped = per_seed.groupby(keys, dropna=False)
    sizes = grouped["seed"].nunique()
    if sizes.max() < 2:
        return {}
    spread = grouped[metrics].std(ddof=1)[sizes >= 2]
    n = int(sizes[sizes >= 2].median())
    return {c: (float(spread[c].median()), n) for c in metrics if spread[c].notna().any()}


def _key_columns(table: pd.DataFrame) -> list[str]:
    """The columns that identify a row: text columns and :data:`KEY_COLUMNS` (not verdicts or flags)."""
    return [
        c
        for c in table.columns
        if c not in DERIVED_COLUMNS
        and (not pd.api.types.is_numeric_dtype(table[c]) or c in KEY_COLUMNS)
        and not pd.api.types.is_bool_dtype(table[c])
    ]


def _metric_columns(table: pd.DataFrame, keys: list[str]) -> list[str]:
    """The measured columns: numeric, not a key, a derived value, a spread or a timing."""
    return [
        c
        for c in table.columns
        if c not in keys
        and c not in DERIVED_COLUMNS
        and pd.api.types.is_numeric_dtype(table[c])
        and not pd.api.types.is_bool_dtype(table[c])
        and not c.endswith((" sd", " stderr"))
        and not any(m in c for m in TIMING_MARKERS)
    ]


def _is_exact(column: str) -> bool:
    return column in EXACT_COLUMNS or column.endswith(" n")


def _row_items(results: pd.DataFrame | None, row: pd.Series, keys: list[str], task: str, metric: str) -> list[Items]:
    """The per-item results (one per seed) behind one table row: the results rows of ``task`` and
    ``metric`` that match the row's key columns."""
    if results is None or "items" not in results.columns:
        return []
    sel = (results["task"] == task) & (results["metric"] == metric)
    for k in keys:
        if k in results.columns and k in row.index:
            v = row[k]
            sel &= results[k].isna() if pd.isna(v) else results[k] == v
    decoded = [decode_items(s) for s in results.loc[sel, "items"]]
    return [d for d in decoded if d is not None]


def _item_se(
    column: str, row_a: pd.Series, row_b: pd.Series, keys: list[str], results: tuple[pd.DataFrame | None, ...]
) -> tuple[float | None, str]:
    """The item-sampling standard error of ``A - B`` in one row of ``column``, and how it was had."""

    def paired(task: str, metric: str) -> float | None:
        a = _row_items(results[0], row_a, keys, task, metric)
        b = _row_items(results[1], row_b, keys, task, metric)
        d = paired_difference(a, b)
        return d.se_items if d is not None else None

    if column == "avg":
        tasks = [c[: -len(" n")] for c in row_a.index if c.endswith(" n")]
        tasks = [t for t in tasks if t not in OFFLINE_TASKS and t in row_a.index and pd.notna(row_a[t])]
        ses = [paired(t, "acc") for t in tasks]
        if tasks and all(s is not None for s in ses):
            return math.sqrt(sum(s**2 for s in ses)) / len(ses), "items (paired)"  # type: ignore[operator]
    elif column.endswith(" bpb"):
        se = paired(column[: -len(" bpb")], "bits_per_byte")
        if se is not None:
            return se, "items (paired)"
    else:
        se = paired(column, "acc")
        if se is not None:
            return se, "items (paired)"
    if f"{column} stderr" in row_a.index and f"{column} stderr" in row_b.index:
        sa, sb = row_a[f"{column} stderr"], row_b[f"{column} stderr"]
        if pd.notna(sa) and pd.notna(sb):
            return math.hypot(float(sa), float(sb)), "items (per-run stderr)"
    return None, ""


def compare_tables(
    a: pd.DataFrame,
    b: pd.DataFrame,
    noise: dict[str, tuple[float, int]],
    k: float,
    table: str,
    results: tuple[pd.DataFrame | None, pd.DataFrame | None] = (None, None),
    own_noise: dict[str, tuple[float, int]] | None = None,
) -> list[dict]:
    """One row per compared metric: the largest |A - B| over matched rows, the tolerance at the row
    that comes closest to it, the noise used and the verdict. ``results``: the two runs'
    ``results.csv`` (per-item results), when there are any."""
    keys = [c for c in _key_columns(a) if c in b.columns]
    metrics = [c for c in _metric_columns(a, keys) if c in b.columns]
    merged = a.merge(b, on=keys, suffixes=(" A", " B")) if keys else pd.DataFrame()
    rows_a = merged.rename(columns=lambda c: c[:-2] if c.endswith(" A") else c)
    rows_b = merged.rename(columns=lambda c: c[:-2] if c.endswith(" B") else c)
    out = []
    for c in metrics:
        diff = (merged[f"{c} A"] - merged[f"{c} B"]).abs() if len(merged) else pd.Series(dtype=float)
        # float rounding (FLOAT_RTOL) is no difference: "identical" means equal up to it
        if len(merged) and not _is_exact(c):
            diff = diff.mask(diff <= FLOAT_RTOL * merged[f"{c} A"].abs().clip(lower=1.0), 0.0)
        both_nan = merged[f"{c} A"].isna() & merged[f"{c} B"].isna() if len(merged) else diff
        one_nan = bool((diff.isna() & ~both_nan).any()) if len(merged) else False
        worst = float(diff.max()) if diff.notna().any() else (math.nan if one_nan or not len(merged) else 0.0)
        tol, how, ratio = None, "", -1.0
        if _is_exact(c):
            how, tol = "exact", 0.0
            verdict = IDENTICAL if worst == 0 and not one_nan else DIFFERS
        else:
            judged = True
            for i in range(len(merged)):
                d = diff.iloc[i]
                if pd.isna(d):
                    continue
                se, source = _item_se(c, rows_a.iloc[i], rows_b.iloc[i], keys, results)
                seed = 0.0
                noise_key = c if c in noise else (BPB_NOISE if c.endswith("bpb") and BPB_NOISE in noise else None)
                if own_noise and own_noise.get(c, (0.0, 1))[0] > 0:  # rows are means over n seeds
                    sd, n = own_noise[c]
                    seed = sd * math.sqrt(2 / n)
                    source = f"{source} + seeds (own)" if source else "seeds (own)"
                elif noise_key is not None and noise[noise_key][0] > 0:
                    sd, n = noise[noise_key]
                    per_row = n if table == NOISE_TABLE else 1  # Table 2's rows are means over n seeds
                    seed = sd * math.sqrt(2 / per_row)
                    source = f"{source} + seeds" if source else "seeds"
                if se is None and not seed:
                    judged = False
                    continue
                row_tol = k * math.hypot(se or 0.0, seed)
                r = d / row_tol if row_tol > 0 else (math.inf if d > 0 else 0.0)
                if r > ratio:
                    ratio, tol, how = r, row_tol, source
            if one_nan:
                verdict = DIFFERS
            elif worst == 0 or (math.isnan(worst) and len(merged)):
                verdict = IDENTICAL
            elif not judged or tol is None:
                verdict = UNJUDGED
            else:
                verdict = WITHIN if ratio <= 1 else DIFFERS
        out.append(
            {
                "metric": c,
                "rows": len(merged),
                "of": max(len(a), len(b)),
                "max |A-B|": worst,
                "tolerance": tol,
                "noise": how,
                "verdict": verdict,
            }
        )
    derived = [c for c in a.columns if c in DERIVED_COLUMNS and c in b.columns]
    return out + _derived_rows(merged, derived, len(a), len(b))


def _derived_rows(merged: pd.DataFrame, columns: list[str], n_a: int, n_b: int) -> list[dict]:
    """One row per numeric derived column (a recovery score): how far it moved, not judged, since the
    metrics it is computed from are."""
    return [
        {
            "metric": c,
            "rows": len(merged),
            "of": max(n_a, n_b),
            "max |A-B|": float((merged[f"{c} A"] - merged[f"{c} B"]).abs().max()) if len(merged) else math.nan,
            "tolerance": None,
            "noise": "",
            "verdict": FOLLOWS,
        }
        for c in columns
        if len(merged) == 0
        or (pd.api.types.is_numeric_dtype(merged[f"{c} A"]) and not pd.api.types.is_bool_dtype(merged[f"{c} A"]))
    ]


def _results(root: Path, name: str) -> pd.DataFrame | None:
    """The experiment's ``results.csv``, if it wrote one."""
    path = root / name / "results.csv"
    return pd.read_csv(path, low_memory=False) if path.exists() else None


def _with_items(results: pd.DataFrame | None) -> pd.DataFrame | None:
    """``results`` if it holds per-item results (``task``, ``metric``, ``items``), else None."""
    return results if results is not None and {"task", "metric", "items"} <= set(results.columns) else None


def compare(a_root: Path, b_root: Path, k: float = 3.0, allow_unjudged: bool = False) -> tuple[pd.DataFrame, bool]:
    """The comparison of every shared experiment, and whether the runs agree: every row matched,
    nothing beyond its noise, and (unless ``allow_unjudged``) no difference left unjudged for want of
    a noise estimate."""
    noise = seed_noise(a_root) or seed_noise(b_root)
    rows = []
    shared = sorted(
        p.parent.name for p in a_root.glob("*/table.csv") if (b_root / p.parent.name / "table.csv").exists()
    )
    for name in shared:
        a, b = pd.read_csv(a_root / name / "table.csv"), pd.read_csv(b_root / name / "table.csv")
        ra, rb = _results(a_root, name), _results(b_root, name)
        own = table_seed_noise(ra, a) or table_seed_noise(rb, b)
        items = (_with_items(ra), _with_items(rb))
        rows += [{"experiment": name, **r} for r in compare_tables(a, b, noise, k, name, items, own)]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame, False
    bad = frame["verdict"] == DIFFERS
    if not allow_unjudged:
        bad |= frame["verdict"] == UNJUDGED
    ok = not bad.any() and bool((frame["rows"] == frame["of"]).all())
    return frame, ok


__all__ = ["compare", "compare_tables", "profile_dir", "seed_noise", "table_seed_noise"]
