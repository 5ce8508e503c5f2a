"""Command line: ``python -m harness <command> ...``.

Each command lives in its own module exposing ``add_arguments(parser)`` and ``main(args) -> int``;
modules are imported only when their command runs, so one command's optional dependencies never
break another.

Errors a user can cause (a misspelt method, a missing checkpoint, an unknown experiment, bad YAML,
an unknown config key...) are caught here, once for every command: they print one line,
``error: ...``, and exit with status 2. The types are listed in :data:`USER_ERRORS` by module and
name, so listing one imports nothing; set ``HARNESS_TRACEBACK=1`` to see the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NoReturn

#: command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "methods": ("harness.cli.methods", "list registered methods and their capabilities"),
    "convert": ("harness.cli.convert", "convert a GPT-NeoX/LLaMA checkpoint to a method"),
    "demo": ("harness.cli.demo", "convert a tiny local checkpoint to every method and generate"),
    "train": ("harness.cli.train", "pretrain, convert-and-finetune, or train from scratch"),
    "eval": ("harness.cli.eval", "evaluate a model with lm-eval tasks"),
    "bench": ("harness.bench.cli", "throughput and memory sweeps"),
    "reproduce": ("harness.cli.reproduce", "run the paper's experiments at a profile and write the report"),
    "mqar": ("harness.cli.mqar", "multi-query associative recall: accuracy against state size"),
    "teachers": ("harness.cli.teachers", "train a teacher shape until more tokens stop paying, and ship it"),
    "compare": ("harness.cli.compare", "do two runs of a profile agree up to seed noise?"),
}

#: exceptions that mean "the user asked for something that cannot work" (module, class name): their
#: message names the fix. Only types whose module is already imported are checked (an exception of
#: a type can only have been raised once its module is loaded).
USER_ERRORS: tuple[tuple[str, str], ...] = (
    ("harness.util.errors", "UserError"),
    ("harness.pipeline.spec", "SpecError"),
    ("harness.core.registry", "UnknownMethodError"),
    ("harness.core.mixer", "MixerConfigError"),
    ("harness.conversion.hf_checkpoint", "CheckpointError"),
    ("harness.training.config", "TrainConfigError"),
    ("harness.training.config", "RunExistsError"),
    ("harness.training.config", "TrainingDiverged"),
    ("harness.data.corpus", "CorpusError"),
    ("harness.data.tokenizer", "TokenizerError"),
    ("harness.evaluation.errors", "EvalInputError"),
    ("harness.evaluation.lm_eval_tasks.data", "OfflineDataError"),
    ("analyses.mqar", "MQARConfigError"),
    ("harness.bench.shapes", "UnknownShapeError"),
    ("harness.bench.store", "ResultsFileError"),
)


def user_error_types() -> tuple[type[BaseException], ...]:
    """The :data:`USER_ERRORS` types among the modules imported so far."""
    found = []
    for module, name in USER_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            found.append(cls)
    return tuple(found)


def one_line(err: BaseException) -> str:
    """An exception's message on one line (YAML and other parsers' messages span several)."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(text.split()) or type(err).__name__


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, reporting a bad command line in one line (and exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m harness", description=__doc__.splitlines()[0])
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
    try:
        return int(args._run(args) or 0)
    except Exception as err:
        if not isinstance(err, user_error_types()) or os.environ.get("HARNESS_TRACEBACK"):
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (reproduce and train resume where they stopped when run again).", file=sys.stderr)
        return 130
