"""Wide result tables (one row per model, one column per task) from tidy evaluation rows, with the
standard errors and item counts that every accuracy carries.

Columns of :func:`wide_table`, after the index columns:

* per accuracy task ``T`` (metric ``acc``, lm-eval's and the paper's): ``T`` (the accuracy),
  ``T stderr`` (lm-eval's ``acc_stderr``: the standard error over the task's items) and ``T n``
  (items scored). A task whose data could not be reached keeps its columns, empty, with ``T n`` = 0,
  and is named in ``unavailable``;
* ``avg``, ``avg stderr``, ``avg tasks``: the mean accuracy over the benchmark tasks actually scored
  (not the suite's own ``next_line``), its standard error (``sqrt(sum se^2) / k``, tasks independent)
  and ``k``. No ``avg`` when no benchmark task was scored;
* ``T bpb``: bits per byte of each perplexity task (``heldout_ppl``);
* ``unavailable``: the tasks with no data, space-separated.

:func:`seed_table` averages a per-seed table over seeds: values get their mean and a ``<col> sd``
(spread across seeds); ``stderr`` columns get the mean over seeds of the per-run standard error (the
seeds score the same items, so averaging them does not shrink the item-sampling error).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from harness.evaluation.lm_eval_tasks import OFFLINE_TASKS, UNAVAILABLE

#: the metric that stands for "accuracy" (lm-eval's acc; the paper reports acc)
ACC = "acc"
BPB = "bits_per_byte"
#: columns of a wide table that count rather than measure (same in every seed)
COUNT_SUFFIXES: tuple[str, ...] = (" n",)
COUNT_COLUMNS: tuple[str, ...] = ("avg tasks", "unavailable")


def _unavailable(rows: pd.DataFrame) -> bool:
    status = rows["status"] if "status" in rows.columns else pd.Series([None] * len(rows), index=rows.index)
    return bool((status == UNAVAILABLE).all() or rows["value"].isna().all())


def wide_table(frame: pd.DataFrame, index: list[str]) -> pd.DataFrame:
    """One row per ``index`` value (see the module docstring for the columns)."""
    acc_tasks = list(dict.fromkeys(frame.loc[frame["metric"] == ACC, "task"]))
    bpb_tasks = list(dict.fromkeys(frame.loc[frame["metric"] == BPB, "task"]))
    out = []
    for key, g in frame.groupby(index, sort=False, dropna=False):
        row: dict[str, Any] = dict(zip(index, key if isinstance(key, tuple) else (key,)))
        scored, ses, missing = [], [], []
        for task in acc_tasks:
            r = g[(g["metric"] == ACC) & (g["task"] == task)]
            if r.empty:
                continue
            if _unavailable(r):
                row.update({task: math.nan, f"{task} stderr": math.nan, f"{task} n": 0})
                missing.append(task)
                continue
            value, se = float(r["value"].mean()), float(pd.to_numeric(r["stderr"], errors="coerce").mean())
            n = pd.to_numeric(r["n"], errors="coerce").max() if "n" in r.columns else math.nan
            row.update({task: value, f"{task} stderr": se, f"{task} n": n})
            if task not in OFFLINE_TASKS:
                scored.append(value)
                ses.append(se)
        if scored:
            row["avg"] = sum(scored) / len(scored)
            row["avg stderr"] = math.sqrt(sum(s**2 for s in ses)) / len(ses)
            row["avg tasks"] = len(scored)
        for task in bpb_tasks:
            r = g[(g["metric"] == BPB) & (g["task"] == task)]
            if not r.empty:
                row[f"{task} bpb"] = float(r["value"].mean())
        row["unavailable"] = " ".join(missing)
        out.append(row)
    table = pd.DataFrame(out)
    if "unavailable" in table.columns and not table["unavailable"].astype(bool).any():
        table = table.drop(columns="unavailable")
    return table


def seed_table(per_seed: pd.DataFrame, keys: list[str], seed: str = "seed") -> pd.DataFrame:
    """Mean over seeds per ``keys`` (see the module docstring), with ``seeds`` (their number)."""
    cols = [c for c in per_seed.columns if c not in (*keys, seed)]
    counts = [c for c in cols if c.endswith(COUNT_SUFFIXES) or c in COUNT_COLUMNS]
    stderr = [c for c in cols if c.endswith(" stderr")]
    values = [c for c in cols if c not in counts and c not in stderr]
    grouped = per_seed.groupby(keys, sort=False, dropna=False)
    table = grouped[values + stderr].mean(numeric_only=True)
    table = table.join(grouped[values].std(ddof=1).add_suffix(" sd"))
    if counts:
        table = table.join(grouped[counts].first())
    table = table.join(grouped.size().rename("seeds"))
    ordered = [c for c in per_seed.columns if c in table.columns] + [f"{c} sd" for c in values] + ["seeds"]
    return table[[c for c in dict.fromkeys(ordered) if c in table.columns]].reset_index()


def task_columns(table: pd.DataFrame) -> list[str]:
    """The accuracy task columns of a wide table, in order (those with a ``<task> n`` beside them)."""
    return [c[: -len(" n")] for c in table.columns if c.endswith(" n") and c[: -len(" n")] in table.columns]


__all__ = ["ACC", "BPB", "seed_table", "task_columns", "wide_table"]
