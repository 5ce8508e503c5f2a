"""``sliding-window`` and ``window-linear`` (LoLCATs): the model-level contract at windows smaller than
the sequence (the registry-wide contract tests run them at their default W = 64, longer than their
sequences), agreement with softmax and with each other at the limits, the beyond-window part against
an O(T^2) reference written here, constant decoding state, and the refusals."""

from __future__ import annotations

import math

import pytest
import torch

from baselines.sliding_window import extend_window
from harness import MixerConfig, MixerLMConfig, MixerLMForCausalLM, build_mixer
from harness.conversion.mixer_swap import attention_weights
from harness.core.hf_cache import output_cache
from harness.core.mixer import MixerConfigError
from harness.training.objectives import new_parameter_names

LINEAR_OUT = {"output": "linear"}  # dijiang with W_O only: no GroupNorm to hide a per-head scale error
#: name -> (default method, its options, per-layer overrides); windows shorter than the test sequences
MODELS = {
    "sliding-window@4": ("sliding-window", {"window": 4}, {}),
    "window-linear@5/dijiang": ("window-linear", {"window": 5, "linear_options": LINEAR_OUT}, {}),
    "window-linear@3/dijiang-gated": ("window-linear", {"window": 3}, {}),
    "window-linear@0/pff": ("window-linear", {"window": 0, "linear": "pff"}, {}),
    "window-linear@3/cosformer": ("window-linear", {"window": 3, "linear": "cosformer"}, {}),
    "hybrid dijiang|window-linear@4|sliding-window@4": (
        "dijiang",
        {},
        {
            1: {"mixer": "window-linear", "options": {"window": 4}},
            2: {"mixer": "sliding-window", "options": {"window": 4}},
        },
    ),
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def small_chunks(model: MixerLMForCausalLM) -> MixerLMForCausalLM:
    for layer in model.model.layers:
        if hasattr(layer.mixer, "chunk_size"):
            layer.mixer.chunk_size = 4
    return model


def tiny_model(name: str, layout: str = "neox") -> MixerLMForCausalLM:
    torch.manual_seed(0)
    mixer, options, overrides = MODELS[name]
    cfg = MixerLMConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=3 if overrides else 2,
        num_attention_heads=4,
        num_key_value_heads=2 if layout == "llama" else None,
        intermediate_size=64,
        layout=layout,
        mixer=mixer,
        mixer_options=options,
        layer_mixers=overrides,
        max_position_embeddings=128,
        partial_rotary_factor=0.5,
    )
    return small_chunks(MixerLMForCausalLM(cfg).eval())


def mixer_config(**options) -> MixerConfig:
    return MixerConfig(
        d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, rotary_dim=4, max_seq_len=128, qkv_bias=True, options=options
    )


def tiny_mixer(name: str, **options):
    torch.manual_seed(0)
    mixer = build_mixer(name, mixer_config(**options)).eval()
    mixer.reset_parameters(0.02)
    if hasattr(mixer, "chunk_size"):
        mixer.chunk_size = 4
    return mixer


def with_fast_decay(mixer):
    """gamma_h ~ 0.6-0.9 for a wrapped DiJiang, so a wrong decay power shows at these lengths."""
    with torch.no_grad():
        mixer.linear.decay_rate.copy_(torch.log(-torch.log(torch.tensor([0.6, 0.7, 0.8, 0.9]))))
    return mixer


@pytest.fixture(params=sorted(MODELS))
def name(request) -> str:
    return request.param


# -- the model-level contract at small windows --------------------------------------------------
def test_forms_agree(name):
    model = tiny_model(name)
    ids = torch.randint(0, 64, (2, 23))
    with torch.no_grad():
        ref = model(ids, mixer_form="parallel").logits
        for form in ("chunk", "recurrent"):
            assert rel_err(model(ids, mixer_form=form).logits, ref) <= 1e-4, form


def test_causal(name):
    model = tiny_model(name)
    a = torch.randint(0, 64, (2, 24))
    b = a.clone()
    b[:, 15:] = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        la, lb = model(a).logits, model(b).logits
    assert torch.allclose(la[:, :15], lb[:, :15], atol=1e-5)
    assert not torch.allclose(la[:, 15:], lb[:, 15:])


