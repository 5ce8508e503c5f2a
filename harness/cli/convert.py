"""``python -m harness convert CHECKPOINT METHOD OUT``: convert and save (safetensors).

CHECKPOINT is a GPT-NeoX/Pythia or LLaMA checkpoint (a local directory or a hub id), or a model
this suite trained (``mixer_lm``, e.g. a teacher's ``model/`` folder under ``runs/``). Errors
(unknown method, missing or unsupported checkpoint, bad options) are one line and exit status 2
(:mod:`harness.cli`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from harness.util.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint",
        help="local GPT-NeoX/LLaMA checkpoint directory, a hub id (needs network), or a model trained by this suite",
    )
    parser.add_argument("method", help="registered method name (see `python -m harness methods`)")
    parser.add_argument("out", type=Path, help="directory to write the converted model to (must not exist)")
    parser.add_argument("--options", default="{}", help="method options as JSON, e.g. '{\"feature_dim\": 128}'")


def parse_options(text: str) -> dict[str, Any]:
    """``--options``: a JSON object, or a :class:`UserError` that says so."""
    try:
        options = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"--options must be a JSON object, e.g. '{{\"feature_dim\": 128}}' ({err}).") from None
    if not isinstance(options, dict):
        raise UserError(f"--options must be a JSON object, e.g. '{{\"feature_dim\": 128}}', not {text!r}.")
    return options


def convert(checkpoint: str, method: str, options: dict[str, Any]) -> torch.nn.Module:
    """The converted model: our own trained models through :func:`harness.conversion.mixer_swap.convert_model`,
    GPT-NeoX/LLaMA checkpoints through :func:`harness.conversion.hf_checkpoint.convert_checkpoint`."""
    path = Path(checkpoint).expanduser()
    config = path / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("model_type") == "mixer_lm":
        from harness.conversion.mixer_swap import convert_model
        from harness.core.modeling import MixerLMForCausalLM

        return convert_model(MixerLMForCausalLM.from_pretrained(str(path), dtype=torch.float32), method, options)
    from harness.conversion.hf_checkpoint import convert_checkpoint

    return convert_checkpoint(checkpoint, mixer=method, mixer_options=options)


def main(args: argparse.Namespace) -> int:
    from harness.core.registry import get_method

    if args.out.exists():
        raise UserError(f"{args.out} exists; choose a new directory (converted models are never overwritten).")
    get_method(args.method)  # an unknown name fails here, before the checkpoint is loaded
    model = convert(args.checkpoint, args.method, parse_options(args.options))
    tmp = args.out.with_name(args.out.name + ".partial")
    model.save_pretrained(tmp)
    tmp.rename(args.out)
    print(f"wrote {args.out} ({sum(p.numel() for p in model.parameters()):,} parameters, method {args.method})")
    return 0
