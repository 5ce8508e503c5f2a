"""How well do random and quasi-random features estimate the softmax kernel ``exp(q.k)``?

The paper's theoretical claim (DiJiang Sec. 3, Eq. 5-12): Monte Carlo positive random features
(Performer, Eq. 5) have error O(1/sqrt m), quasi-Monte Carlo positive fixed features (PFF, Eq. 9)
O(1/m), and the weighted discrete cosine features (WDCF, Eq. 10-12) keep the QMC behaviour at lower
cost. We test it directly on real queries and keys of a teacher: for each estimator and feature
count ``m`` we compute ``phi(q) . phi(k)`` for causal pairs and its relative error against the
exact kernel ``exp(q . k / sqrt(d))``, and fit the log-log slope of error against ``m``.

Estimators (all with the ``-|x|^2/2`` term, so that each is an estimator of the kernel itself):

* ``monte_carlo``: rows of W i.i.d. N(0, I) (Performer's plain Monte Carlo, the ablation's first row);
* ``orthogonal_mc``: Performer's orthogonal random features (FAVOR+);
* ``qmc_pff``: PFF's quasi-Monte Carlo directions and radii (Eq. 9);
* ``wdcf``: DCT directions with quasi-Monte Carlo scales, ``W = T C`` (Eq. 12), stacked ``m/d`` times
  with fresh points for ``m > d``, with equal weights ``D_i = 1/sqrt(m)`` (the initialisation);
* ``wdcf_fitted``: the same features with weights ``D_i^2 >= 0`` fitted by non-negative least
  squares on half of the pairs and scored on the other half (the "weighted" in weighted QMC, Eq. 10).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import nnls

from baselines.performer import draw_features
from dijiang.features import dct_matrix, normal_quantiles, pff_directions, uniform_points

ESTIMATORS: tuple[str, ...] = ("monte_carlo", "orthogonal_mc", "qmc_pff", "wdcf", "wdcf_fitted")


def wdcf_directions(m: int, d: int, seed: int = 0) -> torch.Tensor:
    """W (m x d): DCT rows scaled by Phi^-1 of scrambled Sobol points, ``ceil(m/d)`` blocks."""
    blocks = -(-m // d)
    t = normal_quantiles(uniform_points(blocks * d, 1, "sobol", seed)[:, 0]).view(blocks, d)
    c = dct_matrix(d)
    return (t[:, :, None] * c[None]).reshape(blocks * d, d)[:m]


def directions(estimator: str, m: int, d: int, seed: int) -> torch.Tensor:
    """The m x d projection of ``estimator`` (float64)."""
    gen = torch.Generator().manual_seed(seed)
    if estimator == "monte_carlo":
        return draw_features(m, d, orthogonal=False, generator=gen).double()
    if estimator == "orthogonal_mc":
        return draw_features(m, d, orthogonal=True, generator=gen).double()
    if estimator == "qmc_pff":
        return pff_directions(m, d, "sobol", seed)
    if estimator in ("wdcf", "wdcf_fitted"):
        return wdcf_directions(m, d, seed)
    raise ValueError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}")


def _log_features(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """log phi(x) * sqrt(m) = W x - |x|^2/2 (float64), x (n, d)."""
    return x @ w.T - 0.5 * x.pow(2).sum(-1, keepdim=True)


def pair_terms(q: torch.Tensor, k: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Per-feature terms exp(w_i.q - |q|^2/2 + w_i.k - |k|^2/2) / exact kernel, for pairs (q_n, k_n).

    Dividing by the exact kernel inside the exponent keeps everything O(1) (no overflow); the
    estimate of the ratio is the mean (or weighted sum) of these terms, ideally 1.
    """
    exact_log = (q * k).sum(-1, keepdim=True)
    return torch.exp(_log_features(q, w) + _log_features(k, w) - exact_log)


def relative_errors(q: torch.Tensor, k: torch.Tensor, estimator: str, m: int, seed: int) -> np.ndarray:
    """|estimate / exact - 1| per pair (rows of q and k, already scaled by d^-1/4)."""
    w = directions(estimator, m, q.shape[-1], seed)
    terms = pair_terms(q.double(), k.double(), w)
    if estimator != "wdcf_fitted":
        return (terms.mean(-1) - 1).abs().numpy()
    half = terms.shape[0] // 2
    fit, test = terms[:half].numpy(), terms[half:].numpy()
    weights, _ = nnls(fit, np.ones(half))  # D_i^2 >= 0 minimising the squared error of the ratio
    return np.abs(test @ weights - 1)


def causal_pairs(q: torch.Tensor, k: torch.Tensor, n_pairs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample (q_i, k_j), j <= i, from per-head sequences q, k (H, T, d), scaled by d^-1/4 each."""
    H, T, d = q.shape
    g = torch.Generator().manual_seed(seed)
    h = torch.randint(0, H, (n_pairs,), generator=g)
    i = torch.randint(0, T, (n_pairs,), generator=g)
    j = (torch.rand(n_pairs, generator=g) * (i + 1)).long()
    s = d**-0.25
    return q[h, i] * s, k[h, j] * s


def slope(ms: list[int], errors: list[float]) -> float:
    """Least-squares slope of log(error) against log(m)."""
    return float(np.polyfit(np.log(ms), np.log(errors), 1)[0])


def ablation_rows(
    q: torch.Tensor, k: torch.Tensor, feature_counts: list[int], repeats: int, n_pairs: int = 2048
) -> list[dict[str, float | int | str]]:
    """One row per (estimator, m, repeat): mean and median relative error over causal pairs."""
    qs, ks = causal_pairs(q, k, n_pairs, seed=0)
    rows = []
    for est in ESTIMATORS:
        for m in feature_counts:
            for r in range(repeats):
                err = relative_errors(qs, ks, est, m, seed=1000 * r + m)
                rows.append(
                    {
                        "estimator": est,
                        "m": m,
                        "repeat": r,
                        "rel_error": float(np.mean(err)),
                        "median_rel_error": float(np.median(err)),
                        "finite": bool(np.isfinite(err).all()),
                    }
                )
    return rows


def exact_kernel_scale(q: torch.Tensor, k: torch.Tensor) -> float:
    """Typical |q.k|/sqrt(d) of the pairs (context for the errors: large values are harder)."""
    qs, ks = causal_pairs(q, k, 1024, seed=1)
    return float((qs * ks).sum(-1).abs().mean()) if math.isfinite(float(qs.sum())) else math.nan
