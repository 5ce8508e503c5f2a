"""Tokenise a corpus split, pack it into fixed-length blocks, cache the blocks on disk, and sample them
in a deterministic, resumable order.

Packing: the split's documents (in the corpus' fixed order) become one token stream
``eos d_1 eos d_2 eos ... d_n eos`` (the tokenizer's eos between documents, and first, so every
document follows the same separator); the stream is cut into ``block_size`` tokens per block and the
incomplete tail dropped. A block is both the model's input and its labels (the model shifts them).

Cache: ``<cache_dir>/<key>.bin`` (raw ``uint16``/``uint32`` tokens, ``(n_blocks, block_size)``,
opened as a numpy memory map) plus ``<key>.json`` (shape, dtype, provenance), where ``key`` hashes
the corpus hash, the tokenizer's id mapping, the split, the block size and the token limit. The
blocks are written to ``<key>.bin.partial`` and renamed, then the metadata written (the cache's
"done" mark), so a killed build never leaves a half-written cache. Blocks are written as they fill, so
a paper-scale token budget never has to fit in memory; every :data:`RESUME_EVERY_BLOCKS` blocks the
build saves where it stands (``<key>.partial.json``: tokens written, documents consumed, the tokens
of the block being filled), and a killed build resumes from there: the documents already packed are
skipped without being tokenised (a stream is read again up to that point), and the blocks come out
the same as an uninterrupted build's. One process builds a cache at a time (a file lock). Build
such a cache once before a multi-GPU launch with ``python -m harness.data.packing``.

Order: :class:`BlockSampler` gives the block indices of optimizer step ``s`` as a pure function of
``(seed, s)`` — each epoch is a fresh permutation seeded by ``(seed, epoch)`` — so a resumed run
sees exactly the data an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from harness.data.corpus import Corpus, CorpusError, Document
from harness.data.tokenizer import ByteTokenizer, tokenizer_identity
from harness.util.io import atomic_write_text

PACKING_VERSION = 1
DEFAULT_CACHE_DIR = Path(os.environ.get("DIJIANG_CACHE", Path.home() / ".cache" / "dijiang-suite")) / "tokens"
#: a cache being built saves where it stands every this many new blocks, and a build that was killed
#: resumes from there (at 2,048-token blocks: every ~2M tokens)
RESUME_EVERY_BLOCKS = 1024


def _encode(tokenizer: PreTrainedTokenizerBase, docs: list[Document]) -> list[np.ndarray]:
    if isinstance(tokenizer, ByteTokenizer):
        return [tokenizer.encode_bytes(d.text) for d in docs]
    ids = tokenizer([d.text for d in docs], add_special_tokens=False)["input_ids"]
    return [np.asarray(x, dtype=np.int64) for x in ids]


def iter_tokens(
    documents: Iterator[Document],
    tokenizer: PreTrainedTokenizerBase,
    max_tokens: int | None = None,
    batch: int = 64,
    leading_eos: bool = True,
) -> Iterator[np.ndarray]:
    """``eos d_1 eos d_2 eos ...`` as a stream of int64 chunks, stopping after ``max_tokens`` tokens: the
    first eos alone (unless ``leading_eos`` is False: a stream continued), then one chunk per document."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise CorpusError(
            f"tokenizer {type(tokenizer).__name__} has no eos token; packing needs one between documents."
        )
    sep = np.array([eos], dtype=np.int64)
    remaining = max_tokens if max_tokens is not None else -1
    pending: list[Document] = []

    def emit(chunk: np.ndarray) -> np.ndarray:
        nonlocal remaining
        if remaining >= 0:
            chunk = chunk[:remaining]
            remaining -= len(chunk)
        return chunk

    if leading_eos:
        yield emit(sep)
    docs = iter(documents)
    while remaining != 0:
        pending = [d for _, d in zip(range(batch), docs)]
        if not pending:
            return
        for ids in _encode(tokenizer, pending):
            yield emit(np.concatenate((ids.astype(np.int64), sep)))
            if remaining == 0:
                return


def token_stream(
    documents: Iterator[Document], tokenizer: PreTrainedTokenizerBase, max_tokens: int | None = None
) -> np.ndarray:
    """:func:`iter_tokens` as one array (for small corpora and tests)."""
    return np.concatenate(list(iter_tokens(documents, tokenizer, max_tokens)))


