"""``REPORT.md``: each of our tables beside the paper's, and what agrees — with the statistics to say so.

Everything here is read from files a run wrote (``<results>/<profile>/<experiment>/``: ``table.csv``,
``results.csv`` with per-item results, ``meta.json``) and from the paper's transcribed numbers
(``results/paper/``); nothing is typed by hand.

* Every accuracy is shown with its standard error over items (lm-eval's ``acc_stderr``) and the
  number of items; tasks with no data offline are shown as such, not dropped.
* ``avg`` is the mean over the benchmark tasks actually scored, with their number; the paper's
  average is recomputed over the same tasks wherever the two are set side by side.
* A difference between two models is judged by a paired test over the items both scored, combined
  with the spread across seeds (:func:`harness.report.stats.paired_difference`); "best method" and
  "converted minus teacher" lines carry that test's p-value.
* Kendall's tau against the paper's ranking comes with its p-value and is worded by it
  (:func:`harness.report.stats.describe_tau`).
* The paper's own quirks (an average that is not the mean of its cells, WSC scores that are
  constant-class predictions) and where our setup differs from it (splits, throughput) are stated.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.evaluation.items import Items, decode_items
from harness.evaluation.lm_eval_tasks import OFFLINE_TASKS, UNAVAILABLE
from harness.evaluation.lm_eval_tasks.bundled import official_name
from harness.report.controls import (
    budget_trend_lines,
    controls_section,
    png_only,
    pooled_extension_lines,
    rates_at_budget_lines,
    recovery_curve_lines,
    repeated_cells_lines,
    whole_split_lines,
    wider_sweep_lines,
)
from harness.report.copy_probe import copy_probe_section
from harness.report.figures import plot_recovery
from harness.report.hybrids import hybrid_section, is_hybrid_table, whole_split_hybrid_lines
from harness.report.markdown import md_table, read_table, value_cell
from harness.report.paper_numbers import PAPER_BEST, WSC_CONSTANT_CLASS_COUNTS, WSC_EXAMPLES
from harness.report.stats import (
    ALPHA,
    Difference,
    describe_tau,
    format_p,
    paired_difference,
    ranking_agreement,
    score,
)
from harness.report.tables import BPB, task_columns
from harness.report.teacher_training import trained_teacher_lines
from harness.util.io import atomic_write_text

PAPER_DIR = Path(__file__).resolve().parents[2] / "results" / "paper"
#: our method names -> the paper's row names (Table 2)
PAPER_ROWS: dict[str, str] = {
    "softmax": "Pythia-410M",
    "linformer": "Linformer",
    "cosformer": "Cosformer",
    "performer": "Performer",
    "retnet": "RetNet",
    "pff": "PFF",
    "dijiang": "DiJiang",
}
SECTIONS: tuple[str, ...] = (
    "table1_scale",
    "table2_methods",
    "table3_7b",
    "fig2_curves",
    "fig3_attention_maps",
    "fig4_speed_memory",
    "kernel_ablation",
    "recovery_curve",
    "recipes_controls",
    "recipes_controls_wider_sweep",
    "recipes_controls_extended",
    "recipes_controls_extended_baselines",
    "recipes_controls_extended_transfer",
    "recipes_controls_extended_distill",
    "recipes_controls_extended_baselines_distill",
    "recipes_controls_trained_teacher_small",
    "recipes_controls_trained_teacher_three_seeds_small",
    "recipes_controls_trained_teacher_three_seeds_mid",
    "recipes_controls_trained_teacher",
    "recipes_controls_trained_teacher_three_seeds",
    "recipes_controls_trained_teacher_three_seeds_retnet",
    "recipes_controls_trained_teacher_three_seeds_baselines",
    "recipes_controls_trained_teacher_large",
    "recipes_controls_rates_at_budget",
    "whole_split_trained_teacher_small",
    "whole_split_trained_teacher_three_seeds_small",
    "whole_split_trained_teacher_three_seeds_mid",
    "whole_split_trained_teacher_large",
    "whole_split_trained_teacher_three_seeds",
    "whole_split_trained_teacher_three_seeds_retnet",
    "whole_split_trained_teacher_three_seeds_baselines",
    "hybrid_pareto",
    "hybrid_trained_teacher",
    "whole_split_hybrid_trained_teacher",
    "hybrid_window_controls",
    "whole_split_hybrid_window_controls",
    "long_context_hybrid_window_controls",
    "copy_probe_hybrid_window_controls",
    "mqar",
)
BPB_COLUMN = "heldout_ppl bpb"
#: a printed average further than this from the mean of its cells is reported
AVG_TOLERANCE = 0.002


def paper_wide(paper_dir: Path, table: str, index: str = "model") -> pd.DataFrame | None:
    """The paper's table as published (rows x tasks)."""
    tidy = read_table(paper_dir / f"{table}.csv")
    if tidy is None:
        return None
    return tidy.pivot_table(index=index, columns="task", values="value", sort=False).reset_index()


def paper_avg(paper: pd.DataFrame, tasks: list[str]) -> pd.Series:
    """The paper's average recomputed over ``tasks`` (its column names), per model."""
    cols = [t for t in tasks if t in paper.columns]
    return paper.set_index("model")[cols].mean(axis=1) if cols else pd.Series(dtype=float)


