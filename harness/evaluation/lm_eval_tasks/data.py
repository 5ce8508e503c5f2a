"""Deterministic local data for the suite's offline lm-eval tasks, generated from a corpus's
held-out (test) split and cached on disk by corpus hash.

Two jsonl files are written into ``<cache>/lm_eval/<corpus hash>-<spec hash>-v<version>/``:

* ``heldout_ppl.jsonl`` — one row per held-out document ``{"id", "source", "text"}``, scored by
  lm-eval's ``loglikelihood_rolling`` (word perplexity, byte perplexity, bits per byte). Bits per
  byte, ``-sum log p / (n_bytes ln 2)``, is normalised by UTF-8 bytes, not tokens, so it compares
  models with different tokenizers; with the suite's byte tokenizer every token is one byte.
* ``next_line.jsonl`` — multiple choice ``{"id", "source", "line", "context", "choices", "label"}``:
  the context is the lines preceding line ``line`` of a held-out file; the choices are its true
  next line and ``n_choices - 1`` lines drawn from *other* held-out files, re-indented to the true
  line's indentation so indentation alone does not give the answer away. Distractors are drawn
  from all eligible line occurrences (not unique lines), i.e. from the same distribution as the
  true lines, so length alone does not give it away either. Examples, distractors
  and answer positions come from a seeded :class:`random.Random` (string seeds hash with SHA-512, so
  the files are identical across runs, processes and machines for the same corpus).

A ``manifest.json`` (row counts, SHA-256 of each file, the spec and the corpus metadata) is written
last; a folder without it is regenerated. Every file is written atomically (temp file + rename).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.evaluation.lm_eval_tasks import DATA_DIR_KEY
from harness.util.io import atomic_write_json, atomic_write_text

#: bumped whenever the generated rows change for the same corpus and spec (part of the cache key)
GENERATOR_VERSION = 2
FILES: dict[str, str] = {"heldout_ppl": "heldout_ppl.jsonl", "next_line": "next_line.jsonl"}


class OfflineDataError(ValueError):
    """The offline task data cannot be generated or found."""


@dataclass(frozen=True)
class OfflineDataSpec:
    """What to generate. Changing any field gives a different cache folder.

    ``ppl_max_docs``/``ppl_max_chars`` cap the perplexity documents (``None``: every held-out
    document, whole); ``next_line_examples`` caps the multiple-choice examples (fewer when the split
    has fewer eligible lines). Candidate lines are those with ``min_line_chars..max_line_chars``
    non-blank characters and no trailing whitespace.

    ``task_docs``/``task_seed`` choose the documents of the other tasks scored with this data (the
    bundled paper tasks): a fixed subsample of ``task_docs`` documents per task, drawn in an order
    shuffled with seed ``task_seed`` (None: every document that fits the window; see
    :mod:`harness.evaluation.evaluate`). They select rather than generate, so they are not part of :meth:`key`.
    """

    split: str = "test"
    seed: int = 0
    ppl_max_docs: int | None = None
    ppl_max_chars: int | None = None
    next_line_examples: int = 500
    context_lines: int = 12
    context_chars: int = 512
    n_choices: int = 4
    min_line_chars: int = 8
    max_line_chars: int = 160
    task_docs: int | None = None
    task_seed: int = 0

    def __post_init__(self) -> None:
        if self.n_choices < 2:
            raise OfflineDataError(f"n_choices must be at least 2, got {self.n_choices}.")
        if self.next_line_examples < 1 or self.context_lines < 1 or self.context_chars < 1:
            raise OfflineDataError("next_line_examples, context_lines and context_chars must be positive.")
        if not 1 <= self.min_line_chars <= self.max_line_chars:
            raise OfflineDataError("need 1 <= min_line_chars <= max_line_chars.")
        if self.task_docs is not None and self.task_docs < 1:
            raise OfflineDataError(f"task_docs must be a positive number of documents per task, got {self.task_docs}.")

    def key(self) -> str:
        """A short hash of every field that shapes the generated files (part of the cache folder name)."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("task_docs", "task_seed")}
        blob = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


