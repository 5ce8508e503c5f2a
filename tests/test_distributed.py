"""The distributed engines run, not just configured (issue #15), on CPU:

* **FSDP** (``configs/accelerate/fsdp.yaml``, FSDP2) on 2 gloo processes through ``accelerate launch``
  (once as 2 "machines" on localhost with the README's multi-node flags): converting a teacher to
  DiJiang gives the per-step losses and final weights of the one-process run (same global batch),
  every parameter is sharded over the two ranks, and a run stopped with ``--stop-after`` and started
  again resumes from its sharded checkpoint to the uninterrupted run's losses and weights. FSDP with
  bf16 (``MixedPrecisionPolicy``, what the GPU config runs) tracks fp32.
* **DeepSpeed ZeRO-2/3**: not run (no ``deepspeed`` package here, and accelerate never selects
  DeepSpeed on CPU); their accelerate configs are loaded the way ``accelerate launch`` loads them,
  turned into accelerate's ``DeepSpeedPlugin``, and checked (stage, no offload, bf16 from the
  training config, every ``"auto"`` filled).
* **bf16 mixed precision** on CPU (autocast) tracks the fp32 run.

Tolerances, in nats on losses of ~4-5.6 (measured values in the asserts' comments):

* FSDP vs one process, fp32: only the order of floating-point sums differs (each rank's half-batch
  mean, then the gradient reduce-scatter) -> 1e-4 absolute per step and on weights (measured ~5e-7).
* Resumed vs uninterrupted FSDP run: same processes, same reductions, exact sharded state and RNG
  -> 1e-6 (measured: identical).
* bf16 vs fp32: bf16 keeps 8 significant bits (relative rounding 2^-8 = 0.39% per operand) but
  matmuls accumulate in fp32 and the weights, AdamW and the loss stay fp32, so the loss should stay
  within about one bf16 rounding of fp32 over the run: per-step relative difference < 1%, mean
  < 0.2% over 20 steps (measured: max 0.036%, mean 0.015%). A run in pure bf16 (no fp32 master
  weights) or one that overflows would exceed it.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.core.modeling import MixerLMConfig, MixerLMForCausalLM
from harness.training.config import TrainConfig
from harness.training.loop import deepspeed_batch_settings, train

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = ROOT / "configs" / "accelerate"
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
STEPS = 6


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("token-cache"))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A tiny softmax MixerLM checkpoint (2 decoder blocks: two FSDP units besides the root)."""
    out = tmp_path_factory.mktemp("teacher") / "model"
    torch.manual_seed(0)
    MixerLMForCausalLM(MixerLMConfig(vocab_size=258, **TINY)).save_pretrained(out)
    return out


def losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1)), "every step logged exactly once"
    return [r["loss"] for r in rows]


def weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "model" / "model.safetensors"))


def max_weight_diff(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)


