"""Rotary position embeddings (Su et al. 2021, RoFormer Eq. 34), in the ``rotate_half`` layout
that Hugging Face's GPT-NeoX and LLaMA implementations use, optionally on a leading part of each head
(GPT-NeoX/Pythia rotate 25% of the dimensions)."""

from __future__ import annotations

import torch


def rotary_cos_sin(
    position_ids: torch.Tensor, rotary_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape (batch, 1, seq, rotary_dim) for absolute ``position_ids`` (batch, seq).

    Angles are computed in float32 (as HF does) and cast to ``dtype`` at the end.
    """
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, rotary_dim, 2, device=position_ids.device, dtype=torch.float32) / rotary_dim)
    )
    freqs = position_ids.to(torch.float32)[..., None] * inv_freq  # (B, T, rotary_dim/2)
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, T, rotary_dim)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` dims of ``x`` (batch, heads, seq, head_dim)."""
    rd = cos.shape[-1]
    if rd == 0:
        return x
    x_rot, x_pass = x[..., :rd], x[..., rd:]
    x_rot = x_rot * cos + _rotate_half(x_rot) * sin
    return torch.cat((x_rot, x_pass), dim=-1) if x_pass.shape[-1] else x_rot
