"""Corpora as named text documents with a deterministic train/validation/test split.

``load_corpus(spec)`` accepts

* ``"stdlib"`` — the embedded default: the running Python's standard-library ``.py`` sources (sorted
  relative paths; test folders, ``site-packages`` and build-specific files such as
  ``_sysconfigdata*`` left out; about 12 MB). Present offline on every machine, but it differs
  between Python builds, so its hash, file and byte counts go into every result's metadata.
* a local **folder** of text files (recursively; hidden and binary files skipped),
* a **.txt** file (documents separated by blank lines) or a **.jsonl** file (one JSON object per
  line with a ``"text"`` field, optional ``"id"``/``"name"``),
* ``"hf:<dataset>[:<config>]"`` — a Hugging Face dataset, streamed (e.g. ``hf:monology/pile-uncopyrighted``);
  ``<dataset>`` may be a local folder of data files (``hf:/data/pile``: JSON lines, Parquet ... named
  by split, as ``datasets.load_dataset(<folder>, streaming=True)`` reads them),
* a name of :data:`ALIASES`: ``"pile"``, the paper's pretraining and fine-tuning corpus.

The split is by document name: ``sha256(name)`` decides train (90 %), validation (5 %) or test
(5 %), so a document's split never depends on which other documents exist. Hugging Face datasets
use their own splits where they have them.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPLITS: tuple[str, ...] = ("train", "validation", "test")
#: percent of documents in each split (by hash of the document name)
SPLIT_PERCENT: dict[str, int] = {"train": 90, "validation": 5, "test": 5}

#: stdlib folders left out wherever they occur (tests, installed packages, caches)
STDLIB_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})
#: stdlib files that describe the build, not the language (differ between builds of one version)
STDLIB_SKIP_PREFIXES: tuple[str, ...] = ("_sysconfigdata", "sitecustomize", "_distutils_system_mod")


#: named corpora, defined here once: every profile and training config says ``data: pile``. The
#: paper fine-tunes on the Pile (Sec. 4); the original ``EleutherAI/pile`` hub dataset no longer
#: serves its files, ``monology/pile-uncopyrighted`` is the Pile without its copyrighted subsets.
ALIASES: dict[str, str] = {"pile": "hf:monology/pile-uncopyrighted"}


class CorpusError(ValueError):
    """A corpus that cannot be loaded (missing path, empty, unreachable dataset, bad format)."""


@dataclass(frozen=True)
class Document:
    """One document: a stable name (relative path, ``file#n``, dataset row id) and its text."""

    name: str
    text: str


def split_of(name: str) -> str:
    """The split of document ``name``: buckets of ``sha256(name) mod 100`` (90/5/5)."""
    bucket = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") % 100
    if bucket < SPLIT_PERCENT["train"]:
        return "train"
    if bucket < SPLIT_PERCENT["train"] + SPLIT_PERCENT["validation"]:
        return "validation"
    return "test"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise CorpusError(f"unknown split {split!r}; choose one of {list(SPLITS)}.")


@dataclass
class Corpus:
    """Named documents with a deterministic split and metadata.

    ``meta``: ``spec``, ``kind``, ``hash`` (sha256 over sorted names and contents, length-prefixed),
    ``files`` (documents), ``bytes`` (UTF-8 bytes), per-split ``splits`` counts, ``python`` version.
    For streamed Hugging Face datasets the content is not read up front: ``hash`` identifies the
    dataset name/config/revision instead and ``content_hash`` is ``False``.
    """

    spec: str
    meta: dict[str, Any]
    _docs: list[Document] | None = field(default=None, repr=False)
    _stream: Callable[[str], Iterator[Document]] | None = field(default=None, repr=False)

    def documents(self, split: str = "train") -> Iterator[Document]:
        """Documents of ``split`` in a fixed order (sorted by name for local corpora)."""
        _check_split(split)
        if self._stream is not None:
            yield from self._stream(split)
            return
        for doc in self._docs or []:
            if split_of(doc.name) == split:
                yield doc

    @property
    def hash(self) -> str:
        return self.meta["hash"]


def _python_meta() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "python_build": " ".join(platform.python_build()),
    }


