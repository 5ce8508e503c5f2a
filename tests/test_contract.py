"""The token-mixer contract, checked for every registered method (a new method is tested for free).

Each test builds the method at a tiny size. Tolerances: fp32, relative error <= 1e-4 between forms.
"""

from __future__ import annotations

import pytest
import torch

from harness import MixerConfig, MixerLMConfig, MixerLMForCausalLM, build_mixer, get_method, list_methods
from harness.core.hf_cache import output_cache

MIXERS = [m for m in list_methods() if get_method(m).kind == "mixer"]
T_ODD = 37  # not a multiple of any chunk size used here


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def tiny_mixer(name: str, dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    cfg = MixerConfig(d_model=32, n_heads=2, head_dim=16, rotary_dim=4, max_seq_len=64, qkv_bias=True)
    mixer = build_mixer(name, cfg).to(dtype).eval()
    if hasattr(mixer, "chunk_size"):
        mixer.chunk_size = 8  # T_ODD spans several chunks, the last one partial
    mixer.reset_parameters(0.02)
    return mixer


def tiny_model(name: str, layout: str = "neox") -> MixerLMForCausalLM:
    torch.manual_seed(0)
    cfg = MixerLMConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1 if layout == "llama" else None,
        intermediate_size=64,
        layout=layout,
        mixer=name,
        max_position_embeddings=64,
        partial_rotary_factor=0.25,
    )
    return small_chunks(MixerLMForCausalLM(cfg).eval())


def small_chunks(model: MixerLMForCausalLM) -> MixerLMForCausalLM:
    """Chunks of 8 tokens, so test sequences span several chunks, the last one partial."""
    for layer in model.model.layers:
        if hasattr(layer.mixer, "chunk_size"):
            layer.mixer.chunk_size = 8
    return model


@pytest.fixture(params=MIXERS)
def method(request) -> str:
    return request.param


def test_registry_lists_softmax():
    assert "softmax" in list_methods()


def test_shape_and_dtype(method):
    mixer = tiny_mixer(method)
    x = torch.randn(2, T_ODD, 32)
    y, _ = mixer(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all()


def test_causality(method):
    mixer = tiny_mixer(method)
    x = torch.randn(2, T_ODD, 32)
    t = 20
    x2 = x.clone()
    x2[:, t + 1 :] = torch.randn_like(x2[:, t + 1 :]) * 3
    y1, _ = mixer(x)
    y2, _ = mixer(x2)
    assert torch.allclose(y1[:, : t + 1], y2[:, : t + 1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(y1[:, t + 1 :], y2[:, t + 1 :]), "later inputs must change later outputs"


def test_forms_agree_with_parallel(method):
    mixer = tiny_mixer(method)
    x = torch.randn(2, T_ODD, 32)
    ref, _ = mixer(x, form="parallel") if "parallel" in mixer.forms else mixer(x)
    for form in mixer.forms:
        out, _ = mixer(x, form=form)
        assert rel_err(out, ref) <= 1e-4, f"{method}: form {form} disagrees with parallel"


def test_state_continuation_equals_full_pass(method):
    """Prefill 25 tokens, then one token at a time: equal to one pass over all tokens."""
    mixer = tiny_mixer(method)
    x = torch.randn(2, T_ODD, 32)
    full, _ = mixer(x)
    pos = torch.arange(T_ODD).expand(2, -1)
    out, state = mixer(x[:, :25], position_ids=pos[:, :25])
    outs = [out]
    for t in range(25, T_ODD):
        o, state = mixer(x[:, t : t + 1], position_ids=pos[:, t : t + 1], state=state)
        outs.append(o)
    assert rel_err(torch.cat(outs, 1), full) <= 1e-4


def test_state_size_is_what_is_cached(method):
    model = tiny_model(method)
    ids = torch.randint(0, 64, (3, 21))
    out = model(ids, use_cache=True)
    per_seq = sum(layer.mixer.state_size(21) for layer in model.model.layers)
    assert output_cache(out).numel() == 3 * per_seq


@pytest.mark.parametrize("layout", ["neox", "llama"])
def test_incremental_decoding_equals_forward(method, layout):
    model = tiny_model(method, layout)
    ids = torch.randint(0, 64, (2, 30))
    full = model(ids).logits
    out = model(ids[:, :17], use_cache=True)
    logits = [out.logits]
    cache = output_cache(out)
    for t in range(17, 30):
        out = model(ids[:, t : t + 1], cache=cache, use_cache=True)
        logits.append(out.logits)
        cache = output_cache(out)
    assert rel_err(torch.cat(logits, 1), full) <= 1e-4


def test_generate_equals_greedy_forward(method):
    """generate() (cached decoding) sees the same logits as full forward passes over its output,
    and picks their argmax (compared as logits, so near-ties cannot make the test flaky)."""
    model = tiny_model(method)
    prompt = torch.randint(0, 64, (2, 12))
    out = model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),  # else HF masks every token equal to pad_token_id
        max_new_tokens=8,
        do_sample=False,
        pad_token_id=0,
        output_logits=True,
        return_dict_in_generate=True,
    )
    assert out.sequences.shape == (2, 20)
    gen_logits = torch.stack(out.logits, 1)  # (2, 8, vocab): the logits each new token was chosen from
    full = model(out.sequences).logits[:, 11:19]
    assert rel_err(gen_logits, full) <= 1e-4
    assert torch.equal(out.sequences[:, 12:], gen_logits.argmax(-1))


@pytest.mark.parametrize("mode", ["beam", "sample"])
def test_cached_generate_equals_uncached(method, mode):
    """Beam search (the cache reordered between beams) and seeded sampling give the same tokens with
    the model's cache as with full forward passes at every step (``use_cache=False``)."""
    model = tiny_model(method)
    prompt = torch.randint(1, 64, (2, 9))
    kwargs = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=7, pad_token_id=0)
    if mode == "beam":
        kwargs.update(num_beams=3, do_sample=False)
    else:
        kwargs.update(do_sample=True, top_k=0, temperature=1.0)
    outs = []
    for use_cache in (True, False):
        torch.manual_seed(123)
        outs.append(model.generate(prompt, use_cache=use_cache, **kwargs))
    assert outs[0].shape[1] > prompt.shape[1]
    assert torch.equal(outs[0], outs[1])


