"""The three forms (parallel, chunk, recurrent) compute the same function: fp32 against a float64
parallel reference (relative error <= 1e-5), forward and backward, with and without decay, for lengths
that are not multiples of the chunk size; and the decay is safe in fp16/bf16 where the official
per-position form overflows."""

from __future__ import annotations

import math

import pytest
import torch

import harness.core.ops.linear_attention as la
from dijiang.decay import fp16_overflow_position, official_position_decay, retnet_gammas
from harness import MixerConfig, build_mixer

TOL = 1e-5


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-300)).item()


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 2 chunks of 8, so a 37- or 100-token sequence spans several blocks, a partial block
    and a partial chunk."""
    monkeypatch.setattr(la, "BLOCK_TOKENS", 16)


@pytest.mark.parametrize("decay", [None, "learned", "fixed"])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("T", [37, 100])
def test_op_forms_match_float64_reference(small_blocks, decay, normalize, T):
    g = torch.Generator().manual_seed(T)
    B, H, m, dv = 2, 3, 8, 6
    q, k = (torch.rand(B, H, T, m, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, H, T, dv, generator=g, dtype=torch.float64)
    s0 = torch.rand(B, H, m, dv + int(normalize), generator=g, dtype=torch.float64)
    ld = None if decay is None else torch.log(retnet_gammas(H) * torch.tensor([1.0, 0.9, 0.6], dtype=torch.float64))
    leaves = [t.requires_grad_() for t in (q, k, v, s0)]
    if decay == "learned":
        leaves.append(ld.requires_grad_())
    w_o, w_s = torch.randn(B, H, T, dv, generator=g), torch.randn(B, H, m, dv + int(normalize), generator=g)

    def run(form: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
        o, s = la.linear_attention(
            cast(q),
            cast(k),
            cast(v),
            form=form,
            log_decay=cast(ld),
            normalize=normalize,
            initial_state=cast(s0),
            output_final_state=True,
            chunk_size=8,
        )
        loss = (o.double() * w_o).sum() + (s.double() * w_s).sum()
        return o, s, list(torch.autograd.grad(loss, leaves))

    o_ref, s_ref, g_ref = run("parallel", torch.float64)
    for form in ("chunk", "recurrent"):
        o, s, grads = run(form, torch.float32)
        assert o.dtype == torch.float32
        assert rel_err(o, o_ref) <= TOL and rel_err(s, s_ref) <= TOL, form
        for got, ref in zip(grads, g_ref):
            assert rel_err(got, ref) <= TOL, form


MIXERS = [
    ("dijiang", {}),
    ("dijiang", {"normalize": True, "output": "linear", "stabilize": "both", "norm_term": True}),
    ("pff", {}),
    ("dijiang-official", {}),
    ("dijiang-official", {"decay": "per_head", "norm_groups": "head", "projection": "sobol"}),
]


@pytest.mark.parametrize("name,options", MIXERS)
def test_mixer_forms_match_float64_reference(small_blocks, name, options):
    """The whole mixer (projections, rotary, features, decay, gated GroupNorm output): fp32 chunk
    and recurrent forms against the float64 parallel form, outputs and all gradients. Where the fp32
    *parallel* form itself is off by more than 1e-5 (the gradient of the official per-position D1,
    whose entries span g^0..g^63), a form may be off by at most twice that."""
    torch.manual_seed(0)
    cfg = MixerConfig(d_model=32, n_heads=4, head_dim=8, rotary_dim=4, max_seq_len=64, qkv_bias=True, options=options)
    ref_mixer = build_mixer(name, cfg)
    ref_mixer.reset_parameters(0.02)
    ref_mixer.chunk_size = 8
    mixer32 = build_mixer(name, cfg)
    mixer32.load_state_dict(ref_mixer.state_dict())
    mixer32.chunk_size = 8
    ref_mixer.double()
    x = torch.randn(2, 37, 32, dtype=torch.float64)
    w = torch.randn(2, 37, 32, dtype=torch.float64)

    def run(mixer, form, dtype):
        xx = x.to(dtype).requires_grad_()
        y, _ = mixer(xx, form=form)
        params = [p for p in mixer.parameters() if p.requires_grad]
        grads = torch.autograd.grad((y.double() * w).sum(), [xx, *params])
        return y, grads

    y_ref, g_ref = run(ref_mixer, "parallel", torch.float64)
    _, g_par32 = run(mixer32, "parallel", torch.float32)
    tols = [max(TOL, 2 * rel_err(g, ref)) for g, ref in zip(g_par32, g_ref)]
    assert sum(t > TOL for t in tols) <= (2 if name == "dijiang-official" else 0)  # D1, D2 only
    for form in ("chunk", "recurrent"):
        y, grads = run(mixer32, form, torch.float32)
        assert rel_err(y, y_ref) <= TOL, form
        for got, ref, tol in zip(grads, g_ref, tols):
            assert rel_err(got, ref) <= tol, form


def test_official_decay_overflows_fp16_but_safe_decay_works_at_32k():
    """The official D2 = g^-n is inf in float16 from position ~350 on (g = 1 - 1/32), so the official
    computation turns into inf/nan; our relative decay (exponents within a chunk only) gives finite,
    accurate results in float16 and bfloat16 at 32K tokens."""
    H = 2
    g_fast = float(retnet_gammas(H)[0])  # 1 - 1/32, the fastest decay, overflows first
    first = fp16_overflow_position(g_fast)
    assert 340 <= first <= 360
    _, d2 = official_position_decay(H, 512)
    d2_half = d2.half()
    assert torch.isfinite(d2_half[0, :first]).all() and torch.isinf(d2_half[0, first:]).all()
    assert (first - 1) * -math.log(g_fast) < math.log(65504) <= first * -math.log(g_fast)

    # the official mixer in float16 at 400 tokens: non-finite output
    cfg = MixerConfig(d_model=16, n_heads=H, max_seq_len=512)
    official = build_mixer("dijiang-official", cfg)
    official.reset_parameters(0.02)
    x = torch.randn(1, 400, 16)
    with torch.no_grad():
        assert torch.isfinite(official(x, form="parallel")[0]).all()  # fine in float32
        assert not torch.isfinite(official.half()(x.half(), form="parallel")[0]).all()

    # the shared chunk form with the same decays as relative powers: 32K tokens in fp16 and bf16
    T, m, dv = 32768, 8, 8
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.rand(1, H, T, m, generator=gen) for _ in range(2))
    v = torch.randn(1, H, T, dv, generator=gen)
    ld = torch.log(retnet_gammas(H)).float()
    with torch.no_grad():
        ref, _ = la.linear_attention(q, k, v, form="chunk", log_decay=ld)
        for dtype, tol in ((torch.float16, 1e-2), (torch.bfloat16, 5e-2)):
            o, s = la.linear_attention(
                q.to(dtype), k.to(dtype), v.to(dtype), form="chunk", log_decay=ld, output_final_state=True
            )
            assert torch.isfinite(o).all() and torch.isfinite(s).all()
            assert rel_err(o, ref) <= tol, dtype
