"""``python -m harness reproduce``: run the paper's experiments at a profile, write the report, and
compare the run with the committed reference (:mod:`harness.pipeline.reproduce`, where the module
docstring says where everything goes)."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.pipeline import stages
from harness.pipeline.reproduce import reproduce
from harness.pipeline.spec import profile_names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m harness reproduce``."""
    parser.add_argument("--profile", default="tiny", choices=profile_names(), help="scale to run at (default: tiny)")
    parser.add_argument("--only", nargs="+", metavar="EXPERIMENT", help="run only these experiments")
    parser.add_argument(
        "--dry-run", action="store_true", help="validate, print the plan and what would run; run nothing"
    )
    parser.add_argument("--force", action="store_true", help="re-run experiments even if up to date")
    parser.add_argument(
        "--results-dir",
        type=Path,
        metavar="DIR",
        default=stages.RUNS_DIR,
        help="write to DIR/<profile>/ (default: runs/, so runs/<profile>/; `--results-dir results` refreshes "
        "the committed reference results/<profile>/)",
    )
    parser.add_argument(
        "--data",
        metavar="PATH",
        help="run on your own corpus (a folder of text files, a .txt/.jsonl file, or hf:NAME[:CONFIG]) instead of "
        "the profile's; written to DIR/data-<corpus hash>/<profile>/ and not compared with the reference",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="print what the experiments print (evaluation, benchmarks, libraries) here instead of into "
        "<run folder>/reproduce.log",
    )
    parser.add_argument(
        "--progress", action="store_true", help="show each training run's progress bar (implies --verbose)"
    )


def main(args: argparse.Namespace) -> int:
    """Validate, run (or ``--dry-run``), report and compare (:func:`harness.pipeline.reproduce.reproduce`)."""
    return reproduce(
        args.profile,
        args.only,
        dry_run=args.dry_run,
        force=args.force,
        results_dir=args.results_dir,
        data=args.data,
        verbose=args.verbose,
        progress=args.progress,
    )
