"""Queries and keys of a model on real text, and the attention maps its mixers imply (paper Fig. 3).

Every map comes from the mixer's own :meth:`~harness.core.mixer.TokenMixer.attention_map`, the weights its
``parallel`` form applies, computed by the code the model runs: ``softmax(q k^T / sqrt d)`` (causal)
for softmax attention; for a linear-attention mixer the matrix its forms compute implicitly,
``A_ij = gamma^(i-j) phi(q_i) . phi(k_j)`` for ``j <= i`` (Performer's with its stabilised
features). Maps are shown row-normalised by the sum of ``|A_ij|``, so maps of different methods
are comparable; nothing is trained here.
"""

from __future__ import annotations

import torch

from harness.core.projections import repeat_kv


@torch.no_grad()
def layer_inputs(model: torch.nn.Module, input_ids: torch.Tensor, layer: int) -> torch.Tensor:
    """The hidden states entering layer ``layer``'s mixer (after its input norm), (B, T, D), on the
    model's device (``input_ids`` are moved there)."""
    blocks = model.model.layers
    if not 0 <= layer < len(blocks):
        raise ValueError(f"layer {layer} out of range: the model has {len(blocks)} layers.")
    captured: dict[str, torch.Tensor] = {}

    def hook(_module, args, kwargs):  # noqa: ANN001
        captured["x"] = args[0] if args else kwargs["x"]

    handle = blocks[layer].mixer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(input_ids.to(next(model.parameters()).device))
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
    pos = torch.arange(x.shape[1], device=x.device)[None]
    try:
        weights = mixer.attention_map(x, position_ids=pos).weights.abs()
    except NotImplementedError:
        raise ValueError(f"method {mixer.name!r} exposes no attention map (TokenMixer.attention_map).") from None
    maps = weights / weights.sum(-1, keepdim=True).clamp_min(1e-30)
    return maps[0].mean(0)


def row_tv_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean total-variation distance between corresponding rows of two row-stochastic maps."""
    return float(0.5 * (a - b).abs().sum(-1).mean())
