"""``python -m harness convert CHECKPOINT METHOD OUT``: convert and save (safetensors)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.convert import convert_checkpoint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="local GPT-NeoX/LLaMA checkpoint directory, or a hub id (needs network)")
    parser.add_argument("method", help="registered method name (see `python -m harness methods`)")
    parser.add_argument("out", type=Path, help="directory to write the converted model to (must not exist)")
    parser.add_argument("--options", default="{}", help="method options as JSON, e.g. '{\"feature_dim\": 128}'")


def main(args: argparse.Namespace) -> int:
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; choose a new directory (converted models are never overwritten).")
    model = convert_checkpoint(args.checkpoint, mixer=args.method, mixer_options=json.loads(args.options))
    tmp = args.out.with_name(args.out.name + ".partial")
    model.save_pretrained(tmp)
    tmp.rename(args.out)
    print(f"wrote {args.out} ({sum(p.numel() for p in model.parameters()):,} parameters, method {args.method})")
    return 0