def conversion_args(teacher: Path, cache_dir: str, out: Path, *extra: str) -> list[str]:
    """``python -m harness train`` flags: convert the teacher to DiJiang, STEPS steps of 4 x 32 tokens."""
    return [
        "--model", str(teacher), "--mixer", "dijiang", "--block-size", "32", "--batch-size", "4",
        "--tokens", str(STEPS * 4 * 32), "--lr", "3e-3", "--warmup", "2", "--eval-blocks", "4",
        "--checkpoint-every", "2", "--cache-dir", cache_dir, "--out", str(out), "--no-progress", *extra,
    ]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch(config_file: str, args: list[str], processes: int = 2, machines: int = 1) -> None:
    """``accelerate launch --config_file configs/accelerate/<config_file> --num_processes N -m harness train ...``
    as a user runs it; with ``machines > 1`` the multi-node command of the README, once per "machine"
    (``--machine_rank``), here all on localhost. No ``--cpu``: with it, accelerate's simple launcher
    starts ONE process (without mpirun); without it, on a machine without GPUs, the processes start
    under torchrun and train on CPU over gloo."""
    port = str(_free_port())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE / config_file),
        "--num_processes", str(processes), "--num_machines", str(machines),
        "--main_process_ip", "127.0.0.1", "--main_process_port", port,
    ]  # fmt: skip
    procs = [
        subprocess.Popen(
            [*launch, "--machine_rank", str(rank), "-m", "harness", "train", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: a failure takes the workers down too
        )
        for rank in range(machines)
    ]
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, out[-2000:] + err[-4000:]
    finally:
        for proc in procs:
            if proc.poll() is None:  # the other machine of a failed run waits for it: stop it
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# -- FSDP ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_process(tmp_path_factory, teacher, cache_dir) -> Path:
    """The reference: the same conversion on one process."""
    from harness.cli import main

    out = tmp_path_factory.mktemp("one") / "run"
    assert main(["train", *conversion_args(teacher, cache_dir, out)]) == 0
    return out


def test_fsdp_on_two_cpu_processes_matches_one_process_and_resumes(tmp_path, teacher, cache_dir, one_process):
    full, resumed = tmp_path / "fsdp-full", tmp_path / "fsdp-resumed"
    # uninterrupted: the README's multi-node command, 2 "machines" x 1 process
    accelerate_launch("fsdp.yaml", conversion_args(teacher, cache_dir, full), processes=2, machines=2)
    summary = json.loads((full / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["distributed_type"] == "FSDP"
    assert summary["mixed_precision"] == "no" and summary["config"]["mixer"] == "dijiang"
    # the same losses and weights as one process (measured: 5e-7 on losses, 4e-7 on weights)
    assert losses(full) == pytest.approx(losses(one_process), abs=1e-4)
    assert max_weight_diff(full, one_process) < 1e-4

    # 1 machine x 2 processes, killed after step 3 (last checkpoint: step 2), started again: resumes
    # from the sharded checkpoint to the uninterrupted run (same ranks and reductions: exactly)
    accelerate_launch("fsdp.yaml", conversion_args(teacher, cache_dir, resumed, "--stop-after", "3"))
    assert not (resumed / "summary.json").exists() and len(losses(resumed)) == 3
    accelerate_launch("fsdp.yaml", conversion_args(teacher, cache_dir, resumed))
    assert losses(resumed) == pytest.approx(losses(full), abs=1e-6)
    assert max_weight_diff(resumed, full) < 1e-6
    assert json.loads((resumed / "summary.json").read_text())["final_loss"] == pytest.approx(
        summary["final_loss"], abs=1e-6
    )

    # sharded, not replicated: each rank wrote its half of every parameter (FSDP2 shards dim 0; buffers
    # such as DiJiang's frozen projection are replicated)
    from torch.distributed.checkpoint import FileSystemReader

    ckpt = resumed / "checkpoints" / "step-00000004"
    assert {p.name for p in ckpt.iterdir()} >= {"pytorch_model_fsdp_0", "optimizer_0", "trainer_state.json"}
    meta = FileSystemReader(str(ckpt / "pytorch_model_fsdp_0")).read_metadata().state_dict_metadata
    params = [name for name, _ in MixerLMForCausalLM.from_pretrained(full / "model").named_parameters()]
    assert len(params) > 20
    for name in params:
        md = meta[f"model.{name}"]
        rows = md.size[0]
        assert [c.offsets[0] for c in md.chunks] == [0, rows // 2] and md.chunks[1].sizes[0] == rows // 2, name


def significant_bits(x: float) -> int:
    """The fewest significant bits that hold ``x`` exactly (bf16 has 8, float32 24)."""
    mantissa, _ = math.frexp(x)
    bits = 0
    while mantissa != int(mantissa):
        mantissa, bits = mantissa * 2, bits + 1
    return bits


def test_fsdp_bf16_on_two_cpu_processes_tracks_fp32(tmp_path, teacher, cache_dir, one_process):
    """fsdp.yaml's bf16: accelerate's FSDP2 MixedPrecisionPolicy (bf16 parameters in forward/backward,
    bf16 gradient reduction and bf16 outputs, logits included; fp32 sharded master weights and AdamW).
    The loss is computed in float32 from the upcast logits (harness.training.objectives), not taken
    from the model's output, which FSDP casts to bf16: the logged loss has float32 precision."""
    out = tmp_path / "fsdp-bf16"
    accelerate_launch("fsdp.yaml", conversion_args(teacher, cache_dir, out, "--mixed-precision", "bf16"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["distributed_type"] == "FSDP" and summary["mixed_precision"] == "bf16"
    bf16, fp32 = losses(out), losses(one_process)
    # a bf16 loss averaged over 2 processes holds in 9 bits; a float32 one needs about 24
    assert min(significant_bits(x) for x in [*bf16, summary["val_loss"]]) > 12, bf16
    rel = [abs(a - b) / b for a, b in zip(bf16, fp32)]
    assert max(rel) > 2e-5  # it really ran in bf16 (fp32 on 2 processes differs by ~1e-7)
    # measured: max 0.014%, mean 0.005% (while the loss was FSDP's bf16 output: max 0.21%, one bf16 step
    # of a loss of ~5 being 1/32 nats = 0.6%)
    assert max(rel) < 0.01, rel
    assert all(torch.isfinite(w).all() and w.dtype == torch.float32 for w in weights(out).values())


# -- DeepSpeed ---------------------------------------------------------------------------------------
def deepspeed_launch_env(config_file: str) -> tuple[dict[str, str], int]:
    """The environment ``accelerate launch --config_file <config_file>`` gives each process (accelerate's
    own parsing and ``prepare_deepspeed_cmd_env``; the launch itself needs the deepspeed package), and
    its process count."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(ACCELERATE / config_file), "-m", "harness", "train"])
    args, defaults, mp_from_config = _validate_launch_command(args)
    assert args.use_deepspeed and args.num_processes == 8 and args.num_machines == 1
    assert not mp_from_config  # precision comes from the training config (accelerate forbids both with a file)
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch_command does
    _, env = prepare_deepspeed_cmd_env(args)
    return env, args.num_processes


@pytest.mark.parametrize(("config_file", "stage"), [("deepspeed_zero2.yaml", 2), ("deepspeed_zero3.yaml", 3)])
def test_deepspeed_configs_load_into_accelerates_plugin(monkeypatch, config_file, stage):
    from accelerate.utils import DeepSpeedPlugin

    env, world = deepspeed_launch_env(config_file)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    json_file = ROOT / env["ACCELERATE_DEEPSPEED_CONFIG_FILE"]  # relative to the repository root
    assert json_file == ACCELERATE / f"ds_zero{stage}.json" and json_file.is_file()
    monkeypatch.chdir(ROOT)
    for key in [k for k in os.environ if k.startswith(("ACCELERATE_", "FSDP_"))]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("ACCELERATE_"):
            monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()  # what Accelerator() builds from that environment

    # ZeRO-2: optimizer states and gradients sharded; ZeRO-3: parameters too; nothing offloaded to CPU/NVMe
    # (harness/scale/memory_plan.py plans GPU memory with everything on the GPUs)
    assert plugin.zero_stage == stage and plugin.hf_ds_config.is_zero3() == (stage == 3)
    assert plugin.offload_optimizer_device == "none" and plugin.offload_param_device == "none"
    assert not plugin.hf_ds_config.is_offload()
    assert plugin.zero3_init_flag is False  # the model is built (or converted) whole, then sharded by prepare
    zero = plugin.deepspeed_config["zero_optimization"]
    assert zero["reduce_bucket_size"] == 5e8 and zero["overlap_comm"] and zero["contiguous_gradients"]
    if stage == 3:  # the final model/ is gathered into one 16-bit checkpoint (accelerate's get_state_dict needs it)
        assert plugin.zero3_save_16bit_model and zero["stage3_prefetch_bucket_size"] == 5e8
    else:
        assert zero["allgather_bucket_size"] == 5e8

    # bf16 follows the training config's mixed_precision (accelerate fills "auto"), no fp16 loss scaling
    assert plugin.deepspeed_config["bf16"] == {"enabled": "auto"}
    plugin.set_mixed_precision("bf16")
    assert plugin.deepspeed_config["bf16"] == {"enabled": True}
    assert plugin.deepspeed_config["fp16"] == {"enabled": False}

    # the rest of "auto" is filled by the training loop from the training config: nothing is left "auto"
    cfg = TrainConfig.from_file(ROOT / "configs" / "train" / "llama2-7b-dijiang.yaml")
    micro = cfg.batch_size // (cfg.grad_accum * world)
    plugin.deepspeed_config.update(deepspeed_batch_settings(cfg, micro))
    autos = [k for k, v in _flatten(plugin.deepspeed_config).items() if v == "auto"]
    assert not autos, autos
    ds = plugin.deepspeed_config
    assert ds["train_batch_size"] == ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * world
    assert ds["gradient_clipping"] == cfg.grad_clip


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


# -- bf16 on CPU --------------------------------------------------------------------------------------
@pytest.mark.parametrize("convert", [False, True], ids=["pretrain-softmax", "convert-dijiang"])
def test_bf16_on_cpu_tracks_fp32(tmp_path, teacher, cache_dir, convert):
    """20 steps with ``mixed_precision: bf16`` (accelerate's CPU autocast) against fp32; the hook shows
    the matmuls really ran in bf16."""
    seen: dict[str, set] = {}

    def record_dtypes(name):
        def callback(info):
            if info.step == 1:
                mlp = info.accelerator.unwrap_model(info.model).model.layers[0].mlp
                mlp.register_forward_hook(lambda mod, args, out: seen.setdefault(name, set()).add(out.dtype))

        return callback

    runs = {}
    for mp in ("no", "bf16"):
        kw = dict(model=str(teacher), mixer="dijiang") if convert else dict(model=dict(TINY))
        cfg = TrainConfig(
            **kw, block_size=32, batch_size=4, tokens=20 * 4 * 32, lr=3e-3, warmup=2, eval_blocks=4,
            checkpoint_every=0, out_dir=str(tmp_path / mp), cache_dir=cache_dir, progress=False, mixed_precision=mp,
        )  # fmt: skip
        runs[mp] = train(cfg, callbacks=[record_dtypes(mp)])
    assert seen == {"no": {torch.float32}, "bf16": {torch.bfloat16}}
    assert runs["bf16"].summary["mixed_precision"] == "bf16"
    fp32, bf16 = losses(tmp_path / "no"), losses(tmp_path / "bf16")
    assert len(bf16) == 20 and sum(bf16[-5:]) < sum(bf16[:5]) - 2.5  # it learns (~5.5 -> ~4.3)
    rel = [abs(a - b) / a for a, b in zip(fp32, bf16)]
    # measured: max 0.017% / 0.036%, mean 0.005% / 0.015% (pretrain / convert)
    assert max(rel) < 0.01 and sum(rel) / len(rel) < 0.002, rel
    assert runs["bf16"].val_loss == pytest.approx(runs["no"].val_loss, rel=0.01)
