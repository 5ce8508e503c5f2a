"""Training: pretraining, kill-and-resume, the 2-process (gloo) path, NaN handling, bad input, and
converting a MixerLM teacher to another mixer."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.conversion.mixer_swap import convert_model
from harness.core.modeling import MixerLMConfig, MixerLMForCausalLM
from harness.core.registry import get_method, list_methods
from harness.data import ByteTokenizer, CorpusError, TokenizerError
from harness.training.config import RunExistsError, TrainConfig, TrainConfigError, TrainingDiverged
from harness.training.loop import train

ROOT = Path(__file__).resolve().parents[1]
TINY = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("token-cache"))


def tiny(out: Path, cache_dir: str, **kw) -> TrainConfig:
    base = dict(
        model=dict(TINY),
        block_size=32,
        batch_size=4,
        tokens=8 * 4 * 32,
        lr=3e-3,
        warmup=2,
        eval_blocks=4,
        checkpoint_every=2,
        out_dir=str(out),
        cache_dir=cache_dir,
        progress=False,
    )
    return TrainConfig(**{**base, **kw})


def losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1)), "every step logged exactly once"
    return [r["loss"] for r in rows]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("runs") / "teacher"
    cfg = tiny(out, cache_dir, tokens=40 * 4 * 32, checkpoint_every=20)
    return cfg, train(cfg)


def test_teacher_pretrains_with_falling_loss_and_is_never_overwritten(teacher_run, cache_dir):
    cfg, res = teacher_run
    out = Path(cfg.out_dir)
    curve = losses(out)
    assert res.finished and res.steps == 40 and len(curve) == 40 and res.tokens == 40 * 128
    assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5 - 1.0, curve  # from ~ln(258)=5.55 down
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config_hash"] == res.config_hash and summary["corpus"]["hash"] and summary["val_loss"] > 0
    row = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert {"step", "loss", "lr", "tokens", "wall_time", "tokens_per_s"} <= set(row)

    again = train(cfg)  # the finished run is reused, not overwritten
    assert again.reused and again.final_loss == res.final_loss
    with pytest.raises(RunExistsError, match="different run"):
        train(tiny(out, cache_dir, tokens=40 * 4 * 32, lr=1e-3))
    model = MixerLMForCausalLM.from_pretrained(res.model_dir)
    assert model.config.mixer == "softmax" and model.config.vocab_size == 258


def test_fine_tuning_a_saved_teacher_starts_from_its_weights(teacher_run, tmp_path, cache_dir):
    _, res = teacher_run
    teacher_curve = losses(Path(res.out_dir))
    train(tiny(tmp_path / "ft", cache_dir, model=res.model_dir, mixer="softmax", tokens=2 * 4 * 32, lr=1e-4))
    assert losses(tmp_path / "ft")[0] < teacher_curve[0] - 1.0  # not a fresh initialisation
    target = next((m for m in ("dijiang", "retnet", "performer") if m in list_methods()), None)
    if target is None:
        pytest.skip("no linear mixer registered to convert to")
    conv = train(tiny(tmp_path / "conv", cache_dir, model=res.model_dir, mixer=target, tokens=2 * 4 * 32))
    assert MixerLMForCausalLM.from_pretrained(conv.model_dir).config.mixer == target
    assert all(math.isfinite(v) for v in losses(tmp_path / "conv"))


class Killed(Exception):
    pass


def test_killed_run_resumes_to_the_same_loss(tmp_path, cache_dir):
    full = train(tiny(tmp_path / "full", cache_dir))

    def kill_at_5(info):
        if info.step == 5:
            raise Killed  # dies after step 5; the last checkpoint is step 4

    with pytest.raises(Killed):
        train(tiny(tmp_path / "run", cache_dir), callbacks=[kill_at_5])
    assert (tmp_path / "run" / "checkpoints" / "step-00000004").is_dir()
    with (tmp_path / "run" / "log.jsonl").open("a") as f:
        f.write('{"step": 6, "lo')  # a kill in the middle of writing a log line
    (tmp_path / "run" / "checkpoints" / "step-00000006.tmp").mkdir()  # ... or a checkpoint
    early = train(tiny(tmp_path / "run", cache_dir, stop_after=1))  # resumes at 4, stops after 5
    assert not early.finished and early.steps == 5
    resumed = train(tiny(tmp_path / "run", cache_dir))
    assert resumed.finished and not resumed.reused and resumed.steps == full.steps
    assert resumed.final_loss == pytest.approx(full.final_loss, abs=1e-6)
    assert losses(tmp_path / "run") == pytest.approx(losses(tmp_path / "full"), abs=1e-6)


def test_gradient_accumulation_matches_one_big_batch(tmp_path, cache_dir):
    one = train(tiny(tmp_path / "a", cache_dir, tokens=4 * 4 * 32, checkpoint_every=0))
    acc = train(tiny(tmp_path / "b", cache_dir, tokens=4 * 4 * 32, checkpoint_every=0, grad_accum=2))
    assert losses(tmp_path / "b") == pytest.approx(losses(tmp_path / "a"), abs=1e-5)
    assert acc.final_loss == pytest.approx(one.final_loss, abs=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_run_matches_one_process(tmp_path, cache_dir):
    steps = 4
    single = tiny(tmp_path / "one", cache_dir, tokens=steps * 4 * 32, checkpoint_every=0)
    train(single)
    model_file = tmp_path / "model.json"
    model_file.write_text(json.dumps(TINY))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), "-m", "harness", "train", "--model", str(model_file),
        "--block-size", "32", "--batch-size", "4", "--tokens", str(steps * 4 * 32), "--lr", "3e-3", "--warmup", "2",
        "--eval-blocks", "4", "--checkpoint-every", "2", "--cache-dir", cache_dir, "--out", str(tmp_path / "two"),
        "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["processes"] == 2
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-5)


def test_nan_loss_stops_clearly_and_keeps_the_last_good_checkpoint(tmp_path, cache_dir):
    def poison(info):
        if info.step == 3:  # corrupt the weights after step 3: step 4's loss is NaN
            with torch.no_grad():
                info.accelerator.unwrap_model(info.model).get_input_embeddings().weight.fill_(float("nan"))

    with pytest.raises(TrainingDiverged, match=r"non-finite loss.*step 4.*step-00000002"):
        train(tiny(tmp_path / "nan", cache_dir), callbacks=[poison])
    good = tmp_path / "nan" / "checkpoints" / "step-00000002"
    assert (good / "trainer_state.json").is_file() and not (tmp_path / "nan" / "summary.json").exists()
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(str(good / "model.safetensors")).values())


def test_bad_input_gives_one_clear_error(tmp_path, cache_dir, capsys):
    with pytest.raises(TokenizerError, match="vocab mismatch.*258"):
        train(tiny(tmp_path / "v", cache_dir, model={**TINY, "vocab_size": 256}))
    with pytest.raises(CorpusError, match="does not exist"):
        train(tiny(tmp_path / "d", cache_dir, data=str(tmp_path / "nowhere")))
    with pytest.raises(CorpusError, match="offline"):
        train(tiny(tmp_path / "h", cache_dir, data="hf:some-org/not-cached"))
    with pytest.raises(TrainConfigError, match="unknown training config key"):
        TrainConfig.from_dict({"learning_rate": 1.0})
    with pytest.raises(TrainConfigError, match="divisible by grad_accum"):
        TrainConfig(batch_size=6, grad_accum=4)
    with pytest.raises(TrainConfigError, match="less than one step"):
        TrainConfig(tokens=10)
    from harness.cli import main

    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c"), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_shipped_configs_parse():
    files = sorted((ROOT / "configs" / "train").glob("*.yaml"))
    assert files
    for f in files:
        cfg = TrainConfig.from_file(f)
        assert cfg.total_steps >= 1 and cfg.lr_at(0) > 0
    accel = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))
    assert {p.stem for p in accel} >= {"ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"}


def test_the_config_hash_covers_every_training_module_and_not_the_command_line(tmp_path, monkeypatch):
    """A run is keyed by the code that trains it: editing the config, the loop, checkpointing, an
    objective, the schedule or the data pipeline gives a new hash (never a stale reuse); the CLI does not."""
    import shutil

    from harness.training import fingerprint

    for pkg in ROOT.iterdir():
        if pkg.is_dir() and (pkg / "__init__.py").is_file() and pkg.name not in fingerprint.NOT_CODE:
            shutil.copytree(pkg, tmp_path / pkg.name, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(fingerprint, "SOURCE_ROOT", tmp_path)
    cfg = TrainConfig(mixer="softmax", tokens=4096, block_size=64, batch_size=8)

    def edited(path: str) -> str:
        before = cfg.config_hash()
        file = tmp_path / path
        file.write_text(file.read_text() + "\n# edited\n")
        return before

    for module in ("config", "loop", "checkpoint", "objectives", "schedules"):
        assert edited(f"harness/training/{module}.py") != cfg.config_hash(), module
    assert edited("harness/data/packing.py") != cfg.config_hash()
    assert edited("harness/cli/train.py") == cfg.config_hash()


def test_lr_schedule_warmup_and_cosine():
    cfg = TrainConfig(tokens=100 * 8 * 256, warmup=10, lr=1e-3, min_lr_ratio=0.1)
    lrs = [cfg.lr_at(s) for s in range(cfg.total_steps)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] == pytest.approx(1e-4)


# -- converting our own teacher ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return MixerLMForCausalLM(MixerLMConfig(vocab_size=258, **TINY, num_key_value_heads=2)).eval()


def test_convert_model_softmax_copy_has_identical_logits(teacher):
    student = convert_model(teacher, "softmax")
    x = torch.tensor([ByteTokenizer().encode("def convert(model):\n    return model\n")])
    with torch.no_grad():
        assert torch.equal(student(x).logits, teacher(x).logits)
        student.lm_head.weight.add_(1.0)  # a copy, not shared storage
        assert not torch.equal(student(x).logits, teacher(x).logits)
    assert student.config.mixer == "softmax" and student.config.converted_from_mixer == "softmax"


@pytest.mark.parametrize(
    "method", [m for m in list_methods() if get_method(m).kind == "mixer" and get_method(m).convertible]
)
def test_convert_model_to_every_convertible_mixer(teacher, method):
    student = convert_model(teacher, method)
    assert student.config.mixer == method
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    for key, value in t_sd.items():
        if ".mixer." not in key:
            assert torch.equal(s_sd[key], value), key
    proj = getattr(student.model.layers[0].mixer, "proj", None)
    if proj is not None:
        assert torch.equal(proj.q_proj.weight, teacher.model.layers[0].mixer.proj.q_proj.weight)
    x = torch.randint(0, 256, (1, 8))
    with torch.no_grad():
        assert torch.isfinite(student(x).logits).all()


def test_a_model_kind_method_trains_from_scratch_matched_to_the_teacher(tmp_path, cache_dir):
    if "mamba" not in list_methods() or get_method("mamba").kind != "model":
        pytest.skip("no method of kind 'model' registered")
    cfg = tiny(tmp_path / "mamba", cache_dir, mixer="mamba", tokens=2 * 4 * 32, checkpoint_every=0, eval_blocks=0)
    res = train(TrainConfig(**{**cfg.to_dict(), "mixer_options": {"num_hidden_layers": 1}}))
    assert res.finished and all(math.isfinite(v) for v in losses(tmp_path / "mamba"))
    assert json.loads((Path(res.model_dir) / "config.json").read_text())["model_type"] == "mamba"
