"""Synthetic per-seed results of a ``controls`` experiment (``results.csv``), for report tests whose
answers are known."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def write_results(folder: Path, cells: dict[str, tuple[list[float], list[float]]], teacher: float = 0.9) -> Path:
    """``folder/results.csv``: per method, its seeds' converted and from-scratch bits per byte (paper
    recipe, 1/4 of the teacher's tokens) with their recovery against ``teacher``."""
    folder.mkdir(exist_ok=True)
    rows = [
        dict(
            method=method,
            recipe="paper",
            fraction=0.25,
            seed=seed,
            converted_bpb=c,
            scratch_bpb=x,
            teacher_bpb=teacher,
            recovery=(x - c) / (x - teacher),
        )
        for method, (converted, scratch) in cells.items()
        for seed, (c, x) in enumerate(zip(converted, scratch))
    ]
    pd.DataFrame(rows).to_csv(folder / "results.csv", index=False)
    return folder
