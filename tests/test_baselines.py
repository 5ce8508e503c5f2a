"""Method-specific tests of the baselines (the shared contract is in test_contract.py).

Each method is checked against its paper's own definition, written out directly here (quadratic,
loop-based or Monte Carlo), never against its own implementation.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from harness import MixerConfig, MixerConfigError, MixerLMConfig, build_mixer, capabilities
from harness.conversion.hf_checkpoint import convert_checkpoint
from harness.core.hf_cache import output_cache
from harness.layers.feature_maps import positive_features
from tests.hf_checkpoints import make_neox

ATTENTION_BASELINES = ["performer", "linformer", "cosformer", "retnet"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread. On a busy 2-core machine, OpenMP threads contending for
    cores made these tests several times slower (measured); the results do not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def mixer_for(name: str, dtype: torch.dtype = torch.float32, **cfg_kw) -> torch.nn.Module:
    torch.manual_seed(0)
    kw = dict(d_model=32, n_heads=2, head_dim=16, rotary_dim=4, max_seq_len=64, qkv_bias=True)
    kw.update(cfg_kw)
    mixer = build_mixer(name, MixerConfig(**kw))
    mixer.reset_parameters(0.02)
    return mixer.to(dtype).eval()


# -- softmax's KV cache ---------------------------------------------------------------------------
def test_kv_cache_appends_equal_concatenation_with_few_reallocations():
    """append_kv equals torch.cat after every step, reallocating only O(log n) times over n steps."""
    from baselines.softmax import append_kv

    g = torch.Generator().manual_seed(0)
    past = torch.randn(2, 3, 5, 4, generator=g)  # a prefill-shaped cache
    ref, buffers = past.clone(), set()
    for step in range(300):
        new = torch.randn(2, 3, 1 if step % 7 else 3, 4, generator=g)
        past, ref = append_kv(past, new), torch.cat((ref, new), dim=2)
        assert torch.equal(past, ref), step
        buffers.add(past.untyped_storage().data_ptr())
    assert len(buffers) <= 12, len(buffers)  # 300 steps: geometric growth, not one copy per step


def test_kv_cache_decoding_past_regrowth_equals_the_parallel_form():
    """Token-by-token decoding over 150 steps (several buffer regrowths) gives the parallel outputs."""
    mixer = mixer_for("softmax", max_seq_len=256)
    x = torch.randn(2, 150, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, _ = mixer(x)
        out, state = mixer(x[:, :10])
        steps = [out]
        for t in range(10, 150):
            o, state = mixer(x[:, t : t + 1], state=state)
            steps.append(o)
    assert rel_err(torch.cat(steps, 1), full) < 1e-5
    assert state[0].shape[2] == 150


# -- Performer ----------------------------------------------------------------------------------
def performer_kernel_error(m: int, orthogonal: bool, d: int = 16, pairs: int = 128, draws: int = 6) -> float:
    """Mean relative error of phi(q).phi(k) against exp(q.k) over pairs and independent draws."""
    from baselines.performer import draw_features

    g = torch.Generator().manual_seed(1)
    q = torch.randn(pairs, d, generator=g, dtype=torch.float64) * d**-0.5
    k = torch.randn(pairs, d, generator=g, dtype=torch.float64) * d**-0.5
    exact = torch.exp((q * k).sum(-1))
    errs = []
    for r in range(draws):
        w = draw_features(m, d, orthogonal, torch.Generator().manual_seed(100 + r)).double()
        est = (positive_features(q, w) * positive_features(k, w)).sum(-1)
        errs.append(((est - exact).abs() / exact).mean())
    return torch.stack(errs).mean().item()


def test_performer_kernel_estimate_converges_to_exp_qk():
    ms = [16, 64, 256, 1024]
    errs = {m: performer_kernel_error(m, orthogonal=True) for m in ms}
    iid_at_d = performer_kernel_error(16, orthogonal=False)
    report = ", ".join(f"m={m}: {e:.4f}" for m, e in errs.items()) + f"; i.i.d. at m=d=16: {iid_at_d:.4f}"
    print(f"\nPerformer FAVOR+ mean relative kernel error (d=16): {report}")
    assert all(errs[a] > errs[b] for a, b in zip(ms, ms[1:])), f"error must fall as m grows: {report}"
    # Monte Carlo rate 1/sqrt(m): 64x more features -> ~8x smaller error; allow 5x
    assert errs[1024] < errs[16] / 5, f"slower than 1/sqrt(m): {report}"
    assert errs[1024] < 0.1, report
    assert errs[16] < iid_at_d, f"orthogonal features must beat i.i.d. ones at m=d: {report}"


def test_performer_features_are_orthogonal_blocks_with_gaussian_norms():
    from baselines.performer import draw_features

    w = draw_features(40, 16, generator=torch.Generator().manual_seed(0))
    for block in (w[:16], w[16:32], w[32:]):
        gram = block @ block.T
        off = gram - torch.diag(torch.diagonal(gram))
        assert off.abs().max() < 1e-4 * gram.diagonal().max()
    iid = draw_features(4096, 16, orthogonal=False, generator=torch.Generator().manual_seed(0))
    orth_norms = draw_features(4096, 16, generator=torch.Generator().manual_seed(1)).norm(dim=-1)
    # rows are marginally N(0, I): squared norms ~ chi2(16), mean 16
    assert abs(orth_norms.pow(2).mean().item() - 16) < 1.0
    assert abs(iid.norm(dim=-1).pow(2).mean().item() - 16) < 1.0


def favor_reference(mixer, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """FAVOR+ written directly (no stabiliser): normalised causal attention with the kernel
    phi(q).phi(k), phi(x) = exp(W x' - |x'|^2/2) / sqrt(m), x' = x / d^(1/4), computed in ``dtype``."""
    T = x.shape[1]
    mixer = copy.deepcopy(mixer).to(dtype)
    q, k, v = mixer.project(x.to(dtype), torch.arange(T).expand(x.shape[0], -1))
    d = q.shape[-1]
    w = mixer.features.to(dtype)
    a = (positive_features(q * d**-0.25, w) @ positive_features(k * d**-0.25, w).transpose(-1, -2)).tril()
    return mixer.proj.out((a @ v) / a.sum(-1, keepdim=True))


