"""DiJiang's feature maps (Chen et al., ICML 2024, arXiv 2403.19928) and their building blocks.

* :class:`WDCFeatures` — weighted discrete cosine features, paper Eq. 12:
  ``phi(x) = D exp(T C x)`` with ``C`` the orthonormal DCT-II matrix, ``T = diag(Phi^-1(t_i))`` for
  quasi-Monte Carlo points ``t_i`` and ``D`` a learnable weight.
* :class:`PFFeatures` — positive fixed features, paper Eq. 9 (and the weighted form, Eq. 10):
  ``phi(x) = e^{-|x|^2/2} / sqrt(m) [exp(w_i . x)]_i`` with ``w_i = r_i v_i``, directions ``v_i``
  and radii ``r_i`` placed by quasi-Monte Carlo.
* :class:`SoftmaxDCTFeatures` — the official code's map: ``phi(x) = softmax(x P)`` over features,
  ``P = C T`` frozen (shared/paper/README.md, points 2-3).

All projections are persistent buffers (frozen, saved with the model), derived deterministically from
``(seed, layer)`` so a rebuilt model is identical. ``x`` is (batch, heads, seq, d).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy.stats import chi, qmc
from torch import nn

from harness.core.mixer import MixerConfigError
from harness.layers.feature_maps import positive_features, token_max

QMC_METHODS: tuple[str, ...] = ("sobol", "halton", "random")
STABILIZERS: tuple[str, ...] = ("query", "both", "none")
LOG2E: float = 1.0 / math.log(2.0)
#: uniforms are clipped to [U_EPS, 1 - U_EPS] before Phi^-1 (a QMC point at exactly 0 would give -inf)
U_EPS: float = 1e-7


def dct_matrix(d: int, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``C`` (d x d), paper Eq. 11-12: ``C x == scipy.fft.dct(x, norm="ortho")``.

    ``C[k, n] = s_k sqrt(2/d) cos(pi (2n + 1) k / (2d))`` with ``s_0 = 1/sqrt(2)``, ``s_k = 1`` else;
    ``C C^T = I``. Built from the closed form in float64 (the tests check it against scipy).
    """
    n = torch.arange(d, dtype=torch.float64, device="cpu")  # explicit: models may be built under a meta device
    c = torch.cos(math.pi * (2 * n[None, :] + 1) * n[:, None] / (2 * d)) * math.sqrt(2.0 / d)
    c[0] /= math.sqrt(2.0)
    return c.to(dtype=dtype, device=device)


def uniform_points(n: int, dim: int, method: str = "sobol", seed: int = 0) -> np.ndarray:
    """``n`` points in ``(0, 1)^dim``: scrambled Sobol or Halton (``scipy.stats.qmc``), or i.i.d.
    pseudo-random uniforms (``method="random"``, what the official code draws). Seeded, deterministic.

    Sobol points are balanced for ``n`` a power of two (then every interval ``[i/n, (i+1)/n)``
    holds exactly one point per dimension); other ``n`` take the first ``n`` points.
    """
    if method not in QMC_METHODS:
        raise MixerConfigError(f"unknown quasi-Monte Carlo method {method!r}; choose one of {list(QMC_METHODS)}.")
    if method == "sobol":
        sampler = qmc.Sobol(d=dim, scramble=True, seed=seed)
        log2 = int(math.log2(n)) if n > 0 else 0
        if 2**log2 == n:
            u = sampler.random_base2(log2)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "balance properties ... n=2^k"
                u = sampler.random(n)
    elif method == "halton":
        u = qmc.Halton(d=dim, scramble=True, seed=seed).random(n)
    else:
        u = np.random.default_rng(seed).random((n, dim))
    return np.clip(u, U_EPS, 1.0 - U_EPS)


