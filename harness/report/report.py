"""``results/<profile>/REPORT.md``: each of our tables beside the paper's, and what agrees.

Everything here is read from files a run wrote (``results/<profile>/<experiment>/``) and from the
paper's transcribed numbers (``results/paper/``); nothing is typed by hand. Where our ranking of
methods can be set against the paper's, Kendall's tau (``scipy.stats.kendalltau``) says how well
they agree, and the report says so in words.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from scipy.stats import kendalltau

from harness.io import atomic_write_text

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
    "mqar",
)


def _read(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.exists() else None


def _md(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False, floatfmt=".4g")


def paper_wide(paper_dir: Path, table: str, index: str = "model") -> pd.DataFrame | None:
    """The paper's table as published (rows x tasks)."""
    tidy = _read(paper_dir / f"{table}.csv")
    if tidy is None:
        return None
    return tidy.pivot_table(index=index, columns="task", values="value", sort=False).reset_index()


def ranking_agreement(ours: pd.Series, paper: pd.Series) -> dict[str, Any]:
    """Kendall's tau between two scores over their common methods (higher = better in both)."""
    common = [m for m in ours.index if m in paper.index and pd.notna(ours[m]) and pd.notna(paper[m])]
    if len(common) < 3:
        return {"n": len(common), "tau": None, "p": None, "common": common}
    res = kendalltau([ours[m] for m in common], [paper[m] for m in common])
    return {"n": len(common), "tau": float(res.statistic), "p": float(res.pvalue), "common": common}


def describe_tau(agree: dict[str, Any], what: str) -> str:
    if agree["tau"] is None:
        return f"Too few methods in common ({agree['n']}) to compare rankings by {what}."
    tau = agree["tau"]
    verdict = (
        "agrees with"
        if tau >= 0.6
        else "partly agrees with"
        if tau >= 0.2
        else "does not agree with"
        if tau > -0.2
        else "reverses"
    )
    return (
        f"Ranking by {what}: Kendall's tau = {tau:.2f} (p = {agree['p']:.2f}, {agree['n']} methods) — our ranking "
        f"{verdict} the paper's."
    )


def table2_section(out: Path, paper_dir: Path) -> list[str]:
    table = _read(out / "table.csv")
    lines = []
    if table is None:
        return ["(not run)"]
    lines += ["**Ours** (mean over seeds; `sd` = standard deviation):", "", _md(table), ""]
    paper = paper_wide(paper_dir, "table2_methods")
    if paper is not None:
        lines += ["**Paper** (Table 2, converted from Pythia-410M):", "", _md(paper), ""]
        paper_avg = paper.set_index("model")["avg"]
        paper_scores = pd.Series({m: paper_avg.get(row) for m, row in PAPER_ROWS.items() if m != "softmax"})
        t = table.set_index("method")
        for col, sign, what in (
            ("next_line", 1, "next-line accuracy"),
            ("heldout_ppl bpb", -1, "held-out bits per byte"),
        ):
            if col in t.columns:
                agree = ranking_agreement(sign * t[col], paper_scores)
                lines.append(f"- {describe_tau(agree, what)} (paper: average accuracy)")
        if "avg" in t.columns and t["avg"].notna().any():
            agree = ranking_agreement(t["avg"], paper_scores)
            lines.append(f"- {describe_tau(agree, 'average accuracy')}")
        for col, what, pick in (
            ("next_line", "next-line accuracy", "idxmax"),
            ("heldout_ppl bpb", "bits per byte", "idxmin"),
        ):
            best = _best_by(t, col, pick)
            if best is not None:
                noise = _noise(t, col, pick)
                lines.append(f"- Best converted method by {what}: **{best}**; the paper's best: **DiJiang**.{noise}")
    return lines


def _converted(t: pd.DataFrame) -> pd.DataFrame:
    """The rows of *converted* methods (the teacher and from-scratch models are left out)."""
    from harness.registry import get_method, list_methods

    return t.loc[[m for m in t.index if m != "softmax" and m in list_methods() and get_method(m).convertible]]


def _best_by(t: pd.DataFrame, col: str, pick: str) -> str | None:
    conv = _converted(t)
    if col not in conv.columns or not conv[col].notna().any():
        return None
    return str(getattr(conv[col], pick)())


def _noise(t: pd.DataFrame, col: str, pick: str) -> str:
    """Whether the converted methods' means differ by more than their seed noise (3 x the median
    per-seed sd x sqrt(2 / seeds), as in :mod:`harness.report.compare`); a ranking inside the noise is
    no ranking."""
    conv = _converted(t)
    if f"{col} sd" not in conv.columns or "seeds" not in conv.columns or not conv[f"{col} sd"].notna().any():
        return ""
    noise = 3 * float(conv[f"{col} sd"].median()) * (2 / max(1.0, float(conv["seeds"].median()))) ** 0.5
    ordered = conv[col].sort_values(ascending=pick == "idxmax")  # best last
    gap = float(abs(ordered.iloc[-1] - ordered.iloc[-2])) if len(ordered) > 1 else float("nan")
    spread = float(abs(ordered.iloc[-1] - ordered.iloc[0]))
    if spread <= noise:
        return (
            f" All converted methods lie within {spread:.3g} of each other, inside the seed noise ({noise:.3g}): "
            "no ranking."
        )
    if gap <= noise:
        return f" Its lead over the next method ({gap:.3g}) is inside the seed noise ({noise:.3g})."
    return ""


