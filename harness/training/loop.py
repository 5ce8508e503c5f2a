"""One training entry point: pretrain a teacher, convert a teacher and fine-tune it, or train any model
from scratch — on one CPU or under ``accelerate launch`` on many GPUs.

* **Pretraining** a teacher: ``model`` is a config dict (``MixerLMConfig`` fields, ``mixer: softmax``).
* **Conversion + fine-tuning** (paper Algorithm 1, Sec. 4): ``model`` is a checkpoint directory and
  ``mixer`` a method; GPT-NeoX/LLaMA checkpoints go through :func:`harness.conversion.hf_checkpoint.convert_checkpoint`,
  the suite's own MixerLM teachers through :func:`harness.conversion.mixer_swap.convert_model`.
* **From scratch**: a config dict with any registered mixer, or ``model_type`` naming any
  transformers causal-LM architecture (e.g. ``mamba``).

Budgets are in tokens (``tokens``; steps = tokens / (batch_size x block_size)), so "1/16 of the
teacher's tokens" is a config value. AdamW, linear warm-up + cosine decay, gradient clipping and
accumulation; bf16 autocast on GPU, fp32 on CPU. ``batch_size`` is the *global* batch (sequences per
optimizer step); each process takes ``batch_size / (grad_accum x processes)`` per micro-step, and the
data order is a function of the step (:class:`harness.data.packing.BlockSampler`), so one process
and many processes see the same blocks and give the same loss curve.

The run is set up and driven by :func:`train` here, from a :class:`~harness.training.config.TrainConfig`
(:mod:`harness.training.config`); its output directory is managed by :mod:`harness.training.checkpoint`.

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

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from harness.data.corpus import CorpusError, load_corpus
from harness.data.packing import BlockSampler, PackedBlocks, pack
from harness.data.tokenizer import check_vocab, load_tokenizer
from harness.training.checkpoint import (
    check_out_dir,
    list_checkpoints,
    load_last_checkpoint,
    save_checkpoint,
    save_final,
    start_out_dir,
    trim_log,
)
from harness.training.config import (
    StepInfo,
    TrainConfig,
    TrainConfigError,
    TrainingDiverged,
    TrainResult,
    read_mapping,
)
from harness.training.objectives import lm_loss, make_objective
from harness.util.provenance import environment


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
        return read_mapping(path), None
    if not path.exists() and config.model.count("/") == 1 and not config.model.startswith((".", "/", "~")):
        from harness.conversion.hf_checkpoint import resolve_checkpoint

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

    from harness.core.modeling import MixerLMConfig

    spec = dict(spec)
    model_type = spec.pop("model_type", "mixer_lm")
    spec.setdefault("vocab_size", len(tokenizer))
    for key in ("eos_token_id", "bos_token_id", "pad_token_id"):
        spec.setdefault(key, getattr(tokenizer, key, None))
    if model_type != "mixer_lm":
        return AutoConfig.for_model(model_type, **spec)
    return MixerLMConfig(**spec)


def build_model(config: TrainConfig, tokenizer: Any) -> torch.nn.Module:
    """The model to train (fp32, CPU): :func:`harness.conversion.factory.build_model` of what :class:`TrainConfig`
    ``model``, ``mixer`` and ``mixer_options`` describe:

    * a config dict: a fresh model of that config, with ``mixer`` in every layer — or, for a method of
      kind ``model`` (e.g. ``mamba``), that architecture sized after the config, trained from scratch;
    * a checkpoint: converted to ``mixer`` (our MixerLM, GPT-NeoX, LLaMA; paper Algorithm 1), any other
      causal LM as it is — or, for a method of kind ``model``, that architecture sized after the
      checkpoint's config.
    """
    import harness  # noqa: F401  (registers mixer_lm with the Auto classes)
    from harness.conversion.factory import ModelSpec
    from harness.conversion.factory import build_model as build

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
    ones are converted to ``softmax`` (which reproduces their logits, see :mod:`harness.conversion.hf_checkpoint`)."""
    if config.objective == "lm":
        return None
    from harness.conversion.factory import ModelSpec, load_model
    from harness.conversion.factory import build_model as build

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
    """Mean next-token loss (nats) over the first ``eval_blocks`` validation blocks, sharded over
    processes; float32 from the logits (:func:`~harness.training.objectives.lm_loss`), as in training."""
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
        total += lm_loss(model(input_ids=x).logits, x) * len(x)
    model.train()
    return float(accelerator.reduce(total, "sum")) / n


