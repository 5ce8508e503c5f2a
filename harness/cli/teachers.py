"""``python -m harness teachers``: train a teacher shape on doubling token budgets until a doubling
stops paying, and ship the converged one (:mod:`harness.pipeline.teachers`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.pipeline.spec import load_profile
from harness.pipeline.stages import RUNS_DIR, Context
from harness.pipeline.teachers import THRESHOLD, chosen, converge, extend, retrain_command, ship, ship_point
from harness.util.errors import UserError
from harness.util.provenance import REPO_ROOT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m harness teachers``."""
    parser.add_argument("--profile", default="tiny", help="profile whose teacher shape to train (default: tiny)")
    parser.add_argument("--teacher", required=True, help="teacher name in the profile, e.g. tiny-m")
    parser.add_argument("--start-tokens", type=float, default=2**20, help="first budget of the curve (default: 2^20)")
    parser.add_argument("--threshold", type=float, default=THRESHOLD, help="stop when a doubling gains less")
    parser.add_argument("--max-doublings", type=int, default=6, help="give up doubling after this many")
    parser.add_argument("--runs-dir", type=Path, default=None, help="where the curve's runs go (default: runs/)")
    parser.add_argument("--no-ship", action="store_true", help="measure the curve only, ship nothing")
    parser.add_argument(
        "--ship-tokens",
        type=float,
        default=None,
        help="ship the curve's run of this budget instead (a cost choice; recorded, and the report says so)",
    )
    parser.add_argument(
        "--extend",
        action="store_true",
        help="train the next doubling of the shipped teacher's curve and add it to its teacher.json and curve.csv "
        "(the shipped weights and budget stay)",
    )
    parser.add_argument(
        "--ship-point",
        type=float,
        default=None,
        metavar="TOKENS",
        help="ship the shipped teacher's curve point of TOKENS as a teacher of its own (<name>-<T>m-vN), "
        "reusing its run from --runs-dir or retraining it",
    )


def main(args: argparse.Namespace) -> int:
    """Converge the teacher's shape (:func:`~harness.pipeline.teachers.converge`), print the curve and
    ship the chosen run (:func:`~harness.pipeline.teachers.ship`) unless ``--no-ship``."""
    profile = load_profile(args.profile)
    t = profile.teacher(args.teacher)
    if not t.shape:
        raise UserError(f"teacher {t.name!r} is a hub checkpoint; only shapes trained here can be converged.")
    ctx = Context(profile, results_dir=args.runs_dir or RUNS_DIR, progress=True)
    if args.extend:
        p = extend(ctx, t)
        print(
            f"{p.tokens:>12,d} tokens  {p.val_bpb:.4f} validation bits per byte  {p.wall_time_s:7.0f} s  "
            f"(doubling gained {100 * (p.gain or 0):.1f} %; the threshold is {100 * THRESHOLD:g} %)"
        )
        print(f"added to {t.shipped}/teacher.json and curve.csv")
        return 0
    if args.ship_point:
        dest = ship_point(ctx, t, int(args.ship_point))
        print(f"shipped {int(args.ship_point):,d} tokens of {t.name}'s curve: {dest.relative_to(REPO_ROOT)}")
        return 0
    curve, runs, converged = converge(
        ctx, t, start_tokens=int(args.start_tokens), threshold=args.threshold, max_doublings=args.max_doublings
    )
    run = chosen(runs, converged, args.ship_tokens)
    for p in curve:
        gain = "" if p.gain is None else f"  (doubling gained {100 * p.gain:.1f} %)"
        print(f"{p.tokens:>12,d} tokens  {p.val_bpb:.4f} validation bits per byte  {p.wall_time_s:7.0f} s{gain}")
    if converged:
        print(f"converged: doubling {runs[-2].tokens:,d} tokens gained less than {100 * args.threshold:g} %")
    else:
        print(f"NOT converged after {args.max_doublings} doublings: the last one still paid")
    if not args.no_ship:
        retrain = retrain_command(
            args.profile, t.name, int(args.start_tokens), args.max_doublings, args.ship_tokens and int(args.ship_tokens)
        )
        dest = ship(profile, t, run, curve, converged and args.ship_tokens is None, retrain=retrain)
        print(f"shipped {run.tokens:,d} tokens: {dest.relative_to(REPO_ROOT)}")
    return 0
