"""Data: the embedded corpus, user corpora, the byte tokenizer, packing, caching and the sampler."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness.data import BYTE_VOCAB_SIZE, ByteTokenizer, CorpusError, TokenizerError, check_vocab, load_corpus
from harness.data.corpus import SPLITS, split_of
from harness.data.packing import BlockSampler, pack, token_stream
from harness.data.tokenizer import EOS_ID, PAD_ID, load_tokenizer


@pytest.fixture(scope="module")
def stdlib():
    return load_corpus("stdlib")


# -- the embedded corpus ------------------------------------------------------------------------------
def test_stdlib_corpus_is_deterministic_and_clean(stdlib):
    again = load_corpus("stdlib")
    assert again.hash == stdlib.hash and again.meta["files"] == stdlib.meta["files"]
    meta = stdlib.meta
    assert meta["files"] > 300 and meta["bytes"] > 2_000_000, meta
    assert meta["python"] and len(meta["hash"]) == 64
    names = [d.name for s in SPLITS for d in stdlib.documents(s)]
    assert len(names) == meta["files"] == len(set(names))
    assert sum(len(d.text.encode()) for s in SPLITS for d in stdlib.documents(s)) == meta["bytes"]
    for name in names:
        parts = name.split("/")
        assert not {"test", "tests", "idle_test", "site-packages"} & set(parts[:-1]), name
        assert not parts[-1].startswith("_sysconfigdata") and name.endswith(".py"), name
    assert "os.py" in names and "json/__init__.py" in names


def test_split_is_deterministic_disjoint_and_by_name(stdlib):
    per_split = {s: [d.name for d in stdlib.documents(s)] for s in SPLITS}
    assert all(per_split[s] for s in SPLITS)
    assert per_split == {s: [d.name for d in stdlib.documents(s)] for s in SPLITS}
    sets = [set(v) for v in per_split.values()]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert all(split_of(n) == s for s, names in per_split.items() for n in names)
    frac = len(per_split["train"]) / stdlib.meta["files"]
    assert 0.8 < frac < 0.97, frac
    assert {s: v["files"] for s, v in stdlib.meta["splits"].items()} == {s: len(v) for s, v in per_split.items()}


# -- user corpora ---------------------------------------------------------------------------------------
def test_folder_txt_and_jsonl_corpora(tmp_path):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    for i in range(30):
        (folder / "sub" / f"f{i}.txt").write_text(f"document {i}\n" * 3)
    (folder / "image.bin").write_bytes(b"\x00\x01\xff")
    (folder / ".hidden").write_text("not part of it")
    c1 = load_corpus(folder)
    assert c1.meta["files"] == 30 and c1.meta["skipped_binary"] == 1
    assert load_corpus(str(folder)).hash == c1.hash
    (folder / "sub" / "f0.txt").write_text("changed")
    assert load_corpus(folder).hash != c1.hash

    txt = tmp_path / "a.txt"
    txt.write_text("para one\nline\n\npara two\n\n\npara three\n")
    docs = [d.text for s in SPLITS for d in load_corpus(txt).documents(s)]
    assert sorted(docs) == sorted(["para one\nline", "para two", "para three"])

    jl = tmp_path / "d.jsonl"
    jl.write_text("\n".join(json.dumps({"id": f"r{i}", "text": f"row {i}"}) for i in range(5)) + "\n")
    c = load_corpus(jl)
    assert c.meta["files"] == 5 and {d.name for s in SPLITS for d in c.documents(s)} == {f"r{i}" for i in range(5)}


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "empty"),
        (lambda p: (p / "blank.txt").write_text("\n\n  \n") and p / "blank.txt", "empty"),
        (lambda p: (p / "bad.jsonl").write_text('{"txt": "x"}\n') and p / "bad.jsonl", "'text'"),
    ],
)
def test_bad_corpus_gives_one_clear_error(tmp_path, make, needle):
    with pytest.raises(CorpusError, match=needle):
        load_corpus(make(tmp_path))


def test_hf_dataset_offline_is_a_clear_error():
    with pytest.raises(CorpusError, match="cannot be reached.*offline"):
        load_corpus("hf:some-org/some-dataset-that-is-not-cached:default")
    with pytest.raises(CorpusError, match="unknown split"):
        next(load_corpus("stdlib").documents("dev"))


# -- the tokenizer ----------------------------------------------------------------------------------------
def test_byte_tokenizer_round_trip(tmp_path):
    tok = ByteTokenizer()
    text = "héllo wörld 🎉 \t\r\n\x00 <|endoftext|> end"
    ids = tok.encode(text)
    assert ids[:2] == [ord("h"), 0xC3] and max(ids) == EOS_ID  # the special token string is recognised
    assert tok.decode(ids) == text
    assert tok.encode_bytes(text).tolist() == list(text.encode("utf-8"))  # corpus path: bytes only
    assert (tok.eos_token_id, tok.bos_token_id, tok.pad_token_id) == (EOS_ID, EOS_ID, PAD_ID)
    assert len(tok) == BYTE_VOCAB_SIZE == 258 and tok.vocab_size == 256
    assert tok.decode([104, 105, EOS_ID, PAD_ID], skip_special_tokens=True) == "hi"
    assert tok.decode([0xE2, 0x82]) == "\ufffd"  # a cut multi-byte character does not raise
    batch = tok(["a", "abc"], padding=True)
    assert batch["input_ids"][0] == [97, PAD_ID, PAD_ID] and batch["attention_mask"][0] == [1, 0, 0]

    tok.save_pretrained(tmp_path / "tok")
    back = load_tokenizer(tmp_path / "tok")
    assert isinstance(back, ByteTokenizer) and back.encode(text) == ids and len(back) == len(tok)
    assert isinstance(load_tokenizer("byte"), ByteTokenizer)


def test_tokenizer_errors():
    with pytest.raises(TokenizerError, match="offline"):
        load_tokenizer("some-org/not-a-cached-tokenizer")
    with pytest.raises(TokenizerError, match="vocab mismatch.*at least 258"):
        check_vocab(ByteTokenizer(), 256)
    check_vocab(ByteTokenizer(), 264)  # a larger embedding is fine


# -- packing, cache, sampler -------------------------------------------------------------------------------
def test_packing_and_cache(tmp_path, stdlib):
    tok = ByteTokenizer()
    docs = list(stdlib.documents("validation"))[:3]
    stream = token_stream(iter(docs), tok)
    expected = [EOS_ID]
    for d in docs:
        expected += list(d.text.encode("utf-8")) + [EOS_ID]
    assert stream.tolist() == expected

    packed = pack(stdlib, tok, "validation", block_size=64, cache_dir=tmp_path)
    n_tokens = sum(len(d.text.encode()) + 1 for d in stdlib.documents("validation")) + 1
    assert packed.blocks.shape == (n_tokens // 64, 64) and packed.meta["dropped_tail_tokens"] == n_tokens % 64
    assert packed.blocks[0, 0] == EOS_ID and packed.batch([0, 1]).dtype == np.int64
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and not any(f.startswith(".") for f in files)  # no temporary files left
    cached = pack(stdlib, tok, "validation", block_size=64, cache_dir=tmp_path)
    assert isinstance(cached.blocks, np.memmap) and np.array_equal(cached.blocks, packed.blocks)
    assert pack(stdlib, tok, "validation", block_size=32, cache_dir=tmp_path).meta["key"] != packed.meta["key"]
    limited = pack(stdlib, tok, "validation", block_size=64, max_tokens=64 * 5, cache_dir=False)
    assert np.array_equal(limited.blocks, packed.blocks[:5])


def test_sampler_is_resumable_and_layout_independent():
    s = BlockSampler(n_blocks=10, global_batch=4, seed=3)
    seq = np.concatenate([s.global_indices(k) for k in range(5)])  # two epochs of 10
    assert sorted(seq[:10]) == list(range(10)) and sorted(seq[10:20]) == list(range(10))
    assert not np.array_equal(seq[:10], seq[10:20])  # a fresh permutation per epoch
    fresh = BlockSampler(10, 4, seed=3)
    assert np.array_equal(fresh.global_indices(3), s.global_indices(3))  # a pure function of the step
    assert not np.array_equal(BlockSampler(10, 4, seed=4).global_indices(0), s.global_indices(0))
    for accum, world in [(1, 1), (2, 1), (1, 2), (2, 2), (4, 1)]:
        parts = [s.shard(2, m, accum, r, world) for m in range(accum) for r in range(world)]
        assert np.array_equal(np.concatenate(parts), s.global_indices(2))
    with pytest.raises(ValueError, match="not divisible"):
        s.shard(0, 0, 3, 0, 1)


def test_the_pile_is_named_in_one_place(monkeypatch):
    """``data: pile`` (the paper profile, the training configs) resolves to the one dataset id of
    ``harness.data.corpus.ALIASES``; no other file spells a Pile dataset id."""
    import re
    from pathlib import Path

    from harness.data import corpus

    seen = []
    monkeypatch.setattr(corpus, "load_hf", lambda spec: seen.append(spec))
    corpus.load_corpus("pile")
    assert seen == ["hf:monology/pile-uncopyrighted"]
    repo = Path(__file__).resolve().parents[1]
    spelled = [
        str(p.relative_to(repo))
        for folder in ("experiments", "configs", "harness")
        for p in (repo / folder).rglob("*")
        if p.suffix in (".yaml", ".json", ".py") and re.search(r"hf:[\w-]+/pile", p.read_text())
    ]
    assert spelled == ["harness/data/corpus.py"], spelled
