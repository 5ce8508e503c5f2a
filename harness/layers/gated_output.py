"""RetNet's output path, shared by RetNet and DiJiang: ``W_O (swish(X W_G) * GroupNorm(O))``.

Multi-scale retention (Sun et al. 2023, Eq. 8): ``Y = GroupNorm_h(head_1..head_H)``,
``MSR(X) = (swish(X W_G) * Y) W_O``, with one normalisation group per head. The official DiJiang
code uses the same path but with ``GroupNorm(num_groups=head_size, channels=hidden)`` — groups of
``H`` consecutive channels rather than one per head (shared/paper/README.md, point 6); pass
``num_groups`` to reproduce that.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GatedGroupNormOutput(nn.Module):
    """``swish(x W_G) * GroupNorm(o)`` followed by the caller's ``o_proj``.

    ``num_groups=None`` means one group per head (RetNet). ``gate_gain`` is the Xavier gain of
    ``W_G`` (RetNet and the official DiJiang code use 2**-2.5).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        head_dim: int,
        num_groups: int | None = None,
        eps: float = 1e-5,
        affine: bool = True,
        gate_gain: float = 2**-2.5,
    ) -> None:
        super().__init__()
        channels = n_heads * head_dim
        self.num_groups = n_heads if num_groups is None else num_groups
        if channels % self.num_groups:
            raise ValueError(f"GroupNorm: {channels} channels do not split into {self.num_groups} groups")
        self.gate = nn.Linear(d_model, channels, bias=False)
        self.norm = nn.GroupNorm(self.num_groups, channels, eps=eps, affine=affine)
        self.gate_gain = gate_gain

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.gate.weight, gain=self.gate_gain)
        if self.norm.affine:
            nn.init.ones_(self.norm.weight)
            nn.init.zeros_(self.norm.bias)

    def forward(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """o (B, H, T, d) mixed values, x (B, T, D) mixer input -> (B, T, H*d) before ``o_proj``.

        GroupNorm normalises each token separately (over its channels), so it is causal.
        """
        B, H, T, d = o.shape
        flat = o.transpose(1, 2).reshape(B * T, H * d)
        normed = self.norm(flat).view(B, T, H * d)
        return F.silu(self.gate(x)) * normed