@pytest.mark.parametrize("layout", ["neox", "llama"])
def test_cached_continuation_and_state_size(name, layout):
    model = tiny_model(name, layout)
    ids = torch.randint(0, 64, (2, 29))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :13], use_cache=True)
        cache, logits = output_cache(out), [out.logits]
        assert cache.numel() == 2 * sum(layer.mixer.state_size(13) for layer in model.model.layers)
        out = model(ids[:, 13:17], cache=cache, use_cache=True)  # a chunk continued from a state
        cache = output_cache(out)
        logits.append(out.logits)
        for t in range(17, 29):
            out = model(ids[:, t : t + 1], cache=cache, use_cache=True)
            cache = output_cache(out)
            logits.append(out.logits)
        assert cache.numel() == 2 * sum(layer.mixer.state_size(29) for layer in model.model.layers)
    assert rel_err(torch.cat(logits, 1), full) <= 1e-4


def test_saved_and_reloaded_generation_equals_forward(name, tmp_path):
    model = tiny_model(name)
    model.save_pretrained(tmp_path)
    loaded = small_chunks(MixerLMForCausalLM.from_pretrained(tmp_path).eval())
    prompt = torch.randint(1, 64, (2, 10))
    out = loaded.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=9,
        do_sample=False,
        pad_token_id=0,
        output_logits=True,
        return_dict_in_generate=True,
    )
    with torch.no_grad():
        full = model(out.sequences).logits[:, 9:18]
    assert rel_err(torch.stack(out.logits, 1), full) <= 1e-4


def test_left_padding_in_prefill_and_decoding(name):
    """A left-padded row gives the unpadded row's logits, in the prompt and over decoding steps
    (the padding slides through the window and out of it)."""
    model = tiny_model(name, "llama")
    ids = torch.randint(1, 64, (1, 20))
    pad = 6
    padded = torch.cat([torch.zeros(1, pad, dtype=torch.long), ids[:, :12]], 1)
    mask = (torch.arange(pad + 12) >= pad).long()[None]
    with torch.no_grad():
        ref = model(ids).logits
        out = model(padded, attention_mask=mask, use_cache=True)
        got = [out.logits[:, pad:]]
        cache = output_cache(out)
        for t in range(12, 20):
            mask = torch.cat([mask, torch.ones(1, 1, dtype=torch.long)], 1)
            out = model(ids[:, t : t + 1], attention_mask=mask, cache=cache, use_cache=True)
            cache = output_cache(out)
            got.append(out.logits)
    assert rel_err(torch.cat(got, 1), ref) <= 1e-4


def test_window_state_is_constant_in_length():
    for method, options in [("sliding-window", {"window": 5}), ("window-linear", {"window": 5})]:
        mixer = tiny_mixer(method, **options)
        sizes = []
        for L in (3, 5, 11, 40):
            _, state = mixer(torch.randn(2, L, 32))
            numel = sum(t.numel() for t in state if isinstance(t, torch.Tensor)) // 2
            assert numel == mixer.state_size(L)
            sizes.append(numel)
        assert sizes[0] < sizes[1] == sizes[2] == sizes[3], (method, sizes)


# -- limits: softmax, sliding window, the linear method ------------------------------------------
def test_sliding_window_at_least_t_is_softmax():
    soft = tiny_mixer("softmax")
    sw = tiny_mixer("sliding-window", window=37)
    sw.load_state_dict(soft.state_dict())
    x = torch.randn(2, 37, 32)
    ref = soft(x)[0]
    for form in sw.forms:
        assert (sw(x, form=form)[0] - ref).abs().max() <= 1e-6, form


def naive_window_softmax(q, k, v, window: int) -> torch.Tensor:
    """o_i = softmax over j in (i - W, i] of q_i.k_j / sqrt(d), one query at a time."""
    T, d = q.shape[-2], q.shape[-1]
    out = torch.zeros_like(q)
    for i in range(T):
        lo = max(0, i - window + 1)
        w = torch.softmax(q[..., i : i + 1, :] @ k[..., lo : i + 1, :].transpose(-1, -2) / math.sqrt(d), -1)
        out[..., i : i + 1, :] = w @ v[..., lo : i + 1, :]
    return out


