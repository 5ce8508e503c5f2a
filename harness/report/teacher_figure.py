"""The shipped teacher's convergence curve as a figure: validation bits per byte against
pretraining tokens, each point a finished run of its own schedule (:mod:`harness.pipeline.teachers`).

The report draws it beside the curve's table, so "train until more tokens stop paying" is seen, not
only read: the shipped budget is marked, and each doubling is labelled with what it gained.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.report.figures import plt
from harness.util.io import atomic_open


def plot_teacher_curve(curve: pd.DataFrame, name: str, shipped_tokens: int, threshold: float, path: Path) -> Path:
    """``curve`` (columns ``tokens``, ``val_bpb``, ``gain``) on a log2 token axis, the shipped budget
    circled, each point after the first labelled with its doubling's gain (in red where it is under
    ``threshold``); writes the PNG ``path``. PNG only: the report redraws it at every render, and a
    PDF would differ each time by its creation date."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(curve["tokens"], curve["val_bpb"], "o-", color="C0", label=f"{name}: one finished run per budget")
    for tokens, bpb, gain in zip(curve["tokens"], curve["val_bpb"], curve["gain"]):
        if pd.notna(gain):
            colour = "C3" if gain < threshold else "0.3"
            ax.annotate(
                f"{-gain:+.1%}",
                (tokens, bpb),
                textcoords="offset points",
                xytext=(0, 8),
                ha="center",
                fontsize=8,
                color=colour,
            )
    shipped = curve[curve["tokens"] == shipped_tokens]
    ax.plot(
        shipped["tokens"],
        shipped["val_bpb"],
        "o",
        ms=13,
        mfc="none",
        mec="C2",
        mew=2,
        label=f"shipped: {shipped_tokens:,} tokens",
    )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("pretraining tokens")
    ax.set_ylabel("validation bits per byte")
    ax.set_title(f"Teacher convergence (a doubling under {threshold:.0%} stops it)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
