"""Command line: ``python -m harness <command> ...``.

Each command lives in its own module exposing ``add_arguments(parser)`` and ``main(args) -> int``;
modules are imported only when their command runs, so one command's optional dependencies never
break another.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "methods": ("harness.cli_methods", "list registered methods and their capabilities"),
    "convert": ("harness.cli_convert", "convert a GPT-NeoX/LLaMA checkpoint to a method"),
    "demo": ("harness.demo", "convert a tiny local checkpoint to every method and generate"),
    "train": ("harness.train", "pretrain, convert-and-finetune, or train from scratch"),
    "eval": ("harness.evaluate", "evaluate a model with lm-eval tasks"),
    "bench": ("harness.bench", "throughput and memory sweeps"),
    "reproduce": ("harness.pipeline.reproduce", "run the paper's experiments at a profile and write the report"),
    "mqar": ("harness.mqar", "multi-query associative recall: accuracy against state size"),
    "compare": ("harness.report.compare", "do two runs of a profile agree up to seed noise?"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == chosen:
            try:
                mod = importlib.import_module(module)
            except ModuleNotFoundError as err:
                parser.error(f"command {name!r} is not available: {err}")
            mod.add_arguments(p)
            p.set_defaults(_run=mod.main)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    return int(args._run(args) or 0)
