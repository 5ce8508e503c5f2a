"""Memory and time plan of a training run (issue #15): bytes per GPU, minimum GPU count, GPU-hours.

For a model (any registered method, counted exactly on the ``meta`` device), a block size, a
micro-batch and a precision, :class:`MemoryPlan` gives the memory per GPU under data parallelism
(``ddp``), ZeRO-2 (``zero2``), FSDP full sharding (``fsdp``) and ZeRO-3 (``zero3``), with and without
activation checkpointing; :meth:`MemoryPlan.min_gpus` the fewest GPUs that hold it;
:func:`gpu_hours` the time; :func:`plan_lines` a compact table for ``--dry-run``. Nothing here is
fitted to a measurement: every term is counted from what the code allocates, and
``tests/test_memory_plan.py`` checks the total against the peak memory measured on CPU.

**Model states** (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion
Parameter Models", Sec. 3.1 and Fig. 1). With ``N`` trainable parameters, AdamW keeps two moments
per parameter. Bytes per parameter (:data:`PRECISIONS`):

* ``fp32``: weights 4 + gradients 4 + AdamW moments 8 = 16.
* ``bf16-mixed`` (what the suite trains with on GPUs): under DDP (``accelerate``'s autocast) and FSDP2
  (``MixedPrecisionPolicy``) fp32 weights 4 (the master copy) + fp32 gradients 4 + moments 8 = 16,
  plus the bf16 copy of the weights a forward pass computes with (2: every weight under DDP, the
  gathered units under FSDP); under DeepSpeed (``zero2``, ``zero3``) ZeRO's own split, bf16 weights 2
  + bf16 gradients 2 + fp32 master copy and moments 12 = 16 (:meth:`Precision.for_strategy`).

Per GPU, over ``W`` GPUs (ZeRO Fig. 1: ``P_os`` = ZeRO-1, ``P_os+g`` = ZeRO-2, ``P_os+g+p`` = ZeRO-3):

* ``ddp``: everything replicated; with ``W > 1`` DDP's reducer also holds a flat copy of the
  gradients in its buckets (``gradient_as_bucket_view=False``, the default).
* ``zero2``: weights replicated, gradients and optimizer states ``/ W``.
* ``fsdp`` and ``zero3``: weights, gradients and optimizer states ``/ W`` (FSDP full sharding is
  ZeRO-3), plus the gathered working set: the root unit (embedding, final norm, head; FSDP2 keeps
  it gathered from forward to backward) and two decoder blocks (the one computing and the one being
  prefetched), and one block's unsharded gradients before their reduce-scatter. DeepSpeed's
  prefetch and reduce buckets (``configs/accelerate/ds_zero3.json``, ``ds_zero2.json``: 5e8 elements
  each) can hold more than two blocks; that is not counted.

Buffers (not trained, e.g. DiJiang's frozen projections) are replicated everywhere. AdamW's
``foreach`` step allocates one fp32 temporary per parameter it updates (``sqrt`` of the second
moment); activations are freed by then, so the peak holds ``max(activations, step temporary)``.

**Activations** (counted like Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
Transformer Models", Sec. 4: the tensors autograd saves for the backward pass, per token and layer,
here without tensor/sequence parallelism and without dropout). Derived op by op from the suite's
code (:mod:`harness.core.modeling`, :mod:`harness.core.projections`, :mod:`harness.core.rotary`,
:mod:`harness.core.ops.linear_attention`, the method modules), in elements per token per layer, with
``D`` the width, ``I`` the MLP width, ``H``/``H_kv`` the query/key-value heads, ``d`` the head size,
``r`` the rotary dims, ``m`` the feature dimension of a linear method and ``C`` its chunk size:

* LLaMA block (:class:`~harness.core.modeling.DecoderBlock`): each RMSNorm saves its input and the
  normalised input (2D each), the mixer and the MLP their inputs (D each), SwiGLU its gate, the
  gate's SiLU, the up projection and their product (4I): ``6D + 4I``.
  GPT-NeoX block: one input for both LayerNorms (D), the two normalised inputs (2D), GELU's input
  and output (2I): ``3D + 2I`` (``4D + 2I`` without the parallel residual).
* softmax (SDPA's flash / memory-efficient kernels, as on GPU and on CPU): rotary's cos and sin
  (2r), q (Hd), k and v (2 H_kv d), the output (Hd) and its log-sum-exp (H), ``o_proj``'s input (Hd;
  a copy, except with full rotary where it shares the output's storage: then an overestimate by
  Hd): ``2r + 3Hd + 2 H_kv d + H``. Without a fused
  kernel (``flash=False``) the ``B H L L`` probabilities add ``H L`` per token.
* linear attention, chunk form (:func:`~harness.core.ops.linear_attention.linear_attention_chunk`):
  ``phi(q)``, ``phi(k)`` (2Hm), the contiguous values (Hd), the intra-chunk scores (HC, twice when
  the decay is learned: the scores before and after the decay mask), the decayed keys (Hm, with a
  decay), the output before the query decay (Hd, learned decay), the per-chunk states and their
  prefix (2Hmd/C), the feature map's own saved tensors (per method: DiJiang's unweighted query
  features Hm; PFF's/Performer's scaled inputs and exponentials 2(Hd + Hm); cosFormer's ReLU
  outputs 2Hd; the official DiJiang's two softmaxes 2Hm), the normaliser's numerator (Hd, normalised
  methods), and the
  output path: ``o_proj``'s input (Hd), or RetNet's gated GroupNorm (5Hd: the GroupNorm input, the
  gate, its SiLU, the normalised output, their product). Past 512 tokens the chunk form slices
  ``phi(q)``, ``phi(k)`` into blocks; the copies replace the whole tensors in the saved set (no change).
* sliding-window, Linformer, window + linear: the same bookkeeping over their query blocks, less
  carefully (:attr:`LayerTraits.exact` is ``False``; within 10% of the tensors autograd saves at
  small shapes). Mamba: ``3D + 6ED + R + 2N`` as with its fused CUDA kernels (``mamba-ssm``), not
  checked; the CPU reference scan stores several ``(B, L, E·D, N)`` tensors and is not modelled.

The head adds the final norm (3D LLaMA, 2D NeoX) and, for the loss (computed in float32 in
:class:`~harness.core.modeling.MixerLMForCausalLM`), the logits and their shifted copy in the
activation dtype plus the float32 log-softmax (and the float32 upcast under mixed precision): 12
bytes per vocabulary entry and token in both precisions. Multiplied by ``micro_batch x block_size``
tokens. With activation checkpointing (the decoder blocks are
``GradientCheckpointingLayer``\\ s) a block keeps only its input (D per token); one block at a time is
recomputed in the backward pass, so one block's activations come on top.

**Assumptions of the memory model**: gradients are held while activations are (true with gradient
accumulation, DDP's buckets and ZeRO's contiguous gradients; with ``zero_grad(set_to_none=True)``
and no accumulation it is an upper bound); no CUDA context, allocator fragmentation or
communication buffers beyond those named (:meth:`MemoryPlan.min_gpus` keeps 10% of each GPU free for
them by default).

**Time** (:func:`flops_per_token`, :func:`gpu_hours`): ``6 N`` training FLOPs per token for the
weight matmuls (Kaplan et al. 2020, Sec. 2.1; forward 2N, backward 4N; ``N`` without the input
embedding, a lookup, unless it is tied to the head) plus 3x each mixer's forward FLOPs (softmax:
``2 H d L`` per token, causal; linear chunk form: ``H (2Cm + 2Cd + 4md)`` plus the feature map's
projections), at ``mfu`` (default 0.4) of the GPU's dense peak; activation checkpointing adds a
forward pass (x4/3).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

GIB: int = 1024**3
#: distribution strategies, in the order the plan prints them (``fsdp`` full sharding = ``zero3``)
STRATEGIES: tuple[str, ...] = ("ddp", "zero2", "fsdp", "zero3")
#: bytes of a float32 number: the loss's log-softmax and AdamW's step temporary are float32
_LOSS_BYTES_FP32 = 4


@dataclass(frozen=True)
class Precision:
    """Bytes per number of each kind of state (see the module docstring).

    ``param``/``grad``: stored weights and gradients; ``optimizer``: AdamW's states per trainable
    parameter (two fp32 moments, plus a master copy where the weights are not fp32); ``activation``:
    saved activations; ``compute``: the copy of the weights a forward pass computes with (0: none,
    the stored weights are used).
    """

    name: str
    param: int
    grad: int
    optimizer: int
    activation: int
    compute: int
    description: str = ""

    def for_strategy(self, strategy: str) -> Precision:
        """The split DeepSpeed uses (``zero2``, ``zero3``) under mixed precision: 16-bit weights and
        gradients, the fp32 master copy with the moments in the optimizer (ZeRO's ``2 + 2 + 12``), no
        separate compute copy. PyTorch's DDP (autocast) and FSDP2 keep fp32 weights and gradients."""
        if strategy in ("zero2", "zero3") and self.activation < 4:
            a = self.activation
            return Precision(self.name, a, a, self.param + self.optimizer, a, 0, self.description)
        return self


PRECISIONS: dict[str, Precision] = {
    "fp32": Precision("fp32", 4, 4, 8, 4, 0, "fp32 weights, gradients, AdamW moments and activations"),
    "bf16-mixed": Precision(
        "bf16-mixed", 4, 4, 8, 2, 2, "autocast: fp32 weights/grads/moments, bf16 weight copies and activations"
    ),
    "fp16-mixed": Precision(
        "fp16-mixed", 4, 4, 8, 2, 2, "autocast: fp32 weights/grads/moments, fp16 weight copies and activations"
    ),
}
#: ``TrainConfig.mixed_precision`` values -> a precision (``auto`` is bf16 on a GPU that has it)
PRECISION_ALIASES: dict[str, str] = {"no": "fp32", "bf16": "bf16-mixed", "fp16": "fp16-mixed", "auto": "bf16-mixed"}


@dataclass(frozen=True)
class GPU:
    """An accelerator: memory in bytes, dense peak FLOP/s in bf16/fp16 tensor cores and in fp32."""

    name: str
    memory: int
    bf16_flops: float
    fp32_flops: float

    def peak_flops(self, precision: str) -> float:
        """The dense peak for ``precision`` (fp32 matmuls without TF32, PyTorch's default)."""
        return self.fp32_flops if resolve_precision(precision).name == "fp32" else self.bf16_flops


#: NVIDIA's data-sheet numbers (dense, SXM)
GPUS: dict[str, GPU] = {
    "a100-40gb": GPU("a100-40gb", 40 * GIB, 312e12, 19.5e12),
    "a100-80gb": GPU("a100-80gb", 80 * GIB, 312e12, 19.5e12),
    "h100-80gb": GPU("h100-80gb", 80 * GIB, 989e12, 67e12),
    "h200-141gb": GPU("h200-141gb", 141 * 10**9, 989e12, 67e12),
}


def resolve_precision(name: str | Precision) -> Precision:
    """A :class:`Precision` from its name or a ``TrainConfig.mixed_precision`` value."""
    if isinstance(name, Precision):
        return name
    key = PRECISION_ALIASES.get(name, name)
    if key not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; choose one of {sorted(PRECISIONS) + sorted(PRECISION_ALIASES)}")
    return PRECISIONS[key]


# -- what a model is made of ---------------------------------------------------------------------


@dataclass(frozen=True)
class LayerTraits:
    """What one layer's activation memory and FLOPs depend on, read from the built layer.

    ``family``: ``softmax`` | ``linear`` (a :class:`~harness.layers.linear_mixer.LinearAttentionMixer`,
    chunk form) | ``sliding-window`` | ``linformer`` | ``window-linear`` | ``mamba`` | ``unknown``.
    ``decay``: ``none`` | ``fixed`` | ``learned`` (the linear form saves more when its decay is trained).
    ``feature_extra``: elements per token the feature map saves besides ``phi(q)`` and ``phi(k)``.
    ``exact``: counted op by op from the code (False: an approximation, see the module docstring).
    """

    method: str
    family: str
    heads: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    rotary_dim: int = 0
    feature_dim: int = 0
    chunk_size: int = 0
    decay: str = "none"
    normalize: bool = False
    gated: bool = False
    feature_extra: float = 0.0
    feature_flops: float = 0.0
    window: int = 0
    compressed_dim: int = 0
    inner: int = 0
    state: int = 0
    dt_rank: int = 0
    params: int = 0
    exact: bool = True

    def mixer_terms(self, seq_len: int, flash: bool = True) -> dict[str, float]:
        """Elements per token this layer's token mixer saves for the backward pass (see the module
        docstring for the op-by-op derivation), by name."""
        H, Hkv, d, r = self.heads, self.kv_heads, self.head_dim, self.rotary_dim
        T = seq_len
        if self.family == "mamba":
            return {
                "in_proj (x, z)": 2 * self.inner,
                "conv, delta, scan out, gate": 4 * self.inner,
                "x_proj out": self.dt_rank + 2 * self.state,
            }
        t: dict[str, float] = {"rotary cos/sin": 2 * r} if r else {}
        if self.family in ("softmax", "sliding-window", "unknown"):
            t.update({"q": H * d, "k, v": 2 * Hkv * d, "attention out": H * d, "log-sum-exp": H, "o_proj in": H * d})
            if not flash:
                keys = T if self.family != "sliding-window" else min(T, self.chunk_size) + self.window - 1
                t["attention probabilities"] = H * keys
            if self.family == "sliding-window":  # per query block: the band's key/value slices
                t["band k, v slices"] = 2 * Hkv * d * (min(self.window - 1, T) / max(1, min(self.chunk_size, T)))
            return t
        if self.family == "linformer":  # per window of n = b queries: b + n keys, k summaries
            n, k = max(1, min(self.chunk_size, T)), self.compressed_dim
            keys = n + min(self.chunk_size, T)
            t.update(
                {
                    "q": H * d,
                    "block k, v (cat)": 2 * Hkv * d * keys / n,
                    "summaries": 2 * Hkv * d * k / n,
                    "masked scores": H * keys,
                    "E, F gathered, broadcast over heads": 2 * (H + 1) * keys * k / n,
                    "softmax": H * (k + keys),
                    "summary weights (copies)": 2 * H * k,
                    "value mix": H * keys,
                    "masks": keys * (2 + min(self.chunk_size, T) / n),
                    "attention out": H * d,
                    "o_proj in": H * d,
                }
            )
            return t
        t.update(self._linear_terms(T, self.head_dim + (self.family == "window-linear")))
        if self.family == "window-linear":  # the wrapped method's chunk form plus the softmax band
            C = max(1, min(self.chunk_size, T))
            band = C + self.window - 1
            t.update(
                {
                    "leaving k, v": 2 * H * d,
                    "shifted, decayed phi(k)": H * self.feature_dim,
                    "band q, k, v slices": H * d + 2 * Hkv * d * band / C,
                    "band probabilities": H * band,
                    "window + linear combination": 3 * H * d,
                }
            )
        return t

    def _linear_terms(self, T: int, dv: int) -> dict[str, float]:
        """The chunk form of :func:`~harness.core.ops.linear_attention.linear_attention_chunk` and the
        output path of :class:`~harness.layers.linear_mixer.LinearAttentionMixer`."""
        H, d, m = self.heads, self.head_dim, self.feature_dim
        C = max(1, min(self.chunk_size, T))
        learned = self.decay == "learned"
        t: dict[str, float] = {
            "feature map": self.feature_extra,
            "phi(q), phi(k)": 2 * H * m,
            "values (contiguous)": H * dv,
            "intra-chunk scores": H * C * (2 if learned else 1),
            "chunk states": 2 * H * m * dv / C,
        }
        if self.decay != "none":
            t["decayed keys"] = H * m
        if learned:
            t["output before query decay"] = H * dv
        if self.normalize:
            t["normaliser numerator"] = H * d + H
        t["output path"] = (5 if self.gated else 1) * H * d
        return t

    def mixer_flops(self, seq_len: int) -> float:
        """Forward FLOPs per token of the token mixer beyond its weight matmuls (see :func:`flops_per_token`)."""
        H, d, T = self.heads, self.head_dim, seq_len
        if self.family in ("softmax", "unknown"):
            return 2.0 * H * d * T  # QK^T and AV, 2 FLOPs per multiply-add, T/2 keys on average (causal)
        if self.family == "sliding-window":
            return 4.0 * H * d * min(T / 2, self.window)
        if self.family == "linformer":
            return 4.0 * H * d * (self.compressed_dim + min(self.chunk_size, T) / 2)
        if self.family == "mamba":
            return 9.0 * self.inner * self.state  # the selective scan, Gu & Dao 2023 (Sec. 3.3: 9 B L D N)
        C, m = min(self.chunk_size, T), self.feature_dim
        flops = H * (2.0 * C * m + 2.0 * C * d + 4.0 * m * d) + self.feature_flops
        if self.family == "window-linear":
            flops += 4.0 * H * d * min(T / 2, self.window)
        return flops


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs from a model, counted exactly from a built model (see :meth:`from_config`).

    ``n_params``/``n_trainable``: parameters (tied weights once) and those that train;
    ``buffer_bytes``: buffers as built (fp32); ``embedding_params``: the input embedding's;
    ``root_params``: parameters outside the decoder blocks (embedding, final norm, head);
    ``block_params``: the largest block's. ``layers``: one :class:`LayerTraits` per block.
    """

    method: str
    hidden: int
    vocab: int
    intermediate: int
    layout: str
    parallel_residual: bool
    tied: bool
    n_params: int
    n_trainable: int
    buffer_bytes: int
    embedding_params: int
    root_params: int
    block_params: int
    layers: tuple[LayerTraits, ...] = field(default_factory=tuple)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def exact(self) -> bool:
        """Whether every layer's activations are counted op by op (no approximated method)."""
        return all(t.exact for t in self.layers)

    @classmethod
    def from_config(
        cls, config: Any, method: str | None = None, options: Mapping[str, Any] | None = None
    ) -> ModelShape:
        """Build the model of ``config`` (a :class:`~harness.core.modeling.MixerLMConfig`, a dict of its
        fields, or the reference config of an architecture such as Mamba) with ``method`` and
        ``options`` on the ``meta`` device — no memory, no initialisation — and read it."""
        from harness.conversion.factory import ModelSpec, build_model
        from harness.core.modeling import MixerLMConfig

        if isinstance(config, Mapping):
            fields = {k: v for k, v in config.items() if k not in ("model_type", "transformers_version")}
            config = MixerLMConfig(**fields)
        key = json.dumps([config.to_dict(), method, dict(options or {})], sort_keys=True, default=str)
        if key not in _SHAPES:  # a dry run plans many runs of few models
            with torch.device("meta"):
                model = build_model(ModelSpec(method=method, config=config, options=dict(options or {})))
            _SHAPES[key] = cls.from_model(model)
        return _SHAPES[key]

    @classmethod
    def from_model(cls, model: nn.Module) -> ModelShape:
        """Read a built model (on any device, ``meta`` included): the suite's decoder or Mamba."""
        from harness.core.modeling import MixerLMForCausalLM, MixerLMModel

        cfg = model.config
        params = {id(p): p for p in model.parameters()}
        n_params = sum(p.numel() for p in params.values())
        n_trainable = sum(p.numel() for p in params.values() if p.requires_grad)
        buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
        embed = model.get_input_embeddings().weight.numel()
        tied = bool(getattr(cfg, "tie_word_embeddings", False))
        if isinstance(model, (MixerLMForCausalLM, MixerLMModel)):
            body = model.model if isinstance(model, MixerLMForCausalLM) else model
            blocks = list(body.layers)
            traits = tuple(_mixer_traits(b.mixer, sum(p.numel() for p in b.parameters())) for b in blocks)
            layout, parallel = cfg.layout, cfg.layout == "neox" and cfg.use_parallel_residual
            intermediate, method = cfg.intermediate_size, cfg.mixer
        elif getattr(cfg, "model_type", None) == "mamba":
            blocks = list(model.backbone.layers)
            traits = tuple(_mamba_traits(cfg, sum(p.numel() for p in b.parameters())) for b in blocks)
            layout, parallel, intermediate, method = "mamba", False, cfg.intermediate_size, "mamba"
        else:
            raise ValueError(
                f"the memory plan reads the suite's decoder (mixer_lm) and Mamba, not {type(model).__name__}."
            )
        in_blocks = sum(p.numel() for b in blocks for p in b.parameters())
        return cls(
            method=method,
            hidden=cfg.hidden_size,
            vocab=cfg.vocab_size,
            intermediate=intermediate,
            layout=layout,
            parallel_residual=parallel,
            tied=tied,
            n_params=n_params,
            n_trainable=n_trainable,
            buffer_bytes=buffer_bytes,
            embedding_params=embed,
            root_params=n_params - in_blocks,
            block_params=max((t.params for t in traits), default=0),
            layers=traits,
        )

    # -- activations ---------------------------------------------------------------------------
    def block_terms(self) -> dict[str, float]:
        """Elements per token a decoder block saves outside its token mixer (module docstring)."""
        D, I = self.hidden, self.intermediate  # noqa: E741
        if self.layout == "llama":
            return {"RMSNorms (input, normalised)": 4 * D, "mixer, MLP inputs": 2 * D, "SwiGLU": 4 * I}
        if self.layout == "mamba":
            return {"RMSNorm (input, normalised), in_proj input": 3 * D}
        norms = {"LayerNorm input": D if self.parallel_residual else 2 * D, "normalised inputs": 2 * D}
        return {**norms, "GELU in, out": 2 * I}

    def layer_elements(self, layer: int, seq_len: int, flash: bool = True) -> float:
        """Elements per token saved by block ``layer`` (block and mixer)."""
        return sum(self.block_terms().values()) + sum(self.layers[layer].mixer_terms(seq_len, flash).values())

    def head_bytes_per_token(self, precision: Precision) -> float:
        """Bytes per token of the final norm and the loss (module docstring)."""
        norm = (3 if self.layout in ("llama", "mamba") else 2) * self.hidden * precision.activation
        upcast = _LOSS_BYTES_FP32 if precision.activation < _LOSS_BYTES_FP32 else 0
        return norm + self.vocab * (2 * precision.activation + _LOSS_BYTES_FP32 + upcast)

    def activation_bytes(
        self, seq_len: int, micro_batch: int, precision: Precision, checkpointing: bool, flash: bool = True
    ) -> int:
        """Activation bytes of one micro-batch at its peak (start of the backward pass)."""
        tokens = micro_batch * seq_len
        per_layer = [self.layer_elements(i, seq_len, flash) for i in range(self.num_layers)]
        if checkpointing:  # every block keeps its input; one block is recomputed at a time
            elements = self.num_layers * self.hidden + max(per_layer, default=0.0)
        else:
            elements = sum(per_layer)
        return int(tokens * (elements * precision.activation + self.head_bytes_per_token(precision)))

    # -- FLOPs ---------------------------------------------------------------------------------
    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: ``6 N`` (weight matmuls) + 3x the mixers' forward FLOPs."""
        n_matmul = self.n_params - (0 if self.tied else self.embedding_params)
        return 6.0 * n_matmul + 3.0 * sum(t.mixer_flops(seq_len) for t in self.layers)


#: shapes read by :meth:`ModelShape.from_config`, by (config, method, options)
_SHAPES: dict[str, ModelShape] = {}


def _decay_kind(mixer: nn.Module) -> str:
    """``none`` | ``fixed`` | ``learned`` for a linear mixer's ``log_decay()``."""
    try:
        ld = mixer.log_decay()
    except Exception:  # a method whose decay needs a forward pass: assume the costlier kind
        return "learned"
    if ld is None:
        return "none"
    return "learned" if ld.requires_grad else "fixed"


def _feature_map(mixer: nn.Module, H: int, d: int, m: int) -> tuple[float, float, bool]:
    """(elements per token the feature map saves besides phi(q), phi(k); its forward FLOPs per
    token; whether that count is derived from the method's code)."""
    name = type(mixer).name
    feats = getattr(mixer, "features", None)
    kind = type(feats).__name__ if isinstance(feats, nn.Module) else ""
    projection = 2 * 2.0 * H * d * m  # x @ P for q and k
    if kind == "WDCFeatures":  # dijiang: exp2 of x P in place; D^2 q-side multiply saves the features
        weight = getattr(feats, "weight", None)
        extra = H * m if isinstance(weight, nn.Parameter) and weight.requires_grad else 0
        return extra + (2 * H * d if getattr(feats, "norm_term", False) else 0), projection, True
    if kind == "PFFeatures":  # pow saves the (scaled) input, exp saves its result, per side
        extra = 2 * (H * d + H * m) + (H * m if getattr(feats, "weight", None) is not None else 0)
        return extra, projection, True
    if kind == "SoftmaxDCTFeatures":  # dijiang-official: the two softmaxes, the per-position decays
        return 2 * H * m + (2 * H if getattr(mixer, "per_position", False) else 0), projection, True
    if name == "performer":  # as PFF: scaled inputs (pow) and exponentials, per side
        return 2 * (H * d + H * m), projection, True
    if name == "cosformer":  # ReLU outputs, per side
        return 2 * H * d, 0.0, True
    if name == "retnet":  # identity / scaling: nothing beyond phi(q), phi(k)
        return 0.0, 0.0, True
    return 2 * H * m, projection, False  # unknown: one saved tensor per side


def _mixer_traits(mixer: nn.Module, params: int) -> LayerTraits:
    """The :class:`LayerTraits` of a built token mixer."""
    from harness.layers.linear_mixer import LinearAttentionMixer

    c = mixer.config
    name = type(mixer).name
    H, Hkv, d = c.n_heads, c.n_kv_heads, c.head_dim
    rotary = c.rotary_dim if getattr(mixer, "uses_rotary", False) else 0
    base = dict(method=name, heads=H, kv_heads=Hkv, head_dim=d, rotary_dim=rotary, params=params)
    if name == "softmax":
        return LayerTraits(family="softmax", **base)
    if name == "sliding-window":
        return LayerTraits(
            family="sliding-window", window=mixer.window, chunk_size=mixer.chunk_size, exact=False, **base
        )
    if name == "linformer":
        return LayerTraits(
            family="linformer", chunk_size=mixer.block_size, compressed_dim=mixer.compressed_dim, exact=False, **base
        )
    linear = getattr(mixer, "linear", None) if name == "window-linear" else mixer
    if isinstance(linear, LinearAttentionMixer):
        m = linear.feature_dim
        extra, fflops, exact = _feature_map(linear, H, d, m)
        return LayerTraits(
            family="window-linear" if name == "window-linear" else "linear",
            feature_dim=m,
            chunk_size=getattr(mixer, "chunk_size", linear.chunk_size),
            decay=_decay_kind(linear),
            normalize=bool(linear.normalize) and name != "window-linear",
            gated=getattr(linear, "gated", None) is not None,
            feature_extra=extra,
            feature_flops=fflops,
            window=getattr(mixer, "window", 0),
            exact=exact and name != "window-linear",
            **base,
        )
    return LayerTraits(family="unknown", exact=False, **base)


def _mamba_traits(cfg: Any, params: int) -> LayerTraits:
    return LayerTraits(
        method="mamba",
        family="mamba",
        inner=cfg.intermediate_size,
        state=cfg.state_size,
        dt_rank=cfg.time_step_rank,
        params=params,
        exact=False,
    )


# -- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU of one (strategy, activation checkpointing) setting.

    ``other``: buffers, DDP's gradient buckets, the bf16 weight copies of mixed precision, and the
    gathered working set of FSDP/ZeRO-3. ``step_temp``: AdamW's temporary during the optimizer step,
    which takes the place of the (then freed) activations. ``total = params + grads + optimizer +
    other + max(activations, step_temp)``.
    """

    strategy: str
    checkpointing: bool
    world_size: int
    params: int
    grads: int
    optimizer: int
    activations: int
    other: int
    step_temp: int

    @property
    def model_states(self) -> int:
        return self.params + self.grads + self.optimizer

    @property
    def total(self) -> int:
        return self.model_states + self.other + max(self.activations, self.step_temp)


@dataclass(frozen=True)
class MemoryPlan:
    """The memory and time plan of one run: a model, a block size, a micro-batch per GPU, gradient
    accumulation, a GPU count and a precision (see the module docstring).

    ``flash``: softmax attention through a fused kernel (no ``L x L`` scores stored), as SDPA does.
    """

    shape: ModelShape
    block_size: int
    micro_batch: int
    grad_accum: int = 1
    world_size: int = 1
    precision: str = "fp32"
    flash: bool = True

    def __post_init__(self) -> None:
        if min(self.block_size, self.micro_batch, self.grad_accum, self.world_size) < 1:
            raise ValueError("block_size, micro_batch, grad_accum and world_size must be >= 1.")
        resolve_precision(self.precision)

    @classmethod
    def for_config(
        cls, config: Any, method: str | None = None, options: Mapping[str, Any] | None = None, **settings: Any
    ) -> MemoryPlan:
        """The plan of ``config`` built with ``method`` (:meth:`ModelShape.from_config`) and ``settings``."""
        return cls(ModelShape.from_config(config, method, options), **settings)

    @property
    def prec(self) -> Precision:
        return resolve_precision(self.precision)

    @property
    def tokens_per_step(self) -> int:
        """Tokens of one optimizer step over all GPUs."""
        return self.block_size * self.micro_batch * self.grad_accum * self.world_size

    def activation_bytes(self, checkpointing: bool) -> int:
        return self.shape.activation_bytes(self.block_size, self.micro_batch, self.prec, checkpointing, self.flash)

    def estimate(self, strategy: str, checkpointing: bool = False, world_size: int | None = None) -> MemoryEstimate:
        """Bytes per GPU under ``strategy`` (one of :data:`STRATEGIES`) on ``world_size`` GPUs (default:
        the plan's)."""
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose one of {list(STRATEGIES)}")
        W = self.world_size if world_size is None else world_size
        if W < 1:
            raise ValueError(f"world_size must be >= 1, got {W}")
        p, s = self.prec.for_strategy(strategy), self.shape
        n_all, n_train = s.n_params, s.n_trainable
        grads_full, optim_full = n_train * p.grad, n_train * p.optimizer
        step_full = n_train * _LOSS_BYTES_FP32  # one fp32 temporary per updated parameter
        other = s.buffer_bytes
        if strategy in ("ddp", "zero2"):
            params = n_all * p.param
            other += n_all * p.compute  # the low-precision copy of every weight, forward to backward
        else:
            params = math.ceil(n_all * p.param / W)
            gather = p.compute or p.param
            other += (s.root_params + 2 * s.block_params) * gather + s.block_params * p.grad
        if strategy == "ddp":
            grads, optimizer, step = grads_full, optim_full, step_full
            if W > 1:
                other += grads_full  # the reducer's bucket copy of the gradients
        else:
            grads, optimizer, step = (math.ceil(x / W) for x in (grads_full, optim_full, step_full))
        return MemoryEstimate(
            strategy=strategy,
            checkpointing=checkpointing,
            world_size=W,
            params=params,
            grads=grads,
            optimizer=optimizer,
            activations=self.activation_bytes(checkpointing),
            other=other,
            step_temp=step,
        )

    def estimates(self, strategies: Sequence[str] = STRATEGIES) -> list[MemoryEstimate]:
        """:meth:`estimate` for every strategy, without and with activation checkpointing."""
        return [self.estimate(st, ck) for st in strategies for ck in (False, True)]

    def min_gpus(
        self,
        gpu_memory_bytes: int,
        strategy: str = "fsdp",
        checkpointing: bool = False,
        usable_fraction: float = 0.9,
        max_gpus: int = 4096,
    ) -> int | None:
        """The fewest GPUs of ``gpu_memory_bytes`` each on which ``strategy`` fits (``None``: not even
        ``max_gpus``; replicated states bound DDP and ZeRO-2). ``usable_fraction`` of each GPU is
        planned for (the rest: CUDA context, allocator fragmentation, communication buffers)."""
        budget = gpu_memory_bytes * usable_fraction
        for w in range(1, max_gpus + 1):
            if self.estimate(strategy, checkpointing, w).total <= budget:
                return w
        return None

    def flops_per_token(self) -> float:
        """Training FLOPs per token at the plan's block size (:meth:`ModelShape.flops_per_token`)."""
        return self.shape.flops_per_token(self.block_size)

    def gpu_hours(self, tokens: float, gpu_peak_flops: float, mfu: float = 0.4, checkpointing: bool = False) -> float:
        """:func:`gpu_hours` of ``tokens``; activation checkpointing recomputes the forward (x4/3)."""
        return gpu_hours(tokens, self.flops_per_token() * (4 / 3 if checkpointing else 1.0), gpu_peak_flops, mfu)


def flops_per_token(shape: ModelShape, seq_len: int) -> float:
    """Training FLOPs per token of ``shape`` at ``seq_len`` (see the module docstring)."""
    return shape.flops_per_token(seq_len)


def gpu_hours(tokens: float, flops_per_token: float, gpu_peak_flops: float, mfu: float = 0.4) -> float:
    """GPU-hours to train ``tokens`` at ``flops_per_token`` on GPUs of ``gpu_peak_flops`` (dense peak)
    running at model-FLOPs utilisation ``mfu`` (0.4: what well-tuned large runs report, e.g. PaLM's
    46%, Chowdhery et al. 2022, Sec. 4.1). Evaluation, checkpointing and restarts are not included."""
    if not (0 < mfu <= 1) or gpu_peak_flops <= 0:
        raise ValueError("mfu must be in (0, 1] and gpu_peak_flops positive.")
    return tokens * flops_per_token / (gpu_peak_flops * mfu) / 3600.0


def _gib(n: float) -> str:
    return f"{n / GIB:7.1f}"


def plan_lines(
    config: Any,
    method: str | None = None,
    *,
    tokens: float,
    block_size: int,
    micro_batch: int,
    grad_accum: int = 1,
    world_size: int = 8,
    precision: str = "bf16-mixed",
    gpu: str | GPU = "a100-80gb",
    options: Mapping[str, Any] | None = None,
    label: str | None = None,
    mfu: float = 0.4,
    strategies: Sequence[str] = STRATEGIES,
) -> list[str]:
    """A compact memory/time table of one run for ``--dry-run``: per strategy, without and with
    activation checkpointing, GiB per GPU (params, grads, optimizer, activations, other, total) on
    ``world_size`` GPUs, the fewest ``gpu`` that hold it, and the GPU-hours of ``tokens``.

    ``config``/``method``/``options`` as :meth:`ModelShape.from_config`; ``precision`` a
    :data:`PRECISIONS` name or a ``TrainConfig.mixed_precision`` value."""
    g = GPUS[gpu] if isinstance(gpu, str) else gpu
    plan = MemoryPlan.for_config(
        config,
        method,
        options,
        block_size=block_size,
        micro_batch=micro_batch,
        grad_accum=grad_accum,
        world_size=world_size,
        precision=precision,
    )
    s, prec = plan.shape, plan.prec
    approx = "" if s.exact else " (activations approximate for this method)"
    lines = [
        f"memory plan{' of ' + label if label else ''}: {s.method}, {s.n_params / 1e9:.3g}B parameters "
        f"({s.n_trainable / 1e9:.3g}B trained), {s.num_layers} layers x {s.hidden}; block {block_size}, micro-batch "
        f"{micro_batch}, accumulation {grad_accum}, {world_size} GPUs ({plan.tokens_per_step:,} tokens/step), "
        f"{prec.name}{approx}",
        f"  {'strategy':<8} {'ckpt':<4} {'params':>7} {'grads':>7} {'optim':>7} {'acts':>7} {'other':>7} "
        f"{'total':>7} GiB/GPU  {'min ' + g.name:>14}  {'GPU-h':>9}",
    ]
    for est in plan.estimates(strategies):
        n = plan.min_gpus(g.memory, est.strategy, est.checkpointing)
        hours = plan.gpu_hours(tokens, g.peak_flops(prec.name), mfu, est.checkpointing)
        lines.append(
            f"  {est.strategy:<8} {'yes' if est.checkpointing else 'no':<4} {_gib(est.params)} {_gib(est.grads)} "
            f"{_gib(est.optimizer)} {_gib(est.activations)} {_gib(est.other)} {_gib(est.total)}         "
            f"{'none' if n is None else n:>14}  {hours:>9,.0f}"
        )
    lines.append(
        f"  GPU-h: {tokens:.3g} tokens x {plan.flops_per_token():.3g} FLOP/token (6N + attention, x4/3 with "
        f"checkpointing) at {mfu:.0%} of {g.peak_flops(prec.name) / 1e12:.0f} TFLOP/s; total = params + grads + "
        f"optim + other + max(acts, AdamW step temporary); min GPUs keep 10% of {g.memory / GIB:.0f} GiB free; "
        "fsdp and zero3 both shard everything (zero2/zero3: DeepSpeed's 16-bit weights and gradients)"
    )
    return lines
