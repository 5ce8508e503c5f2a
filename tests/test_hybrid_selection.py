"""Hybrid conversions (analyses.hybrid): which layers keep softmax, the hybrid built from a teacher,
and the decode-cost measurement at long contexts (here: short ones, tiny models)."""

from __future__ import annotations

import pytest
import torch

from analyses.hybrid import (
    build_hybrid,
    evenly_spaced,
    measure_decode,
    select_layers,
    top_layers,
    transfer_scores,
)
from harness import MixerLMConfig, MixerLMForCausalLM
from harness.conversion.factory import decode_state_size
from harness.core.hf_cache import output_cache
from harness.core.mixer import MixerConfigError
from harness.util.tensor_tree import tensors_in

#: a linear method whose output path is the teacher's (W_O only) and whose kernel estimates softmax's
PFF = ("pff", {"normalize": True, "output": "linear"})


def teacher_model(layers: int = 4, sharp: int | None = None, layout: str = "neox") -> MixerLMForCausalLM:
    """A random softmax teacher; layer ``sharp`` gets q and k scaled by 40, so its attention is
    near one-hot (low entropy), which a positive-random-feature kernel reproduces badly."""
    torch.manual_seed(0)
    cfg = MixerLMConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1 if layout == "llama" else None,
        intermediate_size=64,
        layout=layout,
        max_position_embeddings=128,
    )
    teacher = MixerLMForCausalLM(cfg).eval()
    if sharp is not None:
        with torch.no_grad():
            proj = teacher.model.layers[sharp].mixer.proj
            proj.q_proj.weight.mul_(40.0)
            proj.k_proj.weight.mul_(40.0)
    return teacher


def held_out(n: int = 2, T: int = 24) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 64, (2, T), generator=g) for _ in range(n)]


@pytest.mark.parametrize(
    ("L", "k", "want"),
    [(4, 2, [1, 3]), (24, 4, [3, 9, 15, 21]), (4, 4, [0, 1, 2, 3]), (5, 0, []), (3, 1, [1]), (6, 3, [1, 3, 5])],
)
def test_evenly_spaced(L, k, want):
    assert evenly_spaced(L, k) == want


def test_bad_choices_are_clear_errors():
    with pytest.raises(MixerConfigError, match="choose 0 <= k"):
        evenly_spaced(4, 5)
    teacher = teacher_model(layers=2)
    with pytest.raises(MixerConfigError, match="do not exist"):
        select_layers(teacher, "index", layers=[2])
    with pytest.raises(MixerConfigError, match="held-out `batches`"):
        select_layers(teacher, "transfer", 1, linear="dijiang")
    with pytest.raises(MixerConfigError, match="unknown layer criterion"):
        select_layers(teacher, "random", 1)
    with pytest.raises(MixerConfigError, match="kept layers get one of"):
        build_hybrid(teacher, "dijiang", [0], keep_mixer="retnet")


def test_top_layers_breaks_ties_towards_earlier_layers():
    assert top_layers([1.0, 3.0, 3.0, 0.5], 2) == [1, 2]
    assert top_layers([1.0, 3.0, 3.0, 0.5], 1) == [1]
    assert top_layers([1.0, 3.0, 0.5, 0.5], 1, highest=False) == [2]


@pytest.mark.parametrize("sharp", [0, 3])
def test_criteria_pick_the_layer_that_is_genuinely_worst(sharp):
    """On a teacher with one sharp layer, both criteria keep it; and keeping it (rather than any other
    layer) is what brings the hybrid's logits closest to the teacher's: it is genuinely the worst
    reproduced layer. Evenly spaced (the control) keeps layer 2 instead."""
    teacher = teacher_model(sharp=sharp)
    batches = held_out()
    by_transfer = select_layers(teacher, "transfer", 1, batches=batches, linear=PFF[0], linear_options=PFF[1])
    by_entropy = select_layers(teacher, "entropy", 1, batches=batches)
    assert by_transfer.kept == by_entropy.kept == [sharp]
    assert select_layers(teacher, "even", 1).kept == [2] != [sharp]
    assert by_transfer.keep == "highest" and by_entropy.keep == "lowest"
    assert len(by_transfer.scores) == len(by_entropy.scores) == 4
    assert by_transfer.detail["linear"] == "pff" and by_transfer.detail["tokens"] == 96

    ids = torch.cat(batches)
    with torch.no_grad():
        ref = teacher(ids).logits
        errors = [
            float(((build_hybrid(teacher, PFF[0], [j], linear_options=PFF[1]).eval()(ids).logits - ref) ** 2).mean())
            for j in range(4)
        ]
    assert min(range(4), key=errors.__getitem__) == sharp, errors


def test_scoring_leaves_no_hooks_on_the_teacher():
    teacher = teacher_model(layers=2)
    select_layers(teacher, "entropy", 1, batches=held_out(1))
    select_layers(teacher, "transfer", 1, batches=held_out(1), linear="cosformer")
    assert all(not layer.mixer._forward_hooks for layer in teacher.model.layers)


@pytest.mark.parametrize("layout", ["neox", "llama"])
def test_hybrid_keeping_every_layer_is_the_teacher(layout):
    teacher = teacher_model(layers=3, layout=layout)
    hybrid = build_hybrid(teacher, "dijiang", [0, 1, 2])
    ids = torch.cat(held_out())
    with torch.no_grad():
        assert torch.equal(hybrid(ids).logits, teacher(ids).logits)
    assert hybrid.config.layer_methods == ["softmax"] * 3