def cache_key(
    corpus: Corpus, tokenizer: PreTrainedTokenizerBase, split: str, block_size: int, max_tokens: int | None
) -> str:
    ident = {
        "version": PACKING_VERSION,
        "corpus": corpus.hash,
        "tokenizer": tokenizer_identity(tokenizer),
        "split": split,
        "block_size": block_size,
        "max_tokens": max_tokens,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


@dataclass
class PackedBlocks:
    """Token blocks ``(n_blocks, block_size)`` of one split, and where they came from."""

    blocks: np.ndarray
    meta: dict[str, Any]

    def __len__(self) -> int:
        return int(self.blocks.shape[0])

    @property
    def block_size(self) -> int:
        return int(self.blocks.shape[1])

    def batch(self, indices: np.ndarray | list[int]) -> np.ndarray:
        """The blocks at ``indices`` as an int64 array ``(len(indices), block_size)``."""
        return np.asarray(self.blocks[np.asarray(indices)], dtype=np.int64)


def pack(
    corpus: Corpus,
    tokenizer: PreTrainedTokenizerBase,
    split: str = "train",
    block_size: int = 256,
    max_tokens: int | None = None,
    cache_dir: str | os.PathLike | bool | None = None,
) -> PackedBlocks:
    """Blocks of ``split`` (see the module docstring), read from the cache when present.

    ``max_tokens`` stops tokenising once that many tokens are packed (needed for streamed corpora
    far larger than a run's budget); ``cache_dir=None`` uses ``$DIJIANG_CACHE/tokens``
    (default ``~/.cache/dijiang-suite/tokens``); ``cache_dir=False`` packs in memory only.
    """
    if block_size < 2:
        raise CorpusError(f"block_size must be at least 2 tokens, got {block_size}.")
    use_cache = cache_dir is not False
    root = Path(cache_dir) if isinstance(cache_dir, (str, os.PathLike)) else DEFAULT_CACHE_DIR
    key = cache_key(corpus, tokenizer, split, block_size, max_tokens)
    npy, meta_path = root / f"{key}.bin", root / f"{key}.json"
    if use_cache and npy.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        return PackedBlocks(_open_blocks(npy, meta), meta)
    if not use_cache:  # the blocks go to an anonymous temporary file
        with tempfile.TemporaryFile() as f:
            return _build(corpus, tokenizer, split, block_size, max_tokens, key, f, None)
    with _lock(root / f"{key}.lock"):  # one builder per cache file; the others then read it
        if npy.is_file() and meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            return PackedBlocks(_open_blocks(npy, meta), meta)
        partial, progress = root / f"{key}.bin.partial", root / f"{key}.partial.json"
        resume = _resume_point(partial, progress, key, _dtype(tokenizer))
        try:
            with open(partial, "r+b" if resume else "wb") as f:
                meta = _build(corpus, tokenizer, split, block_size, max_tokens, key, f, progress, resume)
                f.flush()
                os.fsync(f.fileno())
        except CorpusError:  # too few tokens: nothing to resume
            partial.unlink(missing_ok=True)
            progress.unlink(missing_ok=True)
            raise
        os.replace(partial, npy)  # complete: the blocks, then their metadata (the cache's "done" mark)
        atomic_write_text(meta_path, json.dumps(meta, indent=1))
        progress.unlink(missing_ok=True)
    return PackedBlocks(_open_blocks(npy, meta), meta)


def _dtype(tokenizer: PreTrainedTokenizerBase) -> type:
    return np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max + 1 else np.uint32


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (POSIX ``flock``; no lock where there is none), held while the
    cache is built, so two processes never write the same partial file; removed once the block
    succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover (Windows)
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
            # built (or found built): a process still waiting on this file finds the cache, one arriving
            # later takes a new lock file and finds it too
            path.unlink(missing_ok=True)
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _resume_point(partial: Path, progress: Path, key: str, dtype: type) -> dict[str, Any] | None:
    """Where an interrupted build of cache ``key`` stopped (its last saved progress), or None."""
    if not (partial.is_file() and progress.is_file()):
        return None
    try:
        state = json.loads(progress.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if state.get("key") != key or partial.stat().st_size < int(state["tokens"]) * np.dtype(dtype).itemsize:
        return None
    return state


def _build(
    corpus: Corpus,
    tokenizer: PreTrainedTokenizerBase,
    split: str,
    block_size: int,
    max_tokens: int | None,
    key: str,
    f: Any,
    progress: Path | None,
    resume: dict[str, Any] | None = None,
) -> dict[str, Any] | PackedBlocks:
    """Write the blocks into the open file ``f`` and return their metadata (``progress``: the file the
    build saves where it stands in, every :data:`RESUME_EVERY_BLOCKS` blocks, and ``resume``: such a
    point to continue from), or, without ``progress`` (no cache), the blocks themselves."""
    dtype = _dtype(tokenizer)
    itemsize = np.dtype(dtype).itemsize
    n_tokens, docs_done = (int(resume["tokens"]), int(resume["docs"])) if resume else (0, 0)
    carry = np.asarray(resume["carry"] if resume else [], dtype=np.int64)
    if resume:  # blocks written after the last saved point are written again
        f.truncate(n_tokens * itemsize)
        f.seek(n_tokens * itemsize)
    budget = None if max_tokens is None else max_tokens - n_tokens - len(carry)
    docs = itertools.islice(corpus.documents(split), docs_done, None)  # a stream is read again, not tokenised
    saved = n_tokens // block_size
    for i, chunk in enumerate(iter_tokens(docs, tokenizer, budget, leading_eos=resume is None)):
        docs_done += resume is not None or i > 0  # one chunk per document after the first eos
        carry = np.concatenate((carry, chunk))  # blocks are written as they fill: memory stays flat
        n_full = len(carry) // block_size * block_size
        if n_full:
            f.write(carry[:n_full].astype(dtype).tobytes())
            n_tokens += n_full
            carry = carry[n_full:]
        if progress is not None and n_tokens // block_size - saved >= RESUME_EVERY_BLOCKS:
            f.flush()
            os.fsync(f.fileno())
            state = {"key": key, "tokens": n_tokens, "docs": docs_done, "carry": carry.tolist()}
            atomic_write_text(progress, json.dumps(state))
            saved = n_tokens // block_size
    n_blocks = n_tokens // block_size
    if n_blocks == 0:
        raise CorpusError(
            f"split {split!r} of corpus {corpus.spec!r} has {len(carry)} tokens, fewer than one block of "
            f"{block_size}; use a larger corpus or a smaller block size."
        )
    meta = {
        "key": key,
        "corpus": corpus.meta,
        "tokenizer": tokenizer_identity(tokenizer),
        "split": split,
        "block_size": block_size,
        "max_tokens": max_tokens,
        "dtype": np.dtype(dtype).name,
        "n_blocks": n_blocks,
        "tokens": n_tokens,
        "dropped_tail_tokens": len(carry),
    }
    if progress is not None:
        return meta
    f.flush()
    f.seek(0)
    return PackedBlocks(np.fromfile(f, dtype=dtype).reshape(n_blocks, block_size), meta)


def _open_blocks(path: Path, meta: dict[str, Any]) -> np.memmap:
    return np.memmap(path, dtype=meta["dtype"], mode="r", shape=(meta["n_blocks"], meta["block_size"]))


class BlockSampler:
    """Block indices per optimizer step, a pure function of ``(seed, step)`` (hence resumable).

    The global batch of step ``s`` holds blocks ``s*B .. s*B+B-1`` of the infinite sequence formed by
    concatenating one seeded permutation of all blocks per epoch. :meth:`shard` cuts it into
    micro-batches per gradient-accumulation step and process, so any (processes x micro-batch x
    accumulation) layout with the same global batch sees the same blocks at the same step.
    """

    def __init__(self, n_blocks: int, global_batch: int, seed: int = 0, shuffle: bool = True) -> None:
        if n_blocks <= 0 or global_batch <= 0:
            raise ValueError(f"need n_blocks > 0 and global_batch > 0, got {n_blocks}, {global_batch}.")
        self.n_blocks, self.global_batch, self.seed, self.shuffle = n_blocks, global_batch, seed, shuffle
        self._perm_cache: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm_cache:
            if len(self._perm_cache) > 2:
                self._perm_cache.clear()
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_blocks) if self.shuffle else None
            self._perm_cache[epoch] = perm if perm is not None else np.arange(self.n_blocks)
        return self._perm_cache[epoch]

    def epoch_of(self, step: int) -> float:
        """Epochs completed at the start of ``step`` (fractional)."""
        return step * self.global_batch / self.n_blocks

    def global_indices(self, step: int) -> np.ndarray:
        """The ``global_batch`` block indices of optimizer step ``step`` (0-based)."""
        pos = np.arange(step * self.global_batch, (step + 1) * self.global_batch)
        epochs, offsets = np.divmod(pos, self.n_blocks)
        return np.array([self._perm(int(e))[int(o)] for e, o in zip(epochs, offsets)], dtype=np.int64)

    def shard(self, step: int, micro_step: int, accum: int, rank: int, world: int) -> np.ndarray:
        """Indices of one process' micro-batch: the global batch is split into ``accum`` consecutive
        micro-steps, each split evenly across ``world`` processes."""
        if self.global_batch % (accum * world):
            raise ValueError(
                f"global batch {self.global_batch} is not divisible by accumulation {accum} x processes {world}."
            )
        micro = self.global_batch // (accum * world)
        start = (micro_step * world + rank) * micro
        return self.global_indices(step)[start : start + micro]


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.data.packing --data SPEC --tokenizer NAME --block-size N [--max-tokens T]``:
    build the token cache once (e.g. before a multi-GPU launch, so no rank waits on tokenisation)."""
    import argparse

    from harness.data.corpus import load_corpus
    from harness.data.tokenizer import load_tokenizer

    p = argparse.ArgumentParser(prog="python -m harness.data.packing", description=main.__doc__.splitlines()[0])
    p.add_argument("--data", default="stdlib")
    p.add_argument("--tokenizer", default="byte")
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--max-tokens", type=lambda v: int(float(v)), default=None)
    p.add_argument("--split", nargs="+", default=["train", "validation"])
    p.add_argument("--cache-dir", default=None)
    args = p.parse_args(argv)
    corpus, tokenizer = load_corpus(args.data), load_tokenizer(args.tokenizer)
    for split in args.split:
        packed = pack(corpus, tokenizer, split, args.block_size, args.max_tokens, args.cache_dir)
        print(json.dumps({k: packed.meta[k] for k in ("key", "split", "n_blocks", "tokens", "block_size")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
