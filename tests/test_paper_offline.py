"""The ``paper-offline`` profile's stand-ins (harness/pipeline/standins.py): the paper's hub checkpoints,
tokenizer and streamed corpus replaced by local ones read through the same code, and LLaMA-2-7B built,
converted and sized on the meta device. Each test runs the stand-in's own code at a tiny size; the
profile itself (true shapes, block 2048) is ``./reproduce.sh --profile paper-offline``."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.pipeline import standins

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    """A small local corpus (130 short standard-library files) for the stand-ins to be made from."""
    from harness.data.corpus import stdlib_files, stdlib_root

    folder = tmp_path_factory.mktemp("corpus")
    files = [rel for rel in stdlib_files() if 500 < (stdlib_root() / rel).stat().st_size < 8000][:130]
    for rel in files:
        (folder / rel.as_posix().replace("/", "__")).write_bytes((stdlib_root() / rel).read_bytes())
    return str(folder)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, source) -> Path:
    folder = tmp_path_factory.mktemp("tok") / standins.TOKENIZER
    return standins.make_tokenizer(folder, source, vocab_size=600, max_docs=60)


def tiny_pythia() -> dict:
    """Pythia-70M's hub config.json, shrunk (same keys: transformers-4 names, rotary_pct 0.25)."""
    hub = standins.PYTHIA_HUB_CONFIGS["pythia-70m"]
    return {**hub, "hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 4, "num_hidden_layers": 2}


def test_the_stand_in_configs_are_pythias_and_the_bench_shapes():
    """The hub configs, read as a downloaded config.json is, give the published shapes: those of
    harness.bench.shapes and the published parameter counts (counted on the meta device)."""
    from harness.bench.shapes import get_shape
    from harness.conversion.hf_checkpoint import config_from_hf
    from harness.core.modeling import MixerLMForCausalLM

    published = {"pythia-70m": 70_426_624, "pythia-160m": 162_322_944}
    for name, n_params in published.items():
        cfg = config_from_hf(standins.hub_config(name), "softmax")
        shape = get_shape(f"{name}-model").config
        assert {k: getattr(cfg, k) for k in shape} == shape
        assert (cfg.max_position_embeddings, cfg.tie_word_embeddings, cfg.use_parallel_residual) == (2048, False, True)
        with torch.device("meta"):
            model = MixerLMForCausalLM(cfg)
        assert sum(p.numel() for p in model.parameters()) == n_params


def test_stand_in_checkpoint_loads_like_a_hub_download(tmp_path, tokenizer_dir):
    """A stand-in (float16, as on the hub) in the hub's layout: a transformers-4 config.json in the hub form, its
    tokenizer beside it; convert_checkpoint reads it as it reads a snapshot, softmax exactly, dijiang too."""
    from transformers import GPTNeoXForCausalLM

    from harness.conversion.factory import ModelSpec, build_model
    from harness.conversion.hf_checkpoint import convert_checkpoint
    from harness.training.config import TrainConfig
    from harness.training.loop import resolve_tokenizer

    path = standins.make_checkpoint(
        tmp_path / "pythia-70m", "pythia-70m", tokenizer_dir, dtype="float16", hub=tiny_pythia()
    )
    assert json.loads((path / "config.json").read_text())["rotary_pct"] == 0.25
    assert {"model.safetensors", "tokenizer.json", "tokenizer_config.json", "standin.json"} <= {
        p.name for p in path.iterdir()
    }
    ref = GPTNeoXForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    ours = convert_checkpoint(path, mixer="softmax")
    assert ours.config.partial_rotary_factor == 0.25 and ours.dtype == torch.float32
    ids = torch.randint(0, 600, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, ref(ids).logits, atol=2e-4, rtol=1e-4)
        student = build_model(ModelSpec("dijiang", teacher=str(path)))  # the pipeline's way in
        assert student.config.mixer == "dijiang" and torch.isfinite(student(ids).logits).all()
    # the same seed gives the same weights
    again = standins.make_checkpoint(
        tmp_path / "again", "pythia-70m", tokenizer_dir, dtype="float16", hub=tiny_pythia()
    )
    assert (again / "model.safetensors").read_bytes() == (path / "model.safetensors").read_bytes()
    # tokenizer "auto" (the paper profiles') takes the checkpoint's own
    tok = resolve_tokenizer(TrainConfig(model=str(path), tokenizer="auto", tokens=4096, block_size=64, batch_size=1))
    assert type(tok).__name__ == "GPTNeoXTokenizer" and len(tok) == 600


def test_local_tokenizer_loads_with_autotokenizer_and_round_trips(tmp_path, tokenizer_dir, source):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    assert type(tok).__name__ == "GPTNeoXTokenizer"
    assert (tok.eos_token, tok.eos_token_id, tok.bos_token_id, tok.pad_token_id) == (standins.EOS, 0, 0, 1)
    assert len(tok) == 600 <= standins.TOKENIZER_VOCAB < 50304  # fits the stand-ins' 50,304 embedding rows
    for text in ("def f(x):\n    return x ** 2  # squares\n", "naïve café — 🙂 \t tabs\r\n", "<|endoftext|> as text"):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    assert len(tok("import os\nimport sys\n")["input_ids"]) < 21 * 2 // 3  # merges learnt: fewer tokens than bytes
    # BPE training is deterministic: the same corpus gives the same tokenizer
    again = standins.make_tokenizer(tmp_path / "again", source, vocab_size=600, max_docs=60)
    assert (again / "tokenizer.json").read_text() == (tokenizer_dir / "tokenizer.json").read_text()


class Interrupted(Exception):
    pass


def test_streamed_local_dataset_packs_lazily_and_resumes(tmp_path, source, tokenizer_dir, monkeypatch):
    """The Pile's path (hf:<folder>, datasets streaming) on the local stand-in: packing reads the stream
    only up to its token budget, and a build killed after some blocks resumes from its saved point to
    the very blocks of an uninterrupted build, without tokenising the packed documents again."""
    from harness.data import packing
    from harness.data.corpus import load_corpus
    from harness.data.tokenizer import load_tokenizer

    folder = standins.make_dataset(tmp_path / "pile", source, train_shards=3)
    assert sorted(p.name for p in (folder / "data").iterdir())[:2] == [
        "test-00000-of-00001.jsonl",
        "train-00000-of-00003.jsonl",
    ]
    corpus = load_corpus(f"hf:{folder}")
    assert corpus.meta["kind"] == "hf" and corpus.meta["dataset_splits"] == ["train", "validation", "test"]
    tok = load_tokenizer(str(tokenizer_dir))
    real, block, batch = corpus._stream, 64, 64  # iter_tokens reads documents 64 at a time
    n_train = sum(1 for _ in real("train"))
    assert n_train > batch + 20
    read: list[str] = []
    encoded: list[int] = []

    def counting(split):
        for doc in real(split):
            read.append(doc.name)
            yield doc

    encode = packing._encode
    monkeypatch.setattr(packing, "_encode", lambda t, docs: encoded.append(len(docs)) or encode(t, docs))
    monkeypatch.setattr(corpus, "_stream", counting)
    small = packing.pack(corpus, tok, "train", block, 20 * block, tmp_path / "cache-a")
    assert len(small) == 20 and len(read) == batch < n_train  # streamed: one batch of documents, not the split
    assert int(small.batch([0])[0, 0]) == tok.eos_token_id

    # a budget that binds 5 blocks before the split's end, packed whole, and killed at document 70 (after
    # the first 64 were packed: the progress is saved every 3 blocks), then run again
    monkeypatch.setattr(corpus, "_stream", real)
    budget = packing.pack(corpus, tok, "train", block, None, cache_dir=False).meta["tokens"] - 5 * block
    whole = packing.pack(corpus, tok, "train", block, budget, tmp_path / "cache-a")
    monkeypatch.setattr(packing, "RESUME_EVERY_BLOCKS", 3)

    def killed(split):
        for i, doc in enumerate(real(split)):
            if i == 70:
                raise Interrupted
            yield doc

    monkeypatch.setattr(corpus, "_stream", killed)
    cache = tmp_path / "cache-b"
    with pytest.raises(Interrupted):
        packing.pack(corpus, tok, "train", block, budget, cache)
    progress = json.loads(next(cache.glob("*.partial.json")).read_text())
    assert progress["docs"] == batch and progress["tokens"] >= 3 * block and not list(cache.glob("*.bin"))
    encoded.clear()
    monkeypatch.setattr(corpus, "_stream", real)
    resumed = packing.pack(corpus, tok, "train", block, budget, cache)
    np.testing.assert_array_equal(np.asarray(resumed.blocks), np.asarray(whole.blocks))
    assert resumed.meta["tokens"] == whole.meta["tokens"] == budget // block * block
    assert sum(encoded) == n_train - batch  # the packed documents were skipped, not tokenised again
    assert not list(cache.glob("*.partial*"))
    assert packing.pack(corpus, tok, "train", block, budget, cache).meta == resumed.meta  # now from the cache
    # an edited local dataset is another corpus (its caches are not reused)
    shard = folder / "data" / "validation-00000-of-00001.jsonl"
    shard.write_text(shard.read_text() + json.dumps({"text": "one more", "meta": {}}) + "\n")
    assert load_corpus(f"hf:{folder}").hash != corpus.hash


def test_reproduce_paper_offline_dry_run_validates_and_plans(tmp_path, capsys):
    """The dry run validates every experiment at the profile and plans its runs (two optimizer steps of
    block 2048 per conversion), with the stand-ins' local paths and nothing made; the memory plan a
    GPU run prints is computed for the same teachers."""
    from harness.cli import main
    from harness.pipeline.reproduce import print_memory_plan, print_plan
    from harness.pipeline.runners import load_experiment
    from harness.pipeline.spec import defined_for, load_profile
    from harness.pipeline.stages import Context, conversion_tokens

    assert main(["reproduce", "--profile", "paper-offline", "--results-dir", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "convert-pythia-70m-dijiang-f0.0625-s0" in out and "convert-pythia-160m-dijiang-f0.0625-s0" in out
    assert f"stand-ins: gpt-neox-20b, pile, pythia-70m, pythia-160m in {tmp_path / 'paper-offline' / 'standins'}" in out
    assert not (tmp_path / "paper-offline" / "standins").exists()  # a dry run makes nothing

    names = defined_for("paper-offline")
    assert {"table1_scale", "table2_methods"} <= set(names) and "table3_7b" not in names
    profile = standins.resolve(load_profile("paper-offline"), tmp_path / "paper-offline")
    base = tmp_path.resolve() / "paper-offline" / "standins"
    assert profile.data == f"hf:{base / 'pile'}" and profile.tokenizer == "auto"
    assert {t.checkpoint for t in profile.teachers.values()} == {str(base / "pythia-70m"), str(base / "pythia-160m")}
    assert profile.block_size == 2048
    ctx = Context(profile, results_dir=tmp_path)
    for t in profile.teachers.values():
        assert conversion_tokens(ctx, t, 0.0625) == 2 * profile.block_size * profile.batch_size  # two steps
    runs = print_plan([load_experiment(n, profile) for n in names])
    print_memory_plan(dataclasses.replace(profile, device="cuda"), runs)
    plan = capsys.readouterr().out
    assert "memory plan of pythia-160m -> dijiang:" in plan and "memory plan of pythia-70m -> dijiang:" in plan


def test_prepare_makes_each_missing_stand_in_once_the_tokenizer_first(tmp_path, monkeypatch):
    from harness.pipeline.spec import load_profile

    made = []

    def make(name, path, *, tokenizer_dir=None):
        made.append(name)
        path.mkdir(parents=True)
        (path / "standin.json").write_text("{}")

    monkeypatch.setattr(standins, "make", make)
    profile = load_profile("paper-offline")
    folders = standins.prepare(profile, tmp_path, log=lambda _: None)
    assert made == ["gpt-neox-20b", "pile", "pythia-70m", "pythia-160m"]
    assert folders == [tmp_path.resolve() / "standins" / n for n in made]
    standins.prepare(profile, tmp_path, log=lambda _: None)
    assert len(made) == 4  # made once


def test_llama2_7b_on_the_meta_device_builds_converts_and_sizes_its_state():
    """LLaMA-2-7B's published config: built (softmax), converted to DiJiang and its decoding state sized
    on the meta device, in a fresh process whose peak memory shows no weight was allocated (6.7B
    float32 weights would be 27 GB)."""
    script = """
import json, resource, torch
from harness.pipeline.standins import llama2_7b_config
from harness.conversion.factory import ModelSpec, build_model, decode_state_size
from harness.conversion.hf_checkpoint import config_from_hf
from harness.conversion.mixer_swap import convert_model
with torch.device("meta"):
    teacher = build_model(ModelSpec("softmax", config=config_from_hf(llama2_7b_config(), "softmax")))
    student = convert_model(teacher, "dijiang")
tensors = [*student.parameters(), *student.buffers(), *teacher.parameters()]
print(json.dumps({
    "meta": all(t.is_meta for t in tensors),
    "teacher_params": sum(p.numel() for p in teacher.parameters()),
    "student_params": sum(p.numel() for p in student.parameters()),
    "mixer": student.config.mixer,
    "state": {n: [decode_state_size(m, n) for m in (teacher, student)] for n in (2048, 8192)},
    "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
}))
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["meta"] and got["mixer"] == "dijiang"
    assert got["teacher_params"] == 6_738_415_616  # LLaMA-2-7B's published count
    assert got["student_params"] >= got["teacher_params"]
    softmax, dijiang = got["state"]["2048"]
    assert softmax == 2 * 32 * 4096 * 2048  # keys and values of every layer
    assert dijiang == got["state"]["8192"][1] < softmax  # a fixed-size state, whatever the length
    assert got["state"]["8192"][0] == 4 * softmax
    assert got["maxrss_kb"] < 2 * 1024 * 1024  # < 2 GB: no weight allocated


def test_a_definition_is_keyed_on_its_stand_ins_names_not_the_folder_they_were_made_in(tmp_path):
    """A reference made in one run folder stays comparable with a run made in another."""
    from harness.pipeline.reproduce import definition_hash
    from harness.pipeline.runners import load_experiment
    from harness.pipeline.spec import load_profile

    profile = load_profile("paper-offline")
    here, there = (standins.resolve(profile, tmp_path / d / "paper-offline") for d in ("a", "b"))
    assert here.data != there.data  # two different local folders...
    assert standins.unresolve(here) == standins.unresolve(there) == profile  # ...written back as named
    exps = [load_experiment("table2_methods", p) for p in (here, there)]
    assert definition_hash(exps[0]) == definition_hash(exps[1])
    tiny = load_profile("tiny")
    assert standins.unresolve(tiny) is tiny  # no stand-ins: keyed as before
