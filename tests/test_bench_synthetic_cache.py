"""``python -m harness bench --prompt-cache synthetic``: decoding after an L-token prompt from a cache
grown from a short prefill (:mod:`harness.bench.synthetic_cache`). For every registered method and the
transformers reference: the grown cache has the sizes and the length of a real L-token prefill's, and
decoding from it runs at position L; the CLI records the mode and keeps the two modes apart."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from harness.bench import reference
from harness.bench.shapes import get_shape
from harness.bench.sweep import Sweep
from harness.bench.synthetic_cache import CannotSynthesize, grow_cache, reported_length, tile_along
from harness.bench.workloads import Workload, build_model
from harness.cli import main as cli_main
from harness.core import registry
from harness.core.modeling import MixerCache
from harness.layers.linear_mixer import LinearAttentionMixer
from harness.util.tensor_tree import tensors_in

METHODS = [*registry.list_methods(), reference.NAME]
CPU = torch.device("cpu")
PROBE = 16
BATCH = 2
FAST = ["--decode-tokens", "4", "--min-time-s", "0", "--max-repeats", "2", "--budget-s", "60", "--threads", "1"]


def _workload(method: str, seq_len: int) -> Workload:
    shape = get_shape("tiny")
    model = build_model(shape, method, seq_len + 8, CPU, torch.float32)
    return Workload(
        model, shape, method, seq_len, BATCH, 1, CPU, torch.float32, prompt_cache="synthetic", probe_tokens=PROBE
    )


def _layout(cache) -> list[tuple]:
    return [(tuple(t.shape), t.dtype, t.device) for t in tensors_in(cache)]


def _step(w: Workload, cache, position: int | None = None) -> tuple[torch.Tensor, object]:
    """One decoded token (the prompt's last) from a copy of ``cache``: (logits, cache after it)."""
    cache = copy.deepcopy(cache)
    kwargs = {"input_ids": w.ids[:, -1:], w.cache_arg: cache, "use_cache": True}
    if position is not None:
        kwargs["position_ids"] = torch.full((BATCH, 1), position, dtype=torch.long)
    with torch.inference_mode():
        out = w.model(**kwargs)
    return out.logits, cache


def _newest_key(cache) -> torch.Tensor:
    """Layer 0's key of the last cached token (suite softmax or transformers' DynamicCache)."""
    if isinstance(cache, MixerCache):
        return cache.states[0][0][:, :, -1]
    return cache.layers[0].keys[:, :, -1]


# -- every method ------------------------------------------------------------------------------
@pytest.mark.parametrize("seq_len", [48, 100])  # 100: past sliding-window's and window-linear's 64-token window
@pytest.mark.parametrize("method", METHODS)
def test_synthetic_cache_has_the_sizes_and_length_of_a_real_prefill(method, seq_len):
    w = _workload(method, seq_len)
    info = w._prompt_for_decode()
    assert (info.built, info.prefilled_tokens, info.note) == ("synthetic", PROBE, None)
    synthetic = info.fresh()
    real = w._prefill()
    assert _layout(synthetic) == _layout(real)  # every tensor: same shape, dtype, device
    assert reported_length(synthetic) == reported_length(real)
    assert reported_length(real) in (seq_len, None)  # None: Mamba's layers keep no length
    assert sum(t.numel() for t in tensors_in(synthetic)) == w.declared_numel(seq_len)

    logits, after = _step(w, synthetic)
    real_logits, real_after = _step(w, real)
    assert logits.shape == real_logits.shape and torch.isfinite(logits).all()
    assert _layout(after) == _layout(real_after)  # what the next step reads (KV length L + 1, or a fixed state)
    assert reported_length(after) == reported_length(real_after)
    assert reported_length(real_after) in (seq_len + 1, None)


@pytest.mark.parametrize("method", ["softmax", reference.NAME])
def test_softmax_decodes_at_position_L(method):
    """Layer 0's new key depends on the token and its position only: rotary at L, as after a real prefill."""
    L = 48
    w = _workload(method, L)
    synthetic = w._prompt_for_decode().fresh()
    _, after = _step(w, synthetic)
    _, real_after = _step(w, w._prefill())
    _, short_after = _step(w, w._prefill(PROBE))
    assert _newest_key(after).shape == _newest_key(real_after).shape
    torch.testing.assert_close(_newest_key(after), _newest_key(real_after))
    assert not torch.allclose(_newest_key(short_after), _newest_key(real_after))  # position matters


RECURRENT = [
    m
    for m in registry.list_methods()
    if registry.get_method(m).kind == "mixer" and "recurrent" in registry.get_method(m).forms
]


@pytest.mark.parametrize("method", RECURRENT)
def test_a_fixed_state_is_the_short_prefills_continued_at_position_L(method):
    """For a method whose cache is fixed-size floating state (no counter of its own), decoding from the
    synthetic cache is decoding from the short prefill's state at position L."""
    L = 48
    w = _workload(method, L)
    synthetic = w._prompt_for_decode().fresh()
    short = w._prefill(PROBE)
    if not all(t.is_floating_point() for t in tensors_in(short)) or w._prompt_for_decode().seq_tensors_len:
        pytest.skip(f"{method}'s cache holds counters or sequence-indexed tensors (covered above)")
    logits, _ = _step(w, synthetic)
    torch.testing.assert_close(logits, _step(w, short, position=L)[0])
    again = w._prompt_for_decode().fresh()
    assert all(x.data_ptr() != y.data_ptr() for x, y in zip(tensors_in(again), tensors_in(synthetic)))  # a new copy
    if registry.get_method(method).uses_rotary:
        assert not torch.allclose(logits, _step(w, short)[0])  # at position PROBE it differs


# -- the growing rules on plain structures -----------------------------------------------------
def test_grow_cache_rules_counters_tiling_and_saturation():
    def cache(n: int, window: int = 10**9) -> dict:
        kv = torch.arange(float(min(n, window)))[None, :, None].expand(2, -1, 3).contiguous()
        return {"kv": kv, "state": torch.ones(2, 4) * n, "seen": n, "count": torch.full((2,), n), "dims": 3}

    grown, target = grow_cache(cache(7), cache(8), 8, 20, 2 * 20 * 3 + 8 + 2)
    assert target == 20 and grown["kv"].shape == (2, 20, 3) and grown["seen"] == 20 and grown["dims"] == 3
    assert grown["count"].tolist() == [20, 20] and torch.equal(grown["state"], torch.full((2, 4), 8.0))
    assert grown["kv"][0, :, 0].tolist() == [*range(8), *range(8), *range(4)]  # tiled
    # a window of 10 tokens, not yet full after 8: the declared size at 20 says it stops at 10
    grown, target = grow_cache(cache(7, 10), cache(8, 10), 8, 20, 2 * 10 * 3 + 8 + 2)
    assert target == 10 and grown["kv"].shape == (2, 10, 3) and grown["seen"] == 20
    with pytest.raises(CannotSynthesize, match="declares no state size"):
        grow_cache(cache(7), cache(8), 8, 20, None)
    with pytest.raises(CannotSynthesize, match="no length"):
        grow_cache(cache(7), cache(8), 8, 20, 12345)
    with pytest.raises(CannotSynthesize, match="positions"):
        grow_cache({"pos": torch.arange(7)}, {"pos": torch.arange(8)}, 8, 20, 20)
    with pytest.raises(CannotSynthesize, match="not a counter"):
        grow_cache({"x": 3}, {"x": 5}, 8, 20, None)
    with pytest.raises(CannotSynthesize):
        grow_cache({"a": 1}, {"b": 1}, 8, 20, None)
    assert tile_along(torch.tensor([[1.0, 2.0, 3.0]]), 1, 7).tolist() == [[1, 2, 3, 1, 2, 3, 1]]


# -- the command line --------------------------------------------------------------------------
class _Positions(LinearAttentionMixer):
    """Linear attention (elu + 1) that also caches every position it saw: a sequence-indexed integer
    tensor, which cannot be grown by tiling — its decode points fall back to a real prefill."""

    def feature_map(self, x, position_ids, is_query):
        return torch.nn.functional.elu(x) + 1

    def forward(self, x, *, position_ids=None, state=None, form=None, attention_mask=None):
        inner, seen = (None, None) if state is None else state
        y, new = super().forward(x, position_ids=position_ids, state=inner, form=form, attention_mask=attention_mask)
        seen = position_ids if seen is None else torch.cat((seen, position_ids), dim=1)
        return y, (new, seen)

    def state_size(self, seq_len):
        return super().state_size(seq_len) + seq_len


def _rows(tmp_path: Path) -> list[dict]:
    return json.loads((tmp_path / "t.json").read_text())["rows"]


def test_cli_records_the_prompt_cache_and_keeps_the_modes_apart(tmp_path, monkeypatch):
    registry.list_methods()
    monkeypatch.setattr(_Positions, "name", "bench-positions")
    monkeypatch.setitem(registry._REGISTRY, "bench-positions", _Positions)

    def bench(*args: str) -> int:
        return cli_main(["bench", "--out", str(tmp_path), "--name", "t", "--shapes", "tiny", *args, *FAST, "--no-plot"])

    sweep = ["--methods", "softmax,dijiang,bench-positions", "--lengths", "96", "--phases", "prefill,decode"]
    assert bench(*sweep, "--prompt-cache", "synthetic") == 0
    got = _rows(tmp_path)
    assert len(got) == 6 and all(r["status"] == "ok" for r in got)
    decode = {r["method"]: r for r in got if r["phase"] == "decode"}
    assert all(r["prompt_cache"] is None for r in got if r["phase"] == "prefill")
    for m in ("softmax", "dijiang"):
        r = decode[m]
        assert (r["prompt_cache"], r["prompt_cache_built"]) == ("synthetic", "synthetic")
        assert r["prompt_prefilled_tokens"] == 64
        assert r["prompt_cache_note"] is None and r["cache_numel"] == r["state_size_declared"]  # at L + 4
    fell = decode["bench-positions"]
    assert (fell["prompt_cache"], fell["prompt_cache_built"], fell["prompt_prefilled_tokens"]) == (
        "synthetic",
        "prefill",
        96,
    )
    assert "cannot grow" in fell["prompt_cache_note"] and "positions" in fell["prompt_cache_note"]
    md = (tmp_path / "t.md").read_text()
    assert "| prompt_cache (decode) | synthetic |" in md and "from a synthetic prompt cache" in md
    assert "‡ bench-positions, L = 96: cannot grow" in md

    # the other mode is another point: its decode rows are measured, the prefill rows reused
    measured: list[str] = []
    original = Sweep._measure

    def counting(self, w, row, extra):
        measured.append(row["phase"])
        return original(self, w, row, extra)

    monkeypatch.setattr(Sweep, "_measure", counting)
    assert bench(*sweep, "--prompt-cache", "prefill") == 0
    assert measured == ["decode"] * 3
    after = _rows(tmp_path)
    assert len(after) == 9
    assert sorted(r["prompt_cache"] for r in after if r["phase"] == "decode") == ["prefill"] * 3 + ["synthetic"] * 3
    md = (tmp_path / "t.md").read_text()
    assert "| prompt_cache (decode) | prefill |" in md and "synthetic" not in md
    # and the synthetic sweep again measures nothing
    measured.clear()
    assert bench(*sweep, "--prompt-cache", "synthetic") == 0
    assert measured == [] and len(_rows(tmp_path)) == 9
    assert "| prompt_cache (decode) | synthetic |" in (tmp_path / "t.md").read_text()


def test_cli_rejects_an_unknown_prompt_cache_mode(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["bench", "--out", str(tmp_path), "--prompt-cache", "tiled"])
    assert "--prompt-cache" in capsys.readouterr().err
