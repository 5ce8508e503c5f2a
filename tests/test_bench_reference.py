"""The benchmark's transformers reference (``hf-softmax``), its roofline model and its device
abstraction (the CUDA path exercised on CPU through a recording stand-in). Minuscule sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness.bench import device as bench_device
from harness.bench import measure, reference, roofline
from harness.bench.roofline import Cost, Dims, Peaks, ideal_time, phase_cost, roofline_table
from harness.bench.shapes import SHAPES
from harness.bench.workloads import (
    Workload,
    build_config,
    build_model,
    cache_numel,
    declared_state_size,
    param_count,
)
from harness.cli import main as cli_main
from harness.conversion.hf_checkpoint import config_from_hf
from harness.core.hf_cache import cache_kwarg

FAST = ["--decode-tokens", "4", "--min-time-s", "0", "--max-repeats", "2", "--budget-s", "60", "--threads", "1"]
MODEL_SHAPES = sorted(name for name, s in SHAPES.items() if s.kind == "model")


def bench(tmp_path: Path, *args: str) -> int:
    return cli_main(["bench", "--out", str(tmp_path), "--name", "t", *args])


def rows(tmp_path: Path) -> list[dict]:
    return json.loads((tmp_path / "t.json").read_text())["rows"]


# -- the transformers reference ---------------------------------------------------------------
@pytest.mark.parametrize("name", MODEL_SHAPES)
def test_reference_has_the_parameter_count_of_the_suites_softmax_model(name):
    """transformers' GPT-NeoX/LLaMA model of every whole-model shape (built on the meta device: no
    memory) has exactly the parameters of the suite's softmax model of that shape."""
    shape = SHAPES[name]
    meta = torch.device("meta")
    with meta:
        ref = reference.build_reference(shape, 256, meta, torch.float32)
        ours = build_model(shape, "softmax", 256, meta, torch.float32)
    layout = shape.config.get("layout", "neox")
    assert type(ref).__name__ == ("GPTNeoXForCausalLM" if layout == "neox" else "LlamaForCausalLM")
    assert ref.config._attn_implementation == "sdpa"
    assert param_count(ref) == param_count(ours)
    # the config is the inverse of the converter's: translating it back gives the suite's config
    back = config_from_hf(reference.hf_config(shape, 256), "softmax")
    want = build_config(shape, "softmax", 256)
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim"):
        assert getattr(back, key) == getattr(want, key), key
    for key in ("intermediate_size", "partial_rotary_factor", "rope_theta", "norm_eps", "hidden_act"):
        assert getattr(back, key) == getattr(want, key), key
    for key in ("attention_bias", "mlp_bias", "tie_word_embeddings", "vocab_size", "layout"):
        assert getattr(back, key) == getattr(want, key), key


def test_reference_decodes_with_dynamic_cache_whose_size_is_declared():
    shape = SHAPES["tiny-llama"]  # grouped-query attention: kv heads < heads
    model = build_model(shape, "hf-softmax", 64, torch.device("cpu"), torch.float32)
    assert cache_kwarg(model) in ("past_key_values", "cache")
    w = Workload(model, shape, "hf-softmax", 16, 2, 3, torch.device("cpu"), torch.float32)
    for phase in ("prefill", "decode"):
        p = w.phase(phase)
        p.reset()
        p.run()
    assert type(w.prompt_cache).__name__ == "DynamicCache"
    assert cache_numel(w.prompt_cache, 2) == declared_state_size(model, 16, "hf-softmax") == 2 * 16 * 2 * 2 * 32
    assert cache_numel(w.decoded_cache(), 2) == declared_state_size(model, 19, "hf-softmax")


