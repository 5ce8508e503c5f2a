"""A roofline model of DiJiang against softmax attention: the ideal time ratio each phase could reach.

For each shape, length and phase the sweep measures DiJiang's and softmax's times; this module says
what their ratio *should* be on an ideal machine, so that the summary can print the measured ratio
next to the ideal one and the fraction of the ideal achieved. The model is the roofline of Williams,
Waterman & Patterson (2009, "Roofline: an insightful visual performance model", CACM 52(4)): a
piece of work that performs ``F`` floating-point operations and moves ``Q`` bytes between memory and
the processor takes at least

    T_ideal = max(F / peak_flops, Q / bandwidth).

:func:`phase_cost` counts ``F`` and ``Q`` for one phase (:data:`harness.bench.workloads.PHASES`) from
the shape's dimensions; :func:`ideal_time` applies the roofline; :func:`measure_peaks` measures the two
device numbers (a large matmul and a large copy, in the sweep's dtype and thread count) unless they
are given (``--peak-tflops``, ``--peak-bandwidth-gbs``); :func:`roofline_table` turns sweep rows into
the summary's columns. The assumptions are listed in :func:`phase_cost`'s docstring.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from harness.bench.device import DeviceOps
from harness.bench.shapes import SHAPES, Shape
from harness.core.modeling import MixerLMConfig
from harness.report.bench_analysis import HF_REFERENCE, REFERENCE, ok_rows

#: mixers the cost model knows
MIXERS: tuple[str, ...] = ("softmax", "dijiang")
#: measured methods whose cost model is ``dijiang`` (the suite's paper-form DiJiang)
DIJIANG_METHODS: tuple[str, ...] = ("dijiang",)
#: bytes per element of each dtype name
DTYPE_BYTES: dict[str, int] = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}
#: chunk length of the linear methods' chunkwise form
#: (:attr:`harness.layers.linear_mixer.LinearAttentionMixer.chunk_size`)
CHUNK_SIZE = 64


@dataclass(frozen=True)
class Dims:
    """The dimensions the cost model needs. ``gated_mlp``: LLaMA's SwiGLU MLP (three matrices) instead
    of GPT-NeoX's two; ``lm_head``: a whole model (LM head over ``vocab``) rather than one block fed
    hidden states (a layer shape)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    gated_mlp: bool
    lm_head: bool

    @classmethod
    def from_shape(cls, shape: Shape) -> Dims:
        """The dimensions of ``shape``'s models, read through :class:`MixerLMConfig`'s defaults."""
        c = MixerLMConfig(**shape.config, mixer="softmax")
        return cls(
            hidden=c.hidden_size,
            layers=c.num_hidden_layers,
            heads=c.num_attention_heads,
            kv_heads=c.num_key_value_heads,
            head_dim=c.head_dim,
            intermediate=c.intermediate_size,
            vocab=c.vocab_size,
            gated_mlp=c.layout == "llama",
            lm_head=shape.kind == "model",
        )


@dataclass(frozen=True)
class Cost:
    """Floating-point operations and bytes moved by one run of a phase."""

    flops: float
    bytes: float


@dataclass(frozen=True)
class Peaks:
    """Device peaks: FLOP/s and memory bandwidth (bytes/s), and where they come from."""

    flops: float
    bandwidth: float
    source: str = "given"


def ideal_time(cost: Cost, peaks: Peaks) -> float:
    """Roofline time ``max(F / peak_flops, Q / bandwidth)`` (Williams et al. 2009) in seconds."""
    return max(cost.flops / peaks.flops, cost.bytes / peaks.bandwidth)


def bound(cost: Cost, peaks: Peaks) -> str:
    """``compute`` or ``memory``: which side of the roofline ``cost`` sits on."""
    return "compute" if cost.flops / peaks.flops >= cost.bytes / peaks.bandwidth else "memory"


def _layer_params(d: Dims, mixer: str) -> int:
    """Matrix weights of one block that every token multiplies (biases and norms left out)."""
    attn = d.hidden * (d.heads + 2 * d.kv_heads) * d.head_dim + d.heads * d.head_dim * d.hidden
    if mixer == "dijiang":
        attn += d.hidden * d.heads * d.head_dim  # RetNet's gate W_G of the gated output
    mlp = (3 if d.gated_mlp else 2) * d.hidden * d.intermediate
    return attn + mlp


