"""Tokenise a corpus split, pack it into fixed-length blocks, cache the blocks on disk, and sample them
in a deterministic, resumable order.

Packing: the split's documents (in the corpus' fixed order) become one token stream
``eos d_1 eos d_2 eos ... d_n eos`` (the tokenizer's eos between documents, and first, so every
document follows the same separator); the stream is cut into ``block_size`` tokens per block and the
incomplete tail dropped. A block is both the model's input and its labels (the model shifts them).

Cache: ``<cache_dir>/<key>.bin`` (raw ``uint16``/``uint32`` tokens, ``(n_blocks, block_size)``,
opened as a numpy memory map) plus ``<key>.json`` (shape, dtype, provenance), where ``key`` hashes
the corpus hash, the tokenizer's id mapping, the split, the block size and the token limit. Both are
written to a temporary file and renamed (the metadata last), so a killed build never leaves a
half-written cache. Blocks are written as they fill, so a paper-scale token budget never has to fit
in memory; build such a cache once before a multi-GPU launch with ``python -m harness.data.packing``.

Order: :class:`BlockSampler` gives the block indices of optimizer step ``s`` as a pure function of
``(seed, s)`` — each epoch is a fresh permutation seeded by ``(seed, epoch)`` — so a resumed run
sees exactly the data an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
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
from harness.util.io import atomic_open, atomic_write_text

PACKING_VERSION = 1
DEFAULT_CACHE_DIR = Path(os.environ.get("DIJIANG_CACHE", Path.home() / ".cache" / "dijiang-suite")) / "tokens"


def _encode(tokenizer: PreTrainedTokenizerBase, docs: list[Document]) -> list[np.ndarray]:
    if isinstance(tokenizer, ByteTokenizer):
        return [tokenizer.encode_bytes(d.text) for d in docs]
    ids = tokenizer([d.text for d in docs], add_special_tokens=False)["input_ids"]
    return [np.asarray(x, dtype=np.int64) for x in ids]


def iter_tokens(
    documents: Iterator[Document], tokenizer: PreTrainedTokenizerBase, max_tokens: int | None = None, batch: int = 64
) -> Iterator[np.ndarray]:
    """``eos d_1 eos d_2 eos ...`` as a stream of int64 chunks, stopping after ``max_tokens`` tokens."""
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
    dtype = np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max + 1 else np.uint32
    # the cache file is written atomically (an error, e.g. too few tokens, leaves no file); without a
    # cache, the blocks go to an anonymous temporary file
    with atomic_open(npy, "wb") if use_cache else tempfile.TemporaryFile() as f:
        carry = np.zeros(0, dtype=np.int64)
        n_tokens = 0
        for chunk in iter_tokens(corpus.documents(split), tokenizer, max_tokens):  # blocks are written as
            carry = np.concatenate((carry, chunk))  # they fill: memory stays flat
            n_full = len(carry) // block_size * block_size
            if n_full:
                f.write(carry[:n_full].astype(dtype).tobytes())
                n_tokens += n_full
                carry = carry[n_full:]
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
        if not use_cache:
            f.flush()
            f.seek(0)
            return PackedBlocks(np.fromfile(f, dtype=dtype).reshape(n_blocks, block_size), meta)
    atomic_write_text(meta_path, json.dumps(meta, indent=1))
    return PackedBlocks(_open_blocks(npy, meta), meta)


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
