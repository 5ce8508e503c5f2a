"""Log-log plots of throughput and memory against sequence length (paper Fig. 4 style), one figure
per shape and batch size: top row tokens/s of prefill, decoding and a training step plus the prefill
speedup over softmax; bottom row peak memory of each phase plus the decoding cache per sequence. The
transformers reference (``hf-softmax``) is drawn black and dashed and labelled as such."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from harness.bench.reference import display_name
from harness.report.bench_analysis import HF_REFERENCE, REFERENCE, batch_of, ok_rows

PANELS_TOP = [
    ("prefill", "tokens_per_s", "prefill tokens/s"),
    ("decode", "tokens_per_s", "decode tokens/s"),
    ("train", "tokens_per_s", "training step tokens/s"),
]
PANELS_BOTTOM = [
    ("prefill", "mem_peak_bytes", "prefill peak memory (MB)"),
    ("decode", "mem_peak_bytes", "decode peak memory (MB)"),
    ("train", "mem_peak_bytes", "training peak memory (MB)"),
]


def plot_shapes(rows: list[dict[str, Any]], out_stem: Path, title: str = "") -> list[Path]:
    """Write ``<out_stem>-<shape>.png`` and ``.pdf`` (``<out_stem>-<shape>-b<batch>`` for a batch size
    other than 1) for every shape and batch size with measured rows; returns the paths."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    from harness.report.figures import save

    data: dict[tuple[str, int], dict[tuple[str, str], list[tuple[int, dict[str, Any]]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for r in ok_rows(rows):
        data[(r["shape"], batch_of(r))][(r["method"], r["phase"])].append((r["seq_len"], r))
    written: list[Path] = []
    for (shape, batch), series in sorted(data.items()):
        methods = sorted({m for m, _ in series}, key=lambda m: ({REFERENCE: 0, HF_REFERENCE: 1}.get(m, 2), m))
        cmap = plt.get_cmap("tab10")
        style = {m: (cmap(i % 10), "os^vD<>ph*"[i % 10], "-") for i, m in enumerate(methods)}
        if HF_REFERENCE in style:
            style[HF_REFERENCE] = ("black", "x", "--")
        fig, axes = plt.subplots(2, 4, figsize=(18, 8))
        panels = [(0, i, *p) for i, p in enumerate(PANELS_TOP)] + [(1, i, *p) for i, p in enumerate(PANELS_BOTTOM)]
        for row_i, col, phase, field, label in panels:
            ax = axes[row_i][col]
            for m in methods:
                pts = sorted(series.get((m, phase), []), key=lambda p: p[0])
                xs = [L for L, r in pts if r.get(field)]
                ys = [r[field] / (1e6 if "bytes" in field else 1) for L, r in pts if r.get(field)]
                if xs:
                    c, mk, ls = style[m]
                    ax.plot(xs, ys, marker=mk, color=c, ls=ls, label=display_name(m), lw=2 if m == REFERENCE else 1.3)
            ax.set_title(label)
        ax = axes[0][3]  # prefill speedup over softmax
        ref = dict(series.get((REFERENCE, "prefill"), []))
        for m in methods:
            if m == REFERENCE:
                continue
            pts = sorted(series.get((m, "prefill"), []), key=lambda p: p[0])
            xy = [(L, r["tokens_per_s"] / ref[L]["tokens_per_s"]) for L, r in pts if L in ref]
            if xy:
                c, mk, ls = style[m]
                ax.plot([x for x, _ in xy], [y for _, y in xy], marker=mk, color=c, ls=ls, label=display_name(m))
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_title("prefill speedup over softmax (x)")
        ax = axes[1][3]  # cache per sequence
        for m in methods:
            pts = sorted(series.get((m, "prefill"), []), key=lambda p: p[0])
            xs = [L for L, r in pts if r.get("cache_bytes")]
            ys = [r["cache_bytes"] / 1e6 for L, r in pts if r.get("cache_bytes")]
            if xs:
                c, mk, ls = style[m]
                ax.plot(xs, ys, marker=mk, color=c, ls=ls, label=display_name(m))
        ax.set_title("decoding cache per sequence (MB)")
        ticks = FuncFormatter(lambda x, _: f"{x / 1024:g}K" if x >= 1024 else f"{x:g}")
        for ax in axes.flat:
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.xaxis.set_major_formatter(ticks)
            ax.set_xlabel("sequence length L (tokens)")
            ax.grid(True, which="both", alpha=0.3)
        fig.suptitle(f"{shape}, batch {batch}: {title}")
        fig.tight_layout(rect=(0, 0.05, 1, 1))
        handles, labels = axes[0][0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 10), frameon=False)
        suffix = "" if batch == 1 else f"-b{batch}"
        written += save(fig, Path(f"{out_stem}-{shape}{suffix}"), dpi=150)
    return written