# -- per-item results ---------------------------------------------------------------------------------
class ItemResults:
    """The per-item results of one experiment (``results.csv``'s ``items``): per model label, task
    and metric, one :class:`Items` per seed."""

    def __init__(self, frame: pd.DataFrame | None) -> None:
        self.runs: dict[tuple[str, str, str], list[Items]] = {}
        if frame is None or "items" not in frame.columns:
            return
        for row in frame.itertuples(index=False):
            items = decode_items(getattr(row, "items", None))
            if items is not None:
                self.runs.setdefault((str(row.model), str(row.task), str(row.metric)), []).append(items)

    def __bool__(self) -> bool:
        return bool(self.runs)

    def get(self, model: str, task: str, metric: str = "acc") -> list[Items]:
        return self.runs.get((model, task, metric), [])

    def seed_sd(self, model: str, task: str, metric: str = "acc") -> float | None:
        runs = self.get(model, task, metric)
        return float(np.std([score(r) for r in runs], ddof=1)) if len(runs) > 1 else None

    def pooled_sd(self, models: list[str], task: str, metric: str = "acc") -> float | None:
        """The median seed spread over the models that have several seeds."""
        sds = [s for m in models if (s := self.seed_sd(m, task, metric)) is not None]
        return float(np.median(sds)) if sds else None

    def difference(self, a: str, b: str, task: str, metric: str, models: list[str]) -> Difference | None:
        """``a - b`` on one task (see :func:`harness.report.stats.paired_difference`)."""
        return paired_difference(
            self.get(a, task, metric),
            self.get(b, task, metric),
            (self.seed_sd(a, task, metric), self.seed_sd(b, task, metric)),
            self.pooled_sd(models, task, metric),
        )

    def avg_difference(self, a: str, b: str, tasks: list[str], models: list[str]) -> Difference | None:
        """``a - b`` on the mean accuracy over ``tasks``: item errors add over tasks (independent item
        samples); the seed part is the spread of each model's per-seed average (seeds move all tasks
        together, so it is not summed task by task)."""
        parts = [self.difference(a, b, t, "acc", models) for t in tasks]
        if not tasks or any(p is None for p in parts):
            return None
        k = len(parts)
        diff = sum(p.diff for p in parts) / k  # type: ignore[union-attr]
        se_items = math.sqrt(sum(p.se_items**2 for p in parts)) / k  # type: ignore[union-attr]

        def avg_sd(model: str) -> float | None:
            runs = [self.get(model, t) for t in tasks]
            if len({len(r) for r in runs}) != 1 or len(runs[0]) < 2:
                return None
            return float(np.std([np.mean([score(r[s]) for r in runs]) for s in range(len(runs[0]))], ddof=1))

        sds = [s for m in models if (s := avg_sd(m)) is not None]
        pooled = float(np.median(sds)) if sds else None
        seed_var, how = 0.0, "measured"
        seeds = (len(self.get(a, tasks[0])), len(self.get(b, tasks[0])))
        for model, n in zip((a, b), seeds):
            sd = avg_sd(model)
            if sd is None:
                sd, how = pooled, ("assumed" if pooled is not None else "none")
            seed_var += (sd or 0.0) ** 2 / n
        return Difference(diff, se_items, math.sqrt(seed_var), sum(p.n_items for p in parts), seeds, how)  # type: ignore[union-attr]


def _judged(d: Difference) -> str:
    """``+0.031 ± 0.053 (p = 0.55, not significant)``."""
    return f"{d.diff:+.3f} ± {d.se:.3f} ({format_p(d.p)}, {'significant' if d.significant else 'not significant'})"


def _how(d: Difference) -> str:
    """How a difference was tested, in words."""
    base = f"paired over {d.n_items} shared items"
    if d.seed_spread == "assumed":
        return f"{base}, with the seed spread (a one-seed model taking the others' median)"
    if d.seed_spread == "none":
        return f"{base}; one seed each, so no seed spread is included"
    return f"{base}, with the seed spread"


# -- formatting ---------------------------------------------------------------------------------------
def ours_markdown(table: pd.DataFrame, keys: list[str], extra: list[str] = ()) -> str:
    """Our wide table for the report: accuracies as ``value ± stderr`` (item count in the header),
    ``avg ± stderr`` over the tasks scored (their number in the header), bits per byte (with its
    seed spread where there is one), tasks without data marked "not available offline"."""
    tasks = task_columns(table)
    out = table[[k for k in keys if k in table.columns]].copy()
    for task in tasks:
        n = pd.to_numeric(table[f"{task} n"], errors="coerce")
        header = f"{task} (n={int(n.max())})" if n.max() > 0 else task
        out[header] = [
            UNAVAILABLE if not (c > 0) else value_cell(v, se)
            for v, se, c in zip(table[task], table[f"{task} stderr"], n)
        ]
    if "avg" in table.columns:
        k = pd.to_numeric(table.get("avg tasks"), errors="coerce").max()
        out[f"avg ({int(k)} tasks)" if k == k else "avg"] = [
            value_cell(v, se) for v, se in zip(table["avg"], table.get("avg stderr", [None] * len(table)))
        ]
    for col in [c for c in table.columns if c.endswith(" bpb")]:
        sd = table.get(f"{col} sd")
        out[f"{col}"] = [
            value_cell(v) + (f" (sd {s:.3f})" if s is not None and s == s else "")
            for v, s in zip(table[col], sd if sd is not None else [None] * len(table))
        ]
    for col in extra:
        if col in table.columns:
            out[col] = table[col]
    return md_table(out)


def _paper_markdown(paper: pd.DataFrame, tasks: list[str]) -> str:
    shown = paper.copy()
    if tasks:
        shown[f"avg over our {len(tasks)} tasks"] = paper_avg(paper, tasks).to_numpy()
    return md_table(shown)


# -- the paper's quirks -------------------------------------------------------------------------------
def paper_quirks(paper: pd.DataFrame, name: str) -> list[str]:
    """What in the paper's table does not add up: printed averages that are not the mean of their
    cells, and WSC scores that a constant answer gives (whole multiples of 1/104 that equal a class
    share of SuperGLUE WSC's validation set)."""
    lines = []
    cells = [c for c in paper.columns if c not in ("model", "avg")]
    if "avg" in paper.columns and cells:
        for model, printed, mean in zip(paper["model"], paper["avg"], paper[cells].mean(axis=1)):
            if abs(printed - mean) > AVG_TOLERANCE:
                lines.append(
                    f"- The paper's {name}: {model}'s printed average is {printed:.3f}; the mean of its {len(cells)} "
                    f"cells is {mean:.3f}."
                )
    if "wsc" in paper.columns:
        counts = {m: v * WSC_EXAMPLES for m, v in zip(paper["model"], paper["wsc"])}
        constant = [
            f"{m} {c / WSC_EXAMPLES:.3f} (= {round(c)}/{WSC_EXAMPLES})"
            for m, c in counts.items()
            if round(c) in WSC_CONSTANT_CLASS_COUNTS and abs(c - round(c)) < 0.2
        ]
        if constant:
            lines.append(
                f"- The paper's {name}: WSC scores {', '.join(constant)} are what answering every one of SuperGLUE "
                f"WSC's {WSC_EXAMPLES} validation examples with the same class gives (class counts "
                f"{' and '.join(map(str, sorted(WSC_CONSTANT_CLASS_COUNTS)))}): constant-class predictions, not "
                "evidence of skill."
            )
    return lines


