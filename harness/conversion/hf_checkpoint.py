"""Load a pretrained GPT-NeoX (Pythia) or LLaMA checkpoint into :class:`MixerLMForCausalLM` with any
registered mixer — the first step of the paper's Algorithm 1 (replace attention, keep the weights).

Every checkpoint weight is mapped: embeddings, norms and MLPs are copied by name; each layer's
attention projections are handed to the mixer's ``init_from_attention`` (GPT-NeoX's fused
``query_key_value`` is split per head first). With ``mixer="softmax"`` the result reproduces the
original model's logits.

Weights are read shard by shard from the checkpoint's safetensors files (or ``pytorch_model.bin``),
so a 7B model is not held twice in memory.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, PretrainedConfig

from harness.core.mixer import AttentionWeights
from harness.core.modeling import MixerLMConfig, MixerLMForCausalLM

SUPPORTED_ARCHITECTURES: tuple[str, ...] = ("gpt_neox", "llama")
# checkpoint entries that carry no learned weights (old GPT-NeoX checkpoints store these buffers)
_IGNORED = re.compile(r"(rotary_emb\.inv_freq|attention\.bias|attention\.masked_bias)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be converted (missing, unsupported, or inconsistent)."""


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A local checkpoint directory, or a hub id downloaded where the network allows."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; pass the checkpoint *directory* (with config.json).")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(str(name_or_path), allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"])
    except Exception as err:  # offline, unknown repo, auth ...
        raise CheckpointError(
            f"checkpoint {str(name_or_path)!r} is not a local directory and could not be fetched from the hub "
            f"({type(err).__name__}: {err}). Pass a local checkpoint directory, or run with network access "
            "(unset HF_HUB_OFFLINE) to download it."
        ) from None
    return Path(local)


def config_from_hf(hf: PretrainedConfig, mixer: str, mixer_options: dict[str, Any] | None = None) -> MixerLMConfig:
    """Translate a GPT-NeoX or LLaMA config into a :class:`MixerLMConfig` holding ``mixer``."""
    mt = getattr(hf, "model_type", None)
    if mt not in SUPPORTED_ARCHITECTURES:
        raise CheckpointError(
            f"unsupported architecture {mt!r}; supported: {list(SUPPORTED_ARCHITECTURES)} "
            "(GPT-NeoX/Pythia and LLaMA checkpoints)."
        )
    rope = dict(getattr(hf, "rope_parameters", None) or {})
    rope_type = rope.get("rope_type", "default")
    if rope_type != "default":
        raise CheckpointError(
            f"rope_type {rope_type!r} (rope scaling) is not supported; only plain rotary ('default') is."
        )
    common = dict(
        vocab_size=hf.vocab_size,
        hidden_size=hf.hidden_size,
        num_hidden_layers=hf.num_hidden_layers,
        num_attention_heads=hf.num_attention_heads,
        intermediate_size=hf.intermediate_size,
        rope_theta=rope.get("rope_theta", 10000.0),
        max_position_embeddings=hf.max_position_embeddings,
        tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
        mixer=mixer,
        mixer_options=mixer_options or {},
        bos_token_id=hf.bos_token_id,
        eos_token_id=hf.eos_token_id,
        pad_token_id=getattr(hf, "pad_token_id", None),
    )
    if mt == "gpt_neox":
        return MixerLMConfig(
            layout="neox",
            partial_rotary_factor=rope.get("partial_rotary_factor", 1.0),
            norm_eps=hf.layer_norm_eps,
            hidden_act=hf.hidden_act,
            attention_bias=bool(getattr(hf, "attention_bias", True)),
            mlp_bias=True,
            use_parallel_residual=hf.use_parallel_residual,
            **common,
        )
    return MixerLMConfig(
        layout="llama",
        num_key_value_heads=getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads,
        head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads,
        partial_rotary_factor=rope.get("partial_rotary_factor", 1.0),
        norm_eps=hf.rms_norm_eps,
        hidden_act=hf.hidden_act,
        attention_bias=bool(getattr(hf, "attention_bias", False)),
        mlp_bias=bool(getattr(hf, "mlp_bias", False)),
        **common,
    )


def iter_checkpoint_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every weight in the checkpoint, one shard at a time."""
    shards = sorted(path.glob("*.safetensors"))
    if shards:
        from safetensors import safe_open

        for shard in shards:
            with safe_open(str(shard), framework="pt") as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)
        return
    bins = sorted(path.glob("pytorch_model*.bin"))
    if not bins:
        raise CheckpointError(f"no *.safetensors or pytorch_model*.bin weights in {path}.")
    for b in bins:
        yield from torch.load(b, map_location="cpu", weights_only=True).items()


def _neox_name(key: str) -> tuple[str, int | None, str]:
    """Map a GPT-NeoX key to ('direct', layer, our_name) or ('attn', layer, part)."""
    if key == "gpt_neox.embed_in.weight":
        return "direct", None, "model.embed_tokens.weight"
    if key.startswith("gpt_neox.final_layer_norm."):
        return "direct", None, "model.norm." + key.rsplit(".", 1)[1]
    if key == "embed_out.weight":
        return "direct", None, "lm_head.weight"
    m = re.match(r"gpt_neox\.layers\.(\d+)\.(.+)$", key)
    if not m:
        return "unknown", None, key
    i, rest = int(m.group(1)), m.group(2)
    rest = rest.replace("input_layernorm", "input_norm").replace("post_attention_layernorm", "post_norm")
    if rest.startswith("attention."):
        return "attn", i, rest[len("attention.") :]
    return "direct", i, f"model.layers.{i}.{rest}"


def _llama_name(key: str) -> tuple[str, int | None, str]:
    if key == "model.embed_tokens.weight" or key == "lm_head.weight":
        return "direct", None, key
    if key.startswith("model.norm."):
        return "direct", None, key
    m = re.match(r"model\.layers\.(\d+)\.(.+)$", key)
    if not m:
        return "unknown", None, key
    i, rest = int(m.group(1)), m.group(2)
    rest = rest.replace("input_layernorm", "input_norm").replace("post_attention_layernorm", "post_norm")
    if rest.startswith("self_attn."):
        return "attn", i, rest[len("self_attn.") :]
    return "direct", i, f"model.layers.{i}.{rest}"


def _attention_weights(parts: dict[str, torch.Tensor], layout: str, n_heads: int, head_dim: int) -> AttentionWeights:
    """Build :class:`AttentionWeights` from one layer's attention tensors."""
    if layout == "neox":
        qkv_w = parts["query_key_value.weight"]
        d_in = qkv_w.shape[1]
        w = qkv_w.view(n_heads, 3, head_dim, d_in)  # per head: [q; k; v]
        b = parts.get("query_key_value.bias")
        bb = b.view(n_heads, 3, head_dim) if b is not None else None
        return AttentionWeights(
            q=w[:, 0].reshape(-1, d_in),
            k=w[:, 1].reshape(-1, d_in),
            v=w[:, 2].reshape(-1, d_in),
            o=parts["dense.weight"],
            q_bias=None if bb is None else bb[:, 0].reshape(-1),
            k_bias=None if bb is None else bb[:, 1].reshape(-1),
            v_bias=None if bb is None else bb[:, 2].reshape(-1),
            o_bias=parts.get("dense.bias"),
        )
    return AttentionWeights(
        q=parts["q_proj.weight"],
        k=parts["k_proj.weight"],
        v=parts["v_proj.weight"],
        o=parts["o_proj.weight"],
        q_bias=parts.get("q_proj.bias"),
        k_bias=parts.get("k_proj.bias"),
        v_bias=parts.get("v_proj.bias"),
        o_bias=parts.get("o_proj.bias"),
    )


@torch.no_grad()
def convert_checkpoint(
    name_or_path: str | os.PathLike,
    mixer: str = "softmax",
    mixer_options: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> MixerLMForCausalLM:
    """Load a GPT-NeoX or LLaMA checkpoint into our decoder with ``mixer`` in every layer.

    Raises :class:`CheckpointError` for unsupported architectures, missing files or weights that
    do not fit; unknown method names raise the registry's error listing the known methods.
    """
    path = resolve_checkpoint(name_or_path)
    if not (path / "config.json").exists():
        raise CheckpointError(f"{path} has no config.json; is it a Hugging Face checkpoint directory?")
    try:
        hf_config = AutoConfig.from_pretrained(str(path))
    except (ValueError, KeyError) as err:
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
        raise CheckpointError(
            f"cannot read {path}/config.json (model_type={model_type!r}): {err}. "
            f"Supported architectures: {list(SUPPORTED_ARCHITECTURES)}."
        ) from None
    config = config_from_hf(hf_config, mixer, mixer_options)
    model = MixerLMForCausalLM(config).to(dtype)
    namer = _neox_name if config.layout == "neox" else _llama_name
    params = dict(model.named_parameters())
    filled: set[str] = set()
    attn: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in iter_checkpoint_tensors(path):
        if _IGNORED.search(key):
            continue
        kind, layer, name = namer(key)
        if kind == "attn":
            attn.setdefault(layer, {})[name] = tensor
            continue
        if kind == "unknown" or name not in params:
            raise CheckpointError(f"checkpoint weight {key!r} has no place in the {config.layout} layout.")
        target = params[name]
        if tuple(target.shape) != tuple(tensor.shape):
            raise CheckpointError(f"{key}: shape {tuple(tensor.shape)} does not fit {name} {tuple(target.shape)}.")
        target.copy_(tensor)
        filled.add(name)
    if config.tie_word_embeddings:
        filled.add("lm_head.weight")
    for i, layer in enumerate(model.model.layers):
        if i not in attn:
            raise CheckpointError(f"checkpoint has no attention weights for layer {i}.")
        weights = _attention_weights(attn[i], config.layout, config.num_attention_heads, config.head_dim)
        weights = AttentionWeights(**{k: None if v is None else v.to(dtype) for k, v in vars(weights).items()})
        layer.mixer.init_from_attention(weights)
    missing = sorted(n for n in params if n not in filled and ".mixer." not in n)
    if missing:
        raise CheckpointError(f"checkpoint lacks weights for {missing[:5]}{' ...' if len(missing) > 5 else ''}.")
    model.config.converted_from = str(name_or_path)
    return model.eval()
