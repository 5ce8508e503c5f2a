"""Local stand-ins for what the ``paper`` profile downloads, at the true shapes, so that the paper's
code paths run end to end offline on CPU (the ``paper-offline`` profile) before a GPU user runs them.

The ``paper`` profile converts hub checkpoints (``EleutherAI/pythia-70m`` ...), tokenizes with their
GPT-NeoX-20B tokenizer and streams the Pile (``data: pile``). Each has a stand-in
here, made on demand in ``<run folder>/standins/<name>/`` (never committed) and read back through the
very code a hub download goes through:

* **checkpoints** ``pythia-70m``, ``pythia-160m``: ``GPTNeoXForCausalLM`` with the published
  ``config.json`` of the Pythia model (:data:`PYTHIA_HUB_CONFIGS`: hidden 512/768, 6/12 layers, 8/12
  heads, vocabulary 50,304, rotary on 25 % of each head, 2,048 positions), random weights (seed
  :data:`SEED`) saved with ``save_pretrained`` in float16 as the hub's are, a ``config.json`` in the
  hub's form written over save_pretrained's (its transformers-4 keys ``rotary_pct``/``rotary_emb_base``,
  read through the same legacy-key translation), and the tokenizer beside them as in the hub
  repositories. They load with
  :func:`harness.conversion.hf_checkpoint.convert_checkpoint` like a downloaded snapshot;
* **tokenizer** ``gpt-neox-20b``: a byte-level BPE trained here with the ``tokenizers`` library on the
  embedded corpus's train split (``load_corpus("stdlib")``), with GPT-NeoX's special tokens at its ids
  (``<|endoftext|>`` 0: bos = eos = unk; ``<|padding|>`` 1), at most :data:`TOKENIZER_VOCAB` tokens (the
  size of GPT-NeoX-20B's tokenizer, under the checkpoints' 50,304 embedding rows), saved as a
  ``GPTNeoXTokenizer`` and read back with ``AutoTokenizer.from_pretrained``;
* **dataset** ``pile``: the embedded corpus written as JSON-lines shards in the Pile's row format
  (``{"text", "meta"}``), one file set per split (``data/train-0000k-of-00004.jsonl`` ...), read as
  ``hf:<folder>``, i.e. ``datasets.load_dataset(<folder>, streaming=True)``: the Pile's path, where
  training packs only its token budget from the stream (:func:`harness.data.packing.pack`).

A profile names a stand-in as ``standin:<name>`` (teacher ``checkpoint:``, ``data:``, ``tokenizer:``).
:func:`resolve` replaces those by the local paths (``checkpoint: <folder>``, ``data: hf:<folder>``)
without making anything (``--dry-run``); :func:`prepare` makes the missing ones (each written to a
temporary folder and renamed, with ``standin.json`` saying what made it), idempotently.
:func:`llama2_7b_config` gives LLaMA-2-7B's configuration for building it on the meta device.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.pipeline.spec import Profile, SpecError
from harness.util.io import atomic_write_json

#: how a profile refers to a stand-in (``checkpoint: standin:pythia-70m``, ``data: standin:pile``)
PREFIX = "standin:"
#: the stand-ins' folder under a profile's run folder
FOLDER = "standins"
#: the seed of the stand-in checkpoints' random weights
SEED = 0
#: the stand-in tokenizer's name, and its size: GPT-NeoX-20B's tokenizer (Pythia's) holds 50,277
#: tokens; BPE training stops earlier when the corpus has no more pairs to merge
TOKENIZER = "gpt-neox-20b"
TOKENIZER_VOCAB = 50277
#: GPT-NeoX-20B's special tokens, at ids 0 and 1 as there
EOS, PAD = "<|endoftext|>", "<|padding|>"
#: the stand-in dataset's name, its source corpus and its training shards
DATASET = "pile"
DATASET_SOURCE = "stdlib"
TRAIN_SHARDS = 4
#: the stand-in checkpoints' weight dtype: the hub's Pythia weights are float16 (``torch_dtype`` in their
#: config.json), which :func:`harness.conversion.factory.load_model` keeps for a teacher scored or timed as it is
CHECKPOINT_DTYPE = "float16"


def _pythia(hidden: int, layers: int, heads: int) -> dict[str, Any]:
    """``config.json`` of ``EleutherAI/pythia-*`` in the hub's form (transformers-4 keys; written out here,
    nothing is downloaded; the shapes are checked against the published parameter counts by
    ``tests/test_paper_offline.py``); only the width, depth and heads differ between sizes."""
    return {
        "architectures": ["GPTNeoXForCausalLM"],
        "bos_token_id": 0,
        "eos_token_id": 0,
        "hidden_act": "gelu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": 4 * hidden,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 2048,
        "model_type": "gpt_neox",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "rotary_emb_base": 10000,
        "rotary_pct": 0.25,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "transformers_version": "4.24.0",
        "use_cache": True,
        "use_parallel_residual": True,
        "vocab_size": 50304,
    }


#: stand-in name -> the hub's ``config.json`` (Biderman et al. 2023, Pythia, Table 1 sizes; the same
#: widths, depths and heads as :data:`harness.bench.shapes._PYTHIA`)
PYTHIA_HUB_CONFIGS: dict[str, dict[str, Any]] = {
    "pythia-70m": _pythia(512, 6, 8),
    "pythia-160m": _pythia(768, 12, 12),
}
#: the hub id each stand-in checkpoint stands in for
HUB_IDS: dict[str, str] = {name: f"EleutherAI/{name}" for name in PYTHIA_HUB_CONFIGS}

#: ``config.json`` of ``meta-llama/Llama-2-7b-hf`` (Touvron et al. 2023) in the hub's form (its published
#: 6,738,415,616 parameters are checked by ``tests/test_paper_offline.py``)
LLAMA2_7B_HUB_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 11008,
    "max_position_embeddings": 4096,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 32,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "transformers_version": "4.31.0.dev0",
    "use_cache": True,
    "vocab_size": 32000,
}


def hub_config(name: str) -> Any:
    """The transformers config of a stand-in checkpoint (or ``llama2-7b``), read from its hub
    ``config.json`` the way ``AutoConfig.from_pretrained`` reads the downloaded file."""
    from transformers import AutoConfig

    raw = LLAMA2_7B_HUB_CONFIG if name == "llama2-7b" else PYTHIA_HUB_CONFIGS.get(name)
    if raw is None:
        raise SpecError(f"no stand-in checkpoint {name!r}; known: {', '.join([*PYTHIA_HUB_CONFIGS, 'llama2-7b'])}.")
    return AutoConfig.for_model(**raw)


def llama2_7b_config() -> Any:
    """LLaMA-2-7B's transformers config (nothing downloaded: :data:`LLAMA2_7B_HUB_CONFIG`)."""
    return hub_config("llama2-7b")