# -- table 2 ------------------------------------------------------------------------------------------
def _methods(table: pd.DataFrame) -> list[str]:
    return [str(m) for m in table["method"]] if "method" in table.columns else [str(m) for m in table["model"]]


def _converted(t: pd.DataFrame) -> pd.DataFrame:
    """The rows of *converted* methods (the teacher and from-scratch models are left out)."""
    from harness.core.registry import get_method, list_methods

    return t.loc[[m for m in t.index if m != "softmax" and m in list_methods() and get_method(m).convertible]]


def _benchmark_tasks(table: pd.DataFrame) -> list[str]:
    """Our benchmark task columns with scores (not the suite's own tasks, not unavailable ones)."""
    return [
        t
        for t in task_columns(table)
        if t not in OFFLINE_TASKS and (pd.to_numeric(table[f"{t} n"], errors="coerce") > 0).any()
    ]


def _best_line(
    t: pd.DataFrame,
    items: ItemResults,
    col: str,
    what: str,
    higher: bool,
    diff: Callable[[str, str], Difference | None],
) -> str | None:
    conv = _converted(t)
    if col not in conv.columns or not conv[col].notna().any():
        return None
    ordered = conv[col].dropna().sort_values(ascending=not higher)
    best = str(ordered.index[0])
    line = f"- Best converted method by {what}: **{best}** ({ordered.iloc[0]:.3f}); the paper's best: **DiJiang**."
    if len(ordered) < 2:
        return line
    second = str(ordered.index[1])
    d = diff(best, second) if items else None
    if d is None:
        return line + f" No per-item results to test its lead over {second}: no verdict on the ranking."
    sign = 1 if higher else -1
    verdict = (
        f"a significant lead (p <= {ALPHA})"
        if d.significant and sign * d.diff > 0
        else f"not a significant lead (p > {ALPHA}): no ranking between the two"
    )
    return line + f" {best} − {second} (the runner-up) = {d.text()} ({_how(d)}): {verdict}."


def _paired_table(
    t: pd.DataFrame, items: ItemResults, pairs: list[tuple[str, str, str]], tasks: list[str], models: list[str]
) -> pd.DataFrame:
    """Rows ``label``: ``a - b`` per task, on the average, and on bits per byte, as ``diff ± se (p)``."""
    rows = []
    for label, a, b in pairs:
        row: dict[str, Any] = {"difference": label}
        for task in tasks:
            d = items.difference(a, b, task, "acc", models)
            row[task] = d.text() if d else ""
        if len(tasks) > 1:
            d = items.avg_difference(a, b, tasks, models)
            row[f"avg ({len(tasks)} tasks)"] = d.text() if d else ""
        d = items.difference(a, b, "heldout_ppl", "bits_per_byte", models)
        if d is not None:
            row["heldout_ppl bpb"] = d.text()
        rows.append(row)
    return pd.DataFrame(rows)


def table2_section(out: Path, paper_dir: Path) -> list[str]:
    """Table 2: every method converted from one teacher, against the paper's Table 2."""
    table = read_table(out / "table.csv")
    if table is None:
        return ["(not run)"]
    items = ItemResults(read_table(out / "results.csv"))
    tasks = _benchmark_tasks(table)
    models = [str(m) for m in table["model"]]
    lines = [
        "**Ours** (mean over seeds; ± = standard error over the task's items, lm-eval's `acc_stderr`; n = items; "
        "bits per byte with the spread across seeds):",
        "",
        ours_markdown(table, ["method"], ["seeds"]),
        "",
    ]
    paper = paper_wide(paper_dir, "table2_methods")
    official = [official_name(t) for t in tasks]
    if paper is not None:
        lines += ["**Paper** (Table 2, converted from Pythia-410M):", "", _paper_markdown(paper, official), ""]
        extra = [m for m in _methods(table) if m not in PAPER_ROWS]
        if extra:
            lines += [
                f"Not in the paper: {', '.join(extra)}. Their rows are ours only; the comparisons with the paper "
                f"below (rankings, agreement) use the {len(PAPER_ROWS)} methods the paper has.",
                "",
            ]
    t = table.set_index("method")
    label = dict(zip(table["method"], table["model"]))
    best_model = label.get(PAPER_BEST)
    if items and best_model is not None:
        others = [m for m in _methods(table) if m != PAPER_BEST]
        pairs = [(f"{m} − {PAPER_BEST}", str(label[m]), str(best_model)) for m in others]
        diffs = _paired_table(t, items, pairs, tasks, models)
        lines += [
            f"**Each method against {PAPER_BEST}** (the paper's best), paired over the shared items with the seed "
            f"spread added: difference ± standard error (two-sided p; significant at p <= {ALPHA}):",
            "",
            md_table(diffs),
            "",
        ]
    if paper is not None:
        scores = paper_avg(paper, official) if official else paper.set_index("model")["avg"]
        basis = f"its average over the same {len(official)} tasks" if official else "its printed average"
        paper_scores = pd.Series({m: scores.get(row) for m, row in PAPER_ROWS.items() if m != "softmax"})
        for col, sign, what in (
            ("avg", 1, f"mean accuracy over {len(tasks)} tasks"),
            ("next_line", 1, "next-line accuracy"),
            (BPB_COLUMN, -1, "held-out bits per byte"),
        ):
            if col == "avg" and not tasks:  # no benchmark task scored (an older table's avg is next_line's)
                continue
            if col in t.columns and t[col].notna().any():
                agree = ranking_agreement(sign * t[col], paper_scores)
                lines.append(f"- {describe_tau(agree, what).rstrip('.')} (paper: {basis}).")
    for col, what, higher, metric in (
        ("avg", f"mean accuracy over {len(tasks)} tasks", True, None),
        ("next_line", "next-line accuracy", True, ("next_line", "acc")),
        (BPB_COLUMN, "bits per byte", False, ("heldout_ppl", "bits_per_byte")),
    ):

        def diff(a: str, b: str, metric: tuple[str, str] | None = metric) -> Difference | None:
            la, lb = str(label.get(a, a)), str(label.get(b, b))
            if metric is None:
                return items.avg_difference(la, lb, tasks, models)
            return items.difference(la, lb, metric[0], metric[1], models)

        line = None if col == "avg" and not tasks else _best_line(t, items, col, what, higher, diff)
        if line:
            lines.append(line)
    if paper is not None:
        lines += paper_quirks(paper, "Table 2")
    return lines