def _local_corpus(spec: str, kind: str, docs: list[Document], extra: dict[str, Any] | None = None) -> Corpus:
    docs = sorted(docs, key=lambda d: d.name)
    names = [d.name for d in docs]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise CorpusError(f"corpus {spec!r} has two documents named {dup!r}; document names must be unique.")
    if not docs or not any(d.text.strip() for d in docs):
        raise CorpusError(
            f"corpus {spec!r} is empty (no non-blank text documents found); point it at text files "
            "(.txt/.py/.md ...), a .jsonl file with a 'text' field, or use the default 'stdlib'."
        )
    h = hashlib.sha256()
    splits = {s: {"files": 0, "bytes": 0} for s in SPLITS}
    n_bytes = 0
    for d in docs:
        name_b, text_b = d.name.encode("utf-8"), d.text.encode("utf-8")
        for part in (name_b, text_b):  # length-prefixed: no two corpora share a byte stream
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
        s = split_of(d.name)
        splits[s]["files"] += 1
        splits[s]["bytes"] += len(text_b)
        n_bytes += len(text_b)
    meta: dict[str, Any] = {
        "spec": spec,
        "kind": kind,
        "hash": h.hexdigest(),
        "content_hash": True,
        "files": len(docs),
        "bytes": n_bytes,
        "splits": splits,
        **_python_meta(),
    }
    meta.update(extra or {})
    return Corpus(spec=spec, meta=meta, _docs=docs)


# -- the embedded default -------------------------------------------------------------------------
def stdlib_root() -> Path:
    """The running interpreter's standard-library folder (the base install, also inside a venv)."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None) -> list[Path]:
    """Relative paths of the standard library's ``.py`` sources that form the corpus (sorted)."""
    root = root or stdlib_root()
    out = []
    for folder, dirs, files in os.walk(root):
        rel_dir = Path(folder).relative_to(root)
        # prune skipped folders instead of walking them (site-packages alone can hold 10^4 files)
        dirs[:] = [
            d
            for d in dirs
            if d not in STDLIB_SKIP_DIRS
            and not (rel_dir == Path(".") and (d.startswith("config-") or d == "lib-dynload"))  # build configuration
        ]
        out += [rel_dir / f for f in files if f.endswith(".py") and not f.startswith(STDLIB_SKIP_PREFIXES)]
    return sorted(out, key=lambda r: r.as_posix())


def load_stdlib() -> Corpus:
    """The embedded default corpus (see the module docstring)."""
    root = stdlib_root()
    if not root.is_dir():
        raise CorpusError(f"the Python standard library was not found at {root}; pass a corpus folder or file instead.")
    docs = [
        Document(rel.as_posix(), (root / rel).read_bytes().decode("utf-8", errors="replace"))
        for rel in stdlib_files(root)
    ]
    return _local_corpus("stdlib", "stdlib", docs, {"root": str(root)})


# -- local files ----------------------------------------------------------------------------------
def _read_text(path: Path) -> str | None:
    """The file's text, or ``None`` for a binary file (NUL bytes or invalid UTF-8)."""
    raw = path.read_bytes()
    if b"\x00" in raw:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def load_folder(path: Path, spec: str) -> Corpus:
    docs, skipped = [], []
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path)
        if not p.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        text = _read_text(p)
        if text is None:
            skipped.append(rel.as_posix())
            continue
        docs.append(Document(rel.as_posix(), text))
    if skipped and not docs:
        raise CorpusError(
            f"corpus folder {path} holds only binary / non-UTF-8 files ({len(skipped)}, e.g. {skipped[0]!r}); "
            "point it at a folder of UTF-8 text files."
        )
    return _local_corpus(spec, "folder", docs, {"root": str(path), "skipped_binary": len(skipped)})


def load_txt(path: Path, spec: str) -> Corpus:
    text = _read_text(path)
    if text is None:
        raise CorpusError(f"{path} is not a UTF-8 text file.")
    paragraphs = [p.strip("\n") for p in text.replace("\r\n", "\n").split("\n\n")]
    docs = [Document(f"{path.name}#{i:07d}", p) for i, p in enumerate(paragraphs) if p.strip()]
    return _local_corpus(spec, "txt", docs, {"root": str(path)})


def load_jsonl(path: Path, spec: str, text_key: str = "text") -> Corpus:
    docs = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise CorpusError(
                    f"{path}:{lineno} is not valid JSON ({err.msg}); each line must be one JSON object."
                ) from None
            if not isinstance(obj, dict) or not isinstance(obj.get(text_key), str):
                raise CorpusError(
                    f'{path}:{lineno} has no string field {text_key!r}; each line needs {{"{text_key}": ...}}.'
                )
            name = obj.get("id", obj.get("name", f"{path.name}#{lineno:07d}"))
            docs.append(Document(str(name), obj[text_key]))
    return _local_corpus(spec, "jsonl", docs, {"root": str(path)})


