"""The token-mixer contract: what every attention replacement in the suite must provide.

A *token mixer* maps hidden states ``(batch, seq, d_model)`` to the same shape, causally: output
``t`` may depend only on inputs ``<= t``. It replaces softmax attention inside a decoder block
(:mod:`harness.core.modeling`). Each mixer declares its capabilities as class attributes so that the
registry, the tests, the benchmarks and the tables can treat every method alike:

* ``forms``: which computational forms it implements — ``parallel`` (the quadratic reference),
  ``chunk`` (linear-time training and prefill), ``recurrent`` (constant memory per decoded token).
* ``uses_rotary``: whether it consumes rotary position embeddings.
* ``convertible``: whether it can be initialised from a pretrained attention's Q/K/V/O weights.
* ``supports_left_padding``: whether padding at the start of a batched sequence leaves the real
  tokens' outputs unchanged (the contract tests check it where declared).
* :meth:`TokenMixer.state_size`: how many numbers it caches per sequence for decoding.
* :meth:`TokenMixer.attention_map` (optional): the token-to-token weights its parallel form applies,
  for mixers that have them (paper Fig. 3 draws them); the contract tests check that the weights,
  applied to the values, give the mixer's own output.

Whole architectures that are not a mixer inside the suite's decoder (Mamba) are registered under
:class:`harness.core.architecture.Architecture` instead, with the same capability attributes.

Decoding state is explicit: ``forward(x, state=s)`` continues from ``s`` and returns the new state,
so prefill (``chunk``) followed by token-by-token decoding (``recurrent``) is the same computation as
one forward pass over the whole sequence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

FORMS: tuple[str, ...] = ("parallel", "chunk", "recurrent")


class MixerConfigError(ValueError):
    """A mixer configuration that cannot work (bad dims, unknown option, ...)."""


@dataclass
class MixerConfig:
    """Shape and position settings every mixer receives (method options go in ``options``).

    ``options`` holds method-specific settings; each mixer class validates them against its own
    ``Options`` dataclass, so a misspelt option is an error, not silently ignored.
    """

    d_model: int
    n_heads: int
    n_kv_heads: int | None = None
    head_dim: int | None = None
    rotary_dim: int = 0
    rope_theta: float = 10000.0
    max_seq_len: int = 2048  # binding only for methods with a fixed maximum (see check_length)
    qkv_bias: bool = False
    out_bias: bool = False
    layer_idx: int = 0
    n_layers: int = 1
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise MixerConfigError(
                    f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                    "choose n_heads dividing d_model or set head_dim explicitly."
                )
            self.head_dim = self.d_model // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise MixerConfigError(
                f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads} "
                "(grouped-query attention needs whole groups)."
            )
        if self.rotary_dim % 2 or not 0 <= self.rotary_dim <= self.head_dim:
            raise MixerConfigError(
                f"rotary_dim={self.rotary_dim} must be even and between 0 and head_dim={self.head_dim}."
            )
        if self.max_seq_len <= 0:
            raise MixerConfigError(f"max_seq_len must be positive, got {self.max_seq_len}.")


@dataclass
class AttentionWeights:
    """Pretrained attention projections in ``nn.Linear`` layout (out_features, in_features).

    ``q``: (n_heads*head_dim, d_model); ``k``/``v``: (n_kv_heads*head_dim, d_model);
    ``o``: (d_model, n_heads*head_dim). Biases are optional.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor
    q_bias: torch.Tensor | None = None
    k_bias: torch.Tensor | None = None
    v_bias: torch.Tensor | None = None
    o_bias: torch.Tensor | None = None


@dataclass
class AttentionMap:
    """The attention a mixer's parallel form applies to one input (see :meth:`TokenMixer.attention_map`).

    ``weights`` (B, H, T, T): row ``i`` holds the weights of value rows ``j <= i`` (zero above the
    diagonal); ``values`` (B, H, T, d_v): the rows they mix; ``readout``: the mixer's output path,
    mixed values (B, H, T, d_v) -> output (B, T, D). :meth:`output` is then the mixer's parallel
    output, so the map shown is the function the model runs.
    """

    weights: torch.Tensor
    values: torch.Tensor
    readout: Callable[[torch.Tensor], torch.Tensor]

    def output(self) -> torch.Tensor:
        """``readout(weights @ values)``: the mixer's output computed through the map."""
        return self.readout(self.weights @ self.values.to(self.weights.dtype))


