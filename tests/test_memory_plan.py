"""The memory and time plan (:mod:`harness.scale.memory_plan`, issue #15) against measurement.

**How peak memory is measured on CPU.** ``torch`` has no ``max_memory_allocated`` for CPU tensors and
``tracemalloc`` does not see its allocations. The resident-set peak (``VmHWM``, what the benchmark
reports by default) counts everything the process touches — the Python heap, oneDNN scratch
buffers, pages glibc keeps after a free — and so is not what the plan predicts. We measure the
allocator instead, the CPU analogue of ``torch.cuda.max_memory_allocated``: every alloc/free event of
c10's CPU allocator recorded by ``torch.profiler.profile(profile_memory=True)`` over one training
micro-step (forward, backward, AdamW step), and the peak of their running sum (as
:mod:`harness.bench.measure` does on machines without ``/proc``). What is alive before that
micro-step — parameters, the gradients of the previous micro-batch (gradient accumulation), AdamW's
two moments, buffers — is summed from the tensors themselves and added. Deterministic, in process,
and exactly the quantity the plan counts: the tensors' bytes.

**The setting** is the plan's ``ddp`` on one process (plain training), fp32, with two micro-batches
per optimizer step, so the gradients are held while the second micro-batch's activations are
(the plan's assumption). Activation checkpointing is the model's own
(``MixerLMForCausalLM`` blocks are ``GradientCheckpointingLayer``\\ s), measured with and without.
"""

from __future__ import annotations

import os

import pytest
import torch

from harness.bench.shapes import get_shape
from harness.conversion.factory import ModelSpec, build_model
from harness.core.modeling import MixerLMConfig
from harness.core.registry import list_methods
from harness.scale.memory_plan import (
    GIB,
    GPUS,
    STRATEGIES,
    MemoryPlan,
    ModelShape,
    gpu_hours,
    plan_lines,
)
from harness.util.timing import cpu_allocation_peak

TOLERANCE = 0.25  # issue #15: agreement within 25%

#: small shapes where activations dominate (so the activation term is tested, not only the states):
#: (layout, hidden, layers, heads, kv heads, MLP width, micro-batch, block)
SHAPES = {
    "llama-2x128-T512": ("llama", 128, 2, 4, 4, 352, 2, 512),
    "neox-3x128-T256-gqa": ("neox", 128, 3, 4, 2, 512, 2, 256),
}
METHODS = ("softmax", "dijiang", "performer")

#: LLaMA-2-7B, as the benchmark defines it (meta-llama/Llama-2-7b-hf config.json; Touvron et al. 2023)
LLAMA2_7B = {**get_shape("llama2-7b-model").config, "max_position_embeddings": 4096}
LLAMA2_7B = dict(
    vocab_size=32000,
    hidden_size=4096,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    intermediate_size=11008,
    layout="llama",
    max_position_embeddings=4096,
    norm_eps=1e-5,
)


def _config(shape: str, method: str) -> tuple[MixerLMConfig, int, int]:
    layout, hidden, layers, heads, kv, inter, batch, block = SHAPES[shape]
    cfg = MixerLMConfig(
        vocab_size=256,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=inter,
        layout=layout,
        mixer=method,
        max_position_embeddings=1024,
    )
    return cfg, batch, block


def _nbytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def measured_peak(cfg: MixerLMConfig, method: str, batch: int, block: int, checkpointing: bool) -> int:
    """Peak bytes of the second micro-batch of an optimizer step (forward, backward, AdamW step), see
    the module docstring. AdamW's states and the first micro-batch's gradients do not depend on the
    batch, so a tiny batch makes them (one measured forward/backward at full size keeps this fast)."""
    from torch.profiler import ProfilerActivity, profile

    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    torch.manual_seed(0)
    model = build_model(ModelSpec(method, config=cfg)).train()
    if checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)

    def micro(b: int, t: int) -> None:
        ids = torch.randint(0, cfg.vocab_size, (b, t), generator=gen)
        model(input_ids=ids, labels=ids).loss.backward()

    micro(1, 8)
    opt.step()  # AdamW's moments exist from here on
    opt.zero_grad(set_to_none=True)
    micro(1, 8)  # the first micro-batch of the step: its gradients stay while the second runs
    params = list(model.parameters())
    states = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    before = _nbytes(params) + _nbytes([p.grad for p in params if p.grad is not None])
    before += _nbytes(states) + _nbytes(list(model.buffers()))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        micro(batch, block)
        opt.step()
    return before + cpu_allocation_peak(prof)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_predicted_peak_memory_matches_measured_on_cpu(shape: str, method: str) -> None:
    cfg, batch, block = _config(shape, method)
    plan = MemoryPlan.for_config(cfg, method, block_size=block, micro_batch=batch, grad_accum=2, precision="fp32")
    assert plan.shape.exact
    for checkpointing in (False, True):
        measured = measured_peak(cfg, method, batch, block, checkpointing)
        est = plan.estimate("ddp", checkpointing)
        ratio = est.total / measured
        assert abs(ratio - 1) <= TOLERANCE, (shape, method, checkpointing, est, measured, ratio)
        # the test can fail: without the activation term the same prediction is far off
        without = (est.total - est.activations) / measured
        assert abs(without - 1) > TOLERANCE, (shape, method, checkpointing, without)
        if checkpointing:  # and checkpointing is modelled: the plan without it would be far off too
            assert plan.estimate("ddp", False).total / measured > 1 + TOLERANCE


