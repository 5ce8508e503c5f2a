"""``python -m harness methods``: the registered methods and their declared capabilities."""

from __future__ import annotations

import argparse
import json

from harness.core.registry import capabilities, list_methods


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def main(args: argparse.Namespace) -> int:
    rows = [capabilities(m) for m in list_methods()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'method':<18} {'kind':<6} {'forms':<28} {'rotary':<7} {'convertible':<11} paper")
    for r in rows:
        print(
            f"{r['method']:<18} {r['kind']:<6} {','.join(r['forms']):<28} {str(r['uses_rotary']):<7} "
            f"{str(r['convertible']):<11} {r['paper']}"
        )
    return 0