def default_cache_root() -> Path:
    """``$DIJIANG_CACHE`` if set, else ``$XDG_CACHE_HOME/dijiang-suite`` (``~/.cache/dijiang-suite``)."""
    if os.environ.get("DIJIANG_CACHE"):
        return Path(os.environ["DIJIANG_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "dijiang-suite"


def corpus_info(corpus: Any) -> dict[str, Any]:
    """The corpus's metadata (hash, file count, byte count, ...) as a plain dict.

    Accepts ``corpus.meta`` as a dataclass, a mapping or an object with attributes."""
    meta = getattr(corpus, "meta", None)
    if meta is None:
        raise OfflineDataError(f"{type(corpus).__name__} has no .meta; pass a harness.data.Corpus.")
    if dataclasses.is_dataclass(meta):
        info = dataclasses.asdict(meta)
    elif isinstance(meta, dict):
        info = dict(meta)
    else:
        info = {k: v for k, v in vars(meta).items() if not k.startswith("_")}
    if not info.get("hash"):
        raise OfflineDataError("the corpus metadata has no 'hash'; offline task data is cached by corpus hash.")
    return {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool, type(None), list, dict))}


# -- generation ---------------------------------------------------------------------------------------
def heldout_rows(docs: list[tuple[str, str]], spec: OfflineDataSpec) -> list[dict[str, Any]]:
    """Perplexity rows: one per non-blank held-out document, in corpus order."""
    rows = []
    for name, text in docs:
        if spec.ppl_max_docs is not None and len(rows) >= spec.ppl_max_docs:
            break
        if spec.ppl_max_chars is not None:
            text = text[: spec.ppl_max_chars]
        if text.strip():
            rows.append({"id": len(rows), "source": name, "text": text})
    return rows


def _eligible(line: str, spec: OfflineDataSpec) -> bool:
    return line == line.rstrip() and spec.min_line_chars <= len(line.strip()) <= spec.max_line_chars


def _context(lines: list[str], i: int, spec: OfflineDataSpec) -> str:
    """Up to ``context_lines`` lines before line ``i``, whole lines first dropped from the left to
    fit ``context_chars``; always ends with a newline (the true next line follows it directly)."""
    prev = lines[max(0, i - spec.context_lines) : i]
    while len(prev) > 1 and sum(len(p) + 1 for p in prev) > spec.context_chars:
        prev = prev[1:]
    text = "\n".join(prev) + "\n"
    return text[-spec.context_chars :]


def next_line_rows(docs: list[tuple[str, str]], spec: OfflineDataSpec) -> list[dict[str, Any]]:
    """Multiple-choice rows (see the module docstring); deterministic for given docs and spec."""
    split_docs = [text.split("\n") for _, text in docs]
    # a candidate: a line with a newline after it (not the file's last piece) and some context before
    eligible = [
        (d, i)
        for d, lines in enumerate(split_docs)
        for i in range(1, len(lines) - 1)
        if _eligible(lines[i], spec) and "".join(lines[max(0, i - spec.context_lines) : i]).strip()
    ]
    # distractor candidates: every eligible line occurrence (not de-duplicated), so distractors
    # follow the same distribution as true lines and "pick the shortest" stays at chance
    pool = [(d, line.strip()) for d, lines in enumerate(split_docs) for line in lines if _eligible(line, spec)]
    if not eligible:
        raise OfflineDataError(
            f"the {spec.split!r} split has no line usable for next_line (lines of {spec.min_line_chars}.."
            f"{spec.max_line_chars} characters); use a larger corpus."
        )
    rng = random.Random(f"next_line:{spec.seed}")
    chosen = rng.sample(eligible, min(spec.next_line_examples, len(eligible)))
    rows = []
    for d, i in chosen:
        true_line = split_docs[d][i]
        stripped = true_line.strip()
        indent = true_line[: len(true_line) - len(true_line.lstrip())]
        distractors: list[str] = []
        for _ in range(100 * spec.n_choices):  # bounded: a pool dominated by one file could starve
            if len(distractors) == spec.n_choices - 1:
                break
            other_doc, text = pool[rng.randrange(len(pool))]
            line = indent + text
            if other_doc != d and text != stripped and line not in distractors:
                distractors.append(line)
        if len(distractors) < spec.n_choices - 1:
            raise OfflineDataError(
                f"cannot draw {spec.n_choices - 1} distractor lines from other files of the {spec.split!r} "
                "split; next_line needs a held-out split with at least two files of varied lines."
            )
        label = rng.randrange(spec.n_choices)
        choices = distractors[:label] + [true_line] + distractors[label:]
        rows.append(
            {
                "id": len(rows),
                "source": docs[d][0],
                "line": i + 1,
                "context": _context(split_docs[d], i, spec),
                "choices": [c + "\n" for c in choices],
                "label": label,
            }
        )
    return rows


