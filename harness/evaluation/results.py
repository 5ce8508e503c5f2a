"""What an evaluation produces: tidy rows, their metadata, and writing them.

Results are tidy rows — model, method, task, metric, value, stderr, n — plus ``status``, the
document counts (``docs`` in the split, ``examined``, ``skipped``, ``truncated``; see
:mod:`harness.evaluation.selection`), the scored
``split``, ``items`` (per-document results, :func:`harness.evaluation.items.encode_items`, for paired
tests) and the run's metadata (corpus hash, git commit, library versions, date), written atomically
to CSV and JSON.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.evaluation.errors import EvalInputError
from harness.util.io import atomic_write_json, atomic_write_text
from harness.util.provenance import commit_label

#: columns of a result row, in order (metadata columns follow)
ROW_COLUMNS: tuple[str, ...] = ("model", "method", "task", "metric", "value", "stderr", "n")


def run_metadata(corpus_meta: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """Metadata recorded with every row: corpus identity, git commit, library versions, date."""
    import lm_eval
    import torch
    import transformers

    meta: dict[str, Any] = {}
    if corpus_meta:
        meta.update(
            corpus=corpus_meta.get("spec"),
            corpus_hash=corpus_meta.get("hash"),
            corpus_files=corpus_meta.get("files"),
            corpus_bytes=corpus_meta.get("bytes"),
        )
    meta.update(extra)
    meta.update(
        git_commit=commit_label(),
        torch=torch.__version__,
        transformers=transformers.__version__,
        lm_eval=getattr(lm_eval, "__version__", "unknown"),
        python=platform.python_version(),
        date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    return meta


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def tidy_rows(results: dict[str, Any], model: str, method: str) -> list[dict[str, Any]]:
    """lm-eval's ``results`` dict as rows (model, method, task, metric, value, stderr, n).

    A metric computed under a filter other than ``none`` is named ``metric,filter``; ``n`` is the
    number of documents scored (summed over subtasks for a group such as mmlu)."""
    n_samples = results.get("n-samples", {})
    subtasks = results.get("group_subtasks", {})

    def count(task: str) -> int | None:
        if task in n_samples:
            return int(n_samples[task].get("effective", n_samples[task].get("original", 0)))
        if task in subtasks:
            parts = [count(t) for t in subtasks[task]]
            return sum(p for p in parts if p is not None) if parts else None
        return None

    rows = []
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            if key == "alias" or "," not in key or "_stderr," in key:
                continue
            metric, filt = key.split(",", 1)
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            rows.append(
                {
                    "model": model,
                    "method": method,
                    "task": task,
                    "metric": metric if filt == "none" else key,
                    "value": _num(value),
                    "stderr": _num(stderr),
                    "n": count(task),
                }
            )
    samples = results.get("samples") or {}
    if samples:
        from harness.evaluation.items import decode_items

        for row in rows:
            row["items"] = _items(samples, subtasks, row["task"], row["metric"])
            items = decode_items(row["items"])
            if row["stderr"] is None and items is not None and not items.ratio and items.n > 1:
                # lm-eval gives a group no standard error when a subtask has a single item: use the
                # pooled items' (the group's mean weights subtasks by size, so it is their mean)
                row["stderr"] = float(items.values.std(ddof=1) / math.sqrt(items.n))
    return rows


def leaf_names(task: str, subtasks: dict[str, list[str]]) -> list[str]:
    """The leaf tasks under ``task`` (itself when it is no group), subgroups expanded, in name order."""
    if task not in subtasks:
        return [task]
    return [leaf for t in sorted(subtasks[task]) for leaf in leaf_names(t, subtasks)]


def _items(samples: dict[str, list[dict]], subtasks: dict[str, list[str]], task: str, metric: str) -> str | None:
    """The per-document results of one row (lm-eval's logged samples), encoded by
    :func:`harness.evaluation.items.encode_items`; a group's are its subtasks' in name order."""
    from harness.evaluation.items import concat_items, decode_items, encode_items

    name, _, filt = metric.partition(",")
    filt = filt or "none"
    parts = []
    for leaf in leaf_names(task, subtasks):
        logged = [s for s in samples.get(leaf, []) if s.get("filter", "none") == filt]
        logged.sort(key=lambda s: s["doc_id"])
        if not logged or any(name not in s for s in logged):
            return None
        parts.append(encode_items([s["doc_id"] for s in logged], [s[name] for s in logged]))
    if len(parts) == 1:
        return parts[0]
    joined = concat_items([decode_items(p) for p in parts])
    return joined.encode() if joined is not None else None


def write_results(
    rows: Sequence[dict[str, Any]],
    path: str | os.PathLike,
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write tidy rows to ``path`` (``.csv`` or ``.json``) and a JSON twin (rows plus ``extra``, e.g.
    lm-eval's task configs) beside a CSV; atomically. An existing file is an error unless
    ``overwrite`` (results are never silently replaced)."""
    import pandas as pd

    path = Path(path)
    if path.suffix not in (".csv", ".json"):
        raise EvalInputError(f"results path {path} must end in .csv or .json.")
    targets = [path] if path.suffix == ".json" else [path, path.with_suffix(".json")]
    existing = [p for p in targets if p.exists()]
    if existing and not overwrite:
        raise EvalInputError(
            f"{existing[0]} exists; results are never overwritten silently: choose another --out or pass --overwrite."
        )
    frame = pd.DataFrame(list(rows))
    written = []
    if path.suffix == ".csv":
        written.append(atomic_write_text(path, frame.to_csv(index=False)))
    payload = {"rows": json.loads(frame.to_json(orient="records")), **(extra or {})}
    written.append(atomic_write_json(targets[-1], payload))
    return written


@dataclass
class EvalResult:
    """Rows (tidy, with metadata columns), the metadata alone, and lm-eval's raw results."""

    rows: list[dict[str, Any]]
    metadata: dict[str, Any]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    def frame(self) -> Any:
        """The rows as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    def value(self, task: str, metric: str) -> float:
        """One value, e.g. ``result.value("heldout_ppl", "bits_per_byte")``."""
        for r in self.rows:
            if r["task"] == task and r["metric"] == metric:
                return r["value"]
        raise KeyError(f"no row for task {task!r}, metric {metric!r}")

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> list[Path]:
        """Write the rows (see :func:`write_results`)."""
        extra = {
            "metadata": self.metadata,
            "lm_eval": {k: self.raw.get(k) for k in ("configs", "versions", "n-shot", "n-samples", "higher_is_better")},
        }
        return write_results(self.rows, path, extra=json.loads(json.dumps(extra, default=str)), overwrite=overwrite)