def test_no_transformers_deprecation_warning(method):
    """Forward, cached continuation and generate use only the cache name this transformers
    declares: its deprecation shims (``past_key_values``/``cache_params`` since 5.24) never fire."""
    import logging

    from transformers.utils import logging as hf_logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    root = hf_logging.get_logger()
    root.addHandler(handler)
    hf_logging.get_logger().warning_once.cache_clear()
    try:
        model = tiny_model(method)
        ids = torch.randint(1, 64, (2, 9))
        out = model(ids, use_cache=True)
        model(ids[:, -1:], cache=output_cache(out), use_cache=True)
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False, pad_token_id=0)
    finally:
        root.removeHandler(handler)
    assert not [r.getMessage() for r in records if "deprecat" in r.getMessage().lower()]


def test_left_padding_is_ignored(method):
    if not get_method(method).supports_left_padding:
        pytest.skip(f"{method} declares no left-padding support")
    model = tiny_model(method)
    ids = torch.randint(1, 64, (1, 15))
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), ids], 1)
    mask = torch.cat([torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 15, dtype=torch.long)], 1)
    ref = model(ids).logits
    got = model(padded, attention_mask=mask).logits[:, 5:]
    assert rel_err(got, ref) <= 1e-4


def test_gradients_finite(method):
    model = tiny_model(method).train()
    ids = torch.randint(0, 64, (2, T_ODD))
    loss = model(ids, labels=ids).loss
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    mixer_grads = [p.grad.abs().sum() for p in model.model.layers[0].mixer.parameters() if p.requires_grad]
    assert sum(mixer_grads) > 0


def test_save_load_round_trip(method, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model(method)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = small_chunks(AutoModelForCausalLM.from_pretrained(tmp_path).eval())
    ids = torch.randint(0, 64, (2, 19))
    assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_deterministic_under_seed(method):
    a, b = tiny_model(method), tiny_model(method)
    ids = torch.randint(0, 64, (1, 19))
    assert torch.equal(a(ids).logits, b(ids).logits)


def test_model_init_runs_each_mixers_reset_parameters(method, monkeypatch):
    """The model's weight init must reach every mixer's own initialisation (gates, decays ...)."""
    calls = []
    cls = get_method(method)
    original = cls.reset_parameters

    def spy(self, init_std):
        calls.append(self)
        return original(self, init_std)

    monkeypatch.setattr(cls, "reset_parameters", spy)
    model = tiny_model(method)
    assert {id(layer.mixer) for layer in model.model.layers} <= {id(m) for m in calls}