# -- tables 1 and 3 -----------------------------------------------------------------------------------
def throughput_lines(table: pd.DataFrame, paper_dir: Path, paper_table: str) -> list[str]:
    """Converted against teacher inference throughput, ours beside the paper's (Table 1)."""
    if "tokens_per_s" not in table.columns:
        return []
    ratios = {}
    for teacher, g in table.groupby("teacher", sort=False):
        base, conv = g[g["method"] == "softmax"], g[g["method"] != "softmax"]
        if len(base) and len(conv):
            ratios[str(teacher)] = float(conv["tokens_per_s"].iloc[0] / base["tokens_per_s"].iloc[0])
    if not ratios:
        return []
    slower = [f"{t} ({r:.2f}x)" for t, r in ratios.items() if r < 1]
    faster = [f"{t} ({r:.2f}x)" for t, r in ratios.items() if r >= 1]
    ours = []
    if slower:
        ours.append(f"slower than its teacher for {', '.join(slower)}")
    if faster:
        ours.append(f"as fast or faster for {', '.join(faster)}")
    tidy = read_table(paper_dir / f"{paper_table}.csv")
    claim = ""
    if tidy is not None and "infer_tokens_per_s" in tidy.columns:
        rows = tidy.drop_duplicates("model").set_index("model")
        paper_ratios = []
        for model, tps in rows["infer_tokens_per_s"].dropna().items():
            if str(model).startswith("DiJiang-"):
                size = str(model).split("-", 1)[1]
                teacher = next((m for m in rows.index if str(m).endswith(f"-{size}") and m != model), None)
                if teacher is not None and pd.notna(rows.loc[teacher, "infer_tokens_per_s"]):
                    paper_ratios.append((str(model), tps / rows.loc[teacher, "infer_tokens_per_s"]))
        if paper_ratios:
            lo, hi = min(r for _, r in paper_ratios), max(r for _, r in paper_ratios)
            claim = (
                f"The paper's Table 1 has DiJiang's inference throughput at {lo:.2f}x-{hi:.2f}x its teacher's for "
                f"all {len(paper_ratios)} sizes it lists (2048 tokens, hardware not stated). "
            )
    verdict = "This disagrees with the paper" if slower and claim else "This agrees with the paper" if claim else ""
    text = f"- Throughput: {claim}Here (decoding, `tokens_per_s`), DiJiang is {'; '.join(ours)}."
    if verdict:
        text += f" {verdict}{' for ' + ', '.join(t for t, r in ratios.items() if r < 1) if slower else ''}."
    return [text]


def scale_section(out: Path, paper_dir: Path, paper_table: str) -> list[str]:
    """Tables 1 and 3: teachers and their DiJiang conversions, against the paper's."""
    table = read_table(out / "table.csv")
    if table is None:
        return ["(not run)"]
    items = ItemResults(read_table(out / "results.csv"))
    tasks = _benchmark_tasks(table)
    official = [official_name(t) for t in tasks]
    keys = ["model", "method", "teacher", "params", "train_tokens", "tokens_per_s"]
    lines = [
        "**Ours** (± = standard error over the task's items, lm-eval's `acc_stderr`; n = items; `params`: each "
        "model's own parameters; `tokens_per_s`: decoding throughput):",
        "",
        ours_markdown(table, [k for k in keys if k in table.columns]),
        "",
    ]
    paper = paper_wide(paper_dir, paper_table)
    if paper is not None:
        lines += [f"**Paper** ({paper_table.replace('_', ' ')}):", "", _paper_markdown(paper, official), ""]
    models = [str(m) for m in table["model"]]
    gaps = []
    for teacher, g in table.groupby("teacher", sort=False):
        base, conv = g[g["method"] == "softmax"], g[g["method"] != "softmax"]
        if not (len(base) and len(conv)):
            continue
        a, b = str(conv["model"].iloc[0]), str(base["model"].iloc[0])
        parts = []
        how = ""
        if tasks and items:
            d = items.avg_difference(a, b, tasks, models)
            if d is not None:
                parts.append(f"mean accuracy over {len(tasks)} tasks {_judged(d)}")
                how = _how(d)
        elif tasks and "avg" in conv.columns:
            parts.append(f"mean accuracy {conv['avg'].iloc[0] - base['avg'].iloc[0]:+.3f} (no per-item results)")
        d = items.difference(a, b, "heldout_ppl", "bits_per_byte", models) if items else None
        if d is not None:
            parts.append(f"bits per byte {_judged(d)}")
        if parts:
            gaps.append(f"{teacher}: " + ", ".join(parts))
    if gaps:
        lines.append(f"- Converted minus teacher ({how or 'per model'}): " + "; ".join(gaps) + ".")
    if paper is not None and official:
        avg = paper_avg(paper, official)
        pairs = [
            f"{m} {avg[m] - avg[t]:+.3f}"
            for m in avg.index
            if str(m).startswith("DiJiang-")
            for t in avg.index
            if t != m and str(t).split("-", 1)[-1] == str(m).split("-", 1)[-1]
        ]
        if pairs:
            lines.append(
                f"- The paper's converted minus teacher, averaged over the same {len(official)} tasks: "
                + ", ".join(pairs)
                + "."
            )
    lines += throughput_lines(table, paper_dir, paper_table)
    if paper is not None:
        lines += paper_quirks(paper, paper_table.replace("_", " "))
    return lines