# -- Hugging Face datasets (streamed) -------------------------------------------------------------
def load_hf(spec: str, text_key: str = "text") -> Corpus:
    """A streamed Hugging Face dataset ``hf:<name>[:<config>]``: its own splits where it has them
    (``validation`` may be called ``val``/``valid``), otherwise our hash split of its train split."""
    rest = spec[3:]
    name, _, config = rest.partition(":")
    if not name:
        raise CorpusError(f"bad dataset spec {spec!r}; write hf:<dataset name>[:<config>].")
    try:
        import datasets
    except ImportError:
        raise CorpusError("the 'datasets' package is needed for hf: corpora; pip install datasets.") from None
    try:
        streams = datasets.load_dataset(name, config or None, streaming=True)
    except Exception as err:  # offline, unknown name, gated ...
        offline = any(os.environ.get(v) == "1" for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))
        why = "offline mode is on (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE=1)" if offline else "it could not be fetched"
        raise CorpusError(
            f"dataset {name!r}{f' (config {config!r})' if config else ''} cannot be reached: {why}. "
            "Run with network access, or use a local corpus (a folder, .txt or .jsonl file) or the "
            f"embedded default 'stdlib'. ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from None
    available = list(streams.keys())
    aliases = {"train": ("train",), "validation": ("validation", "val", "valid"), "test": ("test",)}

    def stream(split: str) -> Iterator[Document]:
        own = next((a for a in aliases[split] if a in streams), None)
        source = own or "train"
        if source not in streams:
            raise CorpusError(f"dataset {name!r} has no {split!r} or 'train' split (it has {available}).")
        for i, row in enumerate(streams[source]):
            text = row.get(text_key)
            if not isinstance(text, str):
                raise CorpusError(f"dataset {name!r} rows have no string field {text_key!r} (fields: {sorted(row)}).")
            doc_name = f"{source}/{row.get('id', i)}"
            if own or split_of(doc_name) == split:
                yield Document(doc_name, text)

    ident = json.dumps({"dataset": name, "config": config, "splits": available, **_local_files(name)}, sort_keys=True)
    meta = {
        "spec": spec,
        "kind": "hf",
        "hash": hashlib.sha256(ident.encode()).hexdigest(),
        "content_hash": False,
        "dataset": name,
        "config": config or None,
        "dataset_splits": available,
        "files": None,
        "bytes": None,
        **_python_meta(),
    }
    return Corpus(spec=spec, meta=meta, _stream=stream)


def _local_files(name: str) -> dict[str, Any]:
    """For a dataset in a local folder (``hf:<folder>``): its files' names, sizes and modification
    times, so that the corpus hash (and every token cache keyed by it) changes when they do; a hub
    dataset is named by its id alone. Nothing is read (a local copy of the Pile is hundreds of GB)."""
    root = Path(name).expanduser()
    if not root.is_dir():
        return {}
    found = sorted(p for p in root.rglob("*") if p.is_file())
    files = [(p.relative_to(root), p.stat()) for p in found]
    return {"files": [[r.as_posix(), s.st_size, s.st_mtime_ns] for r, s in files if not r.parts[0].startswith(".")]}


def load_corpus(spec: str | os.PathLike = "stdlib") -> Corpus:
    """Load a corpus from ``spec`` (see the module docstring); one clear :class:`CorpusError` otherwise."""
    spec = ALIASES.get(str(spec), str(spec))
    if spec == "stdlib":
        return load_stdlib()
    if spec.startswith("hf:"):
        return load_hf(spec)
    path = Path(spec).expanduser()
    if not path.exists():
        raise CorpusError(
            f"corpus path {spec!r} does not exist; pass an existing folder of text files, a .txt or .jsonl "
            "file, 'hf:<dataset>[:<config>]', or 'stdlib' (the embedded default)."
        )
    if path.is_dir():
        return load_folder(path, spec)
    if path.suffix == ".jsonl":
        return load_jsonl(path, spec)
    if path.suffix in (".txt", ".text", ".md", ".py") or _read_text(path) is not None:
        return load_txt(path, spec)
    raise CorpusError(f"corpus file {spec!r} is neither a .jsonl file nor UTF-8 text.")


if __name__ == "__main__":  # python -m harness.data.corpus [SPEC]: print the metadata
    print(json.dumps(load_corpus(sys.argv[1] if len(sys.argv) > 1 else "stdlib").meta, indent=1))
