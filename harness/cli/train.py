"""``python -m harness train``: pretrain a teacher, convert-and-finetune, or train from scratch
(:func:`harness.training.loop.train`), configured by a YAML/JSON file and/or one flag per
:class:`~harness.training.config.TrainConfig` field; prints one JSON summary line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import Any

from harness.training.config import FIELD_HELP, TrainConfig, TrainConfigError


def _parse_value(name: str, kind: str, text: str) -> Any:
    """A CLI value for field ``name`` of annotated type ``kind``: numbers for int/float fields (``1e9``
    allowed for token counts), JSON for dicts and pairs, the plain string for names and paths."""
    flag = "--" + name.replace("_", "-")
    try:
        if kind.startswith("int"):
            value = float(text)
            if value != int(value):
                raise ValueError
            return int(value)
        if kind.startswith("float"):
            return float(text)
    except ValueError:
        raise TrainConfigError(f"{flag} needs a number, got {text!r}.") from None
    if kind.startswith("str") or (name == "model" and not text.lstrip().startswith("{")):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise TrainConfigError(f"{flag} must be JSON, got {text!r}.") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags: ``--config FILE`` (YAML/JSON) and one ``--<field>`` per :class:`TrainConfig` field
    (overriding the file); dict/list values as JSON, e.g. ``--model '{"hidden_size": 256}'``."""
    parser.add_argument("--config", help="YAML/JSON file of training config keys (the flags below override it)")
    defaults = TrainConfig.__dataclass_fields__
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = defaults[f.name].default
        if default is dataclasses.MISSING:
            default = defaults[f.name].default_factory()  # type: ignore[misc]
        shown = json.dumps(default) if isinstance(default, (dict, list, tuple)) else default
        text = f"{FIELD_HELP[f.name]} (default: {shown})"
        if f.type in ("bool",):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(), help=text)
    parser.add_argument("--out", dest="out_dir", default=None, help="alias of --out-dir")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of ``--config`` (if given) with the flags that were set overriding it."""
    overrides = {}
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            overrides[f.name] = value if isinstance(value, bool) else _parse_value(f.name, str(f.type), value)
    if args.config:
        return TrainConfig.from_file(args.config, **overrides)
    return TrainConfig.from_dict(overrides)


def check_engine(config: TrainConfig) -> None:
    """Refuse, in one line, an objective the launch cannot run correctly: ``transfer`` calls each
    layer's mixer on its own (LoLCATs' layer-wise attention transfer), outside the wrapped model's
    forward, where FSDP's sharded (DTensor) weights fail and DDP would not synchronise gradients."""
    if config.objective == "transfer" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise TrainConfigError(
            "the transfer objective runs in one process (it calls each layer's mixer outside the wrapped "
            "model, where FSDP's sharded weights fail and DDP does not synchronise gradients); launch this "
            "stage without accelerate launch (it trains the mixers' own parameters only), then the LM stage "
            "on any engine."
        )


def main(args: argparse.Namespace) -> int:
    """Train as the flags say and print one JSON summary line (errors: see :mod:`harness.cli`)."""
    from harness.training.loop import train

    config = config_from_args(args)
    check_engine(config)
    result = train(config)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # one summary line per run, from the main process
    status = "reused finished run" if result.reused else ("finished" if result.finished else "stopped early")
    print(
        json.dumps(
            {
                "status": status,
                "out_dir": result.out_dir,
                "steps": result.steps,
                "tokens": result.tokens,
                "final_loss": result.final_loss,
                "val_loss": result.val_loss,
                "wall_time_s": round(result.wall_time_s, 2),
                "config_hash": result.config_hash,
            }
        )
    )
    return 0