# -- the run ----------------------------------------------------------------------------------------
@dataclass
class _Run:
    """One invocation of a run: its config, this process's accelerator, and where it writes."""

    config: TrainConfig
    accelerator: Any
    mixed_precision: str
    out: Path
    config_hash: str

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def ckpt_root(self) -> Path:
        return self.out / "checkpoints"


@dataclass
class _Data:
    """The tokenizer, the corpus, its packed training and validation blocks, and the data order."""

    tokenizer: Any
    corpus: Any
    train_blocks: PackedBlocks
    val_blocks: PackedBlocks | None
    sampler: BlockSampler


@dataclass
class _Trainee:
    """The prepared model, its optimizer and objective, and the counts the summary records."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    objective: Any
    n_params: int
    vocab: int


@dataclass
class _Progress:
    """Where the run stands: optimizer steps done, the last step's loss, the wall time of earlier
    invocations, and this invocation's start and tokens."""

    step: int
    loss: float | None
    wall_before: float
    t_start: float = field(default_factory=time.perf_counter)
    tokens_here: int = 0

    def wall_time(self) -> float:
        """Wall time of the whole run so far, killed invocations included."""
        return self.wall_before + time.perf_counter() - self.t_start


def _make_accelerator(config: TrainConfig) -> tuple[Any, str]:
    """This process's ``Accelerator`` and the mixed precision it runs in."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    mp = _resolve_mixed_precision(config.mixed_precision)
    # accelerate keeps one AcceleratorState per process: forget the previous run's (its mixed precision),
    # so train() can be called again in the same process with another; the process group is kept
    AcceleratorState._reset_state()
    # cpu=True on machines without an accelerator, so torchrun's env gives a gloo MULTI_CPU run
    cpu = not torch.accelerator.is_available()
    accelerator = Accelerator(cpu=cpu, mixed_precision=mp, gradient_accumulation_steps=config.grad_accum)
    if cpu:
        _fsdp_on_cpu(accelerator)
    return accelerator, mp


def _fsdp_on_cpu(accelerator: Any) -> None:
    """Run FSDP on CPU processes (gloo) when launched with an FSDP config.

    ``accelerate launch --config_file configs/accelerate/fsdp.yaml`` on a machine without GPUs starts
    the processes with the FSDP settings in the environment (``ACCELERATE_USE_FSDP``, ``FSDP_*``), but
    accelerate (1.15) only selects FSDP for GPU-like devices and would silently run plain data parallel
    (``MULTI_CPU``). PyTorch's ``fully_shard`` (FSDP2) works on CPU tensors over gloo, so the state is
    switched to FSDP with the plugin built from that environment: the CPU run then exercises the same
    sharding, sharded checkpoints and full-state-dict gathering as the GPU run."""
    import os

    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    wants_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    # a later train() in the same processes: the process state already says FSDP, the new run has no plugin
    promoted = state.distributed_type == DistributedType.FSDP and getattr(state, "fsdp_plugin", None) is None
    if not wants_fsdp or not (state.distributed_type == DistributedType.MULTI_CPU or promoted):
        return
    plugin = FullyShardedDataParallelPlugin()
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as accelerate does for GPUs


def _micro_batch(config: TrainConfig, world: int) -> int:
    """Sequences per process and micro-step: the global batch split over accumulation and processes."""
    if config.batch_size % (config.grad_accum * world):
        raise TrainConfigError(
            f"global batch_size {config.batch_size} must be divisible by grad_accum {config.grad_accum} x "
            f"{world} processes."
        )
    return config.batch_size // (config.grad_accum * world)


def deepspeed_batch_settings(config: TrainConfig, micro: int) -> dict[str, Any]:
    """The DeepSpeed config values left ``"auto"`` in ``configs/accelerate/ds_zero*.json`` that accelerate
    cannot fill without a dataloader, from the training config (one source of truth): the micro-batch
    per process, accumulation, clipping and the global batch (``= micro x grad_accum x processes``)."""
    return {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": config.grad_accum,
        "gradient_clipping": config.grad_clip,
        "train_batch_size": config.batch_size,
    }


def _prepare_data(config: TrainConfig, accelerator: Any) -> _Data:
    """Tokenize and pack the corpus (the main process builds the token cache first; the others then
    read it). A corpus too small for one validation block gives no validation loss."""
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
    return _Data(tokenizer, corpus, train_blocks, val_blocks, sampler)


def _build(config: TrainConfig, accelerator: Any, tokenizer: Any, micro: int) -> _Trainee:
    """Seed, build the model (and the objective's frozen teacher), check the tokenizer fits it, and
    prepare model and AdamW for the accelerator (DeepSpeed is told the batch: there is no dataloader)."""
    from accelerate.utils import DistributedType, set_seed

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
        accelerator.state.deepspeed_plugin.deepspeed_config.update(deepspeed_batch_settings(config, micro))
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    return _Trainee(model, optimizer, objective, n_params, vocab)


def _resume(run: _Run) -> _Progress:
    """Restore the last checkpoint, if any, and cut the log back to it (same data order: the step
    picks the blocks)."""
    start, wall_before, last_loss = load_last_checkpoint(run.accelerator, run.ckpt_root)
    if run.is_main:  # drop log lines written after the checkpoint we resume from
        trim_log(run.out / "log.jsonl", start)
    run.accelerator.wait_for_everyone()
    return _Progress(start, last_loss, wall_before)


def _check_finite(run: _Run, step: int, loss: float, grad_norm: float | None) -> None:
    """Raise :class:`~harness.training.config.TrainingDiverged`, naming the last good checkpoint, for
    a non-finite loss or gradient norm of optimizer step ``step`` (before it is applied)."""
    # fp16's loss scaler skips steps with inf gradients by itself
    bad_norm = grad_norm is not None and not math.isfinite(grad_norm) and run.mixed_precision != "fp16"
    if math.isfinite(loss) and not bad_norm:
        return
    good = list_checkpoints(run.ckpt_root)
    raise TrainingDiverged(
        f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} "
        f"(loss={loss}, grad_norm={grad_norm}) at step {step + 1}; the run stopped "
        "without applying it. Last good checkpoint: "
        f"{good[-1][1] if good else 'none (no checkpoint written yet)'}. "
        "Lower lr, raise warmup or enable grad_clip, then start again (it resumes "
        "from that checkpoint) or use a new out_dir."
    )


def _optimizer_step(run: _Run, trainee: _Trainee, data: _Data, step: int, lr: float) -> tuple[float, float | None]:
    """Optimizer step ``step`` (0-based) at learning rate ``lr``: ``grad_accum`` micro-batches of this
    process's share of the step's blocks, gradients clipped to ``grad_clip``. Returns the loss
    (mean over micro-batches and processes) and the gradient norm before clipping (``None`` when
    DeepSpeed does not report it)."""
    config, accelerator, model, optimizer = run.config, run.accelerator, trainee.model, trainee.optimizer
    clip = config.grad_clip if config.grad_clip > 0 else float("inf")
    loss_sum = torch.zeros((), device=accelerator.device)
    mean_loss, grad_norm = math.nan, None
    for m in range(config.grad_accum):
        idx = data.sampler.shard(step, m, config.grad_accum, accelerator.process_index, accelerator.num_processes)
        x = torch.from_numpy(data.train_blocks.batch(idx)).to(accelerator.device)
        with accelerator.accumulate(model):
            loss = trainee.objective.loss(model, x)
            accelerator.backward(loss)
            loss_sum += loss.detach().float()
            if accelerator.sync_gradients:
                mean_loss = float(accelerator.reduce(loss_sum / config.grad_accum, "mean"))
                norm = accelerator.clip_grad_norm_(model.parameters(), clip)
                grad_norm = None if norm is None else float(norm)  # DeepSpeed may not report it
                _check_finite(run, step, mean_loss, grad_norm)
                for group in optimizer.param_groups:
                    group["lr"] = lr
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return mean_loss, grad_norm


def _write_log_line(log_file: IO[str], row: dict[str, Any]) -> None:
    log_file.write(json.dumps(row) + "\n")
    log_file.flush()


def _save_checkpoint(run: _Run, progress: _Progress) -> None:
    config, step = run.config, progress.step
    save_checkpoint(
        run.accelerator,
        run.ckpt_root,
        step,
        config.keep_checkpoints,
        lambda: {
            "step": step,
            "tokens": step * config.tokens_per_step,
            "loss": progress.loss,
            "wall_time_s": progress.wall_time(),
            "config_hash": run.config_hash,
        },
    )


def _run_steps(
    run: _Run,
    trainee: _Trainee,
    data: _Data,
    progress: _Progress,
    end: int,
    callbacks: Sequence[Callable[[StepInfo], None]],
) -> None:
    """Optimizer steps ``progress.step`` .. ``end - 1``; after each: a log line (main process), the
    progress bar, the callbacks, and every ``checkpoint_every`` steps a checkpoint (not after the last)."""
    from tqdm.auto import tqdm

    config, total = run.config, run.config.total_steps
    show = run.is_main and config.progress
    bar = tqdm(total=total, initial=progress.step, disable=not show, unit="step", dynamic_ncols=True)
    progress.t_start = time.perf_counter()
    log_file = (run.out / "log.jsonl").open("a") if run.is_main else None
    try:
        for step in range(progress.step, end):
            t0 = time.perf_counter()
            lr = config.lr_at(step)
            mean_loss, grad_norm = _optimizer_step(run, trainee, data, step, lr)
            done = progress.step = step + 1
            progress.loss = mean_loss
            progress.tokens_here += config.tokens_per_step
            elapsed = time.perf_counter() - progress.t_start
            tps = progress.tokens_here / max(elapsed, 1e-9)
            if log_file is not None and (done % config.log_every == 0 or done == total):
                row = {
                    "step": done,
                    "loss": mean_loss,
                    "lr": lr,
                    "tokens": done * config.tokens_per_step,
                    "wall_time": progress.wall_before + elapsed,
                    "grad_norm": grad_norm,
                    "tokens_per_s": tps,
                    "epoch": data.sampler.epoch_of(done),
                    "step_time": time.perf_counter() - t0,
                }
                _write_log_line(log_file, row)
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.4f}", tok_s=f"{tps:,.0f}", lr=f"{lr:.2e}")
            for cb in callbacks:
                cb(StepInfo(done, mean_loss, lr, done * config.tokens_per_step, trainee.model, run.accelerator))
            if config.checkpoint_every and done % config.checkpoint_every == 0 and done < total:
                _save_checkpoint(run, progress)
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()


def _finish(run: _Run, trainee: _Trainee, data: _Data, last_loss: float | None, wall: float) -> TrainResult:
    """Score the validation loss, then write the final model, its tokenizer and ``summary.json``."""
    config, accelerator = run.config, run.accelerator
    total = config.total_steps
    val_loss = _validation_loss(trainee.model, data.val_blocks, config, accelerator)
    summary = {
        "config_hash": run.config_hash,
        "final_loss": last_loss,
        "val_loss": val_loss,
        "steps": total,
        "tokens": total * config.tokens_per_step,
        "wall_time_s": wall,
        "n_params": trainee.n_params,
        "vocab_size": trainee.vocab,
        "tokenizer": type(data.tokenizer).__name__,
        "processes": accelerator.num_processes,
        "distributed_type": accelerator.distributed_type.value,  # NO, MULTI_CPU (DDP), MULTI_GPU, FSDP, DEEPSPEED
        "mixed_precision": run.mixed_precision,
        "model_dir": str(run.out / "model"),
        "corpus": data.corpus.meta,
        "train_blocks": len(data.train_blocks),
        "epochs": data.sampler.epoch_of(total),
        "environment": environment(packages=("torch", "transformers", "accelerate")),
        "config": config.to_dict(),
    }
    model_dir = save_final(accelerator, trainee.model, data.tokenizer, run.out, summary)
    return TrainResult(
        str(run.out),
        run.config_hash,
        True,
        total,
        total * config.tokens_per_step,
        last_loss,
        wall,
        val_loss,
        str(model_dir),
        summary=summary,
    )


def train(config: TrainConfig, callbacks: Sequence[Callable[[StepInfo], None]] = ()) -> TrainResult:
    """Run (or resume, or reuse) the training described by ``config``; see the module docstring.

    ``callbacks`` are called with a :class:`~harness.training.config.StepInfo` after every optimizer
    step (one that raises stops the run, resumable from its last checkpoint)."""
    accelerator, mp = _make_accelerator(config)
    out = Path(config.out_dir)
    reused, wipe = check_out_dir(config, out)
    accelerator.wait_for_everyone()
    if reused is not None:
        return reused
    run = _Run(config, accelerator, mp, out, config.config_hash())
    if wipe and run.is_main:
        shutil.rmtree(out)
    micro = _micro_batch(config, accelerator.num_processes)
    if run.is_main:
        start_out_dir(config, out, run.config_hash)
    data = _prepare_data(config, accelerator)
    trainee = _build(config, accelerator, data.tokenizer, micro)
    progress = _resume(run)
    total = config.total_steps
    end = total if config.stop_after is None else min(total, progress.step + config.stop_after)
    _run_steps(run, trainee, data, progress, end, callbacks)
    wall = progress.wall_time()
    if end < total:  # stopped early on request: resumable from the last checkpoint
        return TrainResult(str(out), run.config_hash, False, end, end * config.tokens_per_step, progress.loss, wall)
    return _finish(run, trainee, data, progress.loss, wall)