def test_performer_matches_direct_favor_definition():
    mixer = mixer_for("performer", torch.float64)
    x = torch.randn(2, 29, 32, dtype=torch.float64)
    ref = favor_reference(mixer, x, torch.float64)
    for form in mixer.forms:
        assert rel_err(mixer(x, form=form)[0], ref) < 1e-9, form


def decode(mixer, x: torch.Tensor, prefill: int) -> tuple[torch.Tensor, list]:
    """Prefill ``prefill`` tokens, then one token at a time; returns outputs and the states."""
    pos = torch.arange(x.shape[1]).expand(x.shape[0], -1)
    out, state = mixer(x[:, :prefill], position_ids=pos[:, :prefill])
    outs, states = [out], [state]
    for t in range(prefill, x.shape[1]):
        o, state = mixer(x[:, t : t + 1], position_ids=pos[:, t : t + 1], state=state)
        outs.append(o)
        states.append(state)
    return torch.cat(outs, 1), states


def test_performer_exponentials_are_stabilised():
    """Large queries/keys: plain float32 FAVOR+ underflows to 0/0; ours stays finite, and the recurrent
    form and decoding (key stabiliser updated every token) equal the float64 definition everywhere.
    parallel/chunk share one stabiliser per call/chunk (documented limit): their error is reported."""
    x = torch.randn(1, 40, 32, generator=torch.Generator().manual_seed(0))
    errors = {}
    for scale in (4, 10):
        mixer = mixer_for("performer")
        mixer.chunk_size = 8
        with torch.no_grad():
            mixer.proj.q_proj.weight.mul_(scale)
            mixer.proj.k_proj.weight.mul_(scale)
            ref = favor_reference(mixer, x, torch.float64).float()
            naive = favor_reference(mixer, x, torch.float32)
            outs = {form: mixer(x, form=form)[0] for form in mixer.forms}
            outs["decode"], states = decode(mixer, x, 1)
        errors[scale] = {name: rel_err(out, ref) for name, out in outs.items()}
        assert all(torch.isfinite(out).all() for out in outs.values()), scale
        assert errors[scale]["decode"] < 1e-4 and errors[scale]["recurrent"] < 1e-4, errors
        assert (states[-1][1] > states[0][1]).any(), "test premise: key stabilisers grow while decoding"
    print(f"\nPerformer float32 error vs float64 FAVOR+ (q, k scaled x4, x10): {errors}")
    assert not torch.isfinite(naive).all(), "test premise: plain float32 FAVOR+ underflows at x10"
    assert max(errors[4].values()) < 1e-3, errors


def test_performer_redraws_only_in_training():
    x = torch.randn(1, 12, 32)
    redraw = build_mixer("performer", MixerConfig(d_model=32, n_heads=2, options={"redraw_interval": 2}))
    w0 = redraw.features.clone()
    redraw.eval()
    for _ in range(3):
        redraw(x)
    assert torch.equal(redraw.features, w0), "no redraw in eval mode"
    redraw.train()
    redraw(x), redraw(x)
    assert torch.equal(redraw.features, w0)
    redraw(x)
    assert not torch.equal(redraw.features, w0), "features redrawn after redraw_interval training passes"


