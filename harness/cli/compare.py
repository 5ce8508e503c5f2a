"""``python -m harness compare A B``: do two runs of a profile agree up to their noise?
(:func:`harness.report.compare.compare`; prints the comparison and exits 1 if they do not.)"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.report.compare import DIFFERS, UNJUDGED, compare, profile_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The two results folders, the profile, the tolerance and where the markdown goes."""
    parser.add_argument("a", type=Path, help="a results folder (holding <profile>/) or a profile folder")
    parser.add_argument("b", type=Path, help="the other one")
    parser.add_argument("--profile", default="tiny", help="profile folder to look for (default: tiny)")
    parser.add_argument("--k", type=float, default=3.0, help="tolerance in standard errors (default 3)")
    parser.add_argument(
        "--allow-unjudged", action="store_true", help="accept differences in metrics that have no noise estimate"
    )
    parser.add_argument("--out", type=Path, help="also write the comparison as markdown here")


def main(args: argparse.Namespace) -> int:
    """Compare as the flags say: 0 when the runs agree, 1 when not, 2 when there is nothing to compare."""
    a, b = profile_dir(args.a, args.profile), profile_dir(args.b, args.profile)
    for p in (a, b):
        if not p.is_dir():
            print(f"compare: {p} is not a folder; pass results/ or results/<profile>/.", file=sys.stderr)
            return 2
    frame, ok = compare(a, b, args.k, allow_unjudged=args.allow_unjudged)
    if frame.empty:
        print(f"compare: {a} and {b} share no experiment with a table.csv.", file=sys.stderr)
        return 2
    text = frame.to_markdown(index=False, floatfmt=".4g")
    unjudged = frame[frame["verdict"] == UNJUDGED]
    if ok:
        verdict = "agree up to their noise"
    elif (frame["verdict"] == DIFFERS).any() or not (frame["rows"] == frame["of"]).all():
        verdict = "do NOT agree up to their noise (or rows are missing)"
    else:
        verdict = "cannot be shown to agree: some metrics differ and have no noise estimate"
    if len(unjudged):
        which = ", ".join(f"{e}: {m}" for e, m in zip(unjudged["experiment"], unjudged["metric"]))
        verdict += f" ({len(unjudged)} metric(s) unjudged: {which}{'; accepted by --allow-unjudged' if ok else ''})"
    report = f"Comparing {a} (A) with {b} (B): the runs {verdict}.\n\n{text}\n"
    print(report)
    if args.out:
        from harness.util.io import atomic_write_text

        atomic_write_text(args.out, report)
    return 0 if ok else 1
