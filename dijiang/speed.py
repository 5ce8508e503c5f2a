"""Speed of one DiJiang attention op against softmax attention and the official quadratic form.

``python -m dijiang.speed`` times, in one run, one attention op (batch 1, 8 heads, head size 64,
float32 by default) at 2048 and 8192 tokens — SDPA and ours interleaved round-robin, so load from other
processes hits them alike:

* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)``;
* ``official``: the official code's quadratic form (timed right after the others: its T x T tensors,
  2 GiB each at 8192 tokens, would otherwise perturb them) — ``softmax(q P) * D1``, ``softmax(k P) * D2``,
  ``S = (q' k'^T) * mask``, ``O = S V`` with a materialised float causal mask (the official code keeps
  one per head; we keep one (T, T) mask shared by the heads, the same arithmetic with less memory);
* ``chunk``: ours — WDCF features (paper Eq. 12, exactly as the ``dijiang`` mixer computes them) and
  the chunkwise form with per-head decay (:func:`harness.core.ops.linear_attention.linear_attention`);
  ``chunk-core`` is the chunkwise form alone, given the features.

It reports milliseconds (minimum and median over repetitions), speed-ups measured side by side, and
achieved GFLOP/s against the machine's measured float32 matmul peak (the best of square ``torch.mm``
products at the same thread count). Then it times ``recurrent`` decoding, one token at a time with the
state of a 512- and a 32768-token context, against softmax decoding with a KV cache, and reports the
state memory per sequence.

``--threads N`` sets torch's thread count; ``--keep-freed-memory`` lets glibc keep freed memory for
reuse (the ``"keep"`` policy of :func:`harness.util.timing.set_malloc_policy`; by default large tensors
page-fault afresh on every call). Timing and provenance are the suite's own (:mod:`harness.util.timing`,
:mod:`harness.util.provenance`).

Results (table on stdout, JSON and markdown) go to ``results/op_speed/op_speed_<UTC time>.{json,md}``
(never overwritten) and ``latest.{json,md}`` beside them. No timing is asserted anywhere: this is a
measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import harness.core.ops.linear_attention as la
from dijiang.decay import PerHeadDecay, official_position_decay
from dijiang.features import SoftmaxDCTFeatures, WDCFeatures
from harness.core.ops.linear_attention import linear_attention
from harness.util.io import atomic_write_text
from harness.util.provenance import environment
from harness.util.timing import set_malloc_policy, time_round_robin

DEFAULT_OUT = Path("results/op_speed")
TARGETS = {"chunk_vs_sdpa_2048": 3.0, "chunk_vs_sdpa_8192": 8.0, "chunk_vs_official_8192": 50.0, "decode_ratio": 1.2}


# -- metadata ---------------------------------------------------------------------------------------
def load_average() -> list[float] | None:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def metadata(dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
    """The run's provenance (:func:`harness.util.provenance.environment`) and the load average at its start."""
    return {**environment(device, dtype, packages=("torch",)), "load_average_start": load_average()}


def matmul_peak(
    dtype: torch.dtype, device: torch.device, sizes: tuple[int, ...] = (1024, 2048, 4096), reps: int = 5
) -> dict[str, float]:
    """Best GFLOP/s of square ``torch.mm`` products of the given sizes."""
    best: dict[str, float] = {}
    for n in sizes:
        a = torch.randn(n, n, dtype=dtype, device=device)
        b = torch.randn(n, n, dtype=dtype, device=device)
        t = min(time_round_robin({"mm": lambda a=a, b=b: a @ b}, {"mm": reps}, device)["mm"])
        best[str(n)] = 2 * n**3 / t / 1e9
    best["peak"] = max(best.values())
    return best


