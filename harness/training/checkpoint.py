"""A training run's output directory: reusing or refusing what is there, resumable checkpoints, the
log kept in step with them, and the final model and summary.

The directory's layout is described in :mod:`harness.training.loop`, which calls these functions.
Each function says which processes call it; those called on every process write on the main
process only and wait for the others where the loop needs it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.training.config import RunExistsError, TrainConfig, TrainResult
from harness.util.io import atomic_write_json, atomic_write_text


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically, keys in their order."""
    atomic_write_json(path, obj, indent=1, sort_keys=False)


# -- reusing, refusing or preparing the directory ---------------------------------------------------
def check_out_dir(config: TrainConfig, out: Path) -> tuple[TrainResult | None, bool]:
    """Check the output dir against this config (read-only, on every process): returns the finished
    identical run for reuse, and whether the dir must be wiped first (``overwrite``); a different
    run is refused."""
    h = config.config_hash()
    cfg_file, summary_file = out / "config.json", out / "summary.json"
    if cfg_file.is_file():
        old = json.loads(cfg_file.read_text())
        same = old.get("config_hash") == h
        if not same and not config.overwrite:
            raise RunExistsError(
                f"{out} holds a different run (config hash {old.get('config_hash')} vs {h}: its config or the "
                "code that trains it differs); choose another out_dir, or pass overwrite=True (--overwrite) to "
                "delete it."
            )
        if same and summary_file.is_file() and not config.overwrite:
            s = json.loads(summary_file.read_text())
            return TrainResult(
                out_dir=str(out),
                config_hash=h,
                finished=True,
                steps=s["steps"],
                tokens=s["tokens"],
                final_loss=s["final_loss"],
                wall_time_s=s["wall_time_s"],
                val_loss=s.get("val_loss"),
                model_dir=s.get("model_dir"),
                reused=True,
                summary=s,
            ), False
        return None, config.overwrite
    return None, False


def start_out_dir(config: TrainConfig, out: Path, config_hash: str) -> None:
    """Create ``out`` (main process only), drop checkpoints interrupted while being written and
    record the config and its hash in ``config.json`` unless a started run already did."""
    out.mkdir(parents=True, exist_ok=True)
    root = out / "checkpoints"
    for stale in root.glob("step-*.tmp") if root.is_dir() else []:
        shutil.rmtree(stale)  # a checkpoint interrupted while being written
    if not (out / "config.json").is_file():
        write_json(out / "config.json", {"config_hash": config_hash, "config": config.to_dict()})


# -- checkpoints ------------------------------------------------------------------------------------
def list_checkpoints(ckpt_root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (renamed from .tmp, with trainer_state.json), oldest first."""
    out = []
    if ckpt_root.is_dir():
        for p in ckpt_root.iterdir():
            if p.name.startswith("step-") and not p.name.endswith(".tmp") and (p / "trainer_state.json").is_file():
                out.append((int(p.name[5:]), p))
    return sorted(out)


def save_checkpoint(
    accelerator: Any, ckpt_root: Path, step: int, keep: int, trainer_state: Callable[[], dict[str, Any]]
) -> None:
    """Save the accelerate state (model, optimizer, RNG) after optimizer step ``step`` (every process):
    written to ``step-N.tmp`` with ``trainer_state()`` as its ``trainer_state.json`` (asked for once
    the state is saved, so its wall time includes the saving), renamed when complete, then all but
    the ``keep`` newest checkpoints removed."""
    tmp = ckpt_root / f"step-{step:08d}.tmp"
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / "trainer_state.json", trainer_state())
        final = ckpt_root / f"step-{step:08d}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in list_checkpoints(ckpt_root)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def load_last_checkpoint(accelerator: Any, ckpt_root: Path) -> tuple[int, float, float | None]:
    """Restore the newest complete checkpoint into the prepared model and optimizer (every process); returns
    ``(optimizer steps done, wall time spent so far, its loss)``, ``(0, 0.0, None)`` when there is none."""
    done = list_checkpoints(ckpt_root)
    if not done:
        return 0, 0.0, None
    step, path = done[-1]
    accelerator.load_state(str(path))
    state = json.loads((path / "trainer_state.json").read_text())
    return step, state["wall_time_s"], state.get("loss")


def _log_step(line: str) -> float:
    """The step of a log line; a line cut short by a kill counts as after every checkpoint."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


def trim_log(log_path: Path, step: int) -> None:
    """Drop the log lines written after optimizer step ``step`` (the checkpoint a run resumes from),
    so every step is logged once however often the run was killed."""
    lines = log_path.read_text().splitlines() if log_path.is_file() else []
    kept = [ln for ln in lines if _log_step(ln) <= step]
    atomic_write_text(log_path, "".join(ln + "\n" for ln in kept))


# -- the finished run -------------------------------------------------------------------------------
def save_final(accelerator: Any, model: Any, tokenizer: Any, out: Path, summary: dict[str, Any]) -> Path:
    """Write the trained model (``save_pretrained``, gathered from every process: call on each) and its tokenizer to
    ``out/model`` through ``out/model.tmp``, then ``summary.json``; returns the model directory."""
    is_main = accelerator.is_main_process
    model_dir, tmp_dir = out / "model", out / "model.tmp"
    unwrapped = accelerator.unwrap_model(model)
    state_dict = accelerator.get_state_dict(model)
    if is_main and tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    accelerator.wait_for_everyone()
    unwrapped.save_pretrained(
        str(tmp_dir), state_dict=state_dict, is_main_process=is_main, save_function=accelerator.save
    )
    accelerator.wait_for_everyone()
    if is_main:
        tokenizer.save_pretrained(str(tmp_dir))
        if model_dir.exists():
            shutil.rmtree(model_dir)
        os.replace(tmp_dir, model_dir)
        write_json(out / "summary.json", summary)
    accelerator.wait_for_everyone()
    return model_dir