def test_hybrid_kept_layers_are_the_teachers_attention(tmp_path):
    """Kept softmax layers reproduce the teacher's attention exactly (transfer error 0), the others are
    the linear method; the choice is recorded in the config and survives save/load, and generation
    from the reloaded hybrid equals its forward pass."""
    teacher = teacher_model(layers=3)
    batches = held_out()
    selection = select_layers(teacher, "transfer", 2, batches=batches, linear="dijiang")
    hybrid = build_hybrid(teacher, "dijiang", selection).eval()
    kept = selection.kept
    assert hybrid.config.layer_methods == ["softmax" if i in kept else "dijiang" for i in range(3)]
    errors = transfer_scores(teacher, hybrid, batches)
    assert all((errors[i] == 0.0) == (i in kept) for i in range(3)), errors
    record = hybrid.config.layer_selection
    assert record["criterion"] == "transfer" and record["kept"] == kept and len(record["scores"]) == 3
    assert record["keep_mixer"] == "softmax" and record["linear"] == "dijiang"

    hybrid.save_pretrained(tmp_path)
    loaded = MixerLMForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.layer_selection == record and loaded.config.layer_methods == hybrid.config.layer_methods
    prompt = torch.randint(1, 64, (2, 9))
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
        full = hybrid(out.sequences).logits[:, 8:14]
    assert (torch.stack(out.logits, 1) - full).abs().max() <= 1e-4 * full.abs().max()


def test_window_linear_kept_layers_wrap_the_hybrids_linear_method():
    """``keep_mixer='window-linear'`` wraps the hybrid's own linear method and options; with a window
    longer than the batches and W_O-only output it reproduces the teacher's attention there."""
    teacher = teacher_model(layers=3)
    opts = {"output": "linear"}
    hybrid = build_hybrid(
        teacher, "dijiang", [1], linear_options=opts, keep_mixer="window-linear", keep_options={"window": 64}
    )
    mixer = hybrid.model.layers[1].mixer
    assert mixer.name == "window-linear" and mixer.linear.name == "dijiang"
    assert mixer.opts.linear_options == opts and mixer.linear.normalize
    errors = transfer_scores(teacher, hybrid, held_out())
    assert errors[1] < 1e-10 < min(errors[0], errors[2]), errors


# -- decode cost ----------------------------------------------------------------------------------
DECODE_MODELS = {
    "softmax": ("softmax", {}, {}),
    "sliding-window": ("sliding-window", {"window": 8}, {}),
    "window-linear": ("window-linear", {"window": 8}, {}),
    "dijiang": ("dijiang", {}, {}),
    "hybrid": ("dijiang", {}, {1: {"mixer": "softmax"}}),
    "softmax+window-linear": ("window-linear", {"window": 8}, {1: {"mixer": "softmax"}}),
}


def decode_model(name: str) -> MixerLMForCausalLM:
    torch.manual_seed(0)
    mixer, options, overrides = DECODE_MODELS[name]
    cfg = MixerLMConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        mixer=mixer,
        mixer_options=options,
        layer_mixers=overrides,
        max_position_embeddings=256,
    )
    return MixerLMForCausalLM(cfg).eval()


@pytest.mark.parametrize("name", sorted(DECODE_MODELS))
def test_measure_decode_grows_a_cache_of_a_real_prefills_size(name):
    """The decode cache at L is grown from a short prefill (no L-token prefill) and holds what a real
    L-token prefill's cache holds, which is what the layers declare."""
    model = decode_model(name)
    with torch.no_grad():
        real = output_cache(model(torch.randint(0, 64, (2, 40)), use_cache=True))
    (row,) = measure_decode({name: model}, contexts=(40,), batch_size=2, steps=1, repeats=1, probe_tokens=12)
    assert row["prompt_cache_built"] == "synthetic" and row["prompt_cache_note"] is None
    assert row["cache_numel"] == real.numel() // 2 == decode_state_size(model, 40) == row["state_numbers"]
    assert row["state_bytes"] == sum(t.numel() * t.element_size() for t in tensors_in(real)) // 2


def test_measure_decode_records_a_real_prefill_when_the_cache_cannot_be_grown():
    """Softmax and a window still filling at the probe grow to different lengths (L and W), which one
    grown length cannot give: the cache is really prefilled, and the row says so. (L is odd: both
    layers hold the same numbers per position, so for an even L the length (L + W) / 2 would match the
    declared total, a limit of the total-size check.)"""
    model = decode_model("softmax+window-linear")
    (row,) = measure_decode({"m": model}, contexts=(41,), steps=1, repeats=1, probe_tokens=6)
    assert row["prompt_cache_built"] == "prefill" and "cannot grow" in row["prompt_cache_note"]
    assert row["cache_numel"] == decode_state_size(model, 41) == row["state_numbers"]


def test_measure_decode_reports_speed_and_state():
    models = {name: decode_model(name) for name in DECODE_MODELS}
    rows = measure_decode(models, contexts=(16, 48), steps=2, repeats=2, probe_tokens=12)
    assert len(rows) == 2 * len(models)
    state = {(r["model"], r["context"]): r for r in rows}
    for r in rows:
        assert r["tokens_per_s"] > 0 and len(r["times"]) == 2
        assert r["state_numbers"] == r["cache_numel"] and r["state_bytes"] == 4 * r["cache_numel"]
        assert r["context_end"] == r["context"] + 6
        assert r["prompt_cache_built"] == "synthetic", r
    for name in ("sliding-window", "window-linear", "dijiang"):
        assert state[(name, 16)]["state_numbers"] == state[(name, 48)]["state_numbers"], name
    for name in ("softmax", "hybrid", "softmax+window-linear"):
        assert state[(name, 48)]["state_numbers"] > state[(name, 16)]["state_numbers"], name
    assert state[("softmax", 48)]["state_numbers"] == 2 * 2 * 32 * 48  # layers x (K, V) x H d x L
