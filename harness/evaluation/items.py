"""Per-item results: every document's score, packed into one short string per result row.

lm-eval's ``log_samples`` gives every document's score. :func:`encode_items` packs one task's
per-document results into one string (column ``items`` of each result row): an 8-hex hash of the
document ids, then ``0``/``1`` per document for a right/wrong metric (``acc``), or
``log-likelihood/bytes`` pairs for bits per byte. Two models' strings pair up when their hashes
match (the same documents, in the same order); :mod:`harness.report.stats` tests differences on them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def items_key(doc_ids: Sequence[Any]) -> str:
    """An 8-hex hash of an ordered list of document ids."""
    return hashlib.sha256(",".join(map(str, doc_ids)).encode()).hexdigest()[:8]


def encode_items(doc_ids: Sequence[Any], values: Sequence[Any]) -> str | None:
    """``"<key>:<payload>"``: 0/1 per document (binary metrics), or ``ll/bytes;...`` pairs (a metric
    lm-eval aggregates as a ratio, such as bits per byte). None for anything else."""
    if not len(doc_ids) or len(doc_ids) != len(values):
        return None
    key = items_key(doc_ids)
    if all(isinstance(v, (tuple, list)) and len(v) == 2 for v in values):
        return Items(key, np.array([[float(a), float(b)] for a, b in values])).encode()
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError):
        return None
    if all(v in (0.0, 1.0) for v in floats):
        return Items(key, np.array(floats)).encode()
    return None


@dataclass(frozen=True)
class Items:
    """Decoded per-item results: the documents' key and one row per document (shape ``(n,)`` for
    0/1 scores, ``(n, 2)`` for ratio pairs)."""

    key: str
    values: np.ndarray

    @property
    def ratio(self) -> bool:
        return self.values.ndim == 2

    @property
    def n(self) -> int:
        return int(self.values.shape[0])

    def encode(self) -> str:
        """The string form (:func:`encode_items`)."""
        if self.ratio:
            return self.key + ":" + ";".join(f"{a:.6g}/{b:.6g}" for a, b in self.values)
        return self.key + ":" + "".join("1" if v else "0" for v in self.values)


def decode_items(text: Any) -> Items | None:
    """The inverse of :func:`encode_items` (None for a missing or malformed string)."""
    if not isinstance(text, str) or ":" not in text:
        return None
    key, payload = text.split(":", 1)
    if "/" in payload:
        pairs = [p.split("/") for p in payload.split(";") if p]
        return Items(key, np.array([[float(a), float(b)] for a, b in pairs]))
    if payload and set(payload) <= {"0", "1"}:
        return Items(key, np.frombuffer(payload.encode(), dtype=np.uint8) - ord("0"))
    return None


def concat_items(parts: Sequence[Items]) -> Items | None:
    """Items of several tasks (e.g. a group's subtasks) as one set, in the given order."""
    if not parts or any(p is None for p in parts):
        return None
    return Items(items_key([p.key for p in parts]), np.concatenate([p.values for p in parts]))