def test_reference_in_a_sweep_is_labelled_and_compared(tmp_path):
    args = ["--methods", "softmax,hf-softmax,dijiang", "--shapes", "tiny", "--lengths", "32,64", "--no-plot"]
    assert bench(tmp_path, *args, *FAST, "--peak-tflops", "0.05", "--peak-bandwidth-gbs", "5") == 0
    got = rows(tmp_path)
    hf = [r for r in got if r["method"] == "hf-softmax"]
    assert len(hf) == 2 * 3 and all(r["status"] == "ok" for r in hf), [r.get("skip_reason") for r in hf]
    assert {r["method_kind"] for r in hf} == {"reference"} and {r["form"] for r in hf} == {"sdpa"}
    softmax = {(r["seq_len"], r["phase"]): r for r in got if r["method"] == "softmax"}
    for r in hf:
        assert r["params"] == softmax[(r["seq_len"], r["phase"])]["params"]
        if r["phase"] != "train":
            assert r["cache_numel"] == r["state_size_declared"] == softmax[(r["seq_len"], r["phase"])]["cache_numel"]
        assert r["peak_flops"] == 5e10 and r["peak_bandwidth"] == 5e9 and r["peak_source"].startswith("given")
    md = (tmp_path / "t.md").read_text()
    assert "| hf-softmax (transformers reference) |" in md and "x hf)" in md
    assert "**roofline**" in md and "fraction of ideal" in md and "crossover with hf-softmax" in md
    summ = json.loads((tmp_path / "t-summary.json").read_text())
    roof = summ["roofline"]
    assert {(x["phase"], x["seq_len"]) for x in roof} == {
        (p, L) for p in ("prefill", "decode", "train") for L in (32, 64)
    }
    for x in roof:
        assert x["fraction_of_ideal"] == pytest.approx(x["ideal_ratio"] / x["measured_ratio"])
        assert x["measured_ratio_hf"] is not None and x["peak_flops"] == 5e10
    sp = [s for s in summ["speedups"] if s["method"] == "dijiang"]
    assert sp and all(s["speedup_hf"] > 0 and s["batch"] == 1 for s in sp)


# -- the roofline model -------------------------------------------------------------------------
#: one block, one head of 4, d = 4, MLP 8, no LM head: small enough to count by hand
HAND = Dims(
    hidden=4, layers=1, heads=1, kv_heads=1, head_dim=4, intermediate=8, vocab=0, gated_mlp=False, lm_head=False
)


def test_roofline_decode_on_a_hand_computed_case():
    """Decoding 1 token after L = 10, batch 1, 4-byte numbers.

    Softmax: weights q/k/v 4 x 12 + o 4 x 4 + MLP 2 x 4 x 8 = 128 -> 256 FLOPs; attention over
    c = 11 keys: 4 x 1 x 4 x 11 = 176 -> 432 FLOPs. Bytes: weights 128 x 4 = 512; activations
    (4 + 12) + (4 + 4) + (4 + 8) + (8 + 4) + core (12 + 4) = 64 -> 256; KV cache read 2 x 4 x 11 = 88
    and one entry written 8 -> 384; total 1152.
    DiJiang (m = 4): weights + gate 4 x 4 = 144 -> 288 FLOPs; features 2 x 2 x 4 x 4 = 64, recurrence
    5 x 4 x 4 = 80 -> 432 FLOPs. Bytes: 576 weights; activations 48 + features 16 + core 16 + gate 8 =
    88 -> 352; state read + written 2 x 16 -> 128; total 1056.
    """
    sm = phase_cost(HAND, "softmax", "decode", 10, 1, decode_tokens=1, dtype_bytes=4)
    dj = phase_cost(HAND, "dijiang", "decode", 10, 1, decode_tokens=1, dtype_bytes=4)
    assert (sm.flops, sm.bytes) == (432, 1152)
    assert (dj.flops, dj.bytes) == (432, 1056)
    slow = Peaks(flops=1000.0, bandwidth=1000.0)  # both memory-bound: 1.152 s and 1.056 s
    assert ideal_time(sm, slow) == pytest.approx(1.152) and ideal_time(dj, slow) == pytest.approx(1.056)
    fast_mem = Peaks(flops=100.0, bandwidth=1e6)  # both compute-bound: 4.32 s each
    assert ideal_time(sm, fast_mem) == ideal_time(dj, fast_mem) == pytest.approx(4.32)
    assert roofline.bound(sm, slow) == "memory" and roofline.bound(sm, fast_mem) == "compute"
    # batch 2 doubles the per-sequence terms, not the weights: 2 x (432 - 0) FLOPs, 512 + 2 x 640 bytes
    sm2 = phase_cost(HAND, "softmax", "decode", 10, 2, decode_tokens=1, dtype_bytes=4)
    assert (sm2.flops, sm2.bytes) == (864, 512 + 2 * 640)