# -- other sections -----------------------------------------------------------------------------------
def speed_section(out: Path, paper_dir: Path) -> list[str]:
    """Fig. 4: decoding and prefill throughput per method against L, with the speedups over softmax
    that the benchmark's own analysis (:func:`harness.report.bench_analysis.analyse`) computes, beside the
    DiJiang/Transformer ratio of the official README's plot."""
    from harness.report.bench_analysis import REFERENCE, analyse

    rows = read_table(out / "results.csv")
    if rows is None:
        return ["(not run)"]
    ok = rows[rows["status"] == "ok"]
    speedups = pd.DataFrame(analyse(ok.to_dict("records"))["speedups"])
    lines: list[str] = []
    for (shape, phase), g in ok.groupby(["shape", "phase"], sort=False):
        tps = g.pivot_table(index="method", columns="seq_len", values="tokens_per_s")
        if REFERENCE not in tps.index:
            continue
        tps = tps.loc[[REFERENCE, *[m for m in tps.index if m != REFERENCE]]]
        sp = speedups[(speedups["shape"] == shape) & (speedups["phase"] == phase)]
        ratio = sp.pivot_table(index="method", columns="seq_len", values="speedup").reindex_like(tps)
        ratio.loc[REFERENCE] = 1.0
        cells = tps.apply(lambda col: col.map(lambda v: f"{v:,.0f}")) + ratio.apply(
            lambda col: col.map(lambda v: f" ({v:.2f}x)")
        )
        cells = cells.where(tps.notna(), "skip").reset_index()
        cells.columns = ["method", *[f"{c:,}" for c in tps.columns]]
        lines += [f"**{shape}, {phase}** — tokens/s (x {REFERENCE}, same sweep):", "", md_table(cells), ""]
        if phase == "prefill" and "mem_peak_bytes" in g.columns:
            mem = g.pivot_table(index="method", columns="seq_len", values="mem_peak_bytes") / 2**20
            mem = mem.loc[tps.index.intersection(mem.index, sort=False)].reset_index()
            mem.columns = ["method", *[f"{c:,}" for c in mem.columns[1:]]]
            lines += [f"**{shape}, prefill peak memory** (MiB):", "", md_table(mem), ""]
    paper = read_table(paper_dir / "speed_readme_plot.csv")
    ours = speedups[(speedups["method"] == "dijiang") & (speedups["phase"] == "decode")] if len(speedups) else speedups
    if paper is not None and len(ours):
        wide = paper.pivot_table(index="seq_len", columns="model", values="tokens_per_s")
        paper_ratio = wide["dijiang"] / wide["transformer"]
        comp = pd.DataFrame(
            [
                {
                    "shape": r.shape,
                    "L": r.seq_len,
                    "ours dijiang/softmax decode": r.speedup,
                    "paper dijiang/transformer (README plot)": paper_ratio[r.seq_len],
                }
                for r in ours.itertuples()
                if r.seq_len in paper_ratio.index
            ]
        )
        if len(comp):
            last = comp.iloc[-1]
            lines += [
                f"- At L = {last['L']:,} ({last['shape']}), DiJiang decodes "
                f"{last['ours dijiang/softmax decode']:.2f}x as fast as softmax here; the README plot shows "
                f"{last['paper dijiang/transformer (README plot)']:.2f}x.",
                "",
                "**Against the paper** (the official README's throughput plot; the paper's Fig. 4 has no "
                "readable numbers; its model and hardware are unlabeled, so only the ratios compare):",
                "",
                md_table(comp),
                "",
            ]
    return lines


def kernel_section(out: Path) -> list[str]:
    """The ablation's slopes, and whether they show the paper's rates: Monte Carlo error ~ m^-1/2,
    quasi-Monte Carlo (PFF, WDCF) ~ m^-1."""
    lines = generic_section(out)
    table = read_table(out / "table.csv")
    if table is None or "loglog_slope" not in table.columns:
        return lines
    groups = table.groupby("inputs", sort=False) if "inputs" in table.columns else [("these inputs", table)]
    for inputs, g in groups:
        slopes = g.set_index("estimator")["loglog_slope"]
        qmc = slopes[[e for e in slopes.index if e.startswith(("qmc", "wdcf"))]]
        mc = slopes[[e for e in slopes.index if e.endswith("mc") or e == "monte_carlo"]]
        verdict = (
            "at least one quasi-Monte Carlo estimator reaches the claimed ~1/m rate (slope <= -0.75)"
            if (qmc <= -0.75).any()
            else "no quasi-Monte Carlo estimator reaches the claimed ~1/m rate (slope -1): the paper's claim is "
            "not confirmed here"
        )
        lines.append(
            f"- {inputs}: Monte Carlo slopes {', '.join(f'{v:.2f}' for v in mc)} (expected -0.5); "
            f"quasi-Monte Carlo {', '.join(f'{e} {v:.2f}' for e, v in qmc.items())}; {verdict}."
        )
    return lines


