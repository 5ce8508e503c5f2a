"""One training entry point: pretrain a teacher, convert a teacher and fine-tune it, or train any model
from scratch — on one CPU or under ``accelerate launch`` on many GPUs.

* **Pretraining** a teacher: ``model`` is a config dict (``MixerLMConfig`` fields, ``mixer: softmax``).
* **Conversion + fine-tuning** (paper Algorithm 1, Sec. 4): ``model`` is a checkpoint directory and
  ``mixer`` a method; GPT-NeoX/LLaMA checkpoints go through :func:`harness.convert.convert_checkpoint`,
  the suite's own MixerLM teachers through :func:`harness.convert_model.convert_model`.
* **From scratch**: a config dict with any registered mixer, or ``model_type`` naming any
  transformers causal-LM architecture (e.g. ``mamba``).

Budgets are in tokens (``tokens``; steps = tokens / (batch_size x block_size)), so "1/16 of the
teacher's tokens" is a config value. AdamW, linear warm-up + cosine decay, gradient clipping and
accumulation; bf16 autocast on GPU, fp32 on CPU. ``batch_size`` is the *global* batch (sequences per
optimizer step); each process takes ``batch_size / (grad_accum x processes)`` per micro-step, and the
data order is a function of the step (:class:`harness.data.packing.BlockSampler`), so one process
and many processes see the same blocks and give the same loss curve.

Output directory::

    config.json        the run's config and its hash (a different config refuses to reuse the dir)
    log.jsonl          one line per step: step, loss, lr, tokens, wall_time, grad_norm, tokens_per_s
    checkpoints/step-N accelerate state (model, optimizer, RNG) + trainer_state.json, written to
                       step-N.tmp and renamed, so a kill never leaves a half checkpoint
    model/             the final model (save_pretrained, safetensors) and its tokenizer
    summary.json       final loss, tokens, wall time, config hash, validation loss, corpus metadata

A killed run started again with the same config resumes from its last checkpoint with the same
data order; a finished run is reused (same config) or refused (different config, unless
``overwrite``). A non-finite loss or gradient norm stops the run before the optimizer step, naming
the last good checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.data.corpus import CorpusError, load_corpus
from harness.data.packing import BlockSampler, PackedBlocks, pack
from harness.data.tokenizer import check_vocab, load_tokenizer
from harness.fingerprint import Fingerprint, all_method_modules, fingerprint, method_modules
from harness.io import atomic_write_json, atomic_write_text
from harness.objectives import OBJECTIVES, make_objective
from harness.provenance import environment
from harness.schedules import warmup_cosine

#: the default model: a tiny GPT-NeoX-layout softmax teacher for the byte tokenizer
DEFAULT_MODEL: dict[str, Any] = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
#: config fields that do not change what is computed (left out of the config hash)
NON_RESULT_FIELDS = frozenset(
    {"out_dir", "stop_after", "checkpoint_every", "keep_checkpoints", "log_every", "progress", "cache_dir", "overwrite"}
)


class TrainConfigError(ValueError):
    """A training configuration that cannot work."""


class RunExistsError(RuntimeError):
    """The output directory holds another run (or a finished one that must not be overwritten)."""


class TrainingDiverged(RuntimeError):
    """The loss or gradient norm became NaN/inf."""


@dataclass
class TrainConfig:
    """Everything a training run needs. Load with :meth:`from_file` (YAML/JSON) or the CLI flags.

    ``model``: a config dict (``model_type`` defaults to ``mixer_lm``; ``vocab_size`` defaults to the
    tokenizer's size), a checkpoint directory, or a YAML/JSON file holding a config dict.
    ``mixer``/``mixer_options``: the method in every layer (for a checkpoint: convert to it).
    ``tokenizer``: ``"byte"``, a name/path, or ``"auto"`` (the checkpoint's own tokenizer when
    ``model`` is a directory that has one, else byte-level).
    ``batch_size``: global sequences per optimizer step. ``tokens``: the token budget.
    ``warmup``: warm-up steps (>= 1) or a fraction of all steps (< 1). ``schedule``: ``cosine`` decays
    to ``min_lr_ratio x lr``; ``constant`` keeps ``lr`` after warm-up.
    ``stop_after``: stop (as if killed) after this many optimizer steps in this invocation.
    """

    model: dict[str, Any] | str = field(default_factory=lambda: dict(DEFAULT_MODEL))
    mixer: str | None = None
    mixer_options: dict[str, Any] = field(default_factory=dict)
    data: str = "stdlib"
    tokenizer: str = "auto"
    block_size: int = 256
    batch_size: int = 8
    grad_accum: int = 1
    tokens: int = 200_000
    lr: float = 1e-3
    warmup: float = 0.05
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0
    seed: int = 0
    mixed_precision: str = "auto"
    eval_blocks: int = 32
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 1
    out_dir: str = "runs/train"
    cache_dir: str | None = None
    stop_after: int | None = None
    progress: bool = True
    overwrite: bool = False
    objective: str = "lm"
    teacher: str | None = None
    objective_options: dict[str, Any] = field(default_factory=dict)
    layer_mixers: dict[str, Any] = field(default_factory=dict)
    layer_selection: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.tokens = int(float(self.tokens))
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        self.validate()

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise TrainConfigError(msg)

        need(self.block_size >= 2, f"block_size must be >= 2, got {self.block_size}.")
        need(self.batch_size >= 1 and self.grad_accum >= 1, "batch_size and grad_accum must be >= 1.")
        need(
            self.batch_size % self.grad_accum == 0,
            f"batch_size {self.batch_size} (global) must be divisible by grad_accum {self.grad_accum}.",
        )
        need(
            self.tokens >= self.batch_size * self.block_size,
            (
                f"token budget {self.tokens} is less than one step (batch_size x block_size = "
                f"{self.batch_size * self.block_size}); raise tokens."
            ),
        )
        need(self.lr > 0 and self.warmup >= 0, "lr must be > 0 and warmup >= 0.")
        need(
            self.schedule in ("cosine", "constant"), f"schedule must be 'cosine' or 'constant', got {self.schedule!r}."
        )
        need(0 <= self.min_lr_ratio <= 1, "min_lr_ratio must be in [0, 1].")
        need(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"betas must be two numbers in [0, 1), got {self.betas}.",
        )
        need(self.grad_clip >= 0, "grad_clip must be >= 0 (0 disables clipping).")
        need(self.mixed_precision in ("auto", "no", "bf16", "fp16"), "mixed_precision must be auto, no, bf16 or fp16.")
        need(self.checkpoint_every >= 0 and self.keep_checkpoints >= 1, "checkpoint_every >= 0, keep_checkpoints >= 1.")
        need(self.stop_after is None or self.stop_after >= 1, "stop_after must be >= 1.")
        need(isinstance(self.model, (dict, str)), "model must be a config dict or a checkpoint path.")
        need(self.objective in OBJECTIVES, f"objective must be one of {list(OBJECTIVES)}, got {self.objective!r}.")
        need(
            self.objective == "lm" or self.teacher_source is not None,
            f"objective {self.objective!r} needs a teacher checkpoint: set teacher, or convert from a checkpoint.",
        )

    # -- derived ------------------------------------------------------------------------------------
    @property
    def teacher_source(self) -> str | None:
        """The frozen teacher of a ``distill``/``transfer`` objective: ``teacher``, else ``model``
        when it names a checkpoint (the model being converted)."""
        return self.teacher or (self.model if isinstance(self.model, str) else None)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.block_size

    @property
    def total_steps(self) -> int:
        return math.ceil(self.tokens / self.tokens_per_step)

    @property
    def warmup_steps(self) -> int:
        return int(self.warmup) if self.warmup >= 1 else int(round(self.warmup * self.total_steps))

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based): linear warm-up from ``lr/warmup`` to
        ``lr``, then cosine decay to ``min_lr_ratio x lr`` at the last step, or constant
        (:func:`harness.schedules.warmup_cosine`)."""
        w = self.warmup_steps
        return warmup_cosine(
            step,
            peak=self.lr,
            warmup_steps=w,
            decay_steps=max(1, self.total_steps - w - 1),
            floor=self.min_lr_ratio * self.lr,
            constant=self.schedule == "constant",
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    def methods(self) -> list[str]:
        """The methods this config names: ``mixer``, and in a model config dict its ``mixer`` (a name
        or one per layer) and ``layer_mixers`` overrides."""
        model = self.model if isinstance(self.model, dict) else {}
        found: list[str] = []
        for named in (self.mixer, model.get("mixer")):
            found += [named] if isinstance(named, str) else [str(n) for n in named or []]
        overrides = [*(model.get("layer_mixers") or {}).values(), *self.layer_mixers.values()]
        found += [str(v["mixer"]) for v in overrides if isinstance(v, dict) and v.get("mixer")]
        return sorted(set(found))

    def code_fingerprint(self) -> Fingerprint:
        """The code this run's result depends on (:mod:`harness.fingerprint`): the import closure of
        :mod:`harness.train` and of the modules defining its :meth:`methods` (every method's when the
        config names none: a checkpoint trained as it is)."""
        names = self.methods()
        modules = method_modules(names) if names else all_method_modules()
        return fingerprint(["harness.train", *modules])

    def config_hash(self) -> str:
        """sha256 of the fields that determine the result (not out_dir, checkpointing, logging) and of
        the code that computes it (:meth:`code_fingerprint`): a run made by other code is not reused."""
        d = {k: v for k, v in self.to_dict().items() if k not in NON_RESULT_FIELDS}
        d["code"] = self.code_fingerprint().digest
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise TrainConfigError(f"unknown training config key(s) {unknown}; known keys: {sorted(known)}.")
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides: Any) -> TrainConfig:
        return cls.from_dict({**_read_mapping(Path(path)), **overrides})


@dataclass
class TrainResult:
    """What a run produced (also written to ``summary.json``)."""

    out_dir: str
    config_hash: str
    finished: bool
    steps: int
    tokens: int
    final_loss: float | None
    wall_time_s: float
    val_loss: float | None = None
    model_dir: str | None = None
    reused: bool = False
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepInfo:
    """Passed to callbacks after every optimizer step (a callback may raise to stop the run)."""

    step: int  # optimizer steps completed
    loss: float
    lr: float
    tokens: int
    model: torch.nn.Module
    accelerator: Any


# -- small helpers ----------------------------------------------------------------------------------
def _read_mapping(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise TrainConfigError(f"config file {path} does not exist.")
    text = path.read_text()
    import yaml

    try:
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        kind = "YAML" if path.suffix in (".yaml", ".yml") else "JSON"
        raise TrainConfigError(f"{path} is not valid {kind}: {err}") from None
    if not isinstance(data, dict):
        raise TrainConfigError(f"{path} must hold a mapping of config keys, got {type(data).__name__}.")
    return data


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_json(path, obj, indent=1, sort_keys=False)


def _checkpoints(ckpt_root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (renamed from .tmp, with trainer_state.json), oldest first."""
    out = []
    if ckpt_root.is_dir():
        for p in ckpt_root.iterdir():
            if p.name.startswith("step-") and not p.name.endswith(".tmp") and (p / "trainer_state.json").is_file():
                out.append((int(p.name[5:]), p))
    return sorted(out)


def _log_step(line: str) -> float:
    """The step of a log line; a line cut short by a kill counts as after every checkpoint."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


def _resolve_mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


# -- model and data ---------------------------------------------------------------------------------
def _model_source(config: TrainConfig) -> tuple[dict[str, Any] | None, Path | None]:
    """(config dict, None) or (None, local checkpoint dir)."""
    if isinstance(config.model, dict):
        return dict(config.model), None
    path = Path(config.model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TrainConfigError(
                f"model directory {path} has no config.json; pass a checkpoint dir or a config dict."
            )
        return None, path
    if path.is_file() and path.suffix in (".json", ".yaml", ".yml"):
        return _read_mapping(path), None
    if not path.exists() and config.model.count("/") == 1 and not config.model.startswith((".", "/", "~")):
        from harness.convert import resolve_checkpoint

        return None, resolve_checkpoint(config.model)  # a hub id: downloaded (or a clear offline error)
    raise TrainConfigError(
        f"model {config.model!r} is neither a checkpoint directory, a hub id, nor a .json/.yaml model config "
        "file (or pass a config dict)."
    )


def resolve_tokenizer(config: TrainConfig) -> Any:
    """The run's tokenizer (``auto``: the checkpoint's own when it ships one, else byte-level)."""
    name = config.tokenizer
    if name == "auto":
        _, ckpt = _model_source(config)
        has_own = ckpt is not None and any((ckpt / f).is_file() for f in ("tokenizer_config.json", "tokenizer.json"))
        name = str(ckpt) if has_own else "byte"
    return load_tokenizer(name)


def _config_from_spec(spec: dict[str, Any], tokenizer: Any) -> Any:
    """A transformers config from a config dict (``model_type`` defaults to ``mixer_lm``; vocabulary
    size and special-token ids default to the tokenizer's)."""
    from transformers import AutoConfig

    from harness.modeling import MixerLMConfig

    spec = dict(spec)
    model_type = spec.pop("model_type", "mixer_lm")
    spec.setdefault("vocab_size", len(tokenizer))
    for key in ("eos_token_id", "bos_token_id", "pad_token_id"):
        spec.setdefault(key, getattr(tokenizer, key, None))
    if model_type != "mixer_lm":
        return AutoConfig.for_model(model_type, **spec)
    return MixerLMConfig(**spec)


def build_model(config: TrainConfig, tokenizer: Any) -> torch.nn.Module:
    """The model to train (fp32, CPU): :func:`harness.factory.build_model` of what :class:`TrainConfig`
    ``model``, ``mixer`` and ``mixer_options`` describe:

    * a config dict: a fresh model of that config, with ``mixer`` in every layer — or, for a method of
      kind ``model`` (e.g. ``mamba``), that architecture sized after the config, trained from scratch;
    * a checkpoint: converted to ``mixer`` (our MixerLM, GPT-NeoX, LLaMA; paper Algorithm 1), any other
      causal LM as it is — or, for a method of kind ``model``, that architecture sized after the
      checkpoint's config.
    """
    import harness  # noqa: F401  (registers mixer_lm with the Auto classes)
    from harness.factory import ModelSpec
    from harness.factory import build_model as build

    spec, ckpt = _model_source(config)
    source = {"teacher": ckpt} if ckpt is not None else {"config": _config_from_spec(spec, tokenizer)}
    return build(
        ModelSpec(
            config.mixer,
            options=config.mixer_options,
            layer_mixers={int(i): v for i, v in config.layer_mixers.items()},
            layer_selection=config.layer_selection,
            **source,
        )
    )


def _teacher(config: TrainConfig) -> torch.nn.Module | None:
    """The frozen teacher a ``distill``/``transfer`` objective compares with (``None`` for ``lm``), as
    the suite's decoder with softmax attention: our own checkpoints load as they are, GPT-NeoX/LLaMA
    ones are converted to ``softmax`` (which reproduces their logits, see :mod:`harness.convert`)."""
    if config.objective == "lm":
        return None
    from harness.factory import ModelSpec, load_model
    from harness.factory import build_model as build

    _, ckpt = _model_source(dataclasses.replace(config, model=config.teacher_source, objective="lm"))
    if ckpt is None:
        raise TrainConfigError(f"teacher {config.teacher_source!r} must be a checkpoint directory or hub id.")
    if json.loads((ckpt / "config.json").read_text()).get("model_type") == "mixer_lm":
        return load_model(ckpt)
    return build(ModelSpec("softmax", teacher=ckpt)).eval()


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not biases, norms or per-channel vectors)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)


@torch.no_grad()
def _validation_loss(
    model: torch.nn.Module, blocks: PackedBlocks | None, config: TrainConfig, accelerator: Any
) -> float | None:
    """Mean next-token loss (nats) over the first ``eval_blocks`` validation blocks, sharded over processes."""
    if blocks is None or config.eval_blocks <= 0:
        return None
    world, rank = accelerator.num_processes, accelerator.process_index
    n = min(config.eval_blocks, len(blocks)) // world * world
    if n == 0:
        return None
    micro = max(1, config.batch_size // (config.grad_accum * world))
    mine = list(range(rank, n, world))
    model.eval()
    total = torch.zeros((), device=accelerator.device)
    for i in range(0, len(mine), micro):
        x = torch.from_numpy(blocks.batch(mine[i : i + micro])).to(accelerator.device)
        total += model(input_ids=x, labels=x).loss.float() * len(x)
    model.train()
    return float(accelerator.reduce(total, "sum")) / n


# -- the run ----------------------------------------------------------------------------------------
def _check_out_dir(config: TrainConfig, out: Path) -> tuple[TrainResult | None, bool]:
    """Check the output dir against this config (read-only, on every process): returns the finished
    identical run for reuse, and whether the dir must be wiped first (``overwrite``); a different
    run is refused."""
    h = config.config_hash()
    cfg_file, summary_file = out / "config.json", out / "summary.json"
    if cfg_file.is_file():
        old = json.loads(cfg_file.read_text())
        same = old.get("config_hash") == h
        if not same and not config.overwrite:
            raise RunExistsError(
                f"{out} holds a different run (config hash {old.get('config_hash')} vs {h}: its config or the "
                "code that trains it differs); choose another out_dir, or pass overwrite=True (--overwrite) to "
                "delete it."
            )
        if same and summary_file.is_file() and not config.overwrite:
            s = json.loads(summary_file.read_text())
            return TrainResult(
                out_dir=str(out),
                config_hash=h,
                finished=True,
                steps=s["steps"],
                tokens=s["tokens"],
                final_loss=s["final_loss"],
                wall_time_s=s["wall_time_s"],
                val_loss=s.get("val_loss"),
                model_dir=s.get("model_dir"),
                reused=True,
                summary=s,
            ), False
        return None, config.overwrite
    return None, False


def train(config: TrainConfig, callbacks: Sequence[Callable[[StepInfo], None]] = ()) -> TrainResult:
    """Run (or resume, or reuse) the training described by ``config``; see the module docstring."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, set_seed
    from tqdm.auto import tqdm

    mp = _resolve_mixed_precision(config.mixed_precision)
    # cpu=True on machines without an accelerator, so torchrun's env gives a gloo MULTI_CPU run
    accelerator = Accelerator(
        cpu=not torch.accelerator.is_available(), mixed_precision=mp, gradient_accumulation_steps=config.grad_accum
    )
    is_main, world, rank = accelerator.is_main_process, accelerator.num_processes, accelerator.process_index
    out = Path(config.out_dir)
    reused, wipe = _check_out_dir(config, out)
    accelerator.wait_for_everyone()
    if reused is not None:
        return reused
    if wipe and is_main:
        shutil.rmtree(out)
    if config.batch_size % (config.grad_accum * world):
        raise TrainConfigError(
            f"global batch_size {config.batch_size} must be divisible by grad_accum {config.grad_accum} x "
            f"{world} processes."
        )
    micro = config.batch_size // (config.grad_accum * world)
    ckpt_root = out / "checkpoints"
    h = config.config_hash()
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        for stale in ckpt_root.glob("step-*.tmp") if ckpt_root.is_dir() else []:
            shutil.rmtree(stale)  # a checkpoint interrupted while being written
        if not (out / "config.json").is_file():
            _write_json(out / "config.json", {"config_hash": h, "config": config.to_dict()})

    # data (the main process builds the token cache first; the others then read it)
    tokenizer = resolve_tokenizer(config)
    with accelerator.main_process_first():
        corpus = load_corpus(config.data)
        budget = config.tokens + config.block_size if corpus.meta.get("content_hash") is False else None
        train_blocks = pack(corpus, tokenizer, "train", config.block_size, budget, config.cache_dir)
        try:
            val_blocks = pack(
                corpus,
                tokenizer,
                "validation",
                config.block_size,
                (config.eval_blocks + 1) * config.block_size if budget else None,
                config.cache_dir,
            )
        except CorpusError:
            val_blocks = None  # a corpus too small for one validation block: no validation loss
    sampler = BlockSampler(len(train_blocks), config.batch_size, seed=config.seed)

    set_seed(config.seed)
    model = build_model(config, tokenizer)
    teacher = _teacher(config)
    if teacher is not None:
        teacher.to(accelerator.device)
    objective = make_objective(config.objective, model, teacher, config.objective_options)  # before the optimizer
    vocab = model.get_input_embeddings().num_embeddings
    check_vocab(tokenizer, vocab)
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = _optimizer(model, config)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:  # no dataloader: tell DeepSpeed the batch
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = micro
        ds["gradient_accumulation_steps"] = config.grad_accum
        ds["gradient_clipping"] = config.grad_clip
        ds["train_batch_size"] = config.batch_size
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()

    start, wall_before, last_loss = 0, 0.0, None
    done = _checkpoints(ckpt_root)
    if done:
        start_step, path = done[-1]
        accelerator.load_state(str(path))
        state = json.loads((path / "trainer_state.json").read_text())
        start, wall_before, last_loss = start_step, state["wall_time_s"], state.get("loss")
    log_path = out / "log.jsonl"
    if is_main:  # drop log lines written after the checkpoint we resume from
        lines = log_path.read_text().splitlines() if log_path.is_file() else []
        kept = [ln for ln in lines if _log_step(ln) <= start]
        atomic_write_text(log_path, "".join(ln + "\n" for ln in kept))
    accelerator.wait_for_everyone()

    total = config.total_steps
    end = total if config.stop_after is None else min(total, start + config.stop_after)
    bar = tqdm(total=total, initial=start, disable=not (is_main and config.progress), unit="step", dynamic_ncols=True)
    t_start = time.perf_counter()
    clip = config.grad_clip if config.grad_clip > 0 else float("inf")
    log_file = log_path.open("a") if is_main else None
    tokens_done_here = 0

    def save_checkpoint(step: int, loss: float) -> None:
        tmp = ckpt_root / f"step-{step:08d}.tmp"
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if is_main:
            _write_json(
                tmp / "trainer_state.json",
                {
                    "step": step,
                    "tokens": step * config.tokens_per_step,
                    "loss": loss,
                    "wall_time_s": wall_before + time.perf_counter() - t_start,
                    "config_hash": h,
                },
            )
            final = ckpt_root / f"step-{step:08d}"
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for _, old in _checkpoints(ckpt_root)[: -config.keep_checkpoints]:
                shutil.rmtree(old)
        accelerator.wait_for_everyone()

    try:
        for step in range(start, end):
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), device=accelerator.device)
            lr = config.lr_at(step)
            for m in range(config.grad_accum):
                idx = sampler.shard(step, m, config.grad_accum, rank, world)
                x = torch.from_numpy(train_blocks.batch(idx)).to(accelerator.device)
                with accelerator.accumulate(model):
                    loss = objective.loss(model, x)
                    accelerator.backward(loss)
                    loss_sum += loss.detach().float()
                    if accelerator.sync_gradients:
                        mean_loss = float(accelerator.reduce(loss_sum / config.grad_accum, "mean"))
                        norm = accelerator.clip_grad_norm_(model.parameters(), clip)
                        grad_norm = None if norm is None else float(norm)  # DeepSpeed may not report it
                        # fp16's loss scaler skips steps with inf gradients by itself
                        bad_norm = grad_norm is not None and not math.isfinite(grad_norm) and mp != "fp16"
                        if not math.isfinite(mean_loss) or bad_norm:
                            good = _checkpoints(ckpt_root)
                            raise TrainingDiverged(
                                f"non-finite {'loss' if not math.isfinite(mean_loss) else 'gradient norm'} "
                                f"(loss={mean_loss}, grad_norm={grad_norm}) at step {step + 1}; the run stopped "
                                "without applying it. Last good checkpoint: "
                                f"{good[-1][1] if good else 'none (no checkpoint written yet)'}. "
                                "Lower lr, raise warmup or enable grad_clip, then start again (it resumes "
                                "from that checkpoint) or use a new out_dir."
                            )
                        for group in optimizer.param_groups:
                            group["lr"] = lr
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            done_steps = step + 1
            tokens_done_here += config.tokens_per_step
            last_loss = mean_loss
            elapsed = time.perf_counter() - t_start
            tps = tokens_done_here / max(elapsed, 1e-9)
            if is_main and (done_steps % config.log_every == 0 or done_steps == total):
                log_file.write(
                    json.dumps(
                        {
                            "step": done_steps,
                            "loss": mean_loss,
                            "lr": lr,
                            "tokens": done_steps * config.tokens_per_step,
                            "wall_time": wall_before + elapsed,
                            "grad_norm": grad_norm,
                            "tokens_per_s": tps,
                            "epoch": sampler.epoch_of(done_steps),
                            "step_time": time.perf_counter() - t0,
                        }
                    )
                    + "\n"
                )
                log_file.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.4f}", tok_s=f"{tps:,.0f}", lr=f"{lr:.2e}")
            for cb in callbacks:
                cb(StepInfo(done_steps, mean_loss, lr, done_steps * config.tokens_per_step, model, accelerator))
            if config.checkpoint_every and done_steps % config.checkpoint_every == 0 and done_steps < total:
                save_checkpoint(done_steps, mean_loss)
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()

    wall = wall_before + time.perf_counter() - t_start
    if end < total:  # stopped early on request: resumable from the last checkpoint
        return TrainResult(str(out), h, False, end, end * config.tokens_per_step, last_loss, wall)

    val_loss = _validation_loss(model, val_blocks, config, accelerator)
    model_dir = out / "model"
    unwrapped = accelerator.unwrap_model(model)
    state_dict = accelerator.get_state_dict(model)
    if is_main:
        tmp_dir = out / "model.tmp"
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir)
    accelerator.wait_for_everyone()
    unwrapped.save_pretrained(
        str(out / "model.tmp"), state_dict=state_dict, is_main_process=is_main, save_function=accelerator.save
    )
    accelerator.wait_for_everyone()
    summary = {
        "config_hash": h,
        "final_loss": last_loss,
        "val_loss": val_loss,
        "steps": total,
        "tokens": total * config.tokens_per_step,
        "wall_time_s": wall,
        "n_params": n_params,
        "vocab_size": vocab,
        "tokenizer": type(tokenizer).__name__,
        "processes": world,
        "mixed_precision": mp,
        "model_dir": str(model_dir),
        "corpus": corpus.meta,
        "train_blocks": len(train_blocks),
        "epochs": sampler.epoch_of(total),
        "environment": environment(packages=("torch", "transformers", "accelerate")),
        "config": config.to_dict(),
    }
    if is_main:
        tokenizer.save_pretrained(str(out / "model.tmp"))
        if model_dir.exists():
            shutil.rmtree(model_dir)
        os.replace(out / "model.tmp", model_dir)
        _write_json(out / "summary.json", summary)
    accelerator.wait_for_everyone()
    return TrainResult(
        str(out),
        h,
        True,
        total,
        total * config.tokens_per_step,
        last_loss,
        wall,
        val_loss,
        str(model_dir),
        summary=summary,
    )


# -- command line -----------------------------------------------------------------------------------
def _parse_value(name: str, kind: str, text: str) -> Any:
    """A CLI value for field ``name`` of annotated type ``kind``: numbers for int/float fields (``1e9``
    allowed for token counts), JSON for dicts and pairs, the plain string for names and paths."""
    flag = "--" + name.replace("_", "-")
    try:
        if kind.startswith("int"):
            value = float(text)
            if value != int(value):
                raise ValueError
            return int(value)
        if kind.startswith("float"):
            return float(text)
    except ValueError:
        raise TrainConfigError(f"{flag} needs a number, got {text!r}.") from None
    if kind.startswith("str") or (name == "model" and not text.lstrip().startswith("{")):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise TrainConfigError(f"{flag} must be JSON, got {text!r}.") from None


#: the help of each ``--<field>`` flag of ``python -m harness train`` (a test checks every field has one)
FIELD_HELP: dict[str, str] = {
    "model": "a model config as JSON (MixerLMConfig fields; 'model_type' names another transformers "
    "architecture), a checkpoint directory or hub id to convert/fine-tune, or a .json/.yaml model config file",
    "mixer": "method in every layer (see `python -m harness methods`); for a checkpoint: convert it to this method",
    "mixer_options": "the method's options as JSON, e.g. '{\"feature_dim\": 64}'",
    "data": "corpus: 'stdlib' (embedded), a folder of text files, a .txt/.jsonl file, or hf:NAME[:CONFIG]",
    "tokenizer": "'byte', a tokenizer name or path, or 'auto' (the checkpoint's own, else byte-level)",
    "block_size": "tokens per training sequence",
    "batch_size": "global sequences per optimizer step (split over processes and accumulation steps)",
    "grad_accum": "gradient accumulation steps per optimizer step",
    "tokens": "token budget of the run (1e6 allowed); steps = tokens / (batch_size x block_size)",
    "lr": "peak learning rate (AdamW)",
    "warmup": "warm-up: steps (>= 1) or a fraction of all steps (< 1)",
    "schedule": "'cosine' (decay to min_lr_ratio x lr) or 'constant' after warm-up",
    "min_lr_ratio": "final learning rate of the cosine schedule, as a fraction of lr",
    "weight_decay": "AdamW weight decay (matrices only)",
    "betas": "AdamW betas as JSON, e.g. '[0.9, 0.95]'",
    "eps": "AdamW epsilon",
    "grad_clip": "clip the gradient norm to this (0: no clipping)",
    "seed": "random seed (initialization and data order)",
    "mixed_precision": "'auto' (bf16 on a GPU that has it, else fp32), 'no', 'bf16' or 'fp16'",
    "eval_blocks": "validation blocks scored at the end (0: no validation loss)",
    "checkpoint_every": "save a resumable checkpoint every N optimizer steps (0: never)",
    "keep_checkpoints": "how many of the newest checkpoints to keep",
    "log_every": "write a log.jsonl line every N steps",
    "out_dir": "output directory of the run (a killed run started again resumes there)",
    "cache_dir": "folder of tokenized-corpus caches (none: $DIJIANG_CACHE/tokens, ~/.cache/dijiang-suite/tokens)",
    "stop_after": "stop (resumably) after N optimizer steps in this invocation",
    "progress": "show a progress bar (--no-progress: none)",
    "overwrite": "delete a different or finished run in out_dir instead of refusing",
    "objective": "training loss (harness/objectives.py): 'lm' (the paper's fine-tune), 'distill' (LM + KL to the "
    "teacher) or 'transfer' (attention transfer: only the new mixer parameters, layer-output MSE)",
    "teacher": "frozen teacher checkpoint for 'distill'/'transfer' (default: model, when it is a checkpoint)",
    "layer_mixers": "a hybrid: layers given another method, as JSON, e.g. '{\"1\": {\"mixer\": \"softmax\"}}' "
    "(the other layers get mixer)",
    "layer_selection": "how the hybrid's layers were chosen, as JSON (recorded in the model config)",
    "objective_options": "the objective's options as JSON, e.g. '{\"alpha\": 0.5, \"temperature\": 2.0}' (distill)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags: ``--config FILE`` (YAML/JSON) and one ``--<field>`` per :class:`TrainConfig` field
    (overriding the file); dict/list values as JSON, e.g. ``--model '{"hidden_size": 256}'``."""
    parser.add_argument("--config", help="YAML/JSON file of training config keys (the flags below override it)")
    defaults = TrainConfig.__dataclass_fields__
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = defaults[f.name].default
        if default is dataclasses.MISSING:
            default = defaults[f.name].default_factory()  # type: ignore[misc]
        shown = json.dumps(default) if isinstance(default, (dict, list, tuple)) else default
        text = f"{FIELD_HELP[f.name]} (default: {shown})"
        if f.type in ("bool",):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(), help=text)
    parser.add_argument("--out", dest="out_dir", default=None, help="alias of --out-dir")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = {}
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            overrides[f.name] = value if isinstance(value, bool) else _parse_value(f.name, str(f.type), value)
    if args.config:
        return TrainConfig.from_file(args.config, **overrides)
    return TrainConfig.from_dict(overrides)


def main(args: argparse.Namespace) -> int:
    """Train as the flags say and print one JSON summary line (errors: see :mod:`harness.cli`)."""
    result = train(config_from_args(args))
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # one summary line per run, from the main process
    status = "reused finished run" if result.reused else ("finished" if result.finished else "stopped early")
    print(
        json.dumps(
            {
                "status": status,
                "out_dir": result.out_dir,
                "steps": result.steps,
                "tokens": result.tokens,
                "final_loss": result.final_loss,
                "val_loss": result.val_loss,
                "wall_time_s": round(result.wall_time_s, 2),
                "config_hash": result.config_hash,
            }
        )
    )
    return 0
