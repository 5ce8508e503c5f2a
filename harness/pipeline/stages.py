"""The building blocks every experiment shares, each idempotent and keyed by the hash of its config.

* :func:`teacher` — pretrain a named teacher shape from scratch (or take a hub checkpoint);
* :func:`convert` — convert a teacher to a method and fine-tune it on a token budget (Algorithm 1);
* :func:`from_scratch` — train a method of kind "model" (Mamba) on the teacher's data and budget;
* :func:`evaluate_model` — lm-eval scores of a trained model, cached next to it.

Runs live in ``results/<profile>/runs/<label>-<config hash>/`` (not committed): a finished run is
reused, a killed one resumes (see :mod:`harness.train`), so ``reproduce.sh`` can be stopped and
started at any time. Two experiments asking for the same run (table 1's middle teacher is table 2's
teacher) share it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.io import atomic_write_json
from harness.pipeline.spec import Profile, Teacher
from harness.train import TrainConfig, TrainResult, train

RESULTS_DIR = Path(__file__).resolve().parents[2] / "results"


@dataclass
class Context:
    """Where a profile's runs and results go, and whether to print progress."""

    profile: Profile
    results_dir: Path = RESULTS_DIR
    progress: bool = False

    @property
    def root(self) -> Path:
        return self.results_dir / self.profile.name

    @property
    def runs(self) -> Path:
        return self.root / "runs"


@dataclass
class Run:
    """A finished training run: its label, directory, model directory and summary."""

    label: str
    result: TrainResult
    method: str
    tokens: int

    @property
    def model_dir(self) -> Path:
        return Path(self.result.model_dir or Path(self.result.out_dir) / "model")

    def log(self) -> list[dict[str, Any]]:
        """The per-step JSONL training log."""
        path = Path(self.result.out_dir) / "log.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def config_key(obj: Any) -> str:
    """A short stable hash of a JSON-able object (cache keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def _run(ctx: Context, label: str, config: TrainConfig, method: str) -> Run:
    config.out_dir = str(ctx.runs / f"{label}-{config.config_hash()[:10]}")
    config.progress = ctx.progress
    result = train(config)
    if not result.finished:
        raise RuntimeError(f"run {label} stopped before finishing ({config.out_dir}); run again to resume.")
    return Run(label=label, result=result, method=method, tokens=config.tokens)


def _base(ctx: Context, seed: int, tokens: float, stage: dict[str, Any]) -> dict[str, Any]:
    p = ctx.profile
    return dict(
        data=p.data,
        tokenizer=p.tokenizer,
        block_size=p.block_size,
        batch_size=p.batch_size,
        tokens=int(tokens),
        seed=seed,
        checkpoint_every=max(1, int(tokens) // (p.batch_size * p.block_size) // 4),
        **stage,
    )


def teacher_label(t: Teacher, seed: int) -> str:
    return f"teacher-{t.name}-s{seed}"


def convert_label(t: Teacher, method: str, fraction: float, seed: int) -> str:
    return f"convert-{t.name}-{method}-f{fraction:g}-s{seed}"


def scratch_label(t: Teacher, method: str, seed: int, fraction: float = 1.0) -> str:
    return f"scratch-{t.name}-{method}-f{fraction:g}-s{seed}"


def teacher(ctx: Context, t: Teacher, seed: int = 0) -> Run | str:
    """The teacher's trained run, or its hub checkpoint id for pretrained teachers."""
    if t.pretrained:
        return t.checkpoint  # type: ignore[return-value]
    cfg = TrainConfig(model=dict(t.shape), mixer="softmax", **_base(ctx, seed, t.tokens, ctx.profile.pretrain))
    return _run(ctx, teacher_label(t, seed), cfg, "softmax")


def _source(teacher_run: Run | str) -> str:
    return teacher_run if isinstance(teacher_run, str) else str(teacher_run.model_dir)


def convert(ctx: Context, t: Teacher, teacher_run: Run | str, method: str, fraction: float, seed: int = 0) -> Run:
    """Convert the teacher to ``method`` and fine-tune on ``fraction`` of its pretraining tokens."""
    tokens = max(ctx.profile.batch_size * ctx.profile.block_size, math.ceil(t.tokens * fraction))
    cfg = TrainConfig(
        model=_source(teacher_run),
        mixer=method,
        mixer_options=dict(ctx.profile.method_options.get(method, {})),
        **_base(ctx, seed, tokens, ctx.profile.convert),
    )
    return _run(ctx, convert_label(t, method, fraction, seed), cfg, method)


def from_scratch(
    ctx: Context, t: Teacher, teacher_run: Run | str, method: str, seed: int = 0, fraction: float = 1.0
) -> Run:
    """Train ``method`` (kind "model", e.g. Mamba sized to the teacher) from scratch on ``fraction``
    of the teacher's token budget (the paper: all of it)."""
    tokens = t.tokens * fraction
    cfg = TrainConfig(model=_source(teacher_run), mixer=method, **_base(ctx, seed, tokens, ctx.profile.pretrain))
    return _run(ctx, scratch_label(t, method, seed, fraction), cfg, method)


def evaluate_model(
    ctx: Context, run: Run | str, name: str, method: str, tasks: list[str] | None = None
) -> list[dict[str, Any]]:
    """Tidy lm-eval rows for a model (the profile's tasks, or ``tasks``), computed once and cached
    beside the run.

    Scored with a context of at most the profile's ``block_size`` tokens (the eval config's
    ``max_length`` overrides it): the length every model was trained on. Longer windows would
    measure length extrapolation (which the softmax teacher's rotary positions do badly past their
    training length) instead of the conversion."""
    from harness.evaluate import evaluate, load_model

    ev = {**ctx.profile.eval, **({"tasks": tasks} if tasks else {})}
    max_length = int(ev.get("max_length") or ctx.profile.block_size)
    key = config_key([ev, ctx.profile.data, max_length])
    if isinstance(run, Run):
        cache = Path(run.result.out_dir) / f"eval-{key}.json"
        model_path = run.model_dir
    else:  # a hub checkpoint evaluated as is
        cache = ctx.runs / f"eval-{run.replace('/', '--')}-{key}.json"
        model_path = run
    if cache.exists():
        return json.loads(cache.read_text())["rows"]
    from harness.lm_eval_tasks.data import OfflineDataSpec

    model = load_model(str(model_path))
    result = evaluate(
        model,
        tasks=list(ev["tasks"]),
        corpus=ctx.profile.data,
        # next_line's choices must fit the window with context to spare: lines of at most half of it
        data_spec=OfflineDataSpec(
            **{"max_line_chars": min(OfflineDataSpec.max_line_chars, max_length // 2), **ev.get("data", {})}
        ),
        limit=ev.get("limit"),
        max_length=max_length,
        model_name=name,
        method=method,
    )
    atomic_write_json(cache, {"rows": result.rows})
    return result.rows