def test_roofline_prefill_and_train_on_a_hand_computed_case():
    """Prefill over L = 2: matrix products 2 x 2 x 128 = 512, causal attention 2 x 1 x 4 x 2 x 3 = 48 ->
    560 FLOPs; bytes: weights 512 + activations 2 x 64 x 4 = 512 + KV cache written 2 x 2 x 4 x 4 = 64 ->
    1088. Training: 3 x the forward without the cache: 1680 FLOPs, 3072 bytes."""
    assert phase_cost(HAND, "softmax", "prefill", 2, 1, dtype_bytes=4) == Cost(560, 1088)
    assert phase_cost(HAND, "softmax", "train", 2, 1, dtype_bytes=4) == Cost(1680, 3072)


def test_roofline_at_a_long_decode_is_the_kv_cache_against_the_state():
    """Pythia-410M, batch 1, decode at 32K: bandwidth-bound; softmax moves its weights (405M minus the
    unread embedding) plus a 6.4 GB KV cache per token, DiJiang its weights and a 3 MB state: ideal
    ratio ~ 0.2."""
    dims = Dims.from_shape(SHAPES["pythia-410m-model"])
    kv = 2 * 32768 * 24 * 16 * 64 * 4
    sm = phase_cost(dims, "softmax", "decode", 32768, 1, decode_tokens=1, dtype_bytes=4)
    dj = phase_cost(dims, "dijiang", "decode", 32768, 1, decode_tokens=1, dtype_bytes=4)
    assert sm.bytes - dj.bytes == pytest.approx(kv, rel=0.3)
    cpu = Peaks(flops=1e11, bandwidth=1e10)
    assert roofline.bound(sm, cpu) == roofline.bound(dj, cpu) == "memory"
    assert 0.1 < ideal_time(dj, cpu) / ideal_time(sm, cpu) < 0.35
    with pytest.raises(ValueError, match="unknown mixer"):
        phase_cost(dims, "mamba", "decode", 16)


def test_roofline_table_from_rows_and_measured_peaks():
    base = dict(shape="tiny", batch=1, status="ok", dtype="float32", decode_tokens=4, run_id="r")
    rows = [
        {**base, "method": m, "phase": "decode", "seq_len": 64, "time_median_s": t, "tokens_per_s": 4 / t}
        for m, t in (("softmax", 0.02), ("dijiang", 0.01), ("hf-softmax", 0.04))
    ]
    assert roofline_table(rows) == []  # no peaks recorded, none given
    (x,) = roofline_table(rows, Peaks(1e10, 1e9))
    dims = Dims.from_shape(SHAPES["tiny"])
    cost = {m: phase_cost(dims, m, "decode", 64, 1, decode_tokens=4) for m in ("softmax", "dijiang")}
    ideal = ideal_time(cost["dijiang"], Peaks(1e10, 1e9)) / ideal_time(cost["softmax"], Peaks(1e10, 1e9))
    assert x["ideal_ratio"] == pytest.approx(ideal)
    assert x["measured_ratio"] == pytest.approx(0.5) and x["measured_ratio_hf"] == pytest.approx(0.25)
    assert x["fraction_of_ideal"] == pytest.approx(ideal / 0.5)
    peaks = roofline.measure_peaks(bench_device.DeviceOps(torch.device("cpu")), torch.float32, repeats=1)
    assert peaks.flops > 1e8 and peaks.bandwidth > 1e8 and peaks.source.startswith("measured")


# -- the device abstraction: the CUDA path without a GPU ------------------------------------------
class RecordingCuda(bench_device.CudaOps):
    """A CUDA stand-in: CUDA's measurement path (allocator statistics, synchronisation) with tensors on
    the CPU; every call recorded, no ``torch.cuda`` call made."""

    def __init__(self, calls: list[str]) -> None:
        super().__init__(torch.device("cpu"))
        self.calls = calls

    def synchronize(self) -> None:
        self.calls.append("synchronize")

    def reset_peak_memory(self) -> None:
        self.calls.append("reset_peak_memory")

    def memory_allocated(self) -> int | None:
        self.calls.append("memory_allocated")
        return 1000

    def max_memory_allocated(self) -> int | None:
        self.calls.append("max_memory_allocated")
        return 5000

    def empty_cache(self) -> None:
        self.calls.append("empty_cache")

    def total_memory(self) -> int | None:
        self.calls.append("total_memory")
        return 80 * 2**30


