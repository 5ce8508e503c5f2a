"""Hybrid models: a method per layer (``layer_mixers``), under the model-level contract."""

from __future__ import annotations

import pytest
import torch

from harness import MixerLMConfig, MixerLMForCausalLM
from harness.core.hf_cache import output_cache
from harness.core.mixer import MixerConfigError

#: (default method, {layer: override}) — linear layers with softmax kept in some, and the reverse
HYBRIDS = {
    "dijiang+softmax@1": ("dijiang", {1: {"mixer": "softmax"}}),
    "softmax+retnet@0,2": ("softmax", {0: {"mixer": "retnet"}, 2: {"mixer": "retnet"}}),
    "performer+cosformer@2": ("performer", {2: {"mixer": "cosformer"}}),
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def hybrid(name: str, layout: str = "neox") -> MixerLMForCausalLM:
    torch.manual_seed(0)
    mixer, overrides = HYBRIDS[name]
    cfg = MixerLMConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1 if layout == "llama" else None,
        intermediate_size=64,
        layout=layout,
        mixer=mixer,
        layer_mixers=overrides,
        max_position_embeddings=64,
    )
    model = MixerLMForCausalLM(cfg).eval()
    for layer in model.model.layers:
        if hasattr(layer.mixer, "chunk_size"):
            layer.mixer.chunk_size = 8
    return model


@pytest.fixture(params=sorted(HYBRIDS))
def name(request) -> str:
    return request.param


def test_layers_hold_the_configured_methods(name):
    model = hybrid(name)
    mixer, overrides = HYBRIDS[name]
    want = [overrides.get(i, {"mixer": mixer})["mixer"] for i in range(3)]
    assert [layer.mixer.name for layer in model.model.layers] == want == model.config.layer_methods
    assert model.config.is_hybrid


def test_causal(name):
    model = hybrid(name)
    a = torch.randint(0, 64, (2, 30))
    b = a.clone()
    b[:, 20:] = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        la, lb = model(a).logits, model(b).logits
    assert torch.allclose(la[:, :20], lb[:, :20], atol=1e-5)


@pytest.mark.parametrize("layout", ["neox", "llama"])
def test_cached_continuation_and_state_size(name, layout):
    model = hybrid(name, layout)
    ids = torch.randint(0, 64, (2, 29))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :17], use_cache=True)
        cache, logits = output_cache(out), [out.logits]
        assert cache.numel() == 2 * sum(layer.mixer.state_size(17) for layer in model.model.layers)
        for t in range(17, 29):
            out = model(ids[:, t : t + 1], cache=cache, use_cache=True)
            cache = output_cache(out)
            logits.append(out.logits)
    assert rel_err(torch.cat(logits, 1), full) <= 1e-4


def test_forms_agree(name):
    model = hybrid(name)
    ids = torch.randint(0, 64, (2, 21))
    with torch.no_grad():
        ref = model(ids, mixer_form="parallel").logits
        default = model(ids).logits
    assert rel_err(default, ref) <= 1e-4


def test_saved_and_reloaded_generation_equals_forward(name, tmp_path):
    model = hybrid(name)
    model.save_pretrained(tmp_path)
    loaded = MixerLMForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.layer_methods == model.config.layer_methods
    prompt = torch.randint(1, 64, (2, 10))
    out = loaded.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=6,
        do_sample=False,
        pad_token_id=0,
        output_logits=True,
        return_dict_in_generate=True,
    )
    with torch.no_grad():
        full = model(out.sequences).logits[:, 9:15]
    assert rel_err(torch.stack(out.logits, 1), full) <= 1e-4


def test_left_padding_is_ignored(name):
    model = hybrid(name)
    ids = torch.randint(1, 64, (1, 15))
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), ids], 1)
    mask = (torch.arange(20) >= 5).long()[None]
    with torch.no_grad():
        assert rel_err(model(padded, attention_mask=mask).logits[:, 5:], model(ids).logits) <= 1e-4


def test_list_form_and_bad_overrides():
    cfg = MixerLMConfig(num_hidden_layers=3, mixer=["dijiang", "softmax", "dijiang"])
    assert cfg.mixer == "dijiang" and cfg.layer_methods == ["dijiang", "softmax", "dijiang"]
    same = MixerLMConfig(num_hidden_layers=2, mixer="retnet", layer_mixers={"1": {"mixer": "retnet"}})
    assert same.layer_mixers == {} and not same.is_hybrid
    for bad, match in [
        (dict(mixer=["softmax"]), "one per layer"),
        (dict(layer_mixers={5: {"mixer": "softmax"}}), "layers 0..2"),
        (dict(layer_mixers={"x": {"mixer": "softmax"}}), "not a layer index"),
        (dict(layer_mixers={1: {"method": "softmax"}}), "must be"),
    ]:
        with pytest.raises(MixerConfigError, match=match):
            MixerLMConfig(num_hidden_layers=3, **bad)
