"""What the notebooks import: the results of one experiment, wherever a run put them.

The notebooks read ``results/<profile>/<experiment>/`` (``SUITE_PROFILE``, default ``tiny``;
``SUITE_RESULTS`` overrides the results folder — the test suite points it at a fresh smoke run).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

RESULTS_DIR = Path(__file__).resolve().parents[2] / "results"


@dataclass
class ExperimentResults:
    name: str
    folder: Path
    meta: dict[str, Any]
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)

    def paper(self, table: str) -> pd.DataFrame:
        """The paper's published table (rows x tasks) from ``results/paper/``."""
        from harness.report.report import paper_wide

        frame = paper_wide(RESULTS_DIR / "paper", table)
        if frame is None:
            raise FileNotFoundError(f"results/paper/{table}.csv is missing")
        return frame


def results_dir() -> Path:
    return Path(os.environ.get("SUITE_RESULTS", RESULTS_DIR))


def profile() -> str:
    return os.environ.get("SUITE_PROFILE", "tiny")


def load(name: str) -> ExperimentResults:
    """Meta data and every CSV table of experiment ``name`` at the current profile."""
    folder = results_dir() / profile() / name
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        raise FileNotFoundError(
            f"{meta_path} not found: run `./reproduce.sh --profile {profile()} --only {name}` first."
        )
    tables = {p.stem: pd.read_csv(p) for p in sorted(folder.glob("*.csv"))}
    return ExperimentResults(name, folder, json.loads(meta_path.read_text()), tables)
