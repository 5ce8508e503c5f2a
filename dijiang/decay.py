"""DiJiang's decay: "learned gating like RetNet" (paper Section 4.1), in two parametrisations.

* :class:`PerHeadDecay` — one decay ``gamma_h`` per head (RetNet, Sun et al. 2023, Eq. 5-8), stored as
  ``log gamma_h = -exp(a_h)`` so it stays in (0, 1) while ``a_h`` is trained. The shared linear-attention
  forms apply it as relative powers ``gamma^(i-j)`` built inside chunks only, so it is safe in any dtype
  at any length.
* :func:`official_position_decay` — the official code's per-position tensors ``D1[h, n] = g_h^n`` and
  ``D2[h, m] = g_h^-m`` (shared/paper/README.md, point 4); ``D1[n] D2[m] = g^(n-m)``, but ``g^-m``
  alone overflows float16 past about 350 positions (:func:`fp16_overflow_position`).

Both start from the same values ``g_h = 1 - exp(linspace(ln 1/32, ln 1/512, H))`` — the official code's
and torchscale RetNet's initialisation (decays from 1 - 1/32 to 1 - 1/512).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def retnet_gammas(n_heads: int) -> torch.Tensor:
    """``g_h = 1 - exp(linspace(ln 1/32, ln 1/512, H))`` (float64), as in the official code."""
    ln = torch.linspace(math.log(1 / 32), math.log(1 / 512), n_heads, dtype=torch.float64, device="cpu")
    return 1.0 - torch.exp(ln)


def official_position_decay(n_heads: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``D1 = g^n`` and ``D2 = g^-n`` of shape (H, length), float32, computed as the official code does
    (``g ** arange`` and its reciprocal, in float32)."""
    g = retnet_gammas(n_heads).float()[:, None]
    n = torch.arange(length, device="cpu")[None, :]
    d1 = g**n
    return d1, 1.0 / d1


def fp16_overflow_position(gamma: float) -> int:
    """First position ``n`` with ``gamma^-n`` above float16's largest finite value (65504)."""
    return math.ceil(math.log(torch.finfo(torch.float16).max) / -math.log(gamma))


def init_decay_rate(n_heads: int) -> torch.Tensor:
    """The per-head decay parameter ``a_h = ln(-ln g_h)`` (float32) for :func:`retnet_gammas`:
    ``gamma_h = exp(-exp(a_h))`` stays in (0, 1) whatever ``a_h`` training reaches."""
    return torch.log(-torch.log(retnet_gammas(n_heads))).float()


def log_decay_from_rate(rate: torch.Tensor) -> torch.Tensor:
    """``log gamma_h = -exp(a_h)`` (H,), all < 0, as the shared linear-attention forms take it."""
    return -torch.exp(rate)


class PerHeadDecay(nn.Module):
    """Per-head decay ``gamma_h = exp(-exp(a_h))`` as a stand-alone module (learnable ``a`` when
    ``learn``, else a buffer); the mixers hold ``a`` directly (see :mod:`dijiang.mixer`)."""

    def __init__(self, n_heads: int, learn: bool = True) -> None:
        super().__init__()
        self.n_heads = n_heads
        a = init_decay_rate(n_heads)
        if learn:
            self.log_rate = nn.Parameter(a)
        else:
            self.register_buffer("log_rate", a, persistent=True)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.log_rate.copy_(init_decay_rate(self.n_heads))

    def forward(self) -> torch.Tensor:
        """``log gamma_h`` (H,), all < 0."""
        return log_decay_from_rate(self.log_rate)
