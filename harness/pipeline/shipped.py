"""Shipped teachers: check a versioned teacher directory before the pipeline converts it.

A profile's teacher may name ``shipped: teachers/<profile>/<name>-v<N>`` (written by
:mod:`harness.pipeline.teachers`). Its ``teacher.json`` records the weights' sha256, the shape and
tokens it was trained with, and the corpus hash. :func:`verify` refuses a directory that disagrees
with the profile, so a table's budget fractions are always fractions of the weights actually used.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from harness.pipeline.spec import Teacher
from harness.util.errors import UserError
from harness.util.provenance import REPO_ROOT


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(t: Teacher, corpus_meta: dict[str, Any] | None = None) -> Path:
    """The shipped teacher's model directory, after checking its weights' sha256, its shape against
    the profile's and (given the profile's corpus metadata) its corpus hash."""
    path = REPO_ROOT / str(t.shipped)
    meta_file = path / "teacher.json"
    if not meta_file.is_file():
        raise UserError(
            f"teacher {t.name!r}: shipped teacher {path} is missing; restore it from git or retrain it with "
            f"`python -m harness teachers --teacher {t.name}`."
        )
    meta = json.loads(meta_file.read_text())
    if sha256_file(path / "model.safetensors") != meta["sha256"]:
        raise UserError(f"teacher {t.name!r}: {path}/model.safetensors does not match its sha256 in teacher.json.")
    if meta["shape"] != dict(t.shape) or int(meta["tokens"]) != int(t.tokens):
        raise UserError(
            f"teacher {t.name!r}: the profile declares shape {dict(t.shape)} and {int(t.tokens)} tokens, but "
            f"{path} was trained as {meta['shape']} on {meta['tokens']} tokens; make them agree."
        )
    if corpus_meta and meta["corpus"].get("hash") != corpus_meta.get("hash"):
        raise UserError(
            f"teacher {t.name!r}: {path} was trained on corpus {meta['corpus'].get('hash')}, this machine's "
            f"corpus is {corpus_meta.get('hash')}; retrain it with `python -m harness teachers`."
        )
    return path