# -- the ops ----------------------------------------------------------------------------------------
class OpInputs:
    """Random q, k, v (1, H, T, d) and the fixed pieces of each method."""

    def __init__(self, T: int, H: int, d: int, dtype: torch.dtype, device: torch.device, seed: int = 0) -> None:
        g = torch.Generator(device="cpu").manual_seed(seed)
        self.q, self.k, self.v = (torch.randn(1, H, T, d, generator=g).to(device=device, dtype=dtype) for _ in range(3))
        self.T, self.H, self.d = T, H, d
        self.wdcf = WDCFeatures(d, H, input_scale=d**-0.25).to(device=device, dtype=dtype)
        self.decay = PerHeadDecay(H).to(device=device)
        self.official_features = SoftmaxDCTFeatures(d).to(device=device, dtype=dtype)
        d1, d2 = official_position_decay(H, T)
        self.d1 = d1[None, :, :, None].to(device=device, dtype=dtype)  # (1, H, T, 1) as the official code
        self.d2 = d2[None, :, :, None].to(device=device, dtype=dtype)
        self._mask: torch.Tensor | None = None

    def official_mask(self) -> torch.Tensor:
        """The official form's float causal mask (T, T), built once outside the timed calls."""
        if self._mask is None:
            self._mask = torch.tril(torch.ones(self.T, self.T, dtype=self.q.dtype, device=self.q.device))
        return self._mask

    def features(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.wdcf(self.q, True), self.wdcf(self.k, False)


def sdpa(x: OpInputs) -> torch.Tensor:
    return F.scaled_dot_product_attention(x.q, x.k, x.v, is_causal=True)


def official_quadratic(x: OpInputs) -> torch.Tensor:
    """The official ``_attn`` (modeling_gpt_neox_dijiang.py): quadratic, no denominator."""
    fq = x.official_features(x.q, True) * x.d1
    fk = x.official_features(x.k, False) * x.d2
    scores = (fq @ fk.transpose(-1, -2)) * x.official_mask()
    return scores @ x.v


def chunk(x: OpInputs, chunk_size: int) -> torch.Tensor:
    fq, fk = x.features()
    return linear_attention(fq, fk, x.v, form="chunk", log_decay=x.decay(), chunk_size=chunk_size)[0]


def flops(method: str, T: int, H: int, d: int, chunk_size: int) -> float:
    """Floating-point operations (multiply-adds x 2) of the matmuls each method executes."""
    m = dv = d
    if method == "sdpa":  # causal: half of QK^T and PV are needed
        return 2.0 * H * T * T * d
    if method == "official":  # full QK^T and SV, plus the two feature projections
        return 4.0 * H * T * T * d + 4.0 * H * T * d * m
    C = min(chunk_size, T)
    core = 2.0 * H * T * C * (m + dv) + 4.0 * H * T * m * dv  # intra QK^T, SV; inter q@S, k^T v
    return core + (4.0 * H * T * d * m if method == "chunk" else 0.0)


# -- decoding ---------------------------------------------------------------------------------------
class DecodeCase:
    """Decoding after a context of ``L`` tokens: ours (recurrent form: WDCF features of the new token
    and the state update, from the state a chunk-form prefill left) and softmax attention reading a KV
    cache of that length (SDPA with one query)."""

    def __init__(
        self, L: int, H: int, d: int, dtype: torch.dtype, device: torch.device, steps: int, chunk_size: int
    ) -> None:
        self.L = L
        self.x = x = OpInputs(L, H, d, dtype, device, seed=1)
        with torch.inference_mode():
            fq, fk = x.features()
            self.ld = x.decay()
            _, self.state = linear_attention(
                fq, fk, x.v, form="chunk", log_decay=self.ld, output_final_state=True, chunk_size=chunk_size
            )
            g = torch.Generator(device="cpu").manual_seed(2)
            self.new = [torch.randn(3, 1, H, 1, d, generator=g).to(device=device, dtype=dtype) for _ in range(steps)]
            pad = torch.zeros(1, H, steps, d, dtype=dtype, device=device)
            self.k_cache = torch.cat([x.k, pad], dim=2)
            self.v_cache = torch.cat([x.v, pad], dim=2)
        self.elem = torch.finfo(dtype).bits // 8
        self.kv_bytes = 2 * H * L * d * self.elem

    def ours(self) -> None:
        s = self.state
        for q1, k1, v1 in self.new:
            fq1, fk1 = self.x.wdcf(q1, True), self.x.wdcf(k1, False)
            _, s = linear_attention(
                fq1, fk1, v1, form="recurrent", log_decay=self.ld, initial_state=s, output_final_state=True
            )

    def softmax(self) -> None:
        for i, (q1, k1, v1) in enumerate(self.new):
            n = self.L + i
            self.k_cache[:, :, n : n + 1] = k1
            self.v_cache[:, :, n : n + 1] = v1
            F.scaled_dot_product_attention(q1, self.k_cache[:, :, : n + 1], self.v_cache[:, :, : n + 1])


def decode_times(
    contexts: tuple[int, ...],
    H: int,
    d: int,
    dtype: torch.dtype,
    device: torch.device,
    steps: int,
    chunk_size: int,
    reps: int,
) -> list[dict[str, Any]]:
    """Per-token decoding times for every context, all cases interleaved in one round robin."""
    cases = {L: DecodeCase(L, H, d, dtype, device, steps, chunk_size) for L in contexts}
    fns: dict[str, Callable[[], Any]] = {}
    for L, case in cases.items():
        fns[f"ours@{L}"] = case.ours
        fns[f"softmax@{L}"] = case.softmax
    t = time_round_robin(fns, {n: reps for n in fns}, device)
    return [
        {
            "context": L,
            "ours_us_per_token": min(t[f"ours@{L}"]) / steps * 1e6,
            "ours_us_per_token_median": statistics.median(t[f"ours@{L}"]) / steps * 1e6,
            "softmax_kv_us_per_token": min(t[f"softmax@{L}"]) / steps * 1e6,
            "ours_state_bytes": case.state.numel() * case.elem,
            "softmax_kv_cache_bytes": case.kv_bytes,
        }
        for L, case in cases.items()
    ]


# -- the run ----------------------------------------------------------------------------------------
def run(
    lengths: tuple[int, ...] = (2048, 8192),
    heads: int = 8,
    head_dim: int = 64,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    chunk_size: int = 64,
    reps: int = 7,
    official_reps: int = 3,
    decode_contexts: tuple[int, ...] = (512, 32768),
    decode_steps: int = 64,
    peak_sizes: tuple[int, ...] = (1024, 2048, 4096),
) -> dict[str, Any]:
    """Measure everything; returns the result dict (see the module docstring)."""
    dev = torch.device(device)
    result: dict[str, Any] = {"meta": metadata(dtype, dev)}
    result["config"] = {
        "batch": 1,
        "heads": heads,
        "head_dim": head_dim,
        "lengths": list(lengths),
        "chunk_size": chunk_size,
        "reps": reps,
        "official_reps": official_reps,
        "decode_contexts": list(decode_contexts),
        "decode_steps": decode_steps,
        "statistic": "minimum over repetitions (median also reported)",
        "block_tokens": la.BLOCK_TOKENS,
    }
    result["matmul_gflops"] = matmul_peak(dtype, dev, peak_sizes)
    peak = result["matmul_gflops"]["peak"]
    rows = []
    for T in lengths:
        x = OpInputs(T, heads, head_dim, dtype, dev)
        fq, fk = x.features()
        ld = x.decay().detach()
        fns = {
            "sdpa": lambda x=x: sdpa(x),
            "chunk": lambda x=x: chunk(x, chunk_size),
            "chunk-core": lambda fq=fq, fk=fk, x=x, ld=ld: linear_attention(
                fq, fk, x.v, form="chunk", log_decay=ld, chunk_size=chunk_size
            ),
        }
        times = time_round_robin(fns, {n: reps for n in fns}, dev)
        # the official form allocates T x T tensors (2 GiB each at 8192 tokens); timed right after the
        # others, not interleaved, so its page faults do not slow them down
        official = {"official": lambda x=x: official_quadratic(x)}
        times["official"] = time_round_robin(official, {"official": official_reps}, dev)["official"]
        for name, ts in times.items():
            f = flops(name, T, heads, head_dim, chunk_size)
            best = min(ts)
            rows.append(
                {
                    "method": name,
                    "tokens": T,
                    "ms_min": best * 1e3,
                    "ms_median": statistics.median(ts) * 1e3,
                    "gflop": f / 1e9,
                    "gflops": f / best / 1e9,
                    "fraction_of_peak": f / best / 1e9 / peak,
                }
            )
        del x
    result["ops"] = rows
    ms = {(r["method"], r["tokens"]): r["ms_min"] for r in rows}
    speedups = {}
    for T in lengths:
        speedups[f"chunk_vs_sdpa_{T}"] = ms[("sdpa", T)] / ms[("chunk", T)]
        speedups[f"chunk_vs_official_{T}"] = ms[("official", T)] / ms[("chunk", T)]
    result["decode"] = decode_times(decode_contexts, heads, head_dim, dtype, dev, decode_steps, chunk_size, reps)
    if len(result["decode"]) >= 2:
        first, last = result["decode"][0], result["decode"][-1]
        speedups["decode_ratio"] = last["ours_us_per_token"] / first["ours_us_per_token"]
    result["speedups"] = speedups
    result["targets"] = {
        k: {
            "target": v,
            "measured": speedups.get(k),
            "met": None if k not in speedups else (speedups[k] <= v if k == "decode_ratio" else speedups[k] >= v),
        }
        for k, v in TARGETS.items()
    }
    result["meta"]["load_average_end"] = load_average()
    return result


def to_markdown(res: dict[str, Any]) -> str:
    """The tables of a run as markdown."""
    m, peak = res["meta"], res["matmul_gflops"]["peak"]
    lines = [
        "# DiJiang attention-op speed (`python -m dijiang.speed`)",
        "",
        f"{m['date']} · commit `{m['git_commit']}` · torch {m['torch']} · {m['cpu']} · "
        f"{m['threads']} threads · {m['dtype']} · load average {m['load_average_start']} -> {m['load_average_end']}"
        f" · malloc keeps freed memory: {m.get('malloc_keeps_freed_memory', False)}",
        "",
        f"Batch 1, {res['config']['heads']} heads, head size {res['config']['head_dim']}, chunk size "
        f"{res['config']['chunk_size']}. Times: minimum (median) over repetitions; sdpa, chunk and chunk-core "
        "interleaved, official right after. GFLOP: the matmul work each method executes. Matmul peak "
        f"(best square `torch.mm`, same threads): {peak:.1f} GFLOP/s. Load average: 1, 5, 15 minutes.",
        "",
        "| method | tokens | ms (min) | ms (median) | GFLOP | GFLOP/s | % of matmul peak |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["ops"]:
        lines.append(
            f"| {r['method']} | {r['tokens']} | {r['ms_min']:.1f} | {r['ms_median']:.1f} | {r['gflop']:.2f} | "
            f"{r['gflops']:.1f} | {100 * r['fraction_of_peak']:.0f}% |"
        )
    lines += ["", "| target | required | measured | met |", "|---|---:|---:|---|"]
    for k, t in res["targets"].items():
        sign = "<=" if k == "decode_ratio" else ">="
        meas = "n/a" if t["measured"] is None else f"{t['measured']:.2f}"
        lines.append(f"| {k} | {sign} {t['target']} | {meas} | {t['met']} |")
    lines += [
        "",
        "| context | ours: recurrent µs/token | softmax + KV cache µs/token | our state (bytes) | KV cache (bytes) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in res["decode"]:
        lines.append(
            f"| {r['context']} | {r['ours_us_per_token']:.0f} | {r['softmax_kv_us_per_token']:.0f} | "
            f"{r['ours_state_bytes']:,} | {r['softmax_kv_cache_bytes']:,} |"
        )
    return "\n".join(lines) + "\n"


def save(res: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``op_speed_<time>.json/.md`` (new files; an existing name is an error) and ``latest.*``."""
    stamp = res["meta"]["date"].replace(":", "").replace("-", "").replace("+0000", "Z")
    js, md = out_dir / f"op_speed_{stamp}.json", out_dir / f"op_speed_{stamp}.md"
    if js.exists() or md.exists():
        raise FileExistsError(f"{js} already exists; results are never overwritten (wait a second and rerun).")
    text_js, text_md = json.dumps(res, indent=2) + "\n", to_markdown(res)
    latest_js, latest_md = out_dir / "latest.json", out_dir / "latest.md"
    for path, text in ((js, text_js), (md, text_md), (latest_js, text_js), (latest_md, text_md)):
        atomic_write_text(path, text)
    return js, md


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m dijiang.speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="2048,8192", help="comma-separated sequence lengths")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--official-reps", type=int, default=3)
    p.add_argument("--decode-contexts", default="512,32768")
    p.add_argument("--decode-steps", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    p.add_argument("--no-save", action="store_true", help="print only")
    p.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="glibc keeps freed memory for reuse (as jemalloc/tcmalloc do); see harness.util.timing.set_malloc_policy",
    )
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    kept = set_malloc_policy("keep") if a.keep_freed_memory else False
    ints = lambda s: tuple(int(v) for v in s.split(",") if v)  # noqa: E731
    res = run(
        lengths=ints(a.lengths),
        heads=a.heads,
        head_dim=a.head_dim,
        dtype=getattr(torch, a.dtype),
        device=a.device,
        chunk_size=a.chunk_size,
        reps=a.reps,
        official_reps=a.official_reps,
        decode_contexts=ints(a.decode_contexts),
        decode_steps=a.decode_steps,
    )
    res["meta"]["malloc_keeps_freed_memory"] = kept
    print(to_markdown(res))
    if not a.no_save:
        js, md = save(res, a.out)
        print(f"wrote {js} and {md}")


if __name__ == "__main__":
    main()
