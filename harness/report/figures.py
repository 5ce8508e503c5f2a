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
    """Accuracy (or ``metric``) against conversion budget: one panel per task, one line per method
    (error bars: the standard error over items), the teacher dashed. Tasks with no value (not
    available offline) are left out."""
    rows = frame[(frame.metric == metric) & frame["value"].notna()]
    tasks = list(dict.fromkeys(rows["task"]))
    cols = min(3, max(1, len(tasks)))
    nrows = max(1, -(-len(tasks) // cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3.5 * nrows), squeeze=False, constrained_layout=True)
    for ax, task in zip(axes.flat, tasks):
        tg = rows[rows.task == task]
        teacher = tg[tg.method == "softmax"]["value"].mean()
        for method, g in tg[tg.method != "softmax"].groupby("method"):
            curve = g.groupby("fraction")["value"].mean()
            err = g.groupby("fraction")["stderr"].mean() if "stderr" in g.columns else None
            ax.errorbar(curve.index, curve.values, yerr=None if err is None else err.values, marker="o", label=method)
        ax.axhline(teacher, ls="--", color="gray", label="teacher")
        ax.set_xscale("log", base=2)
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("conversion budget (fraction of teacher tokens)", fontsize=8)
        ax.set_ylabel(metric)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    fig.suptitle("Recovery against training cost")
    return save(fig, stem)


def plot_recipe_recovery(frame: pd.DataFrame, stem: Path) -> list[Path]:
    """Held-out bits per byte against the conversion budget, one panel per recipe: each method's
    conversion (solid, mean over seeds, bars: min-max over seeds), the same architecture trained
    from scratch on the same tokens (dashed, same colour), and the teacher (gray line)."""
    recipes = list(dict.fromkeys(frame["recipe"]))
    fig, axes = plt.subplots(1, len(recipes), figsize=(4.5 * len(recipes), 3.6), squeeze=False, sharey=True)
    colours = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(frame["method"]))}
    for ax, recipe in zip(axes.flat, recipes):
        g = frame[frame.recipe == recipe]
        for method, gm in g.groupby("method", sort=False):
            by = gm.groupby("fraction")
            conv = by["converted_bpb"].agg(["mean", "min", "max"]).dropna()
            if len(conv):
                err = [conv["mean"] - conv["min"], conv["max"] - conv["mean"]]
                ax.errorbar(conv.index, conv["mean"], yerr=err, marker="o", color=colours[method], label=method)
            scratch = by["scratch_bpb"].mean()
            label = f"{method} scratch"
            ax.plot(scratch.index, scratch.values, ls="--", marker="x", color=colours[method], label=label)
        ax.axhline(frame["teacher_bpb"].mean(), color="gray", label="teacher")
        ax.set_xscale("log", base=2)
        ax.set_title(f"recipe: {recipe}", fontsize=9)
        ax.set_xlabel("budget (fraction of teacher tokens)", fontsize=8)
        ax.legend(fontsize=6)
    axes.flat[0].set_ylabel("held-out bits per byte (lower is better)")
    fig.suptitle("Conversion against training from scratch on the same tokens")
    return save(fig, stem)


def plot_pareto(frame: pd.DataFrame, stem: Path, x: str, y: str = "bpb") -> list[Path]:
    """Quality against decode speed, one point per configuration (``label``); points on the Pareto
    front (no other point both faster and better) are joined and filled."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    front = frame[frame["on_front"]].sort_values(x)
    ax.plot(front[x], front[y], color="gray", lw=1, zorder=1)
    for _, r in frame.iterrows():
        ax.scatter(r[x], r[y], marker="o" if r["on_front"] else "x", zorder=2)
        ax.annotate(r["label"], (r[x], r[y]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel("held-out bits per byte (lower is better)")
    ax.set_title("Hybrids: quality against decoding speed")
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
