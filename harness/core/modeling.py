"""One decoder language model that holds any registered token mixer, in two block layouts.

* ``layout="neox"`` — GPT-NeoX / Pythia (Black et al. 2022; Biderman et al. 2023): LayerNorm,
  parallel residual ``x + attn(ln1(x)) + mlp(ln2(x))``, partial rotary, GELU MLP, untied head.
* ``layout="llama"`` — LLaMA (Touvron et al. 2023): RMSNorm, sequential residual, SwiGLU MLP,
  full rotary, grouped-query attention.

The model is a ``transformers.PreTrainedModel`` registered with ``AutoConfig`` and
``AutoModelForCausalLM`` under ``model_type="mixer_lm"`` (importing :mod:`harness` registers it), so
``generate``, ``save_pretrained``/``from_pretrained`` (safetensors) and lm-eval's HF wrapper work
unchanged. Decoding keeps one state per layer in a :class:`MixerCache`: the KV cache for softmax
attention, the recurrent state for linear mixers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutputWithPast

from harness.core.hf_cache import CACHE_NAMES
from harness.core.mixer import MixerConfig, MixerConfigError, TokenMixer
from harness.core.projections import positions_from_mask
from harness.core.registry import build_mixer
from harness.util.tensor_tree import map_tensors, tensors_in

LAYOUTS: tuple[str, ...] = ("neox", "llama")
#: the field of transformers' CausalLMOutputWithPast that holds the cache (``cache`` from 5.24 on)
_OUTPUT_CACHE_FIELD = next(n for n in CACHE_NAMES if n in CausalLMOutputWithPast.__dataclass_fields__)


def _one_cache(cache: MixerCache | None, past_key_values: MixerCache | None) -> MixerCache | None:
    """The cache passed under the current name (``cache``) or the pre-5.24 one (``past_key_values``)."""
    if cache is not None and past_key_values is not None:
        raise ValueError("pass the decoding cache once, as `cache` (or `past_key_values` before transformers 5.24)")
    return cache if cache is not None else past_key_values


class MixerLMConfig(PretrainedConfig):
    """Configuration of :class:`MixerLMForCausalLM`. Field names follow Hugging Face's.

    ``mixer`` names a registered method (``harness.list_methods()``); ``mixer_options`` are its
    method-specific options; ``mixer_form`` forces one computational form (``None``: each method's
    default, with ``recurrent`` for one-token decoding steps).

    Hybrid models give some layers another method: ``layer_mixers`` maps a layer index to
    ``{"mixer": name, "options": {...}}`` (e.g. keep softmax attention in layers 1 and 3 of a DiJiang
    model), and ``mixer`` may also be a list with one name per layer. ``layer_selection`` records how
    the layers were chosen (free-form provenance, e.g. the criterion and its per-layer scores).
    """

    model_type = "mixer_lm"

    def __init__(
        self,
        vocab_size: int = 256,
        hidden_size: int = 128,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 4,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        intermediate_size: int | None = None,
        layout: str = "neox",
        mixer: str | list[str] = "softmax",
        mixer_options: dict[str, Any] | None = None,
        mixer_form: str | None = None,
        layer_mixers: dict[int | str, dict[str, Any]] | None = None,
        layer_selection: dict[str, Any] | None = None,
        partial_rotary_factor: float | None = None,
        rope_theta: float = 10000.0,
        max_position_embeddings: int = 2048,
        norm_eps: float = 1e-5,
        hidden_act: str | None = None,
        attention_bias: bool | None = None,
        mlp_bias: bool | None = None,
        use_parallel_residual: bool = True,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = False,
        **kwargs: Any,
    ) -> None:
        if layout not in LAYOUTS:
            raise MixerConfigError(f"unknown layout {layout!r}; choose one of {list(LAYOUTS)}.")
        neox = layout == "neox"
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.intermediate_size = intermediate_size or 4 * hidden_size
        self.layout = layout
        self.mixer_options = dict(mixer_options or {})
        self.mixer, self.layer_mixers = _normalise_layer_mixers(mixer, layer_mixers, num_hidden_layers)
        self.layer_selection = dict(layer_selection) if layer_selection else None
        self.mixer_form = mixer_form
        self.partial_rotary_factor = (0.25 if neox else 1.0) if partial_rotary_factor is None else partial_rotary_factor
        self.rope_theta = rope_theta
        self.max_position_embeddings = max_position_embeddings
        self.norm_eps = norm_eps
        self.hidden_act = hidden_act or ("gelu" if neox else "silu")
        self.attention_bias = neox if attention_bias is None else attention_bias
        self.mlp_bias = neox if mlp_bias is None else mlp_bias
        self.use_parallel_residual = use_parallel_residual
        self.initializer_range = initializer_range
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    def layer_method(self, layer_idx: int) -> str:
        """The method of layer ``layer_idx`` (``mixer`` unless ``layer_mixers`` overrides it)."""
        override = self.layer_mixers.get(layer_idx)
        return override["mixer"] if override else self.mixer

    @property
    def layer_methods(self) -> list[str]:
        """The method of every layer, in order."""
        return [self.layer_method(i) for i in range(self.num_hidden_layers)]

    @property
    def is_hybrid(self) -> bool:
        """Whether the layers do not all use one method."""
        return len(set(self.layer_methods)) > 1

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["layer_mixers"] = {str(i): v for i, v in sorted(self.layer_mixers.items())}  # JSON keys are strings
        return d

    def mixer_config(self, layer_idx: int) -> MixerConfig:
        """The :class:`MixerConfig` of layer ``layer_idx`` (its own options in a hybrid)."""
        override = self.layer_mixers.get(layer_idx)
        options = override.get("options", {}) if override else self.mixer_options
        rotary_dim = int(self.head_dim * self.partial_rotary_factor)
        rotary_dim -= rotary_dim % 2
        return MixerConfig(
            d_model=self.hidden_size,
            n_heads=self.num_attention_heads,
            n_kv_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            rotary_dim=rotary_dim,
            rope_theta=self.rope_theta,
            max_seq_len=self.max_position_embeddings,
            qkv_bias=self.attention_bias,
            out_bias=self.attention_bias,
            layer_idx=layer_idx,
            n_layers=self.num_hidden_layers,
            options=dict(options),
        )


def _normalise_layer_mixers(
    mixer: str | list[str], overrides: dict[int | str, dict[str, Any]] | None, n_layers: int
) -> tuple[str, dict[int, dict[str, Any]]]:
    """(default method, {layer: {"mixer", "options"}}) from ``mixer`` (a name, or one per layer) and
    ``layer_mixers``; overrides equal to the default are dropped, so a plain model has none."""
    if isinstance(mixer, (list, tuple)):
        if len(mixer) != n_layers:
            raise MixerConfigError(f"mixer lists {len(mixer)} methods for {n_layers} layers; give one per layer.")
        names = list(mixer)
        mixer = max(set(names), key=lambda n: (names.count(n), -names.index(n)))
        overrides = {**{i: {"mixer": n} for i, n in enumerate(names) if n != mixer}, **(overrides or {})}
    out: dict[int, dict[str, Any]] = {}
    for key, spec in (overrides or {}).items():
        try:
            i = int(key)
        except (TypeError, ValueError):
            raise MixerConfigError(f"layer_mixers key {key!r} is not a layer index.") from None
        if not 0 <= i < n_layers:
            raise MixerConfigError(f"layer_mixers names layer {i}; the model has layers 0..{n_layers - 1}.")
        if not isinstance(spec, dict) or "mixer" not in spec or set(spec) - {"mixer", "options"}:
            raise MixerConfigError(
                f"layer_mixers[{i}] must be {{'mixer': NAME, 'options': {{...}}}} (options optional), got {spec!r}."
            )
        entry = {"mixer": spec["mixer"], "options": dict(spec.get("options") or {})}
        if entry["mixer"] != mixer or entry["options"]:
            out[i] = entry
    return mixer, out


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019), computed in float32 as LLaMA does."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class NeoXMLP(nn.Module):
    """GPT-NeoX feed-forward: ``W_2 act(W_1 x)``."""

    def __init__(self, c: MixerLMConfig) -> None:
        super().__init__()
        self.dense_h_to_4h = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.dense_4h_to_h = nn.Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias)
        self.act = ACT2FN[c.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(self.act(self.dense_h_to_4h(x)))


class SwiGLUMLP(nn.Module):
    """LLaMA feed-forward (Shazeer 2020, SwiGLU): ``W_down (act(W_gate x) * W_up x)``."""

    def __init__(self, c: MixerLMConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias)
        self.act = ACT2FN[c.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class DecoderBlock(GradientCheckpointingLayer):
    """One block: norm -> mixer and norm -> MLP, with the layout's residual wiring."""

    def __init__(self, c: MixerLMConfig, layer_idx: int) -> None:
        super().__init__()
        neox = c.layout == "neox"
        norm = (
            (lambda: nn.LayerNorm(c.hidden_size, eps=c.norm_eps))
            if neox
            else (lambda: RMSNorm(c.hidden_size, c.norm_eps))
        )
        self.input_norm = norm()
        self.post_norm = norm()
        self.mixer: TokenMixer = build_mixer(c.layer_method(layer_idx), c.mixer_config(layer_idx))
        self.mlp = NeoXMLP(c) if neox else SwiGLUMLP(c)
        self.parallel_residual = neox and c.use_parallel_residual

    def forward(
        self,
        x: torch.Tensor,
        position_ids: torch.Tensor,
        state: Any,
        form: str | None,
        attention_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, Any]:
        mixed, new_state = self.mixer(
            self.input_norm(x), position_ids=position_ids, state=state, form=form, attention_mask=attention_mask
        )
        if self.parallel_residual:  # GPT-NeoX: x + attn(ln1 x) + mlp(ln2 x)
            return x + mixed + self.mlp(self.post_norm(x)), new_state
        h = x + mixed
        return h + self.mlp(self.post_norm(h)), new_state


