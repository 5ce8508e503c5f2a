"""Reading a run's tables and writing them as Markdown: the small helpers every report section uses."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd


def read_table(path: Path) -> pd.DataFrame | None:
    """A CSV a run wrote, or None where the run did not write it."""
    return pd.read_csv(path) if path.exists() else None


def md_table(frame: pd.DataFrame) -> str:
    """``frame`` as a Markdown table (no index; 4 significant digits)."""
    return frame.to_markdown(index=False, floatfmt=".4g")


def value_cell(value: Any, se: Any = None, digits: int = 3, signed: bool = False) -> str:
    """``value`` (± ``se`` where given) to ``digits`` decimals, with its sign where ``signed`` (a
    difference); empty for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    shown = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    if se is None or (isinstance(se, float) and math.isnan(se)):
        return shown
    return f"{shown} ± {se:.{digits}f}"
