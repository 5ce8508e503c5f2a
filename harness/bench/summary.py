"""The markdown summary written next to a sweep's JSON: environment, protocol, throughput and memory
tables with speedups against softmax and against the transformers reference (``hf-softmax``), roofline
columns (the ideal DiJiang/softmax time ratio next to the measured one, :mod:`harness.bench.roofline`),
fitted log-log slopes, crossovers and skipped points; one section per shape and batch size. Decode rows
say how their starting cache was built (a real prefill of the prompt, or a synthetic cache of the same
sizes, :mod:`harness.bench.synthetic_cache`), in the header and, for fallbacks, per cell."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from harness.bench.reference import LABEL, display_name
from harness.bench.roofline import Peaks, roofline_table
from harness.bench.store import prompt_cache_of
from harness.report.bench_analysis import HF_REFERENCE, REFERENCE, analyse, batch_of, ok_rows

#: provenance keys of rows written before the suite's keys were unified (harness.util.provenance) -> old name
LEGACY_KEYS: dict[str, str] = {"torch": "torch_version", "transformers": "transformers_version", "cpu": "cpu_model"}


def _num(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def _mb(x: float | None) -> str:
    return "-" if not x else f"{x / 2**20:,.1f}"


def _length(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _order(method: str) -> tuple[int, str]:
    """softmax first, the transformers reference second, then the rest by name."""
    return ({REFERENCE: 0, HF_REFERENCE: 1}.get(method, 2), method)


def prompt_cache_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Notes on how the decode rows' starting caches were built (nothing without decode rows)."""
    decode = [r for r in rows if r.get("phase") == "decode"]
    modes = sorted({prompt_cache_of(r) for r in decode})
    if not modes:
        return []
    if modes == ["prefill"]:
        return [
            "decode: each point starts from the cache of a real prefill of its L-token prompt "
            "(`--prompt-cache prefill`)."
        ]
    ok = [r for r in decode if r.get("status") == "ok" and prompt_cache_of(r) == "synthetic"]
    probes = sorted({r["prompt_prefilled_tokens"] for r in ok if r.get("prompt_cache_built") == "synthetic"})
    fell = sorted({r["method"] for r in ok if r.get("prompt_cache_note")})
    probed = ", ".join(map(str, probes)) or "a few"
    line = (
        f"decode (`--prompt-cache {' and '.join(modes)}`): a synthetic point starts from a cache with exactly the "
        "sizes and position counters a real prefill of its L-token prompt leaves (KV caches tiled to L, recurrent "
        f"states kept, counters advanced to L), grown from a real prefill of {probed} tokens "
        "(`harness/bench/synthetic_cache.py`): a decoding step's cost depends on the cache's sizes only, not its "
        "values. Prefill and training rows are unaffected."
    )
    if fell:
        line += f" ‡: no synthetic cache for {', '.join(fell)} (see the decode tables' notes): a real prefill instead."
    return [line]


_PHASES = (
    ("prefill", "tokens/s of a forward pass over L tokens"),
    ("decode", "tokens/s decoding after an L-token prompt"),
    ("train", "tokens/s of forward + backward"),
)
_FIELDS = (
    "git_commit",
    "torch",
    "transformers",
    "device_name",
    "cpu",
    "threads",
    "dtype",
    "decode_tokens",
    "max_seq_len_policy",
    "budget_s",
    "mem_method",
)


def render(rows: list[dict[str, Any]], notes: list[str] | None = None, peaks: Peaks | None = None) -> str:
    """Markdown for ``rows`` (one results file, one set of settings per shape and batch size).
    ``peaks``: the device numbers of the roofline columns (default: those recorded on the rows)."""
    an = analyse(rows)
    roof = roofline_table(rows, peaks)
    out = _preamble_lines(rows)
    notes = [*(notes or []), *prompt_cache_lines(rows)]
    out += [f"- {n}" for n in notes] + ([""] if notes else [])
    speed = {(s["shape"], s["batch"], s["method"], s["phase"], s["seq_len"]): s for s in an["speedups"]}
    by_shape: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_shape[(r["shape"], batch_of(r))].append(r)
    for (shape, batch), srows in sorted(by_shape.items()):
        kind = srows[0].get("shape_kind")
        out.append(f"## {shape} ({'one block' if kind == 'layer' else 'whole model'}), batch {batch}\n")
        for phase, what in _PHASES:
            if any(r["phase"] == phase for r in srows):
                out += _throughput_lines(srows, phase, what, speed)
        out += _memory_lines(srows)
        out += _roofline_lines([x for x in roof if x["shape"] == shape and x["batch"] == batch])
        out += _slope_lines([s for s in an["slopes"] if s["shape"] == shape and s["batch"] == batch])
        for key, ref in (("crossovers", REFERENCE), ("crossovers_hf", HF_REFERENCE)):
            out += _crossover_lines(
                [c for c in an[key] if c["shape"] == shape and c["batch"] == batch and c["method"] != REFERENCE], ref
            )
    out += _skipped_lines([r for r in rows if r["status"] != "ok"])
    return "\n".join(out) + "\n"