class MixerCache:
    """Per-layer decoding states (KV caches or recurrent states) and the number of tokens seen."""

    def __init__(self, num_layers: int) -> None:
        self.states: list[Any] = [None] * num_layers
        self.seen_tokens = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def __len__(self) -> int:
        return len(self.states)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Select batch rows (beam search)."""
        self.states = [map_tensors(s, lambda t: t.index_select(0, beam_idx.to(t.device))) for s in self.states]

    def numel(self) -> int:
        """Numbers held in all layers' states (the measured cache size)."""
        return sum(t.numel() for s in self.states for t in tensors_in(s))


class MixerLMPreTrainedModel(PreTrainedModel):
    config_class = MixerLMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DecoderBlock"]
    _skip_keys_device_placement = list(CACHE_NAMES)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # we bring our own MixerCache (recurrent states are not key/value pairs)

    def _initialize_weights(self, module: nn.Module, is_custom_code: bool = False) -> None:
        """transformers 5 skips modules holding no tensors of their own (ours count as custom code),
        which would skip a mixer whose parameters all sit in submodules; initialise every mixer
        unless all of its parameters were loaded from a checkpoint."""
        if isinstance(module, TokenMixer) and not getattr(module, "_is_hf_initialized", False):
            if not all(getattr(p, "_is_hf_initialized", False) for p in module.parameters()):
                self._init_weights(module)
            module._is_hf_initialized = True
            return
        super()._initialize_weights(module, is_custom_code)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """GPT-style N(0, initializer_range) for linears and embeddings, ones/zeros for norms; then
        each mixer re-initialises its own special parameters (:meth:`TokenMixer.reset_parameters`)."""
        super()._init_weights(module)
        if isinstance(module, RMSNorm):
            module.weight.fill_(1.0)
        if isinstance(module, TokenMixer):
            module.reset_parameters(self.config.initializer_range)