def _layer_activations(d: Dims, mixer: str, m: int) -> int:
    """Elements read and written per token per block by the matrix products and the attention core,
    each reading its input and writing its output once (norms, residual adds and activations fused)."""
    qkv = (d.heads + 2 * d.kv_heads) * d.head_dim
    o = d.heads * d.head_dim
    mlp_out = (2 if d.gated_mlp else 1) * d.intermediate
    a = (d.hidden + qkv) + (o + d.hidden) + (d.hidden + mlp_out) + (d.intermediate + d.hidden)
    if mixer == "softmax":
        return a + qkv + o  # attention core: reads q, k, v, writes o (FlashAttention's ideal)
    features = (d.heads + d.kv_heads) * d.head_dim + (d.heads + d.kv_heads) * m  # read q, k; write phi(q), phi(k)
    core = (d.heads + d.kv_heads) * m + d.kv_heads * d.head_dim + o  # read phi(q), phi(k), v; write o
    gate = d.hidden + o  # W_G: read x, write the gate
    return a + features + core + gate


def _dijiang_token_flops(d: Dims, m: int, form: str, chunk: int) -> float:
    """Mixer FLOPs per token per block of DiJiang (paper Eq. 12-13) beyond the projections."""
    h, dh = d.heads, d.head_dim
    features = 2 * (h + d.kv_heads) * dh * m  # phi(q) on every head, phi(k) on the key/value heads
    if form == "recurrent":  # S <- gamma S + phi(k)^T v (decay + 2 m dh), o = phi(q) S (2 m dh)
        return features + 5 * h * m * dh
    # chunkwise: intra-chunk causal phi(q) phi(k)^T and its product with v, (C + 1)/2 keys per query
    # on average, 2 (m + dh) each; inter-chunk readout 2 m dh and state update 2 m dh per token
    return features + h * (m + dh) * (chunk + 1) + 4 * h * m * dh