def _preamble_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The title, what the numbers are, and the settings the rows were measured under."""
    ok = ok_rows(rows)
    first = ok[0] if ok else (rows[0] if rows else {})
    out = [
        "# Benchmark: throughput and memory against sequence length\n",
        "Generated by `python -m harness bench` from the JSON rows beside this file; every number below",
        "comes from those rows. Speedups are tokens/s ratios against softmax at the same shape, batch size,",
        "length and phase, measured in the same sweep settings; `hf` ratios are against `hf-softmax`, the",
        f"{LABEL} (transformers' own GPT-NeoX/LLaMA model of the shape, SDPA attention, its default",
        "`DynamicCache`: what the paper compared against and what users run).\n",
    ]
    if not first:
        return out
    out.append("| field | value |\n|---|---|")
    out += [f"| {k} | {first.get(k, first.get(LEGACY_KEYS.get(k, k)))} |" for k in _FIELDS]
    decode_modes = sorted({prompt_cache_of(r) for r in rows if r.get("phase") == "decode"})
    if decode_modes:
        out.append(f"| prompt_cache (decode) | {', '.join(decode_modes)} |")
    dates = sorted(r["date"] for r in rows)
    out.append(f"| dates | {dates[0]} .. {dates[-1]} |")
    out.append(f"| runs (run_id) | {', '.join(sorted({r['run_id'] for r in rows}))} |\n")
    return out


def _throughput_lines(
    srows: list[dict[str, Any]], phase: str, what: str, speed: dict[tuple, dict[str, Any]]
) -> list[str]:
    """One shape and batch size's tokens/s table of ``phase``: a row per method, a column per length,
    each cell with its speedups, then the notes of the prompt caches that fell back (‡)."""
    lengths = sorted({r["seq_len"] for r in srows})
    methods = sorted({r["method"] for r in srows}, key=_order)
    cell = {(r["method"], r["phase"], r["seq_len"]): r for r in srows}
    if phase == "decode" and any(r.get("prompt_cache_built") == "synthetic" for r in srows):
        what += ", from a synthetic prompt cache of the same sizes (see the notes above)"
    out = [
        f"**{phase}** — {what} (x speedup vs softmax; `hf`: vs the {LABEL}; † where method and softmax "
        "were measured in different invocations of a resumed sweep; `skip` = skipped, see below)\n",
        "| method | " + " | ".join(f"{L:,}" for L in lengths) + " |",
        "|---|" + "---:|" * len(lengths),
    ]
    for m in methods:
        cells = []
        for L in lengths:
            r = cell.get((m, phase, L))
            if r is None:
                cells.append("")
            elif r["status"] != "ok":
                cells.append("skip")
            else:
                sp = speed.get((r["shape"], batch_of(r), m, phase, L))
                mark = "" if not sp or sp["same_run"] else "†"
                fell = "‡" if r.get("prompt_cache_note") else ""
                ratios = [f"{sp['speedup']:.2f}x{mark}"] if sp else []
                if sp and sp.get("speedup_hf") and m != HF_REFERENCE:
                    ratios.append(f"{sp['speedup_hf']:.2f}x hf")
                cells.append(_num(r["tokens_per_s"]) + fell + (f" ({'; '.join(ratios)})" if ratios else ""))
        out.append(f"| {display_name(m)} | " + " | ".join(cells) + " |")
    out.append("")
    fallbacks = [
        r
        for r in sorted(srows, key=lambda r: (_order(r["method"]), r["seq_len"]))
        if r["phase"] == phase and r["status"] == "ok" and r.get("prompt_cache_note")
    ]
    out += [f"- ‡ {display_name(r['method'])}, L = {r['seq_len']:,}: {r['prompt_cache_note']}" for r in fallbacks]
    return out + ([""] if fallbacks else [])


def _memory_lines(srows: list[dict[str, Any]]) -> list[str]:
    """One shape and batch size's peak memory per phase and decoding cache, per method and length."""
    lengths = sorted({r["seq_len"] for r in srows})
    methods = sorted({r["method"] for r in srows}, key=_order)
    cell = {(r["method"], r["phase"], r["seq_len"]): r for r in srows}
    out = [
        "**peak memory** (MB above weights and inputs; prefill / decode / train) and **decoding cache**",
        "per sequence after L tokens (MB; declared `state_size` numbers vs measured `MixerCache.numel()`)\n",
        "| method | L | prefill MB | decode MB | train MB | cache MB | state_size | cache numel |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in methods:
        for L in lengths:
            p, d, t = (cell.get((m, ph, L)) for ph in ("prefill", "decode", "train"))
            if not any(x and x["status"] == "ok" for x in (p, d, t)):
                continue
            pok = p if p and p["status"] == "ok" else {}
            mem = [_mb(x.get("mem_peak_bytes")) if x and x["status"] == "ok" else "-" for x in (p, d, t)]
            out.append(
                f"| {display_name(m)} | {L:,} | {' | '.join(mem)} | {_mb(pok.get('cache_bytes'))} | "
                f"{_length(pok.get('state_size_declared'))} | {_length(pok.get('cache_numel'))} |"
            )
    return out + [""]


def _slope_lines(slopes: list[dict[str, Any]]) -> list[str]:
    """The log-log slopes of time (and memory) against length, per method and phase."""
    if not slopes:
        return []
    out = [
        "**log-log slopes** of time against L (tail: lengths >= 1/4 of the longest measured;",
        "expected at long L: softmax prefill/train -> 2, decode -> 1; linear methods -> 1, decode -> 0)\n",
        "| method | phase | tail lengths | time slope (tail) | time slope (all) | memory slope (tail) |",
        "|---|---|---|---:|---:|---:|",
    ]
    for s in sorted(slopes, key=lambda s: (_order(s["method"]), s["phase"])):
        tl = s["tail_lengths"]
        out.append(
            f"| {display_name(s['method'])} | {s['phase']} | {tl[0]:,}..{tl[-1]:,} | "
            f"{_num(s['time_slope_tail'], 2)} | {_num(s['time_slope_all'], 2)} | "
            f"{_num(s['mem_slope_tail'], 2)} |"
        )
    return out + [""]


def _crossover_lines(crossovers: list[dict[str, Any]], ref: str) -> list[str]:
    """Where each method's tokens/s passes the reference's (``softmax`` or ``hf-softmax``)."""
    if not crossovers:
        return []
    out = [
        f"**crossover with {display_name(ref)}** (where the method's tokens/s passes {ref}'s)\n",
        "| method | phase | crossover |",
        "|---|---|---|",
    ]
    for c in sorted(crossovers, key=lambda c: (_order(c["method"]), c["phase"])):
        out.append(f"| {display_name(c['method'])} | {c['phase']} | {_describe(c)} |")
    return out + [""]


def _skipped_lines(skipped: list[dict[str, Any]]) -> list[str]:
    """The points not measured, with why."""
    if not skipped:
        return []
    out = [
        "## Skipped points\n",
        "| shape | batch | method | L | phase | kind | reason |",
        "|---|---:|---|---:|---|---|---|",
    ]
    for r in sorted(skipped, key=lambda r: (r["shape"], batch_of(r), r["method"], r["seq_len"], r["phase"])):
        reason = str(r.get("skip_reason", "")).replace("|", "/").replace("\n", " ")
        out.append(
            f"| {r['shape']} | {batch_of(r)} | {r['method']} | {r['seq_len']:,} | {r['phase']} | "
            f"{r.get('skip_kind')} | {reason} |"
        )
    return out + [""]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _roofline_lines(roof: list[dict[str, Any]]) -> list[str]:
    """The roofline table of one shape and batch size (:func:`harness.bench.roofline.roofline_table`)."""
    if not roof:
        return []
    p = roof[0]
    out = [
        "**roofline** — DiJiang/softmax time ratio: ideal (from FLOPs and bytes moved, "
        "`harness.bench.roofline.phase_cost`; time = max(FLOPs / peak FLOP/s, bytes / bandwidth) with "
        f"{p['peak_flops'] / 1e9:,.1f} GFLOP/s and {p['peak_bandwidth'] / 1e9:,.1f} GB/s, {p['peak_source']}) "
        "against measured (median times); *fraction of ideal* = ideal / measured ratio (1: DiJiang gains all "
        "the roofline allows over softmax); *efficiency* = ideal / measured time of each method; "
        "*bound*: which roofline side (compute/memory) the ideal sits on, DiJiang / softmax\n",
        "| method | phase | L | ideal ratio | measured ratio | fraction of ideal | measured vs hf-softmax | "
        "DiJiang efficiency | softmax efficiency | bound |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for x in sorted(roof, key=lambda x: (x["method"], PHASE_ORDER.get(x["phase"], 9), x["seq_len"])):
        out.append(
            f"| {x['method']} | {x['phase']} | {x['seq_len']:,} | {x['ideal_ratio']:.3g} | "
            f"{x['measured_ratio']:.3g} | {x['fraction_of_ideal']:.2f} | {_num(x['measured_ratio_hf'])} | "
            f"{_pct(x['efficiency'])} | {_pct(x['efficiency_softmax'])} | {x['bound']} / {x['bound_softmax']} |"
        )
    out.append("")
    return out


PHASE_ORDER = {"prefill": 0, "decode": 1, "train": 2}


def _describe(c: dict[str, Any]) -> str:
    k = c["kind"]
    if k == "crosses":
        return f"crosses at L ~ {c['length']:,.0f}"
    if k == "always_faster":
        return f"faster at every measured L (from {c['length']:,.0f})"
    if k == "never_faster":
        ext = c.get("extrapolated")
        tail = f"; power-law fits cross at L ~ {ext:,.0f}" if ext else "; the fitted slopes do not cross"
        return f"slower at every measured L (up to {c['length']:,.0f}){tail}"
    return "no common lengths with softmax"
