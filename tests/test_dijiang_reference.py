"""The ``dijiang`` mixer (paper form) against an independent float64 reference of the paper's equations.

The other DiJiang tests compare the mixer's forms with its own parallel form; this one rebuilds the
whole computation from the paper and from libraries, sharing no code with :mod:`dijiang`:

* ``C``: the orthonormal DCT-II matrix from ``scipy.fft.dct`` (not ``dijiang.features.dct_matrix``);
* ``T = diag(Phi^-1(t_i))``: ``t_i`` the first ``d`` points of a scrambled 1-D Sobol sequence
  (``scipy.stats.qmc``, the layer's documented seed ``seed * 100003 + layer``), ``Phi^-1`` from
  ``scipy.stats.norm``;
* ``phi(x) = D exp(T C x)`` with the weight ``D`` on both sides (Eq. 12; the mixer folds ``D^2`` into
  the query side), queries and keys scaled by ``d^-1/4`` after the teacher's rotary (written here with
  complex numbers, not ``rotate_half``);
* ``o_i = sum_{j<=i} gamma_h^(i-j) phi(q_i).phi(k_j) v_j`` (Eq. 13, RetNet's decay
  ``gamma_h = exp(-exp(a_h))``), as an explicit double loop;
* ``y = W_O [swish(x W_G) * GroupNorm_h(o)]`` with the normalisation written out per head.

The mixer's trainable values (``D``, the decay, the GroupNorm affine) are set away from their
initial values first, so a wrong power of ``D``, a wrong decay sign or a transposed DCT shows.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import torch
from scipy.stats import norm, qmc

from harness import MixerConfig, build_mixer

B, T, D_MODEL, H, HEAD, ROTARY, LAYER = 2, 11, 16, 2, 8, 4, 1
#: the mixer keeps its projection in float32 and computes rotary angles in float32 (as HF does)
TOL = 1e-6


def reference(mixer: torch.nn.Module, x: torch.Tensor, eps: float) -> torch.Tensor:
    """The paper's DiJiang mixer, float64, from the mixer's parameter values alone."""
    p = {k: v.detach().double() for k, v in mixer.named_parameters()}
    x = x.double()

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(B, T, H, HEAD).transpose(1, 2)

    q = heads(x @ p["proj.q_proj.weight"].T + p["proj.q_proj.bias"])
    k = heads(x @ p["proj.k_proj.weight"].T + p["proj.k_proj.bias"])
    v = heads(x @ p["proj.v_proj.weight"].T + p["proj.v_proj.bias"])

    # rotary on the first ROTARY dims, pairing dim i with i + ROTARY/2 (GPT-NeoX's layout), as complex numbers
    half = ROTARY // 2
    freqs = 10000.0 ** (-torch.arange(half, dtype=torch.float64) * 2 / ROTARY)
    turn = torch.polar(torch.ones(T, half, dtype=torch.float64), torch.arange(T, dtype=torch.float64)[:, None] * freqs)

    def rotate(t: torch.Tensor) -> torch.Tensor:
        z = torch.complex(t[..., :half], t[..., half:ROTARY]) * turn
        return torch.cat([z.real, z.imag, t[..., ROTARY:]], dim=-1)

    q, k = rotate(q) * HEAD**-0.25, rotate(k) * HEAD**-0.25

    c = torch.as_tensor(scipy.fft.dct(np.eye(HEAD), norm="ortho", axis=0))  # C @ x == dct(x)
    t = qmc.Sobol(d=1, scramble=True, seed=0 * 100_003 + LAYER).random_base2(int(np.log2(HEAD)))[:, 0]
    quantiles = torch.as_tensor(norm.ppf(np.clip(t, 1e-7, 1 - 1e-7)))
    weight = p["features.weight"]  # D, (heads, m)

    def phi(t: torch.Tensor) -> torch.Tensor:  # D exp(T C x), per head
        return weight[None, :, None, :] * torch.exp(quantiles * torch.einsum("mn,bhtn->bhtm", c, t))

    fq, fk = phi(q), phi(k)
    gamma = torch.exp(-torch.exp(p["decay_rate"]))
    o = torch.zeros_like(v)
    for i in range(T):
        for j in range(i + 1):
            w = gamma ** (i - j) * (fq[:, :, i] * fk[:, :, j]).sum(-1)  # (B, H)
            o[:, :, i] += w[..., None] * v[:, :, j]

    normed = (o - o.mean(-1, keepdim=True)) / torch.sqrt(o.var(-1, unbiased=False, keepdim=True) + eps)
    normed = normed.transpose(1, 2).reshape(B, T, H * HEAD) * p["gated.norm.weight"] + p["gated.norm.bias"]
    gate = torch.nn.functional.silu(x @ p["gated.gate.weight"].T)
    return (gate * normed) @ p["proj.o_proj.weight"].T


def make_mixer(**options: object) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = MixerConfig(
        d_model=D_MODEL, n_heads=H, head_dim=HEAD, rotary_dim=ROTARY, qkv_bias=True, layer_idx=LAYER, options=options
    )
    mixer = build_mixer("dijiang", cfg).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # trained-looking values, away from the initialisation
        mixer.features.weight.copy_(0.2 + torch.rand(mixer.features.weight.shape, generator=g, dtype=torch.float64))
        mixer.decay_rate.add_(torch.randn(H, generator=g, dtype=torch.float64))
        mixer.gated.norm.weight.copy_(1 + 0.5 * torch.randn(H * HEAD, generator=g, dtype=torch.float64))
        mixer.gated.norm.bias.copy_(0.1 * torch.randn(H * HEAD, generator=g, dtype=torch.float64))
    return mixer


@pytest.mark.parametrize("form", ["chunk", "recurrent", "parallel"])
def test_paper_form_matches_an_independent_reference(form):
    mixer = make_mixer(stabilize="none")
    x = torch.randn(B, T, D_MODEL, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        y, _ = mixer(x, form=form)
    ref = reference(mixer, x, eps=mixer.gated.norm.eps)
    assert ((y - ref).abs().max() / ref.abs().max()).item() < TOL


def test_query_stabiliser_cancels_in_the_group_norm():
    """The default subtracts each query's largest exponent: a per-token, per-head factor, which a
    per-head GroupNorm divides out exactly when its eps is 0."""
    mixer = make_mixer()
    assert mixer.opts.stabilize == "query"
    mixer.gated.norm.eps = 0.0
    x = torch.randn(B, T, D_MODEL, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        y, _ = mixer(x)
    ref = reference(mixer, x, eps=0.0)
    assert ((y - ref).abs().max() / ref.abs().max()).item() < TOL