def test_sliding_window_is_the_band_softmax():
    sw = tiny_mixer("sliding-window", window=4)
    x = torch.randn(2, 19, 32)
    pos = torch.arange(19).expand(2, -1)
    q, k, v = sw.project(x, pos)
    ref = sw.proj.out(naive_window_softmax(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), 4))
    assert rel_err(sw(x)[0], ref) <= 1e-5
    soft = tiny_mixer("softmax")
    soft.load_state_dict(sw.state_dict())
    assert rel_err(soft(x)[0], ref) > 1e-2, "the window must matter at T > W"


#: wrapped methods: rotary on the linear path (dijiang), none (cosformer; dijiang rotary=False)
WRAPPED = [
    {"linear": "dijiang", "linear_options": LINEAR_OUT},
    {"linear": "cosformer"},
    {"linear": "dijiang", "linear_options": {**LINEAR_OUT, "rotary": False}},
]


@pytest.mark.parametrize("wrapped", WRAPPED, ids=["dijiang", "cosformer", "dijiang-norotary"])
def test_window_linear_at_least_t_is_softmax(wrapped):
    soft = tiny_mixer("softmax")
    wl = tiny_mixer("window-linear", window=37, **wrapped)
    wl.init_from_attention(attention_weights(soft))
    x = torch.randn(2, 37, 32)
    ref = soft(x)[0]
    for form in wl.forms:
        assert rel_err(wl(x, form=form)[0], ref) <= 1e-5, form


def test_window_linear_with_factor_zero_is_sliding_window():
    sw = tiny_mixer("sliding-window", window=4)
    wl = tiny_mixer("window-linear", window=4, linear_options=LINEAR_OUT)
    wl.init_from_attention(attention_weights(sw))
    x = torch.randn(2, 23, 32)
    with torch.no_grad():
        assert rel_err(wl(x)[0], sw(x)[0]) > 1e-3, "at the initial f the linear part must contribute"
        wl.log_factor.fill_(-math.inf)
        for form in wl.forms:
            assert rel_err(wl(x, form=form)[0], sw(x)[0]) <= 1e-5, form


def naive_window_linear(wl, x: torch.Tensor) -> torch.Tensor:
    """The module docstring's y_i, term by term, from the wrapped method's public pieces."""
    B, T, _ = x.shape
    W, lin = wl.window, wl.linear
    pos = torch.arange(T).expand(B, -1)
    q, k, v = wl.proj.qkv(x)
    k, v = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    fq = lin.feature_map(lin.project(x, pos)[0], pos, True)
    fk = lin.feature_map(lin.project(x, pos)[1].repeat_interleave(2, 1), pos, False)
    qr, kr = wl._rotate(q, pos), wl._rotate(k, pos)
    gamma = torch.ones(q.shape[1]) if lin.log_decay() is None else lin.log_decay().exp()
    f = wl.log_factor.exp()
    out = torch.zeros_like(q)
    for h in range(q.shape[1]):
        for i in range(T):
            num, den = torch.zeros(B, q.shape[-1]), torch.zeros(B)
            win = list(range(max(0, i - W + 1), i + 1))
            if win:
                s = torch.stack([(qr[:, h, i] * kr[:, h, j]).sum(-1) / math.sqrt(q.shape[-1]) for j in win], -1)
                e = torch.exp(s - s.max(-1, keepdim=True).values)
                num += (e[..., None] * v[:, h, win]).sum(1)
                den += e.sum(-1)
            for j in range(0, i - W + 1):
                a = f[h] * gamma[h] ** (i - j) * (fq[:, h, i] * fk[:, h, j]).sum(-1)
                num += a[:, None] * v[:, h, j]
                den += a
            out[:, h, i] = num / (den + lin.eps)[:, None]
    return lin.output(out, x)