def recovery_section(out: Path) -> list[str]:
    """The recovery curve's table with standard errors, and held-out bits per byte against the budget
    (drawn here from ``results.csv``, to ``recovery_bpb.png``): the experiment's own figure shows the
    accuracies, which sit at chance at small scale; bits per byte do not. Only the PNG is kept
    (:func:`~harness.report.controls.png_only`)."""
    table = read_table(out / "table.csv")
    if table is None:
        return ["(not run)"]
    keys = [c for c in ("method", "fraction", "seed") if c in table.columns]
    lines = [ours_markdown(table, keys), ""]
    results = read_table(out / "results.csv")
    if results is not None and (results["metric"] == BPB).any():
        png = png_only(plot_recovery(results, out / "recovery_bpb", metric=BPB))
        lines += [
            "Held-out bits per byte against the budget (lower is better; the teacher dashed):",
            "",
            f"![held-out bits per byte against the budget]({out.name}/{png.name})",
            "",
        ]
    return lines


def generic_section(out: Path) -> list[str]:
    table = read_table(out / "table.csv")
    if table is None:
        table = read_table(out / "results.csv")
        if table is not None and len(table) > 40:
            return [f"(see `{(out / 'results.csv').name}`: {len(table)} rows)"]
    return [md_table(table), ""] if table is not None else ["(not run)"]


# -- the report ---------------------------------------------------------------------------------------
def _eval_notes(root: Path, names: list[str]) -> list[str]:
    """What the evaluation scored: items per task, documents skipped for the window, split notes —
    from the experiments' results.csv (the same for every model of a profile)."""
    frames = [f for n in names if (f := read_table(root / n / "results.csv")) is not None and "task" in f.columns]
    if not frames:
        return []
    rows = pd.concat(frames, ignore_index=True)
    rows = rows[(rows["metric"] == "acc") & ~rows["task"].isin(OFFLINE_TASKS)]
    lines = []
    if len(rows) and "docs" in rows.columns:
        parts = []
        for task, g in rows.groupby("task", sort=False):
            r = g.iloc[0]
            if str(task).startswith("mmlu_") and task != "mmlu_local":
                continue
            if r.get("status") == UNAVAILABLE:
                parts.append(f"{task}: {UNAVAILABLE}")
            elif pd.notna(r.get("docs")):
                parts.append(
                    f"{task}: {int(r['n'])} of {int(r['docs'])} ({r.get('split', '?')}; "
                    f"{int(r['skipped'])} of {int(r['examined'])} examined skipped as too long for the window, "
                    f"{int(r['truncated'])} scored with a context cut)"
                )
        if parts:
            lines.append("- Items per task (the same for every model): " + "; ".join(parts) + ".")
    for col in ("docs_per_task", "max_length", "split_notes"):
        if col in rows.columns and rows[col].notna().any():
            value = rows[col].dropna().iloc[0]
            if col == "docs_per_task":
                lines.append(
                    f"- Each benchmark task is scored on a fixed subsample of {int(value)} documents (seed "
                    f"{int(rows['docs_seed'].dropna().iloc[0]) if 'docs_seed' in rows.columns else 0}, the same "
                    "items for every model; see `harness/evaluation/evaluate.py`), not its whole split."
                )
            elif col == "max_length":
                lines.append(
                    f"- Window: {int(value)} tokens (the training block); a document is scored when each answer fits "
                    "half of it, its context cut from the left when longer."
                )
            elif value:
                lines.append(f"- Where our data differs from the paper's: {str(value).replace(' | ', '; ')}.")
    return lines