def test_performer_feature_count_is_an_option():
    mixer = build_mixer("performer", MixerConfig(d_model=32, n_heads=2, options={"n_features": 48}))
    assert mixer.features.shape == (48, 16)
    assert mixer.state_size(100) == 2 * 48 * 17 + 2 * 48
    with pytest.raises(MixerConfigError, match="unknown option"):
        build_mixer("performer", MixerConfig(d_model=32, n_heads=2, options={"features": 48}))


# -- cosFormer ----------------------------------------------------------------------------------
def test_cosformer_linear_form_equals_quadratic_definition():
    """Eq. 7-11 written directly: o_i = sum_j relu(q_i).relu(k_j) cos(pi/2 (i-j)/M) v_j / (same sum)."""
    mixer = mixer_for("cosformer", torch.float64, max_seq_len=50)
    M, T = 50, 37
    x = torch.randn(2, T, 32, dtype=torch.float64)
    pos = torch.arange(T)
    q, k, v = mixer.proj.qkv(x)  # no rotary in cosFormer
    i, j = pos[:, None].double(), pos[None, :].double()
    s = (F.relu(q) @ F.relu(k).transpose(-1, -2)) * torch.cos(math.pi / 2 * (i - j) / M) * (j <= i)
    ref = mixer.proj.out((s @ v) / (s.sum(-1, keepdim=True) + 1e-6))
    for form in mixer.forms:
        assert rel_err(mixer(x, form=form)[0], ref) < 1e-9, form
    # a later call continues at its absolute positions: the weights depend on i - j only
    y, st = mixer(x[:, :20])
    y2, _ = mixer(x[:, 20:], state=st, position_ids=pos[20:].expand(2, -1))
    assert rel_err(torch.cat((y, y2), 1), ref) < 1e-9


def test_cosformer_rejects_positions_past_fixed_m():
    mixer = mixer_for("cosformer", max_seq_len=16)
    mixer(torch.randn(1, 16, 32))
    with pytest.raises(MixerConfigError, match="max_seq_len=16"):
        mixer(torch.randn(1, 17, 32))


# -- RetNet -------------------------------------------------------------------------------------
def test_retnet_decays_are_the_papers():
    from baselines.retnet import retnet_log_decay

    gamma = retnet_log_decay(4).exp()
    assert torch.allclose(gamma, torch.tensor([1 - 2**-5, 1 - 2**-6, 1 - 2**-7, 1 - 2**-8], dtype=torch.float64))


@pytest.mark.parametrize("T", [37, 300])
def test_retnet_forms_agree_with_direct_eq5(T):
    """Eq. 5 directly: (Q K^T ⊙ D) V with D_nm = gamma^(n-m), then Eq. 8's GroupNorm, gate and W_O."""
    mixer = mixer_for("retnet", max_seq_len=512, n_heads=4, head_dim=8)
    mixer.chunk_size = 64  # T=300: several chunks, the last partial
    x = torch.randn(2, T, 32)
    mixer.double()
    q, k, v = mixer.project(x.double(), torch.arange(T).expand(2, -1))
    n = torch.arange(T, dtype=torch.float64)
    gamma = 1 - 2.0 ** (-5 - torch.arange(4, dtype=torch.float64))
    diff = n[:, None] - n[None, :]
    D = torch.where(diff >= 0, gamma[:, None, None] ** diff.clamp(min=0), 0.0)
    retention = ((q @ (k * 8**-0.5).transpose(-1, -2)) * D) @ v
    ref = mixer.output(retention, x.double()).float()
    mixer.float()
    outs = {form: mixer(x, form=form)[0] for form in mixer.forms}
    for form, out in outs.items():
        assert rel_err(out, ref) < 1e-4, f"{form} vs Eq. 5: {rel_err(out, ref):.2e}"
    assert rel_err(outs["chunk"], outs["recurrent"]) < 1e-4


