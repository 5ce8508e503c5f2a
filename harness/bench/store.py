"""The results file of a sweep: one JSON document of rows, rewritten atomically after every point,
so an interrupted sweep keeps what it measured and a re-run continues from there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.util.io import atomic_write_json

FORMAT = "harness-bench/1"
KEY_FIELDS: tuple[str, ...] = ("settings_key", "shape", "method", "seq_len", "phase")


class ResultsFileError(ValueError):
    """A results file that cannot be read back (it is never overwritten)."""


def row_key(row: dict[str, Any]) -> tuple:
    """The identity of a measurement: same settings, shape, method, length and phase."""
    return tuple(row[k] for k in KEY_FIELDS)


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
        rows = sorted(self.rows.values(), key=lambda r: tuple(str(r[k]).zfill(8) for k in KEY_FIELDS))
        atomic_write_json(self.path, {"format": FORMAT, "rows": rows})

    def all_rows(self) -> list[dict[str, Any]]:
        return list(self.rows.values())