def _environments(metas: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """The environment every experiment ran in (what they all share: the report's header) and the
    environment keys that differ between them (each a column of the provenance table): a report whose
    experiments ran on two CPUs or thread counts says which ran where."""
    envs = [
        {k: v for k, v in m.get("environment", {}).items() if k not in ("git_commit", "date")} for m in metas.values()
    ]
    keys = list(dict.fromkeys(k for env in envs for k in env))
    varying = [k for k in keys if any(env.get(k) != envs[0].get(k) for env in envs)]
    return {k: envs[0][k] for k in keys if k not in varying}, varying


def _provenance(metas: dict[str, dict[str, Any]], varying: list[str]) -> list[str]:
    rows = []
    for name, meta in metas.items():
        env = meta.get("environment", {})
        rows.append(
            {
                "experiment": name,
                "commit": env.get("git_commit", "unknown"),
                "code fingerprint": meta.get("code_fingerprint", ""),
                "date": env.get("date", ""),
                "wall time (s)": meta.get("wall_time_s"),
                **{k: env.get(k, "") for k in varying},
            }
        )
    frame = pd.DataFrame(rows)
    frame = frame.loc[:, [c for c in frame.columns if frame[c].astype(str).str.len().gt(0).any()]]
    what = (
        f", code fingerprint, and where the experiments' environments differ, each one's {', '.join(varying)}"
        if varying
        else " and code fingerprint"
    )
    return [
        f"Each experiment's own commit (`+dirty`: uncommitted source changes when it ran){what}:",
        "",
        md_table(frame),
        "",
    ]


def unshipped_teachers_line(out: Path, shipped: dict[str, str]) -> list[str]:
    """Which of a table's teachers were pretrained inside the profile (not shipped, so never checked
    for convergence), with their tokens."""
    table = read_table(out / "table.csv")
    if table is None or not {"teacher", "method", "train_tokens"} <= set(table.columns):
        return []
    own = table[(table["method"] == "softmax") & ~table["teacher"].isin(list(shipped))]
    if not len(own):
        return []
    listed = ", ".join(f"{r.teacher} ({int(r.train_tokens):,} tokens)" for r in own.itertuples())
    return [
        f"- These teachers were pretrained inside the profile, not shipped, and never checked for convergence: "
        f"{listed}. Their conversions inherit an unfinished teacher (see the Teachers section for how far one "
        "is from converged).",
        "",
    ]


def convergence_state(curve: pd.DataFrame, shipped_tokens: int, threshold: float) -> str:
    """Where a teacher's curve (``tokens``, ``gain`` per doubling) stands against the threshold, and
    where its shipped budget sits on it: the curve converges at the budget before the first doubling
    that gains less than ``threshold`` (:func:`harness.pipeline.teachers.converge`)."""
    gains = curve["gain"].tolist()
    tokens = [int(t) for t in curve["tokens"]]
    first = next((i for i, g in enumerate(gains) if pd.notna(g) and g < threshold), None)
    if first is None:
        state = "**not converged** (the last doubling still paid)"
        if shipped_tokens < max(tokens):
            state += (
                f"; shipped below the curve's largest budget ({max(tokens):,} tokens) for the profile's CPU time: "
                "every conversion is a fraction of the shipped tokens"
            )
        return state
    at, gain = tokens[first - 1], gains[first]
    converged = f"doubling {at:,} to {tokens[first]:,} tokens gained {gain:.1%}, under the threshold"
    if shipped_tokens >= at:
        return f"converged ({converged})"
    return (
        f"**not converged at its shipped budget**: its curve converges at {at:,} tokens ({converged}), and it "
        "is shipped below that for the profile's CPU time: every conversion is a fraction of the shipped tokens"
    )


def training_split_tokens(meta: dict) -> int | None:
    """The tokens in one pass over a shipped teacher's training split, read from its ``teacher.json``:
    the split's bytes, as the byte tokenizer makes one token of each byte (None for any other tokenizer,
    or where the corpus record lacks the split)."""
    if meta.get("train_config", {}).get("tokenizer") != "byte":
        return None
    size = meta.get("corpus", {}).get("splits", {}).get("train", {}).get("bytes")
    return int(size) if size else None


def teachers_section(shipped: dict[str, str], out: Path | None = None) -> list[str]:
    """The profile's shipped teachers (name -> folder, :mod:`harness.pipeline.teachers`): each one's
    convergence curve, validation bits per byte against pretraining tokens, from its ``teacher.json``,
    as a table and (given ``out``, the report's folder) as ``out/teachers/<name>.png``."""
    from harness.report.teacher_figure import plot_teacher_curve
    from harness.util.provenance import REPO_ROOT

    if not shipped:
        return []
    lines = [
        "## Teachers",
        "",
        "Converted teachers are trained here until more tokens stop paying: budgets doubling, each a finished "
        "run with its own schedule, until a doubling improves validation bits per byte by less than the "
        "threshold; the budget before that doubling is shipped (`teachers/`), and every budget fraction below "
        "is a fraction of its tokens.",
        "",
    ]
    for name, folder in shipped.items():
        meta_file = REPO_ROOT / folder / "teacher.json"
        if not meta_file.is_file():
            lines += [f"- {name}: `{folder}` is missing.", ""]
            continue
        meta = json.loads(meta_file.read_text())
        curve = pd.DataFrame(meta["curve"])[["tokens", "val_bpb", "gain", "wall_time_s"]]
        state = convergence_state(curve, int(meta["tokens"]), float(meta["threshold"]))
        split = training_split_tokens(meta)
        passes = ""
        if split:  # a teacher trained past one pass repeats its data: the curve is the corpus's as much as the model's
            curve.insert(1, "epochs", (curve["tokens"] / split).round(2))
            passes = (
                f" ({int(meta['tokens']) / split:.1f} passes over the {split:,}-byte training split: from the "
                "second pass on, its data repeats)"
            )
        lines += [
            f"**{name}** (`{folder}`, {meta.get('n_params') or 0:,} parameters): {state}; shipped at "
            f"{int(meta['tokens']):,} tokens{passes}, {meta['val_bpb']:.3f} validation bits per byte; threshold "
            f"{meta['threshold']:.0%}; the curve's runs took {meta['curve_wall_time_s']:.0f} s of wall time on "
            f"the machine that made them (`{meta['retrain']}`).",
            "",
            md_table(
                curve.assign(
                    tokens=curve["tokens"].map("{:,}".format),
                    gain=curve["gain"].map(lambda g: "" if pd.isna(g) else f"{g:.1%}"),
                    wall_time_s=curve["wall_time_s"].round(0).astype(int),
                )
            ),
            "",
        ]
        if out is not None:
            plot_teacher_curve(curve, name, int(meta["tokens"]), meta["threshold"], out / "teachers" / f"{name}.png")
            lines += [f"![{name}'s convergence curve](teachers/{name}.png)", ""]
    return lines


def controls_family_lines(root: Path, name: str, ordered: list[str]) -> list[str]:
    """The lines that set a ``recipes_controls`` extension beside the experiments that converted the same
    teacher at other budgets or with other methods and recipes: its budget trend; for a conversion of the
    more trained teacher (``recipes_controls_trained_teacher*``), the grid's teacher at the same tokens;
    and after the family's last section, the pooled checks and the recovery curve over every budget."""
    trained = name.startswith("recipes_controls_trained_teacher")
    prefix = "recipes_controls_trained_teacher" if trained else "recipes_controls_extended"
    family = [n for n in ordered if n.startswith(prefix)]
    members = family if trained else ["recipes_controls", *family]
    lines = budget_trend_lines(root / name, [root / n for n in members if n != name])
    lines += repeated_cells_lines(root / name, [root / n for n in members[: members.index(name)]])
    if trained:  # beside the grid's teacher at the same tokens
        grid = [
            p
            for p in sorted((root.parent / "grid").glob("recipes_controls*"))
            if p.name != "recipes_controls_wider_sweep"
        ]
        lines += trained_teacher_lines(root / name, grid)
    if name == family[-1]:  # once, after the last of them
        if not trained:
            lines += pooled_extension_lines([root / n for n in family])
        lines += recovery_curve_lines(
            [root / n for n in members if (root / n).is_dir()], root / name / "recovery_budgets"
        )
    return lines


def section_order(metas: dict[str, dict]) -> list[str]:
    """The experiments that ran, in the report's order: :data:`SECTIONS` first, then any experiment it
    does not name (a new one), alphabetically, so a new experiment is never left out of the report."""
    return [n for n in SECTIONS if n in metas] + sorted(n for n in metas if n not in SECTIONS)


def _header_lines(profile: str, metas: dict[str, dict[str, Any]], heldout: str | None) -> list[str]:
    """The report's opening: the primary metric, the held-out text, the environment and, per experiment,
    its commit, fingerprint and wall time."""
    env, varying = _environments(metas) if metas else ({}, [])
    lines = [
        f"# Reproduction report — profile `{profile}`",
        "",
        "**Primary metric at this scale: bits per byte** of held-out text (`heldout_ppl bpb`, lower is better). "
        "The models here are byte-level and small; on the paper's multiple-choice tasks they score near chance, "
        "so every accuracy below carries its standard error, and a difference between two models counts only "
        "where a paired test over the items both scored (with the spread across seeds) says so.",
        "",
        *([f"Held-out bits per byte are scored on {heldout}.", ""] if heldout else []),
        f"Every number below was produced by `./reproduce.sh --profile {profile}`; the paper's numbers come from "
        "`results/paper/` (transcribed from the paper). Where our results disagree with the paper, the report says "
        "so.",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in env.items()],
        "",
    ]
    if metas:
        lines += _provenance(metas, varying)
        total = sum(m.get("wall_time_s", 0) for m in metas.values())
        lines += [
            f"Wall time, summed over the experiments' last invocations: {total:.0f} s (a fresh run's total; less "
            "where an invocation reused earlier runs).",
            "",
        ]
    return lines