def test_every_registered_method_is_counted_exactly_on_the_meta_device() -> None:
    cfg = MixerLMConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64
    )
    for method in list_methods():
        shape = ModelShape.from_config(cfg, method)
        real = build_model(ModelSpec(method, config=cfg))
        assert shape.n_params == sum(p.numel() for p in real.parameters()), method
        assert shape.n_trainable == sum(p.numel() for p in real.parameters() if p.requires_grad), method
        assert shape.num_layers == len(shape.layers) > 0
        plan = MemoryPlan(shape, block_size=64, micro_batch=2)
        for est in plan.estimates():
            assert est.total > est.activations > 0, (method, est)


@pytest.fixture(scope="module")
def llama7b() -> dict[str, ModelShape]:
    return {m: ModelShape.from_config(MixerLMConfig(mixer=m, **LLAMA2_7B), m) for m in ("softmax", "dijiang")}


def test_llama2_7b_plan_is_plausible(llama7b: dict[str, ModelShape]) -> None:
    soft, dj = llama7b["softmax"], llama7b["dijiang"]
    assert abs(soft.n_params / 6.74e9 - 1) < 0.01  # LLaMA-2-7B: 6.74B parameters
    # DiJiang adds RetNet's gate W_G (D x D per layer) and small per-head weights
    assert 0 < dj.n_params - soft.n_params - 32 * 4096 * 4096 < 1e6
    for shape in (soft, dj):
        plan = MemoryPlan(shape, block_size=4096, micro_batch=1, grad_accum=4, world_size=8, precision="bf16-mixed")
        ddp, zero2, fsdp, zero3 = (plan.estimate(s) for s in STRATEGIES)
        # 16 bytes of model states per parameter, replicated under DDP (ZeRO, Rajbhandari et al. 2020)
        assert ddp.model_states == 16 * shape.n_params
        assert fsdp.model_states == pytest.approx(ddp.model_states / 8, rel=1e-6)
        assert fsdp.total < zero2.total < ddp.total
        assert zero3.model_states == pytest.approx(fsdp.model_states, rel=1e-9)
        assert zero3.total == pytest.approx(fsdp.total, rel=0.05)
        assert plan.estimate("fsdp", True).total < fsdp.total  # checkpointing saves memory
        assert 5 * GIB < fsdp.activations < 60 * GIB  # a few GiB per layer-stack at 4096 tokens
        gpu = GPUS["a100-80gb"].memory
        assert plan.min_gpus(gpu, "ddp") is None  # 7B x 16 bytes does not fit in 80 GiB, replicated
        assert plan.min_gpus(gpu, "fsdp", checkpointing=True) <= plan.min_gpus(gpu, "fsdp") <= 8
    # linear attention: fewer attention FLOPs than softmax at 4096 tokens
    soft_attn = soft.flops_per_token(4096) - 6 * (soft.n_params - soft.embedding_params)
    dj_attn = dj.flops_per_token(4096) - 6 * (dj.n_params - dj.embedding_params)
    assert 0 < dj_attn < soft_attn


def test_gpu_hours_of_llama2_7b_match_the_published_budget(llama7b: dict[str, ModelShape]) -> None:
    """Touvron et al. 2023 (Table 2): LLaMA-2-7B took 184,320 A100-80GB GPU-hours for 2T tokens; the
    plan's 40% MFU assumption (not fitted to it) lands within 25%."""
    plan = MemoryPlan(llama7b["softmax"], block_size=4096, micro_batch=1, precision="bf16-mixed")
    hours = plan.gpu_hours(2e12, GPUS["a100-80gb"].bf16_flops)
    assert abs(hours / 184_320 - 1) < TOLERANCE
    assert plan.gpu_hours(2e12, GPUS["a100-80gb"].bf16_flops, checkpointing=True) == pytest.approx(hours * 4 / 3)
    assert gpu_hours(1e9, 1e9, 1e12, mfu=0.5) == pytest.approx(1e18 / 0.5e12 / 3600)


def test_plan_lines_for_a_dry_run() -> None:
    cfg = dict(LLAMA2_7B, mixer="dijiang")
    lines = plan_lines(cfg, "dijiang", tokens=2e12, block_size=4096, micro_batch=1, grad_accum=4, world_size=8)
    assert "dijiang" in lines[0] and "7.28B" in lines[0]
    rows = [line.split() for line in lines[2:-1]]
    assert [(r[0], r[1]) for r in rows] == [(s, c) for s in STRATEGIES for c in ("no", "yes")]
    assert all(len(r) == 10 for r in rows)
    assert "GPU-h" in lines[-1]