# -- naming ---------------------------------------------------------------------------------------
def standin_name(value: str | None) -> str | None:
    """The stand-in ``value`` names (``standin:<name>``), or None."""
    return value[len(PREFIX) :] if isinstance(value, str) and value.startswith(PREFIX) else None


def folder(root: str | os.PathLike) -> Path:
    """Where the stand-ins of the run folder ``root`` (``<results dir>/<profile>``) live."""
    return Path(root).expanduser().resolve() / FOLDER


def referenced(profile: Profile) -> list[str]:
    """The stand-ins ``profile`` names, in the order they are made (the tokenizer first: the
    checkpoints ship it); a checkpoint needs the tokenizer even where the profile does not name it."""
    names = [standin_name(t.checkpoint) for t in profile.teachers.values()]
    names += [standin_name(profile.data), standin_name(profile.tokenizer)]
    found = list(dict.fromkeys(n for n in names if n))
    if any(n in PYTHIA_HUB_CONFIGS for n in found):
        found.append(TOKENIZER)
    unknown = [n for n in found if n not in (*PYTHIA_HUB_CONFIGS, TOKENIZER, DATASET)]
    if unknown:
        raise SpecError(
            f"profile {profile.name!r}: unknown stand-in(s) {unknown}; known: "
            f"{', '.join([*PYTHIA_HUB_CONFIGS, TOKENIZER, DATASET])} (harness.pipeline.standins)."
        )
    order = [TOKENIZER, DATASET, *PYTHIA_HUB_CONFIGS]
    return sorted(set(found), key=order.index)