def _forbid_torch_cuda(monkeypatch):
    for name in ("synchronize", "reset_peak_memory_stats", "memory_allocated", "max_memory_allocated", "empty_cache"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, _n=name, **k: pytest.fail(f"torch.cuda.{_n} called directly"))


def test_cuda_measurement_order_goes_through_the_device_ops(monkeypatch):
    _forbid_torch_cuda(monkeypatch)
    calls: list[str] = []
    ops = RecordingCuda(calls)
    seconds, peak, total = measure.run_with_memory(lambda: calls.append("run"), ops)
    assert calls == [
        "synchronize",  # drain queued work before resetting the counter
        "reset_peak_memory",
        "memory_allocated",
        "synchronize",  # the clock starts on an idle device
        "run",
        "synchronize",  # and stops when the run's kernels finished
        "max_memory_allocated",
    ]
    assert (peak, total) == (4000, 5000) and seconds >= 0
    assert measure.memory_method(ops) == measure.CUDA_MEMORY_METHOD


def test_cuda_ops_call_torch_cuda_with_their_device(monkeypatch):
    seen: list[tuple] = []
    for name, ret in (
        ("synchronize", None),
        ("reset_peak_memory_stats", None),
        ("memory_allocated", 7),
        ("max_memory_allocated", 9),
        ("empty_cache", None),
    ):
        monkeypatch.setattr(torch.cuda, name, lambda *a, _n=name, _r=ret: seen.append((_n, *a)) or _r)

    class Props:
        total_memory = 123

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: Props)
    dev = torch.device("cuda", 1)
    ops = bench_device.device_ops(dev)
    assert isinstance(ops, bench_device.CudaOps) and ops.kind == "cuda" and ops.has_allocator_stats
    ops.synchronize()
    ops.reset_peak_memory()
    assert (ops.memory_allocated(), ops.max_memory_allocated(), ops.total_memory()) == (7, 9, 123)
    ops.empty_cache()
    assert seen == [
        ("synchronize", dev),
        ("reset_peak_memory_stats", dev),
        ("memory_allocated", dev),
        ("max_memory_allocated", dev),
        ("empty_cache",),
    ]
    cpu = bench_device.device_ops(torch.device("cpu"))
    assert cpu.kind == "cpu" and not cpu.has_allocator_stats and cpu.total_memory() is None


def test_sweep_on_the_cuda_path_uses_only_the_device_ops(tmp_path, monkeypatch):
    """The whole sweep with CUDA's measurement path (the stand-in keeps tensors on the CPU): memory from
    the allocator counters, the budget from the device's memory, every timed run synchronised, the
    cache emptied after each point, and no direct ``torch.cuda`` call."""
    _forbid_torch_cuda(monkeypatch)
    calls: list[str] = []
    monkeypatch.setattr(bench_device, "device_ops", lambda device: RecordingCuda(calls))
    args = ["--methods", "softmax", "--shapes", "tiny", "--lengths", "16", "--phases", "prefill,decode", "--no-plot"]
    assert bench(tmp_path, *args, *FAST, "--peak-tflops", "1", "--peak-bandwidth-gbs", "1") == 0
    got = rows(tmp_path)
    assert {r["phase"] for r in got} == {"prefill", "decode"} and all(r["status"] == "ok" for r in got)
    for r in got:
        assert r["mem_method"] == measure.CUDA_MEMORY_METHOD
        assert (r["mem_peak_bytes"], r["mem_peak_total_bytes"]) == (4000, 5000)
        assert r["mem_budget_bytes"] == int(0.9 * 80 * 2**30)
        assert r["repeats"] >= 1
    runs = sum(r["repeats"] + r["warmup_runs"] for r in got)
    assert calls.count("synchronize") >= 2 * runs + 2  # both sides of every run, plus before each reset
    assert calls.count("reset_peak_memory") == calls.count("max_memory_allocated") == 2  # one warm-up per phase
    assert "empty_cache" in calls and "total_memory" in calls


def test_device_cuda_without_cuda_is_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench(tmp_path, "--device", "cuda", "--methods", "softmax", "--shapes", "tiny", "--lengths", "16") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("bench: --device cuda") and "is_available() is False" in err[0]
    assert not (tmp_path / "t.json").exists()
    with pytest.raises(bench_device.DeviceUnavailableError, match="--device cpu"):
        bench_device.resolve_device("cuda:0")
