"""The kernel-approximation ablation (analyses.kernel_ablation) on benign Gaussian inputs: the control
that tells an estimator that does not converge apart from inputs that are hard."""

from __future__ import annotations

import math

import pandas as pd
import torch

from analyses.kernel_ablation import ablation_rows, slope
from dijiang.features import dct_matrix


def control_slopes() -> dict[str, tuple[float, float]]:
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 128, 16, generator=g, dtype=torch.float64) * 0.5 for _ in range(2))
    f = pd.DataFrame(ablation_rows(q, k, [16, 64, 256], repeats=2, n_pairs=1024))
    means = f.groupby(["estimator", "m"], sort=False)["rel_error"].mean().reset_index()
    return {
        e: (slope(g["m"].tolist(), g["rel_error"].tolist()), float(g["rel_error"].iloc[-1]))
        for e, g in means.groupby("estimator", sort=False)
    }


def test_random_features_converge_on_benign_inputs_and_equal_weight_wdcf_does_not():
    s = control_slopes()
    for est in ("monte_carlo", "orthogonal_mc", "qmc_pff"):
        assert s[est][0] < -0.3 and s[est][1] < 0.2, (est, s[est])
    # DCT directions: every feature lies along one of d fixed directions, so more features do not help
    assert abs(s["wdcf"][0]) < 0.1 and s["wdcf"][1] > 0.3, s["wdcf"]


def test_equal_weight_wdcf_is_biased_by_construction():
    """With phi_j(x) = exp(t_j (Cx)_j - |x|^2/2) and t_j ~ N(0, 1), E[phi(q).phi(k)] is
    mean_j exp(((C(q+k))_j)^2 / 2 - |q|^2/2 - |k|^2/2), not exp(q.k): checked for one pair by
    averaging over many t."""
    d = 8
    g = torch.Generator().manual_seed(1)
    q, k = (
        torch.randn(d, generator=g, dtype=torch.float64) * 0.4,
        torch.randn(d, generator=g, dtype=torch.float64) * 0.4,
    )
    c = dct_matrix(d)
    t = torch.randn(200_000, d, generator=g, dtype=torch.float64)
    s = c @ (q + k)
    empirical = torch.exp(t * s - 0.5 * (q @ q + k @ k)).mean().item()
    predicted = torch.exp(s**2 / 2 - 0.5 * (q @ q + k @ k)).mean().item()
    exact = math.exp(q @ k)
    assert abs(empirical / predicted - 1) < 0.02
    assert abs(predicted / exact - 1) > 0.05, (predicted, exact)
