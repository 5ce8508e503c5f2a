"""Figures of the paper's comparisons, drawn from tidy result tables with matplotlib.

Each function takes a DataFrame (as written to ``results/<profile>/<experiment>/results.csv``) and
a path stem, writes ``<stem>.png`` and ``<stem>.pdf``, and returns the paths — so the notebooks
redraw exactly what ``reproduce.sh`` drew.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def save(fig: plt.Figure, stem: Path, dpi: int = 120) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.pdf`` (each to a temporary name, then renamed) and close
    the figure. The stem may contain dots (``bench-pythia-2.8b``)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = stem.with_name(f"{stem.name}.{ext}")
        tmp = path.with_name(f".{path.name}.tmp.{ext}")
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        tmp.replace(path)
        paths.append(path)
    plt.close(fig)
    return paths


def plot_curves(frame: pd.DataFrame, stem: Path) -> list[Path]:
    """Paper Fig. 2: training loss against tokens per method (mean over seeds, smoothed)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, g in frame.groupby("method", sort=False):
        curve = g.groupby("tokens")["loss"].mean()
        smooth = curve.rolling(max(1, len(curve) // 20), min_periods=1).mean()
        ax.plot(smooth.index, smooth.values, label=method)
    ax.set_xlabel("fine-tuning tokens")
    ax.set_ylabel("training loss (nats/token)")
    ax.set_title("Conversion training curves")
    ax.legend(fontsize=8)
    return save(fig, stem)


def plot_recovery(frame: pd.DataFrame, stem: Path, metric: str = "acc") -> list[Path]:
    """Accuracy (or ``metric``) against conversion budget, one line per method; the teacher dashed."""
    fig, ax = plt.subplots(figsize=(6, 4))
    rows = frame[frame.metric == metric]
    for task, tg in rows.groupby("task"):
        teacher = tg[tg.method == "softmax"]["value"].mean()
        for method, g in tg[tg.method != "softmax"].groupby("method"):
            curve = g.groupby("fraction")["value"].mean()
            ax.plot(curve.index, curve.values, marker="o", label=f"{method} ({task})")
        ax.axhline(teacher, ls="--", color="gray", label=f"teacher ({task})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("conversion budget (fraction of the teacher's pretraining tokens)")
    ax.set_ylabel(metric)
    ax.set_title("Recovery against training cost")
    ax.legend(fontsize=7)
    return save(fig, stem)


def plot_attention_maps(maps: dict[str, np.ndarray], stem: Path) -> list[Path]:
    """Paper Fig. 3: implied attention maps (rows: queries, columns: keys), one panel per method."""
    fig, axes = plt.subplots(1, len(maps), figsize=(3.2 * len(maps), 3.2))
    axes = np.atleast_1d(axes)
    for ax, (name, m) in zip(axes, maps.items()):
        ax.imshow(m, cmap="viridis")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return save(fig, stem)


def plot_kernel_ablation(frame: pd.DataFrame, stem: Path) -> list[Path]:
    """Relative error of exp(q.k) estimates against feature count m (log-log), per estimator; one
    panel per input set (``inputs`` column: the teacher's queries and keys, a Gaussian control)."""
    groups = list(frame.groupby("inputs", sort=False)) if "inputs" in frame.columns else [("", frame)]
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
    for ax, (inputs, part) in zip(axes[0], groups):
        for est, g in part.groupby("estimator", sort=False):
            curve = g.groupby("m")["rel_error"].mean()
            ax.loglog(curve.index, curve.values, marker="o", label=est)
        ax.set_xlabel("feature count m")
        ax.set_ylabel("mean relative error of exp(q.k)")
        ax.set_title(f"Kernel approximation error{f' ({inputs})' if inputs else ''}")
        ax.legend(fontsize=8)
    return save(fig, stem)


def plot_mqar(frame: pd.DataFrame, stem: Path) -> list[Path]:
    """MQAR accuracy against decoding state size per method (Zoology Fig. 2 style)."""
    fig, ax = plt.subplots(figsize=(5, 4))
    for method, g in frame.groupby("method", sort=False):
        g = g.sort_values("state_size")
        ax.plot(g["state_size"], g["accuracy"], marker="o", label=method)
    ax.set_xscale("log")
    ax.set_xlabel("decoding state size (numbers per sequence)")
    ax.set_ylabel("MQAR accuracy")
    ax.legend(fontsize=7)
    return save(fig, stem)
