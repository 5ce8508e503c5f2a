"""DiJiang's feature maps: the DCT matrix, the quasi-Monte Carlo points, WDCF (Eq. 12), PFF (Eq. 9)
and the official softmax map, each checked against an independent computation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import torch
from scipy.stats import norm, qmc

from dijiang.features import (
    PFFeatures,
    SoftmaxDCTFeatures,
    WDCFeatures,
    dct_matrix,
    diag_quantiles,
    official_projection,
    pff_directions,
    uniform_points,
    wdcf_projection,
)
from harness.core.mixer import MixerConfigError
from harness.layers.feature_maps import positive_features


@pytest.mark.parametrize("d", [8, 64, 80])
def test_dct_matrix_is_scipys_orthonormal_dct_ii(d):
    x = np.random.default_rng(0).standard_normal((5, d))
    C = dct_matrix(d).numpy()
    np.testing.assert_allclose(x @ C.T, scipy.fft.dct(x, type=2, norm="ortho", axis=-1), atol=1e-12)
    np.testing.assert_allclose(C @ C.T, np.eye(d), atol=1e-12)
    # the official code builds C as dct(eye, axis=0, norm="ortho")
    np.testing.assert_allclose(C, scipy.fft.dct(np.eye(d), axis=0, norm="ortho"), atol=1e-12)


@pytest.mark.parametrize("method", ["sobol", "halton"])
def test_qmc_points_are_scipys_and_stratified(method):
    u = uniform_points(64, 1, method, seed=3)[:, 0]
    engine = qmc.Sobol(1, scramble=True, seed=3) if method == "sobol" else qmc.Halton(1, scramble=True, seed=3)
    ref = engine.random_base2(6)[:, 0] if method == "sobol" else engine.random(64)[:, 0]
    np.testing.assert_allclose(u, np.clip(ref, 1e-7, 1 - 1e-7))
    # low discrepancy: each of the 64 strata [i/64, (i+1)/64) holds exactly one point
    assert sorted(np.floor(u * 64).astype(int).tolist()) == list(range(64))
    T = diag_quantiles(64, method, seed=3).numpy()
    np.testing.assert_allclose(T, norm.ppf(u), rtol=1e-10)


def test_qmc_points_are_seeded():
    for method in ("sobol", "halton", "random"):
        a, b = diag_quantiles(16, method, 1), diag_quantiles(16, method, 1)
        assert torch.equal(a, b)
        assert not torch.equal(a, diag_quantiles(16, method, 2))
    with pytest.raises(MixerConfigError, match="unknown quasi-Monte Carlo method"):
        uniform_points(4, 1, "lattice")


def test_official_random_draw_reproduces_the_official_recipe():
    """icdf(diag_embed(diag(rand(d, d)))), infinities -> 0, then C @ T (official _build_projection)."""
    d = 16
    u = torch.rand(d, d, generator=torch.Generator().manual_seed(5))
    icdf = torch.distributions.Normal(0, 1).icdf(torch.diag_embed(torch.diag(u)))
    icdf = torch.where(torch.isinf(icdf), torch.zeros_like(icdf), icdf)
    C = torch.from_numpy(scipy.fft.dct(np.eye(d), axis=0, norm="ortho")).float()
    torch.testing.assert_close(official_projection(d, seed=5).float(), C @ icdf, atol=1e-5, rtol=1e-5)


def test_wdcf_is_eq12():
    """phi(q).phi(k) = sum_i D_i^2 exp((T C q)_i + (T C k)_i), with C from scipy."""
    d, H = 16, 2
    f = WDCFeatures(d, H, stabilize="none").double()
    with torch.no_grad():
        f.weight.copy_(torch.rand(H, d) + 0.5)
    q, k = torch.randn(1, H, 5, d, dtype=torch.float64), torch.randn(1, H, 7, d, dtype=torch.float64)
    T = diag_quantiles(d, "sobol", 0).numpy()
    tcq = T * scipy.fft.dct(q.numpy(), norm="ortho", axis=-1)
    tck = T * scipy.fft.dct(k.numpy(), norm="ortho", axis=-1)
    D2 = f.weight.detach().numpy()[None, :, None, :] ** 2
    ref = np.einsum("bhim,bhjm->bhij", D2 * np.exp(tcq), np.exp(tck))
    got = f(q, True) @ f(k, False).transpose(-1, -2)
    np.testing.assert_allclose(got.detach().numpy(), ref, rtol=1e-6)  # the buffer P is stored in float32
    assert torch.allclose(wdcf_projection(d).T, torch.from_numpy(T)[:, None] * dct_matrix(d))


def test_wdcf_stabilisers_only_rescale_tokens():
    """``query`` shifts each query's exponent (a per-query factor); ``both`` also each key's; the
    |x|^2 term is a per-token factor too. The normalised attention with ``query`` is unchanged."""
    d, H = 16, 2
    x = 4 * torch.randn(1, H, 9, d, dtype=torch.float64)
    plain = WDCFeatures(d, H, stabilize="none").double()
    for stab in ("query", "both"):
        f = WDCFeatures(d, H, stabilize=stab, norm_term=True).double()
        for is_query in (True, False):
            ratio = f(x, is_query) / plain(x, is_query)
            assert torch.allclose(ratio, ratio[..., :1].expand_as(ratio), rtol=1e-10)
        assert f(x, True).max() <= f.weight.max() ** 2 + 1e-12  # stabilised query features are <= D^2
    with pytest.raises(MixerConfigError, match="stabilize"):
        WDCFeatures(d, H, stabilize="sometimes")


def test_pff_estimates_the_softmax_kernel_better_than_monte_carlo():
    """Eq. 9 with chi radii: w_i are QMC samples of N(0, I), so phi(q).phi(k) -> exp(q.k), with a
    smaller error than Monte Carlo (Performer's i.i.d. Gaussian directions) at the same m."""
    d, m = 4, 1024
    g = torch.Generator().manual_seed(0)
    q, k = (0.5 * torch.randn(200, d, generator=g, dtype=torch.float64) for _ in range(2))
    exact = torch.exp((q * k).sum(-1))

    def error(fq: torch.Tensor, fk: torch.Tensor) -> float:
        return (((fq * fk).sum(-1) - exact).abs() / exact).mean().item()

    qmc_errs, mc_errs = [], []
    for seed in range(3):
        f = PFFeatures(d, 1, m, stabilize="none", seed=seed).double()
        qmc_errs.append(error(f(q[None, None], True)[0, 0], f(k[None, None], False)[0, 0]))
        W = torch.randn(m, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        mc_errs.append(error(positive_features(q, W), positive_features(k, W)))
    assert max(qmc_errs) < 0.04 and sum(qmc_errs) < sum(mc_errs)
    radii = pff_directions(m, d, "sobol", 0, radius="normal").norm(dim=-1)
    t = uniform_points(m, d + 1, "sobol", 0)[:, d]
    assert torch.allclose(radii, torch.from_numpy(np.abs(norm.ppf(t))))  # Eq. 9 read literally


def test_official_softmax_features():
    d = 16
    f = SoftmaxDCTFeatures(d, seed=2).double()
    x = torch.randn(1, 2, 5, d, dtype=torch.float64)
    P = official_projection(d, seed=2)
    assert torch.allclose(f(x, True), torch.softmax(x @ P, -1))
    assert torch.allclose(f(x, False).sum(-1), torch.ones(1, 2, 5, dtype=torch.float64))
    paper = SoftmaxDCTFeatures(d, seed=2, dct="paper").double()  # T C x instead of x C T
    assert torch.allclose(paper(x, True), torch.softmax(x @ dct_matrix(d).T * diag_quantiles(d, "random", 2), -1))
