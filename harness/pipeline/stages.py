"""The building blocks every experiment shares, each idempotent and keyed by the hash of its config.

* :func:`teacher` — pretrain a named teacher shape from scratch (or take a hub checkpoint);
* :func:`convert` — convert a teacher to a method and fine-tune it on a token budget (Algorithm 1);
* :func:`from_scratch` — train a method of kind "model" (Mamba) on the teacher's data and budget;
* :func:`evaluate_model` — lm-eval scores of a trained model, cached next to it.

Runs live in ``<results dir>/<profile>/runs/<label>-<config hash>/`` (``runs/<profile>/runs/`` by
default; never committed): a finished run is reused, a killed one resumes (see :mod:`harness.training.train`),
so ``reproduce.sh`` can be stopped and started at any time. Two experiments asking for the same run
(table 1's middle teacher is table 2's teacher) share it. The config hash covers the code that
trains the run (:meth:`harness.training.train.TrainConfig.config_hash`), and an evaluation's cache key the
evaluation code, so editing a method or the training code gives new runs instead of reusing stale
ones.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from harness.pipeline.shipped import verify
from harness.pipeline.spec import Profile, Teacher
from harness.training.config import StepInfo, TrainConfig, TrainResult
from harness.training.fingerprint import fingerprint, method_modules
from harness.training.loop import train
from harness.util.errors import UserError
from harness.util.io import atomic_write_json
from harness.util.provenance import REPO_ROOT

if TYPE_CHECKING:
    from harness.pipeline.progress import Progress

#: the committed reference results (``results/<profile>/``), refreshed with ``--results-dir results``
RESULTS_DIR = REPO_ROOT / "results"
#: where ``reproduce`` writes a fresh run by default (``runs/<profile>/``; not committed)
RUNS_DIR = REPO_ROOT / "runs"


def profile_device(profile: Profile) -> torch.device:
    """The device a profile's models are evaluated and measured on: its ``device`` as torch names it,
    ``cuda`` (no index) being this process's current CUDA device (under ``accelerate launch``, the
    process's own GPU).

    A profile asking for CUDA on a machine without it is a :class:`~harness.util.errors.UserError`
    (one line, naming the CPU profiles), never a silent fall-back to the CPU."""
    try:
        device = torch.device(profile.device)
    except RuntimeError:
        raise UserError(
            f"profile {profile.name!r}: device {profile.device!r} is not a device torch knows; use cpu or cuda."
        ) from None
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise UserError(
            f"profile {profile.name!r} needs CUDA GPUs (device {profile.device!r}) and torch.cuda.is_available() is "
            "False here; run it on a GPU machine (under `accelerate launch`), or use a CPU profile: --profile "
            "paper-offline (the paper profile's code paths on CPU) or tiny; --dry-run shows its plan."
        )
    if device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    if device.index >= torch.cuda.device_count():
        raise UserError(
            f"profile {profile.name!r}: device {profile.device!r}, but this machine has "
            f"{torch.cuda.device_count()} CUDA device(s); use cuda (the process's own GPU)."
        )
    return device


@dataclass
class Context:
    """Where a profile's runs and results go, and how progress is shown.

    ``progress``: each training run's own progress bar; ``monitor``: the pipeline's display, told
    about every training step; ``fresh``: the experiment being run replaces an earlier result of
    its folder (stale or ``--force``d), so resumable state kept there (a benchmark sweep's) is not
    continued but started anew."""

    profile: Profile
    results_dir: Path = RUNS_DIR
    progress: bool = False
    monitor: Progress | None = None
    fresh: bool = False

    @property
    def root(self) -> Path:
        return self.results_dir / self.profile.name

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def device(self) -> torch.device:
        """Where the profile's models are evaluated and measured (:func:`profile_device`)."""
        return profile_device(self.profile)


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


def run_training(ctx: Context, label: str, config: TrainConfig, method: str) -> Run:
    config.out_dir = str(ctx.runs / f"{label}-{config.config_hash()[:10]}")
    config.progress = ctx.progress
    callbacks = []
    if ctx.monitor is not None:
        monitor = ctx.monitor

        def report(info: StepInfo) -> None:
            monitor.training(label, info.step, config.total_steps)

        callbacks.append(report)
    result = train(config, callbacks)
    if not result.finished:
        raise RuntimeError(f"run {label} stopped before finishing ({config.out_dir}); run again to resume.")
    return Run(label=label, result=result, method=method, tokens=config.tokens)


def own_lr(lr: float | None, stage: dict[str, Any]) -> float | None:
    """``lr`` unless it is the stage's own rate (None): a sweep point at the profile's rate is the very
    run other experiments make, and shares it."""
    return None if lr is None or lr == stage.get("lr") else lr


def _base(ctx: Context, seed: int, tokens: float, stage: dict[str, Any], lr: float | None = None) -> dict[str, Any]:
    """The training settings every run of a profile shares; ``lr`` overrides the stage's (a sweep)."""
    p = ctx.profile
    stage = {**stage, "lr": lr} if lr is not None else stage
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


def _lr_tag(lr: float | None) -> str:
    return "" if lr is None else f"-lr{lr:g}"


def convert_label(t: Teacher, method: str, fraction: float, seed: int, lr: float | None = None) -> str:
    return f"convert-{t.name}-{method}-f{fraction:g}-s{seed}{_lr_tag(lr)}"


def scratch_label(t: Teacher, method: str, seed: int, fraction: float = 1.0, lr: float | None = None) -> str:
    return f"scratch-{t.name}-{method}-f{fraction:g}-s{seed}{_lr_tag(lr)}"


def teacher_config(ctx: Context, t: Teacher, seed: int = 0, tokens: float | None = None) -> TrainConfig:
    """Pretraining ``t``'s shape from scratch (on its own tokens, or ``tokens``)."""
    return TrainConfig(
        model=dict(t.shape),
        mixer="softmax",
        **_base(ctx, seed, t.tokens if tokens is None else tokens, ctx.profile.pretrain),
    )


def teacher(ctx: Context, t: Teacher, seed: int = 0) -> Run | str:
    """The teacher: its hub checkpoint id, its shipped model directory (checked, see
    :func:`harness.pipeline.shipped.verify`), or a run training its shape here."""
    if t.pretrained:
        return t.checkpoint  # type: ignore[return-value]
    if t.shipped:
        return str(verify(t))
    return run_training(ctx, teacher_label(t, seed), teacher_config(ctx, t, seed), "softmax")


def _source(teacher_run: Run | str) -> str:
    return teacher_run if isinstance(teacher_run, str) else str(teacher_run.model_dir)


def conversion_tokens(ctx: Context, t: Teacher, fraction: float) -> int:
    """The token budget of a conversion: ``fraction`` of the teacher's pretraining tokens (at least
    one optimizer step)."""
    return max(ctx.profile.batch_size * ctx.profile.block_size, math.ceil(t.tokens * fraction))


def convert(
    ctx: Context,
    t: Teacher,
    teacher_run: Run | str,
    method: str,
    fraction: float,
    seed: int = 0,
    lr: float | None = None,
) -> Run:
    """Convert the teacher to ``method`` and fine-tune on ``fraction`` of its pretraining tokens (the
    ``paper`` recipe: the LM loss on every weight), at the profile's fine-tune rate or ``lr``."""
    lr = own_lr(lr, ctx.profile.convert)
    tokens = conversion_tokens(ctx, t, fraction)
    cfg = TrainConfig(
        model=_source(teacher_run),
        mixer=method,
        mixer_options=dict(ctx.profile.method_options.get(method, {})),
        **_base(ctx, seed, tokens, ctx.profile.convert, lr),
    )
    return run_training(ctx, convert_label(t, method, fraction, seed, lr), cfg, method)


def convert_with_recipe(
    ctx: Context,
    t: Teacher,
    teacher_run: Run | str,
    method: str,
    fraction: float,
    recipe: str,
    seed: int = 0,
    lr: float | None = None,
) -> Run:
    """Convert the teacher to ``method`` and train it with ``recipe`` (:mod:`harness.training.recipes`) at the
    compute of the ``paper`` recipe on ``fraction`` of the teacher's tokens: each stage is a training
    run of its own (reused and resumed like any other), the next starting from the previous model.
    ``paper`` is :func:`convert` itself (the same run). Raises
    :class:`~harness.training.objectives.ObjectiveError` where the recipe does not apply to the method
    (``transfer`` for a method with no parameters of its own). ``lr`` (default: the profile's
    fine-tune rate) is every stage's peak rate."""
    lr = own_lr(lr, ctx.profile.convert)
    if recipe == "paper":
        return convert(ctx, t, teacher_run, method, fraction, seed, lr)
    from harness.conversion.factory import load_teacher
    from harness.training.recipes import mixer_share, recipe_stages

    teacher_path = _source(teacher_run)
    step = ctx.profile.batch_size * ctx.profile.block_size
    plan = recipe_stages(recipe, conversion_tokens(ctx, t, fraction), mixer_share(load_teacher(teacher_path)), step)
    source, run = teacher_path, None
    for i, stage in enumerate(plan):
        first = i == 0
        cfg = TrainConfig(
            model=source,
            mixer=method if first else None,
            mixer_options=dict(ctx.profile.method_options.get(method, {})) if first else {},
            objective=stage.objective,
            teacher=teacher_path if stage.objective != "lm" else None,
            **_base(ctx, seed, stage.tokens, ctx.profile.convert, lr),
        )
        run = run_training(ctx, f"{convert_label(t, method, fraction, seed, lr)}-{recipe}{i + 1}", cfg, method)
        source = str(run.model_dir)
    return run  # type: ignore[return-value]


def convert_hybrid(
    ctx: Context,
    t: Teacher,
    teacher_run: Run | str,
    method: str,
    fraction: float,
    layer_mixers: dict[int, dict[str, Any]],
    layer_selection: dict[str, Any] | None,
    label: str,
    seed: int = 0,
) -> Run:
    """:func:`convert` to a hybrid: ``method`` in every layer but those ``layer_mixers`` gives another
    method (softmax kept, a window), fine-tuned like any conversion on the same data and tokens; the
    choice of layers is recorded in the model config (``layer_selection``)."""
    if not layer_mixers:
        return convert(ctx, t, teacher_run, method, fraction, seed)
    cfg = TrainConfig(
        model=_source(teacher_run),
        mixer=method,
        mixer_options=dict(ctx.profile.method_options.get(method, {})),
        layer_mixers={str(i): v for i, v in layer_mixers.items()},
        layer_selection=layer_selection,
        **_base(ctx, seed, conversion_tokens(ctx, t, fraction), ctx.profile.convert),
    )
    return run_training(ctx, f"hybrid-{t.name}-{label}-f{fraction:g}-s{seed}", cfg, method)


def scratch_control(
    ctx: Context,
    t: Teacher,
    teacher_run: Run | str,
    method: str,
    fraction: float,
    seed: int = 0,
    lr: float | None = None,
) -> Run:
    """Control (a) of a conversion: ``method`` in the teacher's shape trained from scratch on the same
    data, tokens, batch, block and seed as :func:`convert` (pretraining settings: a fresh model needs
    the teacher's learning rate, not the fine-tune's; or ``lr``)."""
    lr = own_lr(lr, ctx.profile.pretrain)
    tokens = conversion_tokens(ctx, t, fraction)
    cfg = TrainConfig(
        model=dict(t.shape) if not t.pretrained else _hub_shape(t),
        mixer=method,
        mixer_options=dict(ctx.profile.method_options.get(method, {})),
        **_base(ctx, seed, tokens, ctx.profile.pretrain, lr),
    )
    return run_training(ctx, scratch_label(t, method, seed, fraction, lr) + "-control", cfg, method)


def _hub_shape(t: Teacher) -> dict[str, Any]:
    """A pretrained teacher's shape as a MixerLM config dict (its checkpoint's config, converted)."""
    from harness.conversion.factory import teacher_config
    from harness.conversion.hf_checkpoint import config_from_hf

    d = config_from_hf(teacher_config(t.checkpoint), "softmax").to_dict()
    return {k: v for k, v in d.items() if k not in ("model_type", "transformers_version", "architectures")}


def untrained_conversion(ctx: Context, t: Teacher, teacher_run: Run | str, method: str) -> str:
    """Control (c): the teacher converted to ``method`` before any training ("step 0"), saved once
    (with the teacher's tokenizer) and returned as a model directory."""
    from harness.conversion.factory import ModelSpec, build_model
    from harness.data.tokenizer import load_tokenizer

    source = _source(teacher_run)
    options = dict(ctx.profile.method_options.get(method, {}))
    code = fingerprint(["harness.conversion.factory", *method_modules([method])]).digest
    key = config_key([source, method, options, code])
    out = ctx.runs / f"step0-{t.name}-{method}-{key}"
    if not (out / "model" / "config.json").is_file():
        tmp = out / "model.tmp"
        build_model(ModelSpec(method, teacher=source, options=options)).save_pretrained(str(tmp))
        load_tokenizer(source).save_pretrained(str(tmp))
        os.replace(tmp, out / "model")
    return str(out / "model")


def from_scratch(
    ctx: Context, t: Teacher, teacher_run: Run | str, method: str, seed: int = 0, fraction: float = 1.0
) -> Run:
    """Train ``method`` (kind "model", e.g. Mamba sized to the teacher) from scratch on ``fraction``
    of the teacher's token budget (the paper: all of it)."""
    tokens = t.tokens * fraction
    cfg = TrainConfig(model=_source(teacher_run), mixer=method, **_base(ctx, seed, tokens, ctx.profile.pretrain))
    return run_training(ctx, scratch_label(t, method, seed, fraction), cfg, method)


def evaluate_model(
    ctx: Context, run: Run | str, name: str, method: str, tasks: list[str] | None = None
) -> list[dict[str, Any]]:
    """Tidy lm-eval rows for a model (the profile's tasks, or ``tasks``), computed once and cached
    beside the run.

    Scored with a context of at most the profile's ``block_size`` tokens (the eval config's
    ``max_length`` overrides it): the length every model was trained on. Longer windows would
    measure length extrapolation (which the softmax teacher's rotary positions do badly past their
    training length) instead of the conversion. The model is scored on the profile's device
    (:attr:`Context.device`; lm-eval feeds its inputs to the model's device)."""
    from harness.conversion.factory import load_model
    from harness.evaluation.evaluate import evaluate

    ev = {**ctx.profile.eval, **({"tasks": tasks} if tasks else {})}
    max_length = int(ev.get("max_length") or ctx.profile.block_size)
    key = config_key([ev, ctx.profile.data, max_length, fingerprint(["harness.evaluation.evaluate"]).digest])
    if isinstance(run, Run):
        cache = Path(run.result.out_dir) / f"eval-{key}.json"
        model_path = run.model_dir
    else:  # a hub checkpoint evaluated as is
        cache = ctx.runs / f"eval-{run.replace('/', '--')}-{key}.json"
        model_path = run
    if cache.exists():
        return json.loads(cache.read_text())["rows"]
    from harness.evaluation.lm_eval_tasks.data import OfflineDataSpec

    model = load_model(str(model_path), device=str(ctx.device))
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