@pytest.mark.parametrize("window", [0, 1, 3])
@pytest.mark.parametrize("wrapped", WRAPPED, ids=["dijiang", "cosformer", "dijiang-norotary"])
def test_window_linear_matches_the_naive_reference(window, wrapped):
    wl = tiny_mixer("window-linear", window=window, **wrapped)
    if hasattr(wl.linear, "decay_rate"):
        with_fast_decay(wl)
    with torch.no_grad():
        wl.log_factor.copy_(torch.tensor([-1.0, 0.0, 0.5, 2.0]))
        x = torch.randn(2, 17, 32)
        ref = naive_window_linear(wl, x)
        for form in wl.forms:
            assert rel_err(wl(x, form=form)[0], ref) <= 1e-5, form


def test_window_zero_is_the_normalised_linear_method():
    opts = {"normalize": True, "output": "linear"}
    dj = tiny_mixer("dijiang", **opts)
    wl = tiny_mixer("window-linear", window=0, linear_options=opts)
    wl.linear.load_state_dict({k: v for k, v in dj.state_dict().items() if not k.startswith("proj.")})
    wl.init_from_attention(attention_weights(dj))
    x = torch.randn(2, 21, 32)
    assert rel_err(wl(x)[0], dj(x)[0]) <= 1e-5


# -- options, refusals, conversion ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"linear": "retnet"}, "not normalised"),
        ({"linear": "dijiang", "linear_options": {"normalize": False}}, "not normalised"),
        ({"linear": "performer"}, "own forward"),
        ({"linear": "softmax"}, "not a linear-attention method"),
        ({"window": -1}, "window must be"),
        ({"factor_init": 0.0}, "factor_init"),
    ],
)
def test_window_linear_refuses(options, match):
    with pytest.raises(MixerConfigError, match=match):
        build_mixer("window-linear", mixer_config(**options))


def test_sliding_window_refuses_an_empty_window():
    with pytest.raises(MixerConfigError, match="window must be >= 1"):
        build_mixer("sliding-window", mixer_config(window=0))


def test_window_linear_keeps_the_teachers_parameter_names():
    """The teacher's Q/K/V/O sit at ``proj`` as in softmax, so ``transfer`` trains only the new
    parameters (the linear method's own and f)."""
    teacher = tiny_model("sliding-window@4")
    cfg = teacher.config.to_dict()
    for key in ("model_type", "transformers_version", "architectures", "dtype", "torch_dtype"):
        cfg.pop(key, None)
    cfg.update(mixer="window-linear", mixer_options={"window": 4})
    student = MixerLMForCausalLM(MixerLMConfig(**cfg))
    new = new_parameter_names(student, teacher)
    assert new and not [n for n in new if ".proj." in n]
    assert {n.split(".mixer.")[1] for n in new} >= {"log_factor", "linear.features.weight", "linear.decay_rate"}
    assert sum(".proj." in n for n, _ in student.named_parameters()) == sum(
        ".proj." in n for n, _ in teacher.named_parameters()
    )


def test_rolling_buffer_equals_a_list():
    """The window cache with spare capacity holds exactly the last W slots, through reallocations,
    and a decoding step writes into the spare capacity (a new buffer only every ~64 steps)."""
    keep, state, ref, moves, where = 5, None, [], 0, None
    for step in range(150):
        new = torch.full((2, 3, 7 if step == 0 else 1, 4), float(step))
        full, state = extend_window(state, new, keep)
        ref = (ref + [step] * new.shape[2])[-keep:]
        assert full.shape[2] == (7 if step == 0 else keep + 1)
        assert state[0, 0, :, 0].tolist() == [float(r) for r in ref]
        assert torch.equal(state[1, 2], state[0, 0])
        moves += state.untyped_storage().data_ptr() != where
        where = state.untyped_storage().data_ptr()
    assert moves <= 4, f"{moves} buffers in 150 steps"


def test_factor_and_features_get_gradients_beyond_the_window():
    """``transfer`` can train f and the wrapped method's features (the linear part is in the graph)."""
    wl = tiny_mixer("window-linear", window=4).train()
    wl(torch.randn(2, 19, 32))[0].pow(2).sum().backward()
    assert wl.log_factor.grad is not None and (wl.log_factor.grad != 0).all()
    assert wl.linear.features.weight.grad.abs().sum() > 0 and wl.linear.decay_rate.grad.abs().sum() > 0