class TokenMixer(nn.Module):
    """Base class of every token mixer. Subclasses set the class attributes and implement
    :meth:`forward` (and :meth:`state_size`).

    Subclasses with method options define a nested dataclass ``Options``; ``self.opts`` is then an
    instance built from ``config.options``.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "mixer"
    forms: ClassVar[tuple[str, ...]] = ("parallel",)
    default_form: ClassVar[str] = "parallel"
    uses_rotary: ClassVar[bool] = False
    convertible: ClassVar[bool] = True
    supports_left_padding: ClassVar[bool] = True
    paper: ClassVar[str] = ""
    Options: ClassVar[type | None] = None

    def __init__(self, config: MixerConfig) -> None:
        super().__init__()
        self.config = config
        self.opts = parse_options(type(self), config.options)

    # -- the contract ------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        state: Any | None = None,
        form: str | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Any]:
        """Mix ``x`` (batch, seq, d_model) causally.

        ``position_ids`` (batch, seq) are absolute positions (needed for rotary/position-dependent
        methods). ``state`` is what an earlier call returned (``None`` starts a fresh sequence).
        ``attention_mask`` (batch, seq) marks real tokens with 1 and padding with 0 (left padding in
        batched generation). Returns ``(output, new_state)``.
        """
        raise NotImplementedError

    def state_size(self, seq_len: int) -> int:
        """Numbers cached per sequence (all heads of this layer) after ``seq_len`` tokens."""
        raise NotImplementedError

    def attention_map(self, x: torch.Tensor, *, position_ids: torch.Tensor | None = None) -> AttentionMap:
        """Optional: the attention weights this mixer's ``parallel`` form applies to ``x`` (B, T, D),
        computed by the same code as :meth:`forward` (a fresh sequence, no padding). Mixers whose
        output is not a weighted sum of per-token values (e.g. Linformer's compressed summaries)
        leave it out; :func:`has_attention_map` tells whether a class provides it."""
        raise NotImplementedError(f"method {self.name!r} exposes no attention map")

    def init_from_attention(self, weights: AttentionWeights) -> None:
        """Initialise from a pretrained attention's projections (conversion, paper Algorithm 1)."""
        if not self.convertible:
            raise MixerConfigError(f"method {self.name!r} cannot be initialised from attention weights.")
        raise NotImplementedError

    def reset_parameters(self, init_std: float) -> None:
        """Initialise the method's own parameters (gates, decays, feature weights). Called by the
        model after its generic N(0, init_std) initialisation of every linear layer, so a method
        with special initialisations (documented in its docstring) overrides them here."""

    # -- helpers -----------------------------------------------------------------------------
    def resolve_form(self, form: str | None, seq_len: int, has_state: bool) -> str:
        """The form to run: the requested one, else ``recurrent`` for one-token decoding steps
        (when available), else the default."""
        if form is None:
            if seq_len == 1 and has_state and "recurrent" in self.forms:
                return "recurrent"
            return self.default_form
        if form not in self.forms:
            raise MixerConfigError(f"method {self.name!r} has no {form!r} form; it supports {list(self.forms)}.")
        return form

    def check_length(self, total_len: int) -> None:
        """Raise a clear error past the longest sequence this mixer supports. Only methods with a
        fixed maximum length (Linformer's projections, the official DiJiang's per-position decay,
        cosFormer's fixed M) call it; the others accept any length."""
        if total_len > self.config.max_seq_len:
            raise MixerConfigError(
                f"method {self.name!r} supports at most max_seq_len={self.config.max_seq_len} tokens, "
                f"got {total_len}; raise max_seq_len in the model config (where the method allows) "
                "or shorten the input."
            )


def has_attention_map(cls: type[TokenMixer]) -> bool:
    """Whether mixer class ``cls`` provides the optional :meth:`TokenMixer.attention_map`."""
    return cls.attention_map is not TokenMixer.attention_map


def parse_options(cls: type[TokenMixer], options: dict[str, Any]) -> Any:
    """Build ``cls.Options`` from a dict, rejecting unknown keys with the list of known ones."""
    opt_cls = cls.Options
    if opt_cls is None:
        if options:
            raise MixerConfigError(f"method {cls.name!r} takes no options, got {sorted(options)}.")
        return None
    known = {f.name for f in dataclasses.fields(opt_cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise MixerConfigError(f"unknown option(s) {unknown} for method {cls.name!r}; known options: {sorted(known)}.")
    return opt_cls(**options)
