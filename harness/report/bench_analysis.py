"""How cost grows with sequence length: log-log slopes, speedups against softmax, crossovers.

For a cost ``t(L) ~ a L^s``, ``log t = log a + s log L``; ``s`` is fitted by least squares on the
measured points (all of them, and the *tail*: lengths >= 1/4 of the longest measured, where the
asymptotic term dominates). Softmax attention's prefill and training cost is quadratic in L
(Vaswani et al. 2017), so its tail slope tends to 2 once attention outweighs the L-linear
projections and MLP; linear-attention methods (DiJiang Eq. 13 in chunkwise/recurrent form) stay at 1.
Decoding one token costs O(L) with a KV cache and O(1) with a recurrent state, so the time of 128
decoded tokens after an L-token prompt has slope 1 and 0 respectively.

Speedups are ratios of tokens/s against softmax at the same shape, batch size, length and phase,
from the same results file and settings; ``speedup_hf`` is the same ratio against the transformers
reference (``hf-softmax``: transformers' own GPT-NeoX/LLaMA model with SDPA attention and its
``DynamicCache``, :mod:`harness.bench.reference`) where it was measured. A method *crosses* softmax
where that ratio passes 1 (interpolated in log-log between measured lengths, or extrapolated from the
two fitted power laws when it does not cross inside the measured range). Rows without a ``batch``
(older results files) count as batch 1.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

REFERENCE = "softmax"
#: the transformers reference of the benchmark (:mod:`harness.bench.reference`), a second baseline
HF_REFERENCE = "hf-softmax"


def fit_slope(lengths: list[float], values: list[float]) -> dict[str, float] | None:
    """Least-squares fit of ``log v = log a + s log L``: returns ``{"slope", "log_a", "r2"}`` or None
    with fewer than two usable points."""
    pts = [(float(x), float(y)) for x, y in zip(lengths, values) if x and y and x > 0 and y > 0]
    if len(pts) < 2 or len({x for x, _ in pts}) < 2:
        return None
    lx = np.log([x for x, _ in pts])
    ly = np.log([y for _, y in pts])
    s, b = np.polyfit(lx, ly, 1)
    pred = s * lx + b
    ss_res = float(((ly - pred) ** 2).sum())
    ss_tot = float(((ly - ly.mean()) ** 2).sum())
    return {"slope": float(s), "log_a": float(b), "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0}


def tail(lengths: list[int], frac: float = 0.25) -> list[int]:
    """The lengths >= ``frac`` x the longest (at least the two longest)."""
    ls = sorted(set(lengths))
    if len(ls) <= 2:
        return ls
    keep = [x for x in ls if x >= frac * ls[-1]]
    return keep if len(keep) >= 2 else ls[-2:]


def crossover(
    lengths: list[int], ratio: list[float], fit_m: dict[str, float] | None, fit_ref: dict[str, float] | None
) -> dict[str, Any]:
    """Where ``ratio`` (method tokens/s over softmax tokens/s) passes 1.

    Returns ``{"kind": ..., "length": ...}`` with kind ``crosses`` (interpolated in log-log between
    the two measured lengths around the last sign change, after which the method stays faster),
    ``always_faster``, ``never_faster`` (with an ``extrapolated`` length where the fitted power laws
    predict one) or ``none`` (no common points).
    """
    pts = sorted((L, r) for L, r in zip(lengths, ratio) if r and r > 0)
    if not pts:
        return {"kind": "none", "length": None}
    slower = [i for i, (_, r) in enumerate(pts) if r < 1]
    if not slower:
        return {"kind": "always_faster", "length": float(pts[0][0])}
    last = slower[-1]  # the crossing after which the method stays faster (noise may cross back and forth)
    if last < len(pts) - 1:
        (l0, r0), (l1, r1) = pts[last], pts[last + 1]
        f = -math.log(r0) / (math.log(r1) - math.log(r0))
        return {"kind": "crosses", "length": float(math.exp(math.log(l0) + f * (math.log(l1) - math.log(l0))))}
    out: dict[str, Any] = {"kind": "never_faster", "length": float(pts[-1][0]), "extrapolated": None}
    if pts[-1][1] < 1 and fit_m and fit_ref and fit_ref["slope"] > fit_m["slope"] + 0.05:
        # time_m = exp(a_m) L^s_m equals time_ref = exp(a_ref) L^s_ref at L*
        ls = (fit_m["log_a"] - fit_ref["log_a"]) / (fit_ref["slope"] - fit_m["slope"])
        if ls < 60:
            out["extrapolated"] = float(math.exp(ls))
    return out


def ok_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The measured rows (status ``ok`` with a time)."""
    return [r for r in rows if r.get("status") == "ok" and r.get("time_median_s")]