# -- Linformer ----------------------------------------------------------------------------------
def linformer_reference(mixer, x: torch.Tensor) -> torch.Tensor:
    """The causal block variant token by token: exact keys of the own block + E/F summaries of all
    completed earlier blocks, one softmax (module docstring)."""
    B, T, _ = x.shape
    b, d = mixer.block_size, mixer.config.head_dim
    q, k, v = mixer.project(x, torch.arange(T).expand(B, -1))
    E, Fm = mixer.compress_k.to(x.dtype), mixer.compress_v.to(x.dtype)
    out = torch.zeros_like(q)
    for i in range(T):
        blk = i // b
        past = list(range(blk * b))
        own = list(range(blk * b, i + 1))
        keys, vals = k[:, :, own], v[:, :, own]
        if past:
            ks = torch.einsum("rj,bhjd->bhrd", E[:, past], k[:, :, past])
            vs = torch.einsum("rj,bhjd->bhrd", Fm[:, past], v[:, :, past])
            keys, vals = torch.cat((ks, keys), 2), torch.cat((vs, vals), 2)
        w = torch.softmax(q[:, :, i : i + 1] @ keys.transpose(-1, -2) / math.sqrt(d), dim=-1)
        out[:, :, i : i + 1] = w @ vals
    return mixer.proj.out(out)


def test_linformer_equals_its_definition():
    mixer = mixer_for("linformer", torch.float64, options={"block_size": 5, "compressed_dim": 6})
    x = torch.randn(2, 23, 32, dtype=torch.float64)
    ref = linformer_reference(mixer, x)
    for form in mixer.forms:
        assert rel_err(mixer(x, form=form)[0], ref) < 1e-9, form
    assert mixer.chunk_size == mixer.CHUNK_WINDOW > 23  # one window here: also walk windows that cut blocks
    for window in (1, 3, 5, 7, 12):
        mixer.chunk_size = window
        assert rel_err(mixer(x, form="chunk")[0], ref) < 1e-9, window
    # the summaries matter: later outputs differ from plain causal softmax attention
    soft = build_mixer("softmax", dataclasses.replace(mixer.config, options={})).double()
    soft.proj.load_state_dict(mixer.proj.state_dict())
    plain = soft(x)[0]
    assert rel_err(plain[:, :5], ref[:, :5]) < 1e-9, "first block is exact attention"
    assert rel_err(plain[:, 5:], ref[:, 5:]) > 1e-3


def test_linformer_rejects_inputs_past_max_length():
    mixer = mixer_for("linformer", max_seq_len=32)
    mixer(torch.randn(1, 32, 32))
    with pytest.raises(MixerConfigError, match="max_seq_len=32"):
        mixer(torch.randn(1, 33, 32))
    _, state = mixer(torch.randn(1, 30, 32))
    with pytest.raises(MixerConfigError, match="max_seq_len=32"):  # also while decoding
        mixer(torch.randn(1, 3, 32), state=state)


def test_linformer_state_is_bounded():
    mixer = mixer_for("linformer", max_seq_len=64)
    _, s1 = mixer(torch.randn(1, 10, 32))
    _, s2 = mixer(torch.randn(1, 60, 32))
    n = sum(t.numel() for t in s1)
    assert n == sum(t.numel() for t in s2) == mixer.state_size(60) == mixer.state_size(10)


# -- conversion, training, generation -------------------------------------------------------------
@pytest.fixture(scope="module")
def neox_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("neox")
    make_neox(path)
    return path


def train_steps(model, ids: torch.Tensor, steps: int = 6, lr: float = 3e-3) -> list[float]:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("method", ATTENTION_BASELINES)
def test_converts_from_neox_trains_and_generates(neox_ckpt, method):
    model = convert_checkpoint(neox_ckpt, mixer=method)
    assert capabilities(method)["convertible"]
    ids = torch.randint(0, 96, (4, 33), generator=torch.Generator().manual_seed(0))
    losses = train_steps(model, ids)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.05, f"{method}: loss did not fall: {losses}"
    model.eval()
    out = model.generate(ids[:2, :8], max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 14) and torch.equal(out[:, :8], ids[:2, :8])


# -- Mamba --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_mamba(neox_ckpt):
    from harness.conversion.factory import ModelSpec, build_model

    torch.manual_seed(0)
    return build_model(ModelSpec("mamba", teacher=neox_ckpt)).eval()


def test_mamba_registry_entry_states_its_capabilities():
    caps = capabilities("mamba")
    assert caps["kind"] == "model" and caps["convertible"] is False and caps["uses_rotary"] is False
    assert "Gu & Dao" in caps["paper"]
    with pytest.raises(MixerConfigError, match="whole architecture.*build_model"):
        build_mixer("mamba", MixerConfig(d_model=32, n_heads=2))
    with pytest.raises(MixerConfigError, match="whole architecture.*build_model"):
        from harness import MixerLMForCausalLM

        MixerLMForCausalLM(MixerLMConfig(hidden_size=32, num_attention_heads=2, mixer="mamba"))


