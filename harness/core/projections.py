"""Q/K/V/O projections shared by attention-like mixers, with grouped-query heads and rotary.

Methods that replace attention keep the teacher's projections (paper Algorithm 1: "replace the
attention, keep the weights"), so :class:`ProjectedMixer` owns them and implements the weight
transfer of :meth:`~harness.core.mixer.TokenMixer.init_from_attention` once for every method.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.core.mixer import AttentionWeights, MixerConfig, MixerConfigError, TokenMixer
from harness.core.rotary import apply_rotary, rotary_cos_sin


class QKVOProjections(nn.Module):
    """``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` in ``nn.Linear`` layout, split into heads."""

    def __init__(self, config: MixerConfig) -> None:
        super().__init__()
        c = config
        self.n_heads, self.n_kv_heads, self.head_dim = c.n_heads, c.n_kv_heads, c.head_dim
        self.q_proj = nn.Linear(c.d_model, c.n_heads * c.head_dim, bias=c.qkv_bias)
        self.k_proj = nn.Linear(c.d_model, c.n_kv_heads * c.head_dim, bias=c.qkv_bias)
        self.v_proj = nn.Linear(c.d_model, c.n_kv_heads * c.head_dim, bias=c.qkv_bias)
        self.o_proj = nn.Linear(c.n_heads * c.head_dim, c.d_model, bias=c.out_bias)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, D) -> q (B, H, T, d), k and v (B, H_kv, T, d)."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v

    def out(self, o: torch.Tensor) -> torch.Tensor:
        """(B, H, T, d) -> (B, T, D) through ``o_proj``."""
        B, H, T, d = o.shape
        return self.o_proj(o.transpose(1, 2).reshape(B, T, H * d))

    @torch.no_grad()
    def load(self, w: AttentionWeights) -> None:
        """Copy pretrained projections, checking every shape."""
        pairs = [
            (self.q_proj, w.q, w.q_bias),
            (self.k_proj, w.k, w.k_bias),
            (self.v_proj, w.v, w.v_bias),
            (self.o_proj, w.o, w.o_bias),
        ]
        for layer, weight, bias in pairs:
            if tuple(weight.shape) != tuple(layer.weight.shape):
                raise MixerConfigError(
                    f"pretrained weight of shape {tuple(weight.shape)} does not fit "
                    f"{tuple(layer.weight.shape)}: the model config's heads/dims must match the checkpoint."
                )
            layer.weight.copy_(weight)
            if layer.bias is not None:
                if bias is None:
                    layer.bias.zero_()
                else:
                    layer.bias.copy_(bias)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, H_kv, T, d) -> (B, H_kv * n_rep, T, d) for grouped-query attention."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def positions_from_mask(
    attention_mask: torch.Tensor | None, batch: int, past: int, seq: int, device: torch.device
) -> torch.Tensor:
    """Absolute positions (B, seq) of the current tokens: counts of real tokens before each one
    (left padding aware, as in HF generation), or ``past .. past+seq-1`` without a mask."""
    if attention_mask is None:
        return torch.arange(past, past + seq, device=device).expand(batch, seq)
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp(min=0)[:, -seq:]


class ProjectedMixer(TokenMixer):
    """A mixer that owns Q/K/V/O projections (and rotary, when ``uses_rotary``)."""

    def __init__(self, config: MixerConfig) -> None:
        super().__init__(config)
        self.proj = QKVOProjections(config)

    def init_from_attention(self, weights: AttentionWeights) -> None:
        """Copy the teacher's Q/K/V/O (paper Algorithm 1, line 1); new parameters keep their init."""
        self.proj.load(weights)

    def project(
        self, x: torch.Tensor, position_ids: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v (B, H|H_kv, T, d) with rotary applied to q and k when the method uses it."""
        q, k, v = self.proj.qkv(x)
        if self.uses_rotary and self.config.rotary_dim:
            if position_ids is None:
                position_ids = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
            cos, sin = rotary_cos_sin(position_ids, self.config.rotary_dim, self.config.rope_theta, q.dtype)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        return q, k, v
