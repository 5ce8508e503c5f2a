"""Queries and keys of a model on real text, and the attention maps its mixers imply (paper Fig. 3).

For softmax attention the map is ``softmax(q k^T / sqrt d)`` (causal). For a linear-attention mixer
(:class:`harness.linear_mixer.LinearAttentionMixer`) it is the matrix the linear form computes
implicitly, ``A_ij = gamma^(i-j) phi(q_i) . phi(k_j)`` for ``j <= i``, shown row-normalised (by the
sum of ``|A_ij|``), so maps of different methods are comparable; nothing is trained here.
"""

from __future__ import annotations

import torch

from harness.linear_mixer import LinearAttentionMixer
from harness.ops.linear_attention import _causal_decay_mask
from harness.projections import repeat_kv


@torch.no_grad()
def layer_inputs(model: torch.nn.Module, input_ids: torch.Tensor, layer: int) -> torch.Tensor:
    """The hidden states entering layer ``layer``'s mixer (after its input norm), (B, T, D)."""
    blocks = model.model.layers
    if not 0 <= layer < len(blocks):
        raise ValueError(f"layer {layer} out of range: the model has {len(blocks)} layers.")
    captured: dict[str, torch.Tensor] = {}

    def hook(_module, args, kwargs):  # noqa: ANN001
        captured["x"] = args[0] if args else kwargs["x"]

    handle = blocks[layer].mixer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(input_ids)
    finally:
        handle.remove()
    return captured["x"]


@torch.no_grad()
def queries_keys(model: torch.nn.Module, input_ids: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary-applied queries and keys (H, T, d) of layer ``layer`` on one sequence."""
    x = layer_inputs(model, input_ids[:1], layer)
    mixer = model.model.layers[layer].mixer
    pos = torch.arange(x.shape[1], device=x.device)[None]
    q, k, _ = mixer.project(x, pos)
    k = repeat_kv(k, q.shape[1] // k.shape[1])
    return q[0], k[0]


@torch.no_grad()
def implied_attention(model: torch.nn.Module, input_ids: torch.Tensor, layer: int) -> torch.Tensor:
    """The (T, T) attention map of layer ``layer``'s mixer on one sequence, averaged over heads."""
    x = layer_inputs(model, input_ids[:1], layer)
    mixer = model.model.layers[layer].mixer
    T = x.shape[1]
    pos = torch.arange(T, device=x.device)[None]
    q, k, _ = mixer.project(x, pos)
    k = repeat_kv(k, q.shape[1] // k.shape[1])
    if isinstance(mixer, LinearAttentionMixer):
        fq, fk = mixer.feature_map(q, pos, True), mixer.feature_map(k, pos, False)
        scores = (fq @ fk.transpose(-1, -2)) * _causal_decay_mask(mixer.log_decay(), T, fq)
        scores = scores.abs()
        maps = scores / scores.sum(-1, keepdim=True).clamp_min(1e-30)
    elif mixer.name == "softmax":
        s = (q @ k.transpose(-1, -2)) * mixer.scale
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
        maps = s.softmax(-1)
    else:
        raise ValueError(f"method {mixer.name!r} has no implied attention map (not softmax or feature-map linear).")
    return maps[0].mean(0)


def row_tv_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean total-variation distance between corresponding rows of two row-stochastic maps."""
    return float(0.5 * (a - b).abs().sum(-1).mean())