def resolve(profile: Profile, root: str | os.PathLike) -> Profile:
    """``profile`` with every ``standin:<name>`` replaced by its local path under ``folder(root)``
    (teachers' ``checkpoint: <folder>``, ``data: hf:<folder>``, ``tokenizer: <folder>``); nothing is
    made (:func:`prepare` does). A profile without stand-ins is returned as it is."""
    if not referenced(profile):
        return profile
    base = folder(root)
    teachers = {
        name: dataclasses.replace(t, checkpoint=str(base / n)) if (n := standin_name(t.checkpoint)) else t
        for name, t in profile.teachers.items()
    }
    data, tok = standin_name(profile.data), standin_name(profile.tokenizer)
    return dataclasses.replace(
        profile,
        teachers=teachers,
        data=f"hf:{base / data}" if data else profile.data,
        tokenizer=str(base / tok) if tok else profile.tokenizer,
    )


def unresolve(profile: Profile) -> Profile:
    """The inverse of :func:`resolve`: every stand-in's local path (a folder in a ``standins/`` folder)
    written back as ``standin:<name>``, so that what a definition is keyed on does not depend on where
    the run folder was (a committed reference made elsewhere stays comparable). A profile without
    stand-in paths is returned as it is."""

    def name(value: str | None) -> str | None:
        path = value[3:] if isinstance(value, str) and value.startswith("hf:") else value
        if (
            isinstance(path, str)
            and Path(path).parent.name == FOLDER
            and Path(path).name in (*PYTHIA_HUB_CONFIGS, TOKENIZER, DATASET)
        ):
            return f"{PREFIX}{Path(path).name}"
        return None

    teachers = {
        n: dataclasses.replace(t, checkpoint=name(t.checkpoint) or t.checkpoint) for n, t in profile.teachers.items()
    }
    data, tok = name(profile.data), name(profile.tokenizer)
    if data is None and tok is None and teachers == profile.teachers:
        return profile
    return dataclasses.replace(
        profile, teachers=teachers, data=data or profile.data, tokenizer=tok or profile.tokenizer
    )


# -- making them ----------------------------------------------------------------------------------
def prepare(profile: Profile, root: str | os.PathLike, log: Callable[[str], None] = print) -> list[Path]:
    """Make every stand-in ``profile`` names that is missing under ``folder(root)`` (a stage: a made
    one is kept, a half-made one is made again); returns their folders."""
    base = folder(root)
    out = []
    for name in referenced(profile):
        path = base / name
        if not (path / "standin.json").is_file():
            start = time.time()
            make(name, path, tokenizer_dir=base / TOKENIZER)
            log(f"made stand-in {name} in {time.time() - start:.0f}s: {path}")
        out.append(path)
    return out


def make(name: str, path: str | os.PathLike, *, tokenizer_dir: str | os.PathLike | None = None) -> Path:
    """Make stand-in ``name`` in ``path`` (replacing whatever is there); a checkpoint copies the
    tokenizer from ``tokenizer_dir`` (made there first when missing)."""
    path = Path(path)
    if name == TOKENIZER:
        return make_tokenizer(path)
    if name == DATASET:
        return make_dataset(path)
    if name in PYTHIA_HUB_CONFIGS:
        tok = Path(tokenizer_dir) if tokenizer_dir is not None else path.parent / TOKENIZER
        if not (tok / "standin.json").is_file():
            make_tokenizer(tok)
        return make_checkpoint(path, name, tok)
    raise SpecError(f"unknown stand-in {name!r}; known: {', '.join([*PYTHIA_HUB_CONFIGS, TOKENIZER, DATASET])}.")


def _commit(tmp: Path, path: Path, record: dict[str, Any]) -> Path:
    """Write ``standin.json`` into ``tmp`` and move it to ``path`` (replacing an older one)."""
    from harness.util.provenance import environment

    record = {**record, "environment": environment(packages=("torch", "transformers", "tokenizers", "datasets"))}
    atomic_write_json(tmp / "standin.json", record)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