def scale_section(out: Path, paper_dir: Path, paper_table: str) -> list[str]:
    table = _read(out / "table.csv")
    if table is None:
        return ["(not run)"]
    lines = ["**Ours:**", "", _md(table), ""]
    paper = paper_wide(paper_dir, paper_table)
    if paper is not None:
        lines += [f"**Paper** ({paper_table.replace('_', ' ')}):", "", _md(paper), ""]
    if "avg" in table.columns or "next_line" in table.columns:
        col = "avg" if "avg" in table.columns and table["avg"].notna().any() else "next_line"
        gaps = []
        for teacher, g in table.groupby("teacher", sort=False):
            base = g[g.method == "softmax"][col]
            conv = g[g.method != "softmax"][col]
            if len(base) and len(conv):
                gaps.append(f"{teacher}: {conv.iloc[0] - base.iloc[0]:+.3f}")
        if gaps:
            lines.append(f"- Converted minus teacher ({col}): " + ", ".join(gaps) + ".")
    return lines


def speed_section(out: Path, paper_dir: Path) -> list[str]:
    """Fig. 4: decoding and prefill throughput per method against L, with the speedups over softmax
    that the benchmark's own analysis (:func:`harness.bench.analysis.analyse`) computes, beside the
    DiJiang/Transformer ratio of the official README's plot."""
    from harness.bench.analysis import REFERENCE, analyse

    rows = _read(out / "results.csv")
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
        lines += [f"**{shape}, {phase}** — tokens/s (x {REFERENCE}, same sweep):", "", _md(cells), ""]
        if phase == "prefill" and "mem_peak_bytes" in g.columns:
            mem = g.pivot_table(index="method", columns="seq_len", values="mem_peak_bytes") / 2**20
            mem = mem.loc[tps.index.intersection(mem.index, sort=False)].reset_index()
            mem.columns = ["method", *[f"{c:,}" for c in mem.columns[1:]]]
            lines += [f"**{shape}, prefill peak memory** (MiB):", "", _md(mem), ""]
    paper = _read(paper_dir / "speed_readme_plot.csv")
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
                _md(comp),
                "",
            ]
    return lines


def kernel_section(out: Path) -> list[str]:
    """The ablation's slopes, and whether they show the paper's rates: Monte Carlo error ~ m^-1/2,
    quasi-Monte Carlo (PFF, WDCF) ~ m^-1."""
    lines = generic_section(out)
    table = _read(out / "table.csv")
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


def generic_section(out: Path) -> list[str]:
    table = _read(out / "table.csv")
    if table is None:
        table = _read(out / "results.csv")
        if table is not None and len(table) > 40:
            return [f"(see `{(out / 'results.csv').name}`: {len(table)} rows)"]
    return [_md(table), ""] if table is not None else ["(not run)"]


def write_report(profile: str, results_dir: Path) -> Path:
    root = results_dir / profile
    paper_dir = PAPER_DIR
    metas = {p.parent.name: json.loads(p.read_text()) for p in sorted(root.glob("*/meta.json"))}
    env = next(iter(metas.values()), {}).get("environment", {})
    lines = [
        f"# Reproduction report — profile `{profile}`",
        "",
        "Every number below was produced by `./reproduce.sh --profile " + profile + "` on the machine described here; "
        "the paper's numbers come from `results/paper/` (transcribed from the paper). Where our results "
        "disagree with the paper, the report says so.",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in env.items()],
        "",
        f"Wall time, summed over the experiments' last invocations: {sum(m['wall_time_s'] for m in metas.values()):.0f}"
        " s "
        "(a fresh run's total; less where an invocation reused earlier runs).",
        "",
    ]
    from harness.pipeline.spec import experiment_names

    missing = [n for n in experiment_names() if n not in metas]
    if missing:
        lines += [
            f"**Not yet run at this profile:** {', '.join(missing)} "
            f"(`./reproduce.sh --profile {profile} --only {' '.join(missing)}`).",
            "",
        ]
    for name in SECTIONS:
        if name not in metas:
            continue
        meta, out = metas[name], root / name
        lines += [f"## {name} — {meta['paper_ref']}", "", meta["description"], ""]
        if name == "table2_methods":
            lines += table2_section(out, paper_dir)
        elif name == "table1_scale":
            lines += scale_section(out, paper_dir, "table1_scale")
        elif name == "table3_7b":
            lines += scale_section(out, paper_dir, "table3_7b")
        elif name == "fig4_speed_memory":
            lines += speed_section(out, paper_dir)
        elif name == "kernel_ablation":
            lines += kernel_section(out)
        else:
            lines += generic_section(out)
        for note in meta.get("notes", []):
            lines.append(f"- {note}")
        for fig in meta.get("figures", []):
            if fig.endswith(".png"):
                lines += ["", f"![{name}]({name}/{fig})"]
        lines += [
            "",
            f"_Wall time of the invocation that wrote these results: {meta['wall_time_s']:.0f} s (training runs "
            "it reused from earlier invocations are not counted)._",
            "",
        ]
    path = root / "REPORT.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
