"""Feature maps shared by several methods.

Positive features for the softmax kernel (Choromanski et al. 2021, FAVOR+, Lemma 1; DiJiang Eq. 5
and Eq. 9): for directions ``W`` (m x d),

    phi(x) = exp(W x - |x|^2 / 2) / sqrt(m),   E[phi(q) . phi(k)] = exp(q . k)   (W rows ~ N(0, I))

Performer draws ``W`` by Monte Carlo; PFF (DiJiang Eq. 9) places it by quasi-Monte Carlo. Both
call :func:`positive_features` with their own ``W``.
"""

from __future__ import annotations

import math

import torch


def positive_features(
    x: torch.Tensor,
    directions: torch.Tensor,
    stabilizer: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """``exp(x W^T - |x|^2/2 - stabilizer) / sqrt(m)`` for x (..., d) and W (m, d) or (H, m, d).

    ``stabilizer`` is subtracted inside the exponent to avoid overflow (for queries a per-token
    max, which cancels in normalised attention; see each method for its choice). ``None`` keeps the
    unbiased estimator exactly.
    """
    if directions.dim() == 3:  # per-head directions, x is (B, H, T, d)
        proj = torch.einsum("bhtd,hmd->bhtm", x, directions.to(x.dtype))
    else:
        proj = x @ directions.to(x.dtype).transpose(-1, -2)
    logits = proj - 0.5 * x.pow(2).sum(-1, keepdim=True)
    if stabilizer is not None:
        logits = logits - stabilizer
    return torch.exp(logits) / math.sqrt(directions.shape[-2])


def token_max(x: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """A per-token stabiliser: ``max_i (W x)_i - |x|^2/2``, detached (B, H, T, 1)."""
    if directions.dim() == 3:
        proj = torch.einsum("bhtd,hmd->bhtm", x, directions.to(x.dtype))
    else:
        proj = x @ directions.to(x.dtype).transpose(-1, -2)
    return (proj.amax(-1, keepdim=True) - 0.5 * x.pow(2).sum(-1, keepdim=True)).detach()