def _fresh_tmp(path: Path) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def make_tokenizer(
    path: str | os.PathLike,
    corpus: str = DATASET_SOURCE,
    vocab_size: int = TOKENIZER_VOCAB,
    max_docs: int | None = None,
) -> Path:
    """Train the byte-level BPE stand-in for GPT-NeoX-20B's tokenizer on ``corpus``'s train split (the
    first ``max_docs`` documents: tests) and save it in ``path`` as a ``GPTNeoXTokenizer``. BPE training
    is deterministic: the same corpus gives the same vocabulary and merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GPTNeoXTokenizer

    from harness.data.corpus import load_corpus

    path = Path(path)
    source = load_corpus(corpus)
    texts = [d.text for _, d in zip(range(max_docs if max_docs is not None else 1 << 62), source.documents("train"))]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,  # stdlib's ~10 MB reaches GPT-NeoX's 50,277 tokens only with pairs seen once
        special_tokens=[EOS, PAD],  # ids 0 and 1, as in GPT-NeoX-20B's tokenizer
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer, length=len(texts))
    tokenizer = GPTNeoXTokenizer(tokenizer_object=bpe, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=PAD)
    tmp = _fresh_tmp(path)
    tokenizer.save_pretrained(str(tmp))
    return _commit(
        tmp,
        path,
        {
            "standin": TOKENIZER,
            "stands_in_for": "EleutherAI/gpt-neox-20b (Pythia's tokenizer)",
            "kind": "tokenizer",
            "corpus": {"spec": corpus, "hash": source.meta.get("hash"), "documents": len(texts), "split": "train"},
            "vocab_size": len(tokenizer),
        },
    )


def make_dataset(path: str | os.PathLike, corpus: str = DATASET_SOURCE, train_shards: int = TRAIN_SHARDS) -> Path:
    """Write ``corpus`` (its own train/validation/test split) as JSON-lines shards in the Pile's row
    format under ``path/data/``, the layout ``datasets.load_dataset(path, streaming=True)`` reads
    with those three splits."""
    from harness.data.corpus import ALIASES, SPLITS, load_corpus

    path = Path(path)
    source = load_corpus(corpus)
    tmp = _fresh_tmp(path)
    (tmp / "data").mkdir()
    counts = {}
    for split in SPLITS:
        docs = list(source.documents(split))
        n = train_shards if split == "train" else 1
        for k in range(n):
            with open(tmp / "data" / f"{split}-{k:05d}-of-{n:05d}.jsonl", "w", encoding="utf-8") as f:
                for doc in docs[k::n]:
                    row = {"text": doc.text, "meta": {"pile_set_name": corpus, "name": doc.name}}
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        counts[split] = len(docs)
    return _commit(
        tmp,
        path,
        {
            "standin": DATASET,
            "stands_in_for": f"{ALIASES['pile']} (harness.data.corpus.ALIASES['pile'])",
            "kind": "dataset",
            "corpus": {"spec": corpus, "hash": source.meta.get("hash"), "bytes": source.meta.get("bytes")},
            "documents": counts,
            "train_shards": train_shards,
        },
    )


def make_checkpoint(
    path: str | os.PathLike,
    name: str,
    tokenizer_dir: str | os.PathLike,
    seed: int = SEED,
    dtype: str = CHECKPOINT_DTYPE,
    hub: dict[str, Any] | None = None,
) -> Path:
    """A ``GPTNeoXForCausalLM`` of the hub ``config.json`` of ``name`` (or ``hub``, one in the same
    layout: tests shrink it) with random weights (``seed``), saved in ``dtype`` in the hub's layout:
    that ``config.json`` (its ``torch_dtype`` set to ``dtype``), the weights in
    ``model.safetensors``, and the tokenizer of ``tokenizer_dir`` beside them."""
    import torch
    from transformers import AutoConfig, GPTNeoXForCausalLM

    path, tokenizer_dir = Path(path), Path(tokenizer_dir)
    if hub is None and name not in PYTHIA_HUB_CONFIGS:
        raise SpecError(f"no stand-in checkpoint {name!r}; known: {', '.join(PYTHIA_HUB_CONFIGS)}.")
    raw = {**(hub if hub is not None else PYTHIA_HUB_CONFIGS[name]), "torch_dtype": dtype}
    config = AutoConfig.for_model(**raw)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPTNeoXForCausalLM(config)
    tmp = _fresh_tmp(path)
    model.to(getattr(torch, dtype)).save_pretrained(str(tmp))
    del model
    (tmp / "config.json").write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")  # the hub's form
    for f in sorted(tokenizer_dir.iterdir()):
        if f.is_file() and f.name != "standin.json":
            shutil.copy2(f, tmp / f.name)
    return _commit(
        tmp,
        path,
        {
            "standin": name,
            "stands_in_for": HUB_IDS.get(name, name),
            "kind": "checkpoint",
            "seed": seed,
            "weights": f"random (GPTNeoXForCausalLM's own initialisation), {dtype}",
            "tokenizer": str(tokenizer_dir),
        },
    )
