"""The copy probe's section of the report (:mod:`harness.pipeline.runners.copy_probe`): every model's copy
gain at each distance, and each window hybrid against its window-only control, inside the window and
beyond it: whether the linear part beyond the window recalls anything the window cannot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from analyses.copy_probe import decode_gains
from harness.report.controls import welch_p
from harness.report.hybrids import WINDOW_ONLY, recipes
from harness.report.markdown import md_table, read_table, value_cell
from harness.report.stats import ALPHA, format_p


def gain_cells(results: pd.DataFrame) -> pd.DataFrame:
    """One row per model, one column per distance: the copy gain, mean ± standard error over seeds (a
    model with one seed: over its examples), in bits per token; and where the results have them, the
    model's held-out bits per byte (mean over seeds) as the probed experiment scored them."""
    rows: dict[str, dict[str, str]] = {}
    for (label, d), g in results.groupby(["label", "distance"], sort=False):
        if len(g) > 1:
            cell = value_cell(g["gain"].mean(), g["gain"].std(ddof=1) / np.sqrt(len(g)), digits=3, signed=True)
        else:
            cell = value_cell(float(g["gain"].iloc[0]), float(g["gain_se"].iloc[0]), digits=3, signed=True)
        rows.setdefault(str(label), {"model": str(label)})[f"d = {d}"] = cell
    table = pd.DataFrame(list(rows.values()))
    if "bpb" in results.columns:
        bpb = results.groupby("label", sort=False)["bpb"].mean()
        table.insert(1, "held-out bpb", [value_cell(bpb.get(m)) for m in table["model"]])
    return table


def _seed_gains(results: pd.DataFrame, label: str, distances: list[int]) -> pd.Series:
    """A model's gain per seed, averaged over ``distances``."""
    rows = results[(results["label"] == label) & results["distance"].isin(distances)]
    return rows.groupby(rows["seed"].fillna(-1))["gain"].mean()


def _example_gains(results: pd.DataFrame, label: str, distances: list[int]) -> np.ndarray:
    """A one-seed model's gain per example, averaged over ``distances`` (the examples are the same at every
    distance and for every model)."""
    rows = results[(results["label"] == label) & results["distance"].isin(distances)]
    return np.mean([decode_gains(c) for c in rows["items"]], axis=0)


def compare(results: pd.DataFrame, a: str, b: str, distances: list[int]) -> str:
    """``a``'s copy gain minus ``b``'s over ``distances``: Welch's test over seeds where both have more
    than one, else a paired t-test over the shared examples (one seed each)."""
    sa, sb = _seed_gains(results, a, distances), _seed_gains(results, b, distances)
    diff = float(sa.mean() - sb.mean())
    if len(sa) > 1 and len(sb) > 1:
        p, how = welch_p(sa.to_numpy(), sb.to_numpy()), "Welch over seeds"
    else:
        ea, eb = _example_gains(results, a, distances), _example_gains(results, b, distances)
        p = None if np.array_equal(ea, eb) else float(sps.ttest_rel(ea, eb).pvalue)
        how = f"paired over {len(ea)} examples, one seed"
    if p is None:
        return f"{diff:+.3f} bits per token (identical gains: nothing to test)"
    verdict = "significant" if p <= ALPHA else "not significant"
    return f"{diff:+.3f} bits per token ({format_p(p)}, {verdict}; {how})"


def window_recall_lines(results: pd.DataFrame, configs: pd.DataFrame) -> list[str]:
    """Each window hybrid of the probed experiment (``configs``: its table, with ``criterion`` and
    ``window``) against its window-only control, over the distances inside its window and beyond it."""
    only = {int(r.window): str(r.label) for r in configs[configs["criterion"] == WINDOW_ONLY].itertuples()}
    probed = set(results["label"])
    distances = sorted(int(d) for d in results["distance"].unique())
    lines = []
    for r, recipe in zip(configs.itertuples(), recipes(configs), strict=True):
        if r.criterion != "window" or only.get(int(r.window)) not in probed or r.label not in probed:
            continue
        w, control = int(r.window), only[int(r.window)]
        parts = []
        for where, ds in (("inside", [d for d in distances if d < w]), ("beyond", [d for d in distances if d > w])):
            if ds:
                parts.append(
                    f"{where} the window (d = {', '.join(map(str, ds))}) {compare(results, r.label, control, ds)}"
                )
        lines.append(f"- **{r.label}** ({recipe} recipe) minus {control}, copy gain: " + "; ".join(parts) + ".")
    return lines


def reference_lines(results: pd.DataFrame, configs: pd.DataFrame | None) -> list[str]:
    """What full attention recalls beyond the smallest window: the gains of the softmax models (the teacher,
    the no-op control) there."""
    if configs is None or "window" not in configs.columns or configs["window"].dropna().empty:
        return []
    w = int(configs["window"].dropna().min())
    beyond = sorted(int(d) for d in results["distance"].unique() if d > w)
    softmax = [str(x) for x in results.loc[results["method"] == "softmax", "label"].unique()]
    if not beyond or not softmax:
        return []
    shown = ", ".join(f"{m} {_seed_gains(results, m, beyond).mean():+.3f}" for m in softmax)
    return [
        f"- Full softmax attention beyond the {w}-token window (d = {', '.join(map(str, beyond))}, mean gain in bits "
        f"per token): {shown}: the recall there is to be had."
    ]


def copy_probe_section(out: Path) -> list[str]:
    """The probe's table (gain per model and distance) and, where the probed experiment is a hybrid one
    (its configurations in ``configs.csv``), each window hybrid against its window-only control."""
    results = read_table(out / "results.csv")
    if results is None or results.empty:
        return ["_No copy-probe results._", ""]
    configs = read_table(out / "configs.csv")
    lines = [
        "Copy gain in bits per token (the control's loss minus the copy's on the repeated span; higher: more "
        "recalled from d tokens back), mean ± standard error over seeds (one seed: over examples)"
        + ("; held-out bits per byte as the probed experiment scored them" if "bpb" in results.columns else "")
        + ":",
        "",
        md_table(gain_cells(results)),
        "",
    ]
    if configs is not None:
        lines += reference_lines(results, configs) + window_recall_lines(results, configs)
    return lines + [""]


__all__ = ["compare", "copy_probe_section", "gain_cells", "reference_lines", "window_recall_lines"]