def normal_quantiles(u: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``Phi^-1(u)``, the standard normal inverse CDF (float64)."""
    return torch.special.ndtri(torch.as_tensor(u, dtype=torch.float64, device="cpu"))


def layer_seed(seed: int, layer_idx: int) -> int:
    """Each layer gets its own points (as the official code draws a fresh projection per layer)."""
    return int(seed) * 100_003 + int(layer_idx)


def diag_quantiles(d: int, method: str = "sobol", seed: int = 0) -> torch.Tensor:
    """The diagonal of ``T = diag(Phi^-1(t_i))`` (d values, float64), paper Eq. 12.

    ``t_i``: the first ``d`` points of a 1-D scrambled Sobol or Halton sequence, or, for
    ``method="random"``, the official code's draw: the diagonal of a ``d x d`` matrix of
    pseudo-random uniforms (it draws the full matrix and keeps the diagonal; an infinite quantile
    becomes 0), from a seeded :class:`torch.Generator` instead of the global RNG.
    """
    if method == "random":
        gen = torch.Generator().manual_seed(int(seed))
        u = torch.diag(torch.rand(d, d, generator=gen, dtype=torch.float32, device="cpu")).double()
        q = torch.special.ndtri(u)
        return torch.where(torch.isinf(q), torch.zeros_like(q), q)
    return normal_quantiles(uniform_points(d, 1, method, seed)[:, 0])


def wdcf_projection(d: int, method: str = "sobol", seed: int = 0) -> torch.Tensor:
    """``P = (T C)^T = C^T T`` (d x d, float64), so that ``x @ P`` is the row form of ``T C x`` (Eq. 12)."""
    return dct_matrix(d).T * diag_quantiles(d, method, seed)[None, :]


def official_projection(d: int, seed: int = 0, method: str = "random") -> torch.Tensor:
    """The official code's ``P = C T`` (d x d, float64), ``C = dct(eye(d), axis=0, norm="ortho")``.

    ``method="random"`` reproduces its pseudo-random draw (:func:`diag_quantiles`); ``"sobol"`` /
    ``"halton"`` put quasi-Monte Carlo points there instead (the paper's intent). Note that
    ``x @ (C T)`` applies ``C^T`` (the inverse DCT) where the paper writes ``T C x``.
    """
    return dct_matrix(d) * diag_quantiles(d, method, seed)[None, :]


def pff_directions(m: int, d: int, method: str = "sobol", seed: int = 0, radius: str = "chi") -> torch.Tensor:
    """``W`` (m x d, float64): rows ``w_i = r_i v_i`` for positive fixed features (paper Eq. 9).

    One ``(d+1)``-dimensional quasi-Monte Carlo point per feature: the first ``d`` coordinates mapped
    through ``Phi^-1`` and normalised give a direction ``v_i`` (asymptotically uniform on the sphere),
    the last one ``t_i`` the radius. ``radius="chi"``: ``r_i = chi_d^-1(t_i)`` so that ``w_i`` is a
    quasi-Monte Carlo sample of ``N(0, I_d)`` and ``E phi(q).phi(k) = exp(q.k)`` as for Performer;
    ``radius="normal"``: ``r_i = Phi^-1(t_i)``, Eq. 9 read literally.
    """
    if radius not in ("chi", "normal"):
        raise MixerConfigError(f"unknown PFF radius {radius!r}; choose 'chi' or 'normal'.")
    u = uniform_points(m, d + 1, method, seed)
    z = normal_quantiles(u[:, :d])
    v = z / z.norm(dim=-1, keepdim=True)
    t = u[:, d]
    r = torch.as_tensor(chi(d).ppf(t), dtype=torch.float64, device="cpu") if radius == "chi" else normal_quantiles(t)
    return v * r[:, None]


def _check_stabilize(stabilize: str) -> None:
    if stabilize not in STABILIZERS:
        raise MixerConfigError(f"unknown stabilize={stabilize!r}; choose one of {list(STABILIZERS)}.")


class WDCFeatures(nn.Module):
    """Weighted discrete cosine features, paper Eq. 12: ``phi(x) = D exp(T C x)``.

    * ``projection`` (buffer, frozen): ``P = (T C)^T``, see :func:`wdcf_projection`.
    * ``weight`` ``D`` (heads, m), learnable (``learn_weight``), initialised to ``1/sqrt(m)`` — the
      equal weights of a plain quasi-Monte Carlo average (Eq. 10 with uniform weights).
    * ``norm_term``: subtract ``|x|^2 / 2`` in the exponent (Eq. 9 has it, Eq. 12 drops it).
    * ``stabilize``: subtract a detached per-token max of the exponent — ``"query"`` only for queries
      (a per-query factor, which cancels in normalised attention and, up to its eps, in a per-head
      GroupNorm: Eq. 12 otherwise exactly), ``"both"`` for keys too (each key is rescaled by its own
      factor: a slightly different kernel, but key features are <= 1 and query features <= D^2, safe in
      float16), ``"none"``.

    The kernel is ``phi(q).phi(k) = sum_i D_i^2 exp(u_i(q) + u_i(k))``; the weight is applied as
    ``D^2`` on the query side only (the same kernel, one multiplication less).
    """

    def __init__(
        self,
        head_dim: int,
        n_heads: int,
        *,
        qmc_method: str = "sobol",
        seed: int = 0,
        norm_term: bool = False,
        stabilize: str = "query",
        learn_weight: bool = True,
        input_scale: float = 1.0,
    ) -> None:
        super().__init__()
        _check_stabilize(stabilize)
        self.head_dim, self.n_heads, self.input_scale = head_dim, n_heads, float(input_scale)
        self.qmc_method, self.seed = qmc_method, seed
        self.norm_term, self.stabilize = norm_term, stabilize
        self.register_buffer("projection", wdcf_projection(head_dim, qmc_method, seed).float(), persistent=True)
        weight = torch.empty(n_heads, head_dim)
        if learn_weight:
            self.weight = nn.Parameter(weight)
        else:
            self.register_buffer("weight", weight, persistent=True)
        self.reset_parameters()

    @property
    def num_features(self) -> int:
        return self.head_dim

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.projection.copy_(wdcf_projection(self.head_dim, self.qmc_method, self.seed))
        self.weight.fill_(self.head_dim**-0.5)

    def forward(self, x: torch.Tensor, is_query: bool) -> torch.Tensor:
        """Features of ``input_scale * x``. ``x @ P`` is one matmul for all heads (the DCT as a d x d
        matrix). The scale and ``log2(e)`` are folded into ``P`` and the exponential is taken as
        ``exp2``; the exponent is shifted and exponentiated in place (autograd needs neither input)."""
        s = self.input_scale * LOG2E
        u = x @ (self.projection.to(x.dtype) * s)
        if self.norm_term:
            u = u - (0.5 * self.input_scale**2 * LOG2E) * x.pow(2).sum(-1, keepdim=True)
        if self.stabilize == "both" or (self.stabilize == "query" and is_query):
            u = u.sub_(u.detach().amax(-1, keepdim=True))
        f = u.exp2_()
        if is_query:
            w = self.weight.to(x.dtype).pow(2)[:, None, :]
            f = f * w if torch.is_grad_enabled() and self.weight.requires_grad else f.mul_(w)
        return f


class PFFeatures(nn.Module):
    """Positive fixed features, paper Eq. 9: ``phi(x) = e^{-|x|^2/2}/sqrt(m) [exp(w_i . x)]_i``.

    ``w_i`` from :func:`pff_directions` (quasi-Monte Carlo, buffer). The paper prints ``e^{-|x|^2}``;
    we use ``e^{-|x|^2/2}`` (:func:`harness.layers.feature_maps.positive_features`), the factor that makes
    the estimator of ``exp(q.k)`` unbiased (Performer's Lemma 1). ``learn_weight`` adds the weighted
    form (Eq. 10): a learnable ``D`` (heads, m), initialised to 1, applied as ``D^2`` on queries.
    ``stabilize`` as in :class:`WDCFeatures` (per-token :func:`~harness.layers.feature_maps.token_max`).
    """

    def __init__(
        self,
        head_dim: int,
        n_heads: int,
        num_features: int,
        *,
        qmc_method: str = "sobol",
        seed: int = 0,
        radius: str = "chi",
        stabilize: str = "query",
        learn_weight: bool = False,
        input_scale: float = 1.0,
    ) -> None:
        super().__init__()
        _check_stabilize(stabilize)
        self.head_dim, self.n_heads, self.m, self.input_scale = head_dim, n_heads, num_features, float(input_scale)
        self.qmc_method, self.seed, self.radius, self.stabilize = qmc_method, seed, radius, stabilize
        self.register_buffer(
            "directions", pff_directions(num_features, head_dim, qmc_method, seed, radius).float(), persistent=True
        )
        self.weight = nn.Parameter(torch.ones(n_heads, num_features)) if learn_weight else None

    @property
    def num_features(self) -> int:
        return self.m

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.directions.copy_(pff_directions(self.m, self.head_dim, self.qmc_method, self.seed, self.radius))
        if self.weight is not None:
            self.weight.fill_(1.0)

    def forward(self, x: torch.Tensor, is_query: bool) -> torch.Tensor:
        """Features of ``input_scale * x``."""
        if self.input_scale != 1.0:
            x = x * self.input_scale
        w = self.directions
        stab = None
        if self.stabilize == "both" or (self.stabilize == "query" and is_query):
            stab = token_max(x, w)
        f = positive_features(x, w, stab)
        if is_query and self.weight is not None:
            f = f * self.weight.to(x.dtype).pow(2)[:, None, :]
        return f


class SoftmaxDCTFeatures(nn.Module):
    """The official code's feature map: ``phi(x) = softmax(x P)`` over the feature dimension, ``P``
    frozen (:func:`official_projection`; ``dct="paper"`` uses ``P = (T C)^T`` as in Eq. 12 instead of
    the official ``C T``). No learnable weight (the official code has none)."""

    def __init__(
        self, head_dim: int, *, method: str = "random", seed: int = 0, dct: str = "official", input_scale: float = 1.0
    ) -> None:
        super().__init__()
        if dct not in ("official", "paper"):
            raise MixerConfigError(f"unknown dct={dct!r}; choose 'official' (x @ C T) or 'paper' (T C x).")
        self.head_dim, self.method, self.seed, self.dct = head_dim, method, seed, dct
        self.input_scale = float(input_scale)
        self.register_buffer("projection", self._build().float(), persistent=True)

    def _build(self) -> torch.Tensor:
        if self.dct == "official":
            return official_projection(self.head_dim, self.seed, self.method)
        return wdcf_projection(self.head_dim, self.method, self.seed)

    @property
    def num_features(self) -> int:
        return self.head_dim

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.projection.copy_(self._build())

    def forward(self, x: torch.Tensor, is_query: bool) -> torch.Tensor:
        """``softmax((input_scale * x) P)``, the scale folded into ``P``."""
        proj = self.projection.to(x.dtype)
        return torch.softmax(x @ (proj * self.input_scale if self.input_scale != 1.0 else proj), dim=-1)
