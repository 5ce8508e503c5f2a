"""``python -m harness compare A B``: do two runs of a profile agree up to seed noise?

A reproduction is only useful if a second run gives the same tables. This compares the ``table.csv``
of every experiment two results folders share (``A``/``B``: a ``results`` folder holding
``<profile>/``, or the profile folder itself): rows are matched on their key columns (text columns
and :data:`KEY_COLUMNS`), and each metric's largest difference is set against the *seed noise* of
that metric at this profile.

Seed noise comes from the runs themselves, never from a constant: Table 2 trains every method with
several seeds and records the standard deviation across seeds of each metric (``<metric> sd``). A
mean over ``n`` seeds then differs between two runs by about ``sd * sqrt(2 / n)`` and a single run
by ``sd * sqrt(2)``; a difference within ``--k`` (3) of those passes. The median of a metric's
standard deviations over Table 2's methods stands for its noise in the other tables. Metrics with no
such estimate (kernel-approximation errors, MQAR accuracy) are listed with their differences and no
verdict; timings (wall time, tokens/s) depend on the machine and are not compared.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

#: numeric columns that identify a row rather than measure something
KEY_COLUMNS: frozenset[str] = frozenset({"fraction", "seed", "seeds", "d_model", "state_size", "seq_len", "m", "L"})
#: substrings of machine-dependent columns (not compared)
TIMING_MARKERS: tuple[str, ...] = ("wall", "tokens_per_s", "time")
NOISE_TABLE = "table2_methods"


def profile_dir(path: Path, profile: str) -> Path:
    """``path/<profile>`` if it exists, else ``path`` (already a profile folder)."""
    return path / profile if (path / profile).is_dir() else path


def seed_noise(root: Path) -> dict[str, tuple[float, int]]:
    """metric -> (median per-seed standard deviation over Table 2's methods, seeds per mean)."""
    table = root / NOISE_TABLE / "table.csv"
    if not table.exists():
        return {}
    t = pd.read_csv(table)
    n = int(t["seeds"].max()) if "seeds" in t.columns else 1
    return {c[: -len(" sd")]: (float(t[c].median()), n) for c in t.columns if c.endswith(" sd") and t[c].notna().any()}


def compare_tables(
    a: pd.DataFrame, b: pd.DataFrame, noise: dict[str, tuple[float, int]], k: float, table: str
) -> list[dict]:
    """One row per compared metric: largest |A - B| over matched rows, the tolerance and the verdict."""
    keys = [c for c in a.columns if c in b.columns and (not pd.api.types.is_numeric_dtype(a[c]) or c in KEY_COLUMNS)]
    metrics = [
        c
        for c in a.columns
        if c in b.columns
        and c not in keys
        and pd.api.types.is_numeric_dtype(a[c])
        and not c.endswith(" sd")
        and not any(m in c for m in TIMING_MARKERS)
    ]
    merged = a.merge(b, on=keys, suffixes=(" A", " B")) if keys else pd.DataFrame()
    out = []
    for c in metrics:
        diff = (merged[f"{c} A"] - merged[f"{c} B"]).abs() if len(merged) else pd.Series(dtype=float)
        worst = float(diff.max()) if diff.notna().any() else math.nan
        tol = None
        if c in noise and noise[c][0] > 0:
            sd, n = noise[c]
            per_row = n if table == NOISE_TABLE else 1  # Table 2's rows are means over n seeds
            tol = k * sd * math.sqrt(2 / per_row)
        verdict = "no noise estimate" if tol is None else ("within seed noise" if worst <= tol else "DIFFERS")
        out.append(
            {
                "metric": c,
                "rows": len(merged),
                "of": max(len(a), len(b)),
                "max |A-B|": worst,
                "tolerance": tol,
                "verdict": verdict,
            }
        )
    return out


def compare(a_root: Path, b_root: Path, k: float = 3.0) -> tuple[pd.DataFrame, bool]:
    """The comparison of every shared experiment, and whether everything with a noise estimate agrees
    (and every row matched)."""
    noise = seed_noise(a_root) or seed_noise(b_root)
    rows = []
    shared = sorted(
        p.parent.name for p in a_root.glob("*/table.csv") if (b_root / p.parent.name / "table.csv").exists()
    )
    for name in shared:
        a, b = pd.read_csv(a_root / name / "table.csv"), pd.read_csv(b_root / name / "table.csv")
        rows += [{"experiment": name, **r} for r in compare_tables(a, b, noise, k, name)]
    frame = pd.DataFrame(rows)
    ok = bool(len(frame)) and not (frame["verdict"] == "DIFFERS").any() and (frame["rows"] == frame["of"]).all()
    return frame, ok


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", type=Path, help="a results folder (holding <profile>/) or a profile folder")
    parser.add_argument("b", type=Path, help="the other one")
    parser.add_argument("--profile", default="tiny", help="profile folder to look for (default: tiny)")
    parser.add_argument("--k", type=float, default=3.0, help="tolerance in standard deviations (default 3)")
    parser.add_argument("--out", type=Path, help="also write the comparison as markdown here")


def main(args: argparse.Namespace) -> int:
    a, b = profile_dir(args.a, args.profile), profile_dir(args.b, args.profile)
    for p in (a, b):
        if not p.is_dir():
            print(f"compare: {p} is not a folder; pass results/ or results/<profile>/.", file=sys.stderr)
            return 2
    frame, ok = compare(a, b, args.k)
    if frame.empty:
        print(f"compare: {a} and {b} share no experiment with a table.csv.", file=sys.stderr)
        return 2
    text = frame.to_markdown(index=False, floatfmt=".4g")
    verdict = "agree up to seed noise" if ok else "do NOT agree up to seed noise (or rows are missing)"
    report = f"Comparing {a} (A) with {b} (B): the runs {verdict}.\n\n{text}\n"
    print(report)
    if args.out:
        from harness.io import atomic_write_text

        atomic_write_text(args.out, report)
    return 0 if ok else 1
