"""The configuration of a training run: what to train, on what, for how long, and its identity.

:class:`TrainConfig` holds every setting of :func:`harness.training.loop.train` (read from YAML/JSON
with :meth:`TrainConfig.from_file`, or from the flags of ``python -m harness train``, whose help is
:data:`FIELD_HELP`); :class:`TrainResult` is what a run produced and :class:`StepInfo` what a callback
sees after each optimizer step. :meth:`TrainConfig.config_hash` identifies a run's result: the fields
that change it (not :data:`NON_RESULT_FIELDS`) and the code that computes it
(:meth:`TrainConfig.code_fingerprint`), so an output directory is reused only by the same run made
by the same code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.training.fingerprint import Fingerprint, all_method_modules, fingerprint, method_modules
from harness.training.objectives import OBJECTIVES
from harness.training.schedules import warmup_cosine

if TYPE_CHECKING:
    import torch

#: the default model: a tiny GPT-NeoX-layout softmax teacher for the byte tokenizer
DEFAULT_MODEL: dict[str, Any] = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
#: config fields that do not change what is computed (left out of the config hash)
NON_RESULT_FIELDS = frozenset(
    {"out_dir", "stop_after", "checkpoint_every", "keep_checkpoints", "log_every", "progress", "cache_dir", "overwrite"}
)

#: the modules that train a run (their import closure is in every run's :meth:`TrainConfig.code_fingerprint`:
#: objectives, schedules, the data pipeline, the model factory... come in through their imports)
TRAINING_MODULES: tuple[str, ...] = ("harness.training.config", "harness.training.checkpoint", "harness.training.loop")


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
        (:func:`harness.training.schedules.warmup_cosine`)."""
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
        """The code this run's result depends on (:mod:`harness.training.fingerprint`): the import closure of
        :data:`TRAINING_MODULES` (this config, the loop, checkpointing, and through their imports the
        objectives, schedules, data pipeline and model factory) and of the modules defining its
        :meth:`methods` (every method's when the config names none: a checkpoint trained as it is)."""
        names = self.methods()
        modules = method_modules(names) if names else all_method_modules()
        return fingerprint([*TRAINING_MODULES, *modules])

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
        return cls.from_dict({**read_mapping(Path(path)), **overrides})


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


# -- config files -------------------------------------------------------------------------------------
def read_mapping(path: Path) -> dict[str, Any]:
    """The mapping of config keys in a YAML (``.yaml``/``.yml``) or JSON file; :class:`TrainConfigError`
    for a missing file, a parse error or anything but a mapping."""
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
    "objective": "training loss (harness/training/objectives.py): 'lm' (the paper's fine-tune), 'distill' "
    "(LM + KL to the "
    "teacher) or 'transfer' (attention transfer: only the new mixer parameters, layer-output MSE)",
    "teacher": "frozen teacher checkpoint for 'distill'/'transfer' (default: model, when it is a checkpoint)",
    "layer_mixers": 'a hybrid: layers given another method, as JSON, e.g. \'{"1": {"mixer": "softmax"}}\' '
    "(the other layers get mixer)",
    "layer_selection": "how the hybrid's layers were chosen, as JSON (recorded in the model config)",
    "objective_options": 'the objective\'s options as JSON, e.g. \'{"alpha": 0.5, "temperature": 2.0}\' (distill)',
}