class MixerLMModel(MixerLMPreTrainedModel):
    """Embedding, blocks and final norm (no head)."""

    def __init__(self, config: MixerLMConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = (
            nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
            if config.layout == "neox"
            else RMSNorm(config.hidden_size, config.norm_eps)
        )
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: MixerCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool = False,
        mixer_form: str | None = None,
        past_key_values: MixerCache | None = None,
    ) -> tuple[torch.Tensor, MixerCache | None]:
        """Hidden states after the final norm, and the decoding cache (``None`` unless ``use_cache``
        or a cache was passed). ``past_key_values`` is the cache's name before transformers 5.24."""
        cache = _one_cache(cache, past_key_values)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, T, _ = x.shape
        if use_cache and cache is None:
            cache = MixerCache(len(self.layers))
        past = cache.seen_tokens if cache is not None else 0
        if attention_mask is not None:
            if (
                attention_mask.dim() != 2
                or attention_mask.shape[0] != B
                or attention_mask.shape[1] not in (T, past + T)
            ):
                raise ValueError(
                    f"attention_mask must be (batch, seq) or (batch, past+seq) = ({B}, {past + T}); "
                    f"got {tuple(attention_mask.shape)}"
                )
            if bool(attention_mask.all()):
                attention_mask = None
            elif attention_mask.shape[1] == T and past:
                attention_mask = F.pad(attention_mask, (past, 0), value=1)
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask, B, past, T, x.device)
        form = mixer_form or self.config.mixer_form
        for i, layer in enumerate(self.layers):
            state = cache.states[i] if cache is not None else None
            x, new_state = layer(x, position_ids, state, form, attention_mask)
            if cache is not None:
                cache.states[i] = new_state
        if cache is not None:
            cache.seen_tokens = past + T
        return self.norm(x), cache


class MixerLMForCausalLM(MixerLMPreTrainedModel, GenerationMixin):
    """The decoder with a language-modelling head; see the module docstring."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: MixerLMConfig) -> None:
        super().__init__(config)
        self.model = MixerLMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: MixerCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        mixer_form: str | None = None,
        past_key_values: MixerCache | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Next-token logits; ``labels`` (same shape as input_ids, -100 ignored) adds the shifted
        cross-entropy ``loss``. ``use_cache`` returns a :class:`MixerCache` to continue from, in the
        output field this transformers declares (``cache`` from 5.24, ``past_key_values`` before;
        read it with :func:`harness.core.hf_cache.output_cache`). The cache is taken as ``cache`` or, as
        transformers before 5.24 passes it, ``past_key_values``."""
        cache = _one_cache(cache, past_key_values)
        use_cache = bool(use_cache) and not self.training if use_cache is not None else cache is not None
        hidden, cache = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            mixer_form=mixer_form,
        )
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                labels[:, 1:].reshape(-1).to(logits.device),
                ignore_index=-100,
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{_OUTPUT_CACHE_FIELD: cache})


AutoConfig.register(MixerLMConfig.model_type, MixerLMConfig)
AutoModelForCausalLM.register(MixerLMConfig, MixerLMForCausalLM)
