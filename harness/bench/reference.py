"""The transformers reference: the shape's softmax teacher as users run it, a pseudo-method of the sweep.

``hf-softmax`` is transformers' own ``GPTNeoXForCausalLM`` (GPT-NeoX layout: the ``pythia-*`` and
``tiny`` shapes) or ``LlamaForCausalLM`` (LLaMA layout: ``llama2-7b``, ``tiny-llama``) with random
weights, attention through ``torch.nn.functional.scaled_dot_product_attention``
(``attn_implementation="sdpa"``) and transformers' default decoding cache (a ``DynamicCache``, grown by
``torch.cat`` every step, passed as ``model(input_ids, <cache kwarg>=cache, use_cache=True)`` under the
name :func:`harness.core.hf_cache.cache_kwarg` finds). That is the Transformer the DiJiang paper
compares against (Chen et al. 2024, Table 1 and Fig. 4: the Pythia checkpoints run by transformers)
and what a user would pick; the suite's own ``softmax`` method is the same computation in the suite's
decoder with a list-like KV cache (``baselines.softmax.append_kv``).

Its config is translated from the same :class:`~harness.bench.shapes.Shape` (through the suite's
:class:`~harness.core.modeling.MixerLMConfig` defaults, so hidden size, layers, heads, key/value heads,
head size, intermediate size, rotary fraction and base, norm epsilon, activation, biases, parallel
residual, tied embeddings and vocabulary are those of the suite's softmax model): the two have the
same parameter count (tested). It is built by the suite's one factory
(:func:`harness.conversion.factory.build_model` of a transformers config). On a *layer* shape it is one
block with the shape's minuscule vocabulary (8), fed hidden states through ``inputs_embeds``, as
whole-architecture methods are; it then holds an 8 x d head the suite's body-only block does not.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import GPTNeoXConfig, LlamaConfig, PretrainedConfig

from harness.bench.shapes import Shape
from harness.conversion.factory import ModelSpec
from harness.conversion.factory import build_model as build_from_spec
from harness.core.modeling import MixerLMConfig

#: the pseudo-method's name in results, summaries and plots
NAME = "hf-softmax"
#: how summaries and plots label it
LABEL = "transformers reference"
#: ``method_kind`` of its rows
KIND = "reference"
#: attention implementation it runs
ATTN_IMPLEMENTATION = "sdpa"


def is_reference(method: str) -> bool:
    """Whether ``method`` is the transformers reference (not a registered method)."""
    return method == NAME


def display_name(method: str) -> str:
    """``method``, with the reference labelled as such (``hf-softmax (transformers reference)``)."""
    return f"{NAME} ({LABEL})" if is_reference(method) else method


def hf_config(shape: Shape, max_seq_len: int) -> PretrainedConfig:
    """The transformers config of ``shape``'s softmax model: ``GPTNeoXConfig`` for the GPT-NeoX layout,
    ``LlamaConfig`` for LLaMA's, with ``attn_implementation="sdpa"``. Every field is read from the
    :class:`MixerLMConfig` the suite builds for the shape, so both models share their defaults; this is
    the inverse of :func:`harness.conversion.hf_checkpoint.config_from_hf`."""
    c = MixerLMConfig(**shape.config, mixer="softmax", max_position_embeddings=max_seq_len)
    if c.head_dim * c.num_attention_heads != c.hidden_size and c.layout == "neox":
        raise ValueError(f"{shape.name}: GPT-NeoX needs head_dim x heads = hidden size")
    rope = {"rope_type": "default", "rope_theta": c.rope_theta, "partial_rotary_factor": c.partial_rotary_factor}
    common = dict(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        intermediate_size=c.intermediate_size,
        hidden_act=c.hidden_act,
        max_position_embeddings=max_seq_len,
        initializer_range=c.initializer_range,
        tie_word_embeddings=c.tie_word_embeddings,
        rope_parameters=rope,
        attention_bias=c.attention_bias,
        use_cache=True,
    )
    if c.layout == "neox":
        if c.num_key_value_heads != c.num_attention_heads or not c.mlp_bias:
            raise ValueError(f"{shape.name}: GPT-NeoX has no grouped-query attention and always MLP biases")
        cfg: PretrainedConfig = GPTNeoXConfig(
            **common, layer_norm_eps=c.norm_eps, use_parallel_residual=c.use_parallel_residual
        )
    else:
        cfg = LlamaConfig(
            **common,
            num_key_value_heads=c.num_key_value_heads,
            head_dim=c.head_dim,
            rms_norm_eps=c.norm_eps,
            mlp_bias=c.mlp_bias,
        )
    cfg._attn_implementation = ATTN_IMPLEMENTATION
    return cfg


def build_reference(shape: Shape, max_seq_len: int, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Random-weight transformers model of ``shape`` (seeded, eval mode, on ``device``/``dtype``),
    built by :func:`harness.conversion.factory.build_model` from :func:`hf_config`."""
    torch.manual_seed(0)
    model = build_from_spec(ModelSpec(config=hf_config(shape, max_seq_len)))
    model.config._attn_implementation = ATTN_IMPLEMENTATION  # from_config may pick its own default
    return model.to(device=device, dtype=dtype).eval()


def kv_cache_size(config: PretrainedConfig, seq_len: int) -> int:
    """Numbers a softmax KV cache holds per sequence after ``seq_len`` tokens:
    ``2 (keys, values) x L x layers x kv_heads x head_dim`` — the declared size a ``DynamicCache`` must
    match."""
    kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * seq_len * config.num_hidden_layers * kv * head_dim