def test_mamba_matches_the_teacher_parameter_count(neox_ckpt, tiny_mamba):
    from transformers import AutoModelForCausalLM, MambaForCausalLM

    from baselines.mamba import count_parameters, mamba_config

    teacher = AutoModelForCausalLM.from_pretrained(neox_ckpt)
    n_teacher = sum(p.numel() for p in teacher.parameters())
    n_mamba = sum(p.numel() for p in tiny_mamba.parameters())
    cfg = tiny_mamba.config
    assert isinstance(tiny_mamba, MambaForCausalLM)
    assert cfg.hidden_size == teacher.config.hidden_size and cfg.vocab_size == teacher.config.vocab_size
    per_layer = count_parameters(mamba_config(64, 96, 2)) - count_parameters(mamba_config(64, 96, 1))
    assert abs(n_mamba - n_teacher) <= per_layer / 2, (n_mamba, n_teacher, per_layer)
    from harness.conversion.factory import ModelSpec, build_model

    spec = ModelSpec("mamba", config=teacher.config, options={"num_hidden_layers": 3})
    assert build_model(spec).config.num_hidden_layers == 3
    same_size = build_model(ModelSpec("mamba", config=teacher.config, match="layers"))
    assert same_size.config.num_hidden_layers == teacher.config.num_hidden_layers


def test_mamba_causal_and_generation_equals_forward(tiny_mamba):
    from baselines.mamba import mamba_state_size
    from harness.conversion.factory import decode_state_size

    model = tiny_mamba
    ids = torch.randint(0, 96, (2, 20), generator=torch.Generator().manual_seed(1))
    ids2 = ids.clone()
    ids2[:, 12:] = torch.randint(0, 96, (2, 8))
    with torch.no_grad():
        a, b = model(ids).logits, model(ids2).logits
    assert torch.allclose(a[:, :12], b[:, :12], atol=1e-5) and not torch.allclose(a[:, 12:], b[:, 12:])
    gen = model.generate(ids[:, :10], max_new_tokens=8, do_sample=False, pad_token_id=0)
    seq = ids[:, :10]
    with torch.no_grad():
        for _ in range(8):
            seq = torch.cat((seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)), 1)
    assert torch.equal(gen, seq)
    with torch.no_grad():
        cache = output_cache(model(ids[:, :10], use_cache=True))
    held = sum(
        cache.get_conv_state(i, state_idx=0).numel() + cache.get_recurrent_state(i, state_idx=0).numel()
        for i in range(model.config.num_hidden_layers)
    )
    assert held == 2 * mamba_state_size(model.config, 10) == 2 * decode_state_size(model, 10)
    # left padding (batched generation): padded positions are zeroed before the scan
    padded = torch.cat((torch.zeros(2, 5, dtype=torch.long), ids[:, :10]), 1)
    mask = (padded != 0) | (torch.arange(15) >= 5)
    with torch.no_grad():
        got = model(padded, attention_mask=mask.long()).logits[:, 5:]
    assert rel_err(got, model(ids[:, :10]).logits) < 1e-4


def test_mamba_parallel_scan_is_on_and_matches_the_sequential_scan(tiny_mamba):
    """``use_mambapy`` (mamba.py's parallel scan, the CPU training path) gives the sequential scan's
    outputs and gradients, at a length that is not a power of two."""
    from transformers.utils.import_utils import is_mambapy_available

    assert is_mambapy_available(), "mambapy is a dependency (pyproject.toml): pip install -e ."
    model = copy.deepcopy(tiny_mamba).train()
    assert model.config.use_mambapy and all(layer.mixer.use_mambapy for layer in model.backbone.layers)
    ids = torch.randint(0, 96, (2, 37), generator=torch.Generator().manual_seed(3))
    out = {}
    for flag in (True, False):
        for layer in model.backbone.layers:
            layer.mixer.use_mambapy = flag
        model.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        out[flag] = (loss.detach(), model.backbone.layers[0].mixer.A_log.grad.clone())
    assert torch.allclose(out[True][0], out[False][0], atol=1e-5)
    assert rel_err(out[True][1], out[False][1]) < 1e-4


def test_mamba_trains_saves_and_loads(tmp_path, tiny_mamba):
    from transformers import AutoModelForCausalLM

    model = copy.deepcopy(tiny_mamba)
    ids = torch.randint(0, 96, (4, 24), generator=torch.Generator().manual_seed(2))
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.zero_grad()
    losses = train_steps(model, ids, steps=4)
    assert losses[-1] < losses[0], losses
    model.eval().save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