def _jsonl(rows: Iterable[dict[str, Any]]) -> str:
    # ASCII-only JSON: byte-identical output whatever the locale's default encoding
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=True) + "\n" for r in rows)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def data_dir_for(corpus: Any, spec: OfflineDataSpec, cache_root: str | os.PathLike | None = None) -> Path:
    """The cache folder for ``corpus`` and ``spec`` (not created)."""
    info = corpus_info(corpus)
    root = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    return root / "lm_eval" / f"{str(info['hash'])[:16]}-{spec.key()}-v{GENERATOR_VERSION}"


def _valid(out: Path) -> bool:
    manifest = out / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        files = json.loads(manifest.read_text())["files"]
        return all((out / f).is_file() and _sha256(out / f) == h for f, h in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def build_offline_data(
    corpus: Any,
    spec: OfflineDataSpec | None = None,
    cache_root: str | os.PathLike | None = None,
    force: bool = False,
) -> Path:
    """Generate (or reuse) the offline tasks' jsonl files for ``corpus``; returns their folder.

    ``corpus`` is a :class:`harness.data.Corpus` (anything with ``.documents(split)`` yielding
    objects with ``.name``/``.text`` and ``.meta`` holding a ``hash``). A folder whose manifest and
    file hashes check out is reused; ``force`` regenerates it.
    """
    spec = spec or OfflineDataSpec()
    info = corpus_info(corpus)
    out = data_dir_for(corpus, spec, cache_root)
    if not force and _valid(out):
        return out
    docs = [(doc.name, doc.text) for doc in _documents(corpus, spec.split)]
    if not docs:
        raise OfflineDataError(
            f"the corpus has no documents in its {spec.split!r} split; the offline tasks need held-out files "
            "(use a corpus with more files)."
        )
    rows = {"heldout_ppl": heldout_rows(docs, spec), "next_line": next_line_rows(docs, spec)}
    out.mkdir(parents=True, exist_ok=True)
    for task, file in FILES.items():
        atomic_write_text(out / file, _jsonl(rows[task]))
    atomic_write_json(
        out / "manifest.json",
        {
            "generator_version": GENERATOR_VERSION,
            "spec": dataclasses.asdict(spec),
            "corpus": info,
            "rows": {task: len(r) for task, r in rows.items()},
            "files": {file: _sha256(out / file) for file in FILES.values()},
        },
    )
    return out


def _documents(corpus: Any, split: str) -> Iterator[Any]:
    try:
        yield from corpus.documents(split)
    except (KeyError, ValueError) as err:
        raise OfflineDataError(f"cannot read split {split!r} of the corpus: {err}") from None


def read_manifest(data_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a generated folder."""
    return json.loads((Path(data_dir) / "manifest.json").read_text())


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a jsonl file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# -- lm-eval hook -------------------------------------------------------------------------------------
def load_task_dataset(data_file: str | None = None, **metadata: Any) -> Any:
    """lm-eval ``custom_dataset`` hook of the offline task YAMLs: the generated ``data_file`` as a
    ``datasets.DatasetDict`` with one ``test`` split. lm-eval calls it with the task metadata (which
    must hold :data:`~harness.evaluation.lm_eval_tasks.DATA_DIR_KEY`) and the YAML's ``dataset_kwargs``;
    nothing is downloaded."""
    import datasets

    data_dir = metadata.get(DATA_DIR_KEY)
    if not data_dir:
        raise OfflineDataError(
            "offline task data folder not given: run the suite's tasks through harness.evaluation.evaluate (it "
            f"generates "
            f"the data), or pass metadata={{'{DATA_DIR_KEY}': FOLDER}} to lm-eval's TaskManager, FOLDER made by "
            "harness.evaluation.lm_eval_tasks.data.build_offline_data(corpus)."
        )
    path = Path(data_dir) / str(data_file)
    if not path.is_file():
        raise OfflineDataError(f"{path} does not exist; regenerate with build_offline_data(corpus, force=True).")
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(read_jsonl(path))})
