"""The decoder LM: HF-checkpoint equivalence, conversion to every method, and clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from harness import MixerConfig, MixerConfigError, MixerLMConfig, MixerLMForCausalLM, build_mixer, list_methods
from harness.conversion.hf_checkpoint import CheckpointError, convert_checkpoint
from harness.core.registry import UnknownMethodError, get_method
from tests.hf_checkpoints import make_llama, make_neox


@pytest.mark.parametrize(
    "make,kwargs",
    [
        (make_neox, {"parallel_residual": True}),
        (make_neox, {"parallel_residual": False}),
        (make_llama, {"tied": True}),
        (make_llama, {"tied": False}),
    ],
)
def test_softmax_conversion_reproduces_hf_logits(tmp_path, make, kwargs):
    ref = make(tmp_path, **kwargs)
    ours = convert_checkpoint(tmp_path, mixer="softmax")
    ids = torch.randint(0, 96, (2, 41))
    diff = (ref(ids).logits - ours(ids).logits).abs().max().item()
    assert diff <= 1e-4
    gen_ref = ref.generate(ids[:, :9], max_new_tokens=10, do_sample=False, pad_token_id=0)
    gen_ours = ours.generate(ids[:, :9], max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(gen_ref, gen_ours)


CONVERTIBLE = [m for m in list_methods() if get_method(m).convertible and get_method(m).kind == "mixer"]


@pytest.mark.parametrize("method", CONVERTIBLE)
def test_every_convertible_method_takes_the_teacher_weights(tmp_path, method):
    ref = make_neox(tmp_path)
    model = convert_checkpoint(tmp_path, mixer=method)
    w = ref.gpt_neox.layers[1].attention.query_key_value.weight.view(4, 3, 16, 64)
    mixer = model.model.layers[1].mixer
    assert torch.equal(mixer.proj.k_proj.weight, w[:, 1].reshape(64, 64))
    assert torch.equal(model.model.embed_tokens.weight, ref.gpt_neox.embed_in.weight)
    out = model(torch.randint(0, 96, (1, 20))).logits
    assert torch.isfinite(out).all()


def test_auto_classes_know_the_model(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    model = MixerLMForCausalLM(MixerLMConfig(hidden_size=32, num_attention_heads=2))
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "mixer_lm"
    assert isinstance(AutoConfig.from_pretrained(tmp_path), MixerLMConfig)
    assert isinstance(AutoModelForCausalLM.from_pretrained(tmp_path), MixerLMForCausalLM)


def test_left_padded_batch_generation_matches_single(tmp_path):
    model = MixerLMForCausalLM(MixerLMConfig(vocab_size=64, hidden_size=32, num_attention_heads=2)).eval()
    a = torch.randint(1, 64, (1, 12))
    b = torch.randint(1, 64, (1, 7))
    batch = torch.cat([a, torch.cat([torch.zeros(1, 5, dtype=torch.long), b], 1)])
    mask = (torch.arange(12)[None] >= torch.tensor([[0], [5]])).long()
    gen = model.generate(batch, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    single = model.generate(b, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(gen[1, 12:], single[0, 7:])


# -- clear errors -------------------------------------------------------------------------------


def test_unknown_method_lists_known_ones():
    with pytest.raises(UnknownMethodError, match="registered methods: .*softmax"):
        MixerLMForCausalLM(MixerLMConfig(hidden_size=32, num_attention_heads=2, mixer="no-such-method"))


def test_unknown_option_is_an_error():
    with pytest.raises(MixerConfigError, match="takes no options|unknown option"):
        build_mixer("softmax", MixerConfig(d_model=32, n_heads=2, options={"bogus": 1}))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"d_model": 30, "n_heads": 4}, "not divisible"),
        ({"d_model": 32, "n_heads": 4, "n_kv_heads": 3}, "multiple of n_kv_heads"),
        ({"d_model": 32, "n_heads": 2, "rotary_dim": 5}, "rotary_dim"),
    ],
)
def test_bad_dims_are_explained(kwargs, match):
    with pytest.raises(MixerConfigError, match=match):
        MixerConfig(**kwargs)


def test_bad_layout_is_explained():
    with pytest.raises(MixerConfigError, match="unknown layout"):
        MixerLMConfig(layout="gpt2")


def test_unsupported_architecture_is_explained(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="unsupported architecture 'gpt2'"):
        convert_checkpoint(tmp_path)


def test_missing_checkpoint_is_explained(tmp_path):
    with pytest.raises(CheckpointError, match="not a local directory"):
        convert_checkpoint(tmp_path / "nowhere")


def test_too_long_sequence_is_explained():
    class Limited(get_method("softmax")):
        def forward(self, x, **kw):
            self.check_length(x.shape[1])
            return super().forward(x, **kw)

    mixer = Limited(MixerConfig(d_model=32, n_heads=2, max_seq_len=16))
    with pytest.raises(MixerConfigError, match="at most max_seq_len=16"):
        mixer(torch.randn(1, 17, 32))