def _section_body(
    name: str, meta: dict[str, Any], root: Path, ordered: list[str], shipped: dict[str, str]
) -> list[str]:
    """The tables and verdicts of experiment ``name``'s section, by what the experiment is."""
    out = root / name
    if name == "table2_methods":
        return table2_section(out, PAPER_DIR)
    if name in ("table1_scale", "table3_7b"):
        return scale_section(out, PAPER_DIR, name) + unshipped_teachers_line(out, shipped)
    if name == "fig4_speed_memory":
        return speed_section(out, PAPER_DIR)
    if name == "kernel_ablation":
        return kernel_section(out)
    if name == "recovery_curve":
        return recovery_section(out)
    if name == "recipes_controls":
        return controls_section(out)
    if name == "recipes_controls_wider_sweep":
        return controls_section(out) + wider_sweep_lines(out, root / "recipes_controls")
    if name == "recipes_controls_rates_at_budget":
        return controls_section(out) + rates_at_budget_lines(out, root / "recipes_controls_trained_teacher_large")
    if {"of", "span"} <= set(meta.get("params", {})):  # copy_probe of another experiment
        return copy_probe_section(out)
    if "max_length" in meta.get("params", {}) and is_hybrid_table(out):  # long_context of a hybrid experiment
        base, length = root / f"whole_split_{meta['params']['of']}", meta["params"]["max_length"]
        return hybrid_section(out) + whole_split_hybrid_lines(
            out, base, ("at the training length", f"at {length} tokens")
        )
    if "of" in meta.get("params", {}) and is_hybrid_table(out):  # whole_split of a hybrid experiment
        return hybrid_section(out) + whole_split_hybrid_lines(out, root / meta["params"]["of"])
    if "of" in meta.get("params", {}) and (out / "table.csv").exists():  # whole_split of a controls experiment
        return controls_section(out) + whole_split_lines(out, root / meta["params"]["of"])
    if name.startswith(("recipes_controls_extended", "recipes_controls_trained_teacher")):
        return controls_section(out) + controls_family_lines(root, name, ordered)
    if name.startswith("hybrid_"):
        return hybrid_section(out)
    return generic_section(out)


def _section(name: str, meta: dict[str, Any], root: Path, ordered: list[str], shipped: dict[str, str]) -> list[str]:
    """Experiment ``name``'s whole section: its title and description, its body, its notes and figures,
    and the commit and wall time it was made at."""
    lines = [f"## {name} — {meta['paper_ref']}", "", meta["description"], ""]
    lines += _section_body(name, meta, root, ordered, shipped)
    lines += [f"- {note}" for note in meta.get("notes", [])]
    for fig in meta.get("figures", []):
        if fig.endswith(".png"):
            lines += ["", f"![{name}]({name}/{fig})"]
    commit = meta.get("environment", {}).get("git_commit", "unknown")
    return lines + [
        "",
        f"_Commit {commit}. Wall time of the invocation that wrote these results: {meta['wall_time_s']:.0f} s "
        "(training runs it reused from earlier invocations are not counted)._",
        "",
    ]


def write_report(
    profile: str,
    results_dir: Path,
    experiments: list[str] | None = None,
    shipped: dict[str, str] | None = None,
    heldout: str | None = None,
) -> Path:
    """Write ``<results_dir>/<profile>/REPORT.md`` from the experiments found there. ``experiments``:
    every experiment the suite defines (those not found are listed as not yet run); ``shipped``: the
    profile's shipped teachers (name -> folder), whose convergence curves the report shows; ``heldout``:
    the text the profile's held-out bits per byte are scored on, in words (None: it scores none)."""
    root = results_dir / profile
    shipped = shipped or {}
    metas = {p.parent.name: json.loads(p.read_text()) for p in sorted(root.glob("*/meta.json"))}
    lines = _header_lines(profile, metas, heldout) + teachers_section(shipped, root)
    missing = [n for n in experiments or [] if n not in metas]
    if missing:
        lines += [
            f"**Not yet run at this profile:** {', '.join(missing)} "
            f"(`./reproduce.sh --profile {profile} --only {' '.join(missing)}`).",
            "",
        ]
    evaluated = [n for n in ("table1_scale", "table2_methods", "table3_7b", "recovery_curve") if n in metas]
    notes = _eval_notes(root, evaluated)
    if notes:
        lines += ["## How the benchmark tasks were scored", "", *notes, ""]
    ordered = section_order(metas)
    for name in ordered:
        lines += _section(name, metas[name], root, ordered, shipped)
    path = root / "REPORT.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


__all__ = [
    "ItemResults",
    "describe_tau",
    "format_p",
    "paper_avg",
    "paper_quirks",
    "paper_wide",
    "ranking_agreement",
    "scale_section",
    "table2_section",
    "throughput_lines",
    "write_report",
]
