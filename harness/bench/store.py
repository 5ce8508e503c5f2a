"""The results file of a sweep: one JSON document of rows, rewritten atomically after every point,
so an interrupted sweep keeps what it measured and a re-run continues from there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.util.io import atomic_write_json

FORMAT = "harness-bench/1"
KEY_FIELDS: tuple[str, ...] = ("settings_key", "shape", "method", "seq_len", "phase", "prompt_cache")


class ResultsFileError(ValueError):
    """A results file that cannot be read back (it is never overwritten)."""


def prompt_cache_of(row: dict[str, Any]) -> str | None:
    """How a decode row's starting cache was asked for (``prefill``/``synthetic``,
    :mod:`harness.bench.synthetic_cache`; ``prefill`` for rows written before the option existed);
    None for the other phases, which use no prompt cache."""
    if row.get("phase") != "decode":
        return None
    return row.get("prompt_cache") or "prefill"


def row_key(row: dict[str, Any]) -> tuple:
    """The identity of a measurement: same settings, shape, method, length, phase and, for decoding,
    prompt-cache mode (so a resumed sweep never takes a decode point of one mode for the other's)."""
    return tuple(prompt_cache_of(row) if k == "prompt_cache" else row[k] for k in KEY_FIELDS)


class ResultStore:
    """Rows of one results file, keyed by :func:`row_key`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows: dict[tuple, dict[str, Any]] = {}
        if self.path.exists():
            try:
                doc = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise ResultsFileError(
                    f"cannot read results file {self.path} ({err}); move it away or pass --fresh "
                    "(which keeps it as a backup) to start a new sweep."
                ) from None
            if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("rows"), list):
                raise ResultsFileError(
                    f"{self.path} is not a {FORMAT} results file; choose another --name or pass --fresh."
                )
            for row in doc["rows"]:
                self.rows[row_key(row)] = row

    def get(self, key: tuple) -> dict[str, Any] | None:
        return self.rows.get(key)

    def put(self, row: dict[str, Any]) -> None:
        """Add or replace the row with the same key, then rewrite the file atomically."""
        self.rows[row_key(row)] = row
        self.save()

    def save(self) -> None:
        rows = sorted(self.rows.values(), key=lambda r: tuple(str(k).zfill(8) for k in row_key(r)))
        atomic_write_json(self.path, {"format": FORMAT, "rows": rows})

    def all_rows(self) -> list[dict[str, Any]]:
        return list(self.rows.values())