def batch_of(row: dict[str, Any]) -> int:
    """A row's batch size (1 for rows written before it was recorded)."""
    return int(row.get("batch") or 1)


def analyse(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Slopes of time and memory, speedups and crossovers for every shape, batch size, method and phase."""
    by: dict[tuple, dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in ok_rows(rows):
        by[(r["shape"], batch_of(r), r["method"], r["phase"])][r["seq_len"]] = r
    slopes, speedups, crosses, crosses_hf = [], [], [], []
    fits: dict[tuple, dict[str, float] | None] = {}
    for (shape, batch, method, phase), pts in sorted(by.items()):
        ls = sorted(pts)
        tl = tail(ls)
        fit_all = fit_slope(ls, [pts[L]["time_median_s"] for L in ls])
        fit_tail = fit_slope(tl, [pts[L]["time_median_s"] for L in tl])
        mem_tail = fit_slope(tl, [pts[L].get("mem_peak_bytes") or 0 for L in tl])
        fits[(shape, batch, method, phase)] = fit_tail
        slopes.append(
            {
                "shape": shape,
                "batch": batch,
                "method": method,
                "phase": phase,
                "lengths": ls,
                "tail_lengths": tl,
                "time_slope_all": None if fit_all is None else fit_all["slope"],
                "time_slope_tail": None if fit_tail is None else fit_tail["slope"],
                "time_r2_tail": None if fit_tail is None else fit_tail["r2"],
                "mem_slope_tail": None if mem_tail is None else mem_tail["slope"],
            }
        )
    for (shape, batch, method, phase), pts in sorted(by.items()):
        ref = by.get((shape, batch, REFERENCE, phase))
        hf = by.get((shape, batch, HF_REFERENCE, phase)) or {}
        if method != REFERENCE and ref:
            common = sorted(set(pts) & set(ref))
            ratio = [pts[L]["tokens_per_s"] / ref[L]["tokens_per_s"] for L in common]
            mixed = sorted({pts[L]["run_id"] for L in common} | {ref[L]["run_id"] for L in common})
            for L, q in zip(common, ratio):
                speedups.append(
                    {
                        "shape": shape,
                        "batch": batch,
                        "method": method,
                        "phase": phase,
                        "seq_len": L,
                        "speedup": q,
                        "speedup_hf": _ratio(pts[L]["tokens_per_s"], hf[L]["tokens_per_s"]) if L in hf else None,
                        "mem_ratio": _ratio(pts[L].get("mem_peak_bytes"), ref[L].get("mem_peak_bytes")),
                        "same_run": pts[L]["run_id"] == ref[L]["run_id"],
                    }
                )
            key_ref = (shape, batch, REFERENCE, phase)
            c = crossover(common, ratio, fits.get((shape, batch, method, phase)), fits.get(key_ref))
            crosses.append({"shape": shape, "batch": batch, "method": method, "phase": phase, **c, "run_ids": mixed})
        if method != HF_REFERENCE and hf:
            common = sorted(set(pts) & set(hf))
            ratio = [pts[L]["tokens_per_s"] / hf[L]["tokens_per_s"] for L in common]
            key_hf = (shape, batch, HF_REFERENCE, phase)
            c = crossover(common, ratio, fits.get((shape, batch, method, phase)), fits.get(key_hf))
            crosses_hf.append({"shape": shape, "batch": batch, "method": method, "phase": phase, **c})
    return {"slopes": slopes, "speedups": speedups, "crossovers": crosses, "crossovers_hf": crosses_hf}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None