def phase_cost(
    dims: Dims,
    mixer: str,
    phase: str,
    seq_len: int,
    batch: int = 1,
    *,
    decode_tokens: int = 128,
    dtype_bytes: int = 4,
    feature_dim: int | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> Cost:
    """FLOPs and bytes of one run of ``phase`` (``prefill``, ``decode``, ``train``) at ``seq_len`` tokens,
    ``batch`` sequences, for ``mixer`` ``softmax`` or ``dijiang`` (feature dimension ``m``, default the
    head size, as :class:`dijiang.features.WDCFeatures`).

    Assumptions (an ideal, fused implementation; everything else is left out):

    * **Matrix products**: 2 FLOPs per weight per token (q/k/v/o projections, the MLP, DiJiang's
      gate ``W_G``, the LM head where logits are computed: the last position at prefill, every
      position when training, every decoded token). Weights are read from memory once per run
      (prefill: once; decode: once per generated token, shared by the batch; train: 3x, forward,
      backward and the gradient write). Embedding lookups, biases, norms, the rotary embedding and
      DiJiang's feature projection ``P`` (``head_dim x m``, cached) are not counted as bytes.
    * **Softmax attention** (Vaswani et al. 2017), causal, only the lower triangle computed (as
      FlashAttention does): a query attending to ``c`` keys costs ``4 x heads x head_dim x c`` FLOPs
      (``q k^T`` and ``A v``). Prefill over ``L``: ``2 heads head_dim L (L + 1)`` per block. Decoding a
      token after ``c - 1`` cached ones reads the whole KV cache, ``2 x c x kv_heads x head_dim``
      elements per block per sequence (the brief's ``2 L layers kv_heads head_dim bytes``), and
      writes the new entry; prefill writes the cache once.
    * **DiJiang** (Chen et al. 2024, Eq. 12-13; linear attention with decay in chunkwise form for
      prefill/training, chunk ``C`` = 64, recurrent form for decoding): features ``phi(x) = D exp(x P)``
      cost ``2 head_dim m`` per head for ``q`` and ``k``; per token, recurrent: ``5 heads m head_dim``
      (decay, state update, readout); chunkwise: ``heads (m + head_dim) (C + 1)`` (intra-chunk, causal)
      ``+ 4 heads m head_dim`` (readout and state update). Decoding reads and writes its fixed state,
      ``heads x m x head_dim`` elements per block per sequence; prefill writes it once.
    * **Activations**: each matrix product and the attention core read their input and write their
      output once per token (:func:`_layer_activations`); exponentials, norms, residuals are free.
    * **Training**: forward + backward = 3x the forward's FLOPs and bytes (backward = 2x forward,
      Kaplan et al. 2020's 6N rule), no KV cache kept, logits at every position.
    * All tensors in the sweep's dtype (``dtype_bytes``), the state and cache included.
    """
    if mixer not in MIXERS:
        raise ValueError(f"unknown mixer {mixer!r}; the cost model knows {list(MIXERS)}")
    if phase not in ("prefill", "decode", "train"):
        raise ValueError(f"unknown phase {phase!r}")
    d, b, B, L = dims, dtype_bytes, batch, seq_len
    m = feature_dim or d.head_dim
    h, dh, kv = d.heads, d.head_dim, d.kv_heads
    layer_w = _layer_params(d, mixer)
    head_w = d.hidden * d.vocab if d.lm_head else 0
    weights_bytes = (d.layers * layer_w + head_w) * b
    act = _layer_activations(d, mixer, m) * d.layers

    if phase == "decode":
        n = decode_tokens
        flops = n * B * (2 * (d.layers * layer_w + head_w))
        moved = n * weights_bytes + n * B * (act + (d.vocab if d.lm_head else 0)) * b
        if mixer == "softmax":
            keys = n * L + n * (n + 1) // 2  # sum over the n steps of the keys attended, c = L+1 .. L+n
            flops += B * d.layers * 4 * h * dh * keys
            moved += B * d.layers * (2 * kv * dh * keys + n * 2 * kv * dh) * b  # read the cache, write one entry
        else:
            flops += n * B * d.layers * _dijiang_token_flops(d, m, "recurrent", chunk_size)
            moved += n * B * d.layers * 2 * h * m * dh * b  # read and write the state
        return Cost(float(flops), float(moved))

    train = phase == "train"
    logits_at = L if train else 1
    flops = B * (L * 2 * d.layers * layer_w + logits_at * 2 * head_w)
    moved = weights_bytes + B * (L * act + logits_at * (d.vocab if d.lm_head else 0)) * b
    if mixer == "softmax":
        flops += B * d.layers * 2 * h * dh * L * (L + 1)
        if not train:
            moved += B * d.layers * 2 * L * kv * dh * b  # the KV cache written
    else:
        flops += B * L * d.layers * _dijiang_token_flops(d, m, "chunk", min(chunk_size, L))
        if not train:
            moved += B * d.layers * h * m * dh * b  # the final state written
    if train:
        return Cost(3.0 * flops, 3.0 * moved)
    return Cost(float(flops), float(moved))


def measure_peaks(ops: DeviceOps, dtype: torch.dtype, *, repeats: int = 5) -> Peaks:
    """The device's achievable FLOP/s and memory bandwidth in ``dtype`` at torch's current thread count:
    the best of ``repeats`` ``n x n`` matrix products (``2 n^3`` FLOPs; n = 1024 on CPU, 8192 on CUDA)
    and of ``repeats`` matrix-vector products with a large matrix (its bytes read once; 128 MiB on CPU,
    2 GiB on CUDA: the access pattern of decoding, which streams the weights), after one warm-up each,
    synchronised through ``ops``. A loaded machine gives lower numbers; pass datasheet values with
    ``--peak-tflops`` / ``--peak-bandwidth-gbs`` instead."""
    cuda = ops.kind == "cuda"
    n = 8192 if cuda else 1024
    dt = dtype if dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16) else torch.float32
    best_mm = _best_matmul(n, dt, ops, repeats)
    buffer_bytes = 2 << 30 if cuda else 128 << 20
    cols = 16384 if cuda else 4096
    rows = buffer_bytes // (cols * (torch.finfo(dt).bits // 8))
    best_read = _best_matvec(rows, cols, dt, ops, repeats)
    moved = rows * cols * (torch.finfo(dt).bits // 8)
    ops.empty_cache()
    name = str(dt).removeprefix("torch.")
    return Peaks(
        flops=2 * n**3 / best_mm,
        bandwidth=moved / best_read,
        source=f"measured: best of {repeats} {n}x{n} {name} matmuls and {moved >> 20} MiB matrix-vector reads, "
        f"{torch.get_num_threads()} thread(s)",
    )


def _best_matmul(n: int, dtype: torch.dtype, ops: DeviceOps, repeats: int) -> float:
    a = torch.randn(n, n, device=ops.device).to(dtype)
    b = torch.randn(n, n, device=ops.device).to(dtype)
    return _best(lambda: torch.mm(a, b), ops, repeats)


def _best_matvec(rows: int, cols: int, dtype: torch.dtype, ops: DeviceOps, repeats: int) -> float:
    a = torch.ones(rows, cols, device=ops.device, dtype=dtype)
    x = torch.ones(cols, device=ops.device, dtype=dtype)
    return _best(lambda: torch.mv(a, x), ops, repeats)


def _best(fn: Any, ops: DeviceOps, repeats: int) -> float:
    fn()
    ops.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ops.synchronize()
        times.append(time.perf_counter() - t0)
    return max(min(times), 1e-9)


def peaks_from_rows(rows: Iterable[dict[str, Any]]) -> Peaks | None:
    """The peaks recorded on measured rows; the median of the distinct measurements where a resumed
    sweep (or one per batch size given different numbers) measured more than once."""
    got = sorted(
        {(r["peak_flops"], r["peak_bandwidth"], r.get("peak_source", "")) for r in rows if r.get("peak_flops")}
    )
    if not got:
        return None
    return Peaks(
        statistics.median(g[0] for g in got),
        statistics.median(g[1] for g in got),
        got[0][2] + (f" (median of {len(got)} measurements)" if len(got) > 1 else ""),
    )


def roofline_table(
    rows: list[dict[str, Any]],
    peaks: Peaks | None = None,
    methods: tuple[str, ...] = DIJIANG_METHODS,
) -> list[dict[str, Any]]:
    """One entry per shape, batch, length, phase and DiJiang method measured beside softmax: the ideal
    time ratio DiJiang/softmax (:func:`phase_cost`, :func:`ideal_time`), the measured one (median
    times), ``fraction_of_ideal`` = ideal / measured ratio (1: DiJiang gains all the roofline allows
    over softmax; below 1: less), the measured ratio against the transformers reference
    (``hf-softmax``) where it was measured, and each method's own roofline efficiency (ideal time /
    measured time) and bound. ``peaks``: the device numbers (default: those recorded on the rows)."""
    peaks = peaks or peaks_from_rows(rows)
    if peaks is None:
        return []
    cell = {(r["shape"], r.get("batch", 1), r["method"], r["phase"], r["seq_len"]): r for r in ok_rows(rows)}
    out: list[dict[str, Any]] = []
    for (shape_name, batch, method, phase, L), r in sorted(cell.items()):
        if method not in methods or shape_name not in SHAPES:
            continue
        ref = cell.get((shape_name, batch, REFERENCE, phase, L))
        if ref is None:
            continue
        hf = cell.get((shape_name, batch, HF_REFERENCE, phase, L))
        dims = Dims.from_shape(SHAPES[shape_name])
        kw = dict(
            decode_tokens=int(r.get("decode_tokens") or 128),
            dtype_bytes=DTYPE_BYTES.get(str(r.get("dtype")), 4),
        )
        c_dj = phase_cost(dims, "dijiang", phase, L, batch, **kw)
        c_sm = phase_cost(dims, "softmax", phase, L, batch, **kw)
        t_dj, t_sm = ideal_time(c_dj, peaks), ideal_time(c_sm, peaks)
        ideal = t_dj / t_sm
        measured = r["time_median_s"] / ref["time_median_s"]
        out.append(
            {
                "shape": shape_name,
                "batch": batch,
                "method": method,
                "phase": phase,
                "seq_len": L,
                "ideal_ratio": ideal,
                "measured_ratio": measured,
                "fraction_of_ideal": ideal / measured,
                "measured_ratio_hf": r["time_median_s"] / hf["time_median_s"] if hf else None,
                "ideal_time_s": t_dj,
                "ideal_time_softmax_s": t_sm,
                "efficiency": t_dj / r["time_median_s"],
                "efficiency_softmax": t_sm / ref["time_median_s"],
                "bound": bound(c_dj, peaks),
                "bound_softmax": bound(c_sm, peaks),
                "flops": c_dj.flops,
                "bytes": c_dj.bytes,
                "flops_softmax": c_sm.flops,
                "bytes_softmax": c_sm.bytes,
                "peak_flops": peaks.flops,
                "peak_bandwidth": peaks.bandwidth,
                "peak_source": peaks.source,
            }
        )
    return out
