"""``dijiang-official`` computes exactly what the official code computes (a direct quadratic
re-implementation of its ``GPTNeoXAttention.forward``/``_attn``), in all three forms; its
initialisation, options and length limit."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dijiang.decay import retnet_gammas
from dijiang.features import layer_seed, official_projection
from harness import MixerConfig, MixerConfigError, MixerLMConfig, MixerLMForCausalLM, build_mixer


def official_forward(mixer, hidden: torch.Tensor) -> torch.Tensor:
    """modeling_gpt_neox_dijiang.py, GPTNeoXAttention.forward without cache, written out directly."""
    c = mixer.config
    B, T, _ = hidden.shape
    H, d, rd = c.n_heads, c.head_dim, c.rotary_dim
    p = mixer.proj

    def heads(layer):
        return F.linear(hidden, layer.weight, layer.bias).view(B, T, H, d).permute(0, 2, 1, 3)

    query, key, value = heads(p.q_proj), heads(p.k_proj), heads(p.v_proj)
    inv_freq = 1.0 / (c.rope_theta ** (torch.arange(0, rd, 2).float() / rd))  # float32 angles, as the official
    emb = torch.cat([torch.outer(torch.arange(T).float(), inv_freq)] * 2, dim=-1)
    cos, sin = emb.cos().to(hidden.dtype), emb.sin().to(hidden.dtype)

    def rotate_half(x):
        return torch.cat((-x[..., x.shape[-1] // 2 :], x[..., : x.shape[-1] // 2]), dim=-1)

    def rope(x):
        x_rot = x[..., :rd]
        return torch.cat((x_rot * cos + rotate_half(x_rot) * sin, x[..., rd:]), dim=-1)

    query, key = rope(query), rope(key)
    proj_matrix = official_projection(d, layer_seed(0, c.layer_idx)).to(hidden.dtype)  # C @ diag(icdf(u))
    D1 = mixer.D1.detach()[None, :, :, None]  # the official shape (1, H, max_pos, 1)
    D2 = mixer.D2.detach()[None, :, :, None]
    mask = torch.tril(torch.ones(T, T, dtype=hidden.dtype))
    q = F.softmax(query @ proj_matrix, dim=-1) * D1[:, :, :T, :]
    k = F.softmax(key @ proj_matrix, dim=-1) * D2[:, :, :T, :]
    attn = (q @ k.transpose(2, 3)) * mask
    out = (attn @ value).permute(0, 2, 1, 3).reshape(B, T, H * d)
    gn = mixer.gated.norm
    out = F.group_norm(out.reshape(-1, H * d), d, gn.weight, gn.bias, gn.eps).reshape(B, T, H * d)
    W_G = mixer.gated.gate.weight.T  # the official W_G is (hidden, v_dim), used as hidden @ W_G
    return F.linear(F.silu(hidden @ W_G) * out, p.o_proj.weight, p.o_proj.bias)


def test_official_mixer_is_the_official_computation_in_every_form():
    torch.manual_seed(0)
    cfg = MixerConfig(
        d_model=32, n_heads=4, head_dim=8, rotary_dim=2, max_seq_len=64, qkv_bias=True, out_bias=True, layer_idx=1
    )
    mixer = build_mixer("dijiang-official", cfg).double()
    mixer.reset_parameters(0.02)
    mixer.chunk_size = 8
    with torch.no_grad():  # move the learnable tensors away from their init, as training would
        for prm in (mixer.D1, mixer.D2, mixer.gated.norm.weight, mixer.gated.norm.bias):
            prm.mul_(1 + 0.1 * torch.rand_like(prm))
    x = torch.randn(2, 45, 32, dtype=torch.float64)
    ref = official_forward(mixer, x)
    assert mixer.gated.norm.num_groups == 8  # num_groups = head_size: groups of H = 4 channels
    for form in ("parallel", "chunk", "recurrent"):
        y, _ = mixer(x, form=form)
        assert ((y - ref).abs().max() / ref.abs().max()).item() < 1e-10, form


def test_official_init_and_frozen_projection():
    cfg = MixerLMConfig(
        vocab_size=64, hidden_size=32, num_attention_heads=4, mixer="dijiang-official", max_position_embeddings=128
    )
    model = MixerLMForCausalLM(cfg)
    mixer = model.model.layers[1].mixer
    g = retnet_gammas(4).float()[:, None]
    n = torch.arange(128)[None]
    assert torch.equal(mixer.D1.data, g**n) and torch.equal(mixer.D2.data, 1.0 / g**n)
    bound = 2**-2.5 * math.sqrt(6 / (32 + 32))  # Xavier uniform with gain 2^-2.5 (reset after the N(0, 0.02) init)
    w = mixer.gated.gate.weight
    assert w.abs().max() <= bound and w.std() > 0.8 * bound / math.sqrt(3)
    assert torch.equal(mixer.gated.norm.weight.data, torch.ones(32))
    names = dict(mixer.named_parameters())
    assert "features.projection" not in names and "features.projection" in mixer.state_dict()
    assert all(p.requires_grad for p in names.values())
    assert torch.allclose(mixer.features.projection, official_projection(8, layer_seed(0, 1)).float())


def test_official_length_limit_and_options():
    cfg = MixerConfig(d_model=16, n_heads=2, max_seq_len=32)
    mixer = build_mixer("dijiang-official", cfg)
    with pytest.raises(MixerConfigError, match="at most max_seq_len=32"):
        mixer(torch.randn(1, 33, 16))
    safe = build_mixer(
        "dijiang-official", MixerConfig(d_model=16, n_heads=2, max_seq_len=32, options={"decay": "per_head"})
    )
    assert torch.isfinite(safe(torch.randn(1, 100, 16))[0]).all()  # no per-position table, no limit
    with pytest.raises(MixerConfigError, match="decay='sometimes' is not one of"):
        build_mixer("dijiang-official", MixerConfig(d_model=16, n_heads=2, options={"decay": "sometimes"}))
    with pytest.raises(MixerConfigError, match="unknown option"):
        build_mixer("dijiang", MixerConfig(d_model=16, n_heads=2, options={"decays": "none"}))
    with pytest.raises(MixerConfigError, match="output='softmax' is not one of"):
        build_mixer("pff", MixerConfig(d_model=16, n_heads=2, options={"output": "softmax"}))
