"""Accuracy and perplexity of a model through lm-eval (EleutherAI's lm-evaluation-harness).

lm-eval is the accuracy harness: any Hugging Face causal LM (our :class:`~harness.MixerLMForCausalLM`
included) is wrapped in lm-eval's ``HFLM`` (:func:`make_lm`) and scored on named task sets by
:func:`evaluate`. Each step has its module:

* :mod:`harness.evaluation.tasks` — task names and sets: the suite's ``offline`` tasks (held-out
  corpus), the DiJiang paper's (Chen et al. 2024, arXiv 2403.19928) Table 1/2/3 tasks on bundled
  data where it exists, ``bundled``, any lm-eval task; loading them (and their data) before a model;
* :mod:`harness.evaluation.selection` — which documents are scored (each answer must fit half the
  context window; ``docs=N``: a fixed seeded subsample per task) and the counts reported with them;
* :mod:`harness.evaluation.results` — tidy rows (model, method, task, metric, value, stderr, n,
  status, document counts, per-document ``items``) with the run's metadata, written atomically;
* :mod:`harness.evaluation.models` — a model's tokenizer, parameter count and recorded names (its
  weights load with :func:`harness.conversion.factory.load_model`).

Command line (:mod:`harness.cli.eval`): ``python -m harness eval MODEL --tasks offline,table1 --out
results/eval/NAME.csv``.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

from harness.evaluation.errors import EvalInputError
from harness.evaluation.lm_eval_tasks import UNAVAILABLE
from harness.evaluation.lm_eval_tasks.bundled import split_notes
from harness.evaluation.models import default_tokenizer, model_identity
from harness.evaluation.results import EvalResult, leaf_names, run_metadata, tidy_rows
from harness.evaluation.selection import selections
from harness.evaluation.tasks import PreparedTasks, metric_names, prepare_tasks


class _CountTruncations(logging.Filter):
    """Count lm-eval's one-line-per-request warnings that a context was cut from the left to fit
    ``max_length``, instead of printing each (hundreds per task); the count goes to the run metadata."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        truncated = "tokens from the left" in record.getMessage()
        self.count += truncated
        return not truncated


#: lm-eval's HFLM default for the tokens a generation task may generate
MAX_GEN_TOKS = 256


@functools.lru_cache(maxsize=1)
def _hflm_class() -> type:
    """lm-eval's ``HFLM`` with ``max_gen_toks`` capped at half the window: the default 256 leaves no
    room for a prompt in a 128-token window (lm-eval then refuses to generate at all)."""
    from lm_eval.models.huggingface import HFLM

    class WindowedHFLM(HFLM):
        @property
        def max_gen_toks(self) -> int:
            return max(1, min(MAX_GEN_TOKS, self.max_length // 2))

    return WindowedHFLM


def make_lm(model: Any, tokenizer: Any, batch_size: int | str = 8, max_length: int | None = None) -> Any:
    """lm-eval's ``HFLM`` around a model object, after checking that the tokenizer fits its vocabulary.

    The byte tokenizer adds no special tokens to a text (``add_bos_token=False``), so every scored
    token is one byte of the text and bits per byte mean the same for every method. Generation tasks
    generate at most ``min(256, max_length // 2)`` tokens."""
    from harness.data.tokenizer import ByteTokenizer, TokenizerError, check_vocab

    rows = model.get_input_embeddings().num_embeddings
    try:
        check_vocab(tokenizer, min(rows, int(getattr(model.config, "vocab_size", rows))))
    except TokenizerError as err:
        raise EvalInputError(str(err)) from None
    kwargs: dict[str, Any] = {"add_bos_token": False} if isinstance(tokenizer, ByteTokenizer) else {}
    return _hflm_class()(
        pretrained=model,
        tokenizer=tokenizer,
        backend="causal",
        batch_size=batch_size,
        max_length=max_length,
        **kwargs,
    )


def _unavailable_rows(prepared: PreparedTasks, model: str, method: str) -> list[dict[str, Any]]:
    """A row without a value, status "not available offline", per metric of each task of a set whose
    data could not be reached (never silently dropped)."""
    return [
        {
            "model": model,
            "method": method,
            "task": task,
            "metric": metric,
            "value": None,
            "stderr": None,
            "n": 0,
            "status": UNAVAILABLE,
        }
        for task in prepared.unavailable
        for metric in metric_names(prepared.manager, task)
    ]


def evaluate(
    model: Any,
    tokenizer: Any = None,
    tasks: str | Iterable[str] | PreparedTasks = "offline",
    *,
    corpus: Any = "stdlib",
    data_spec: Any = None,
    cache_root: str | os.PathLike | None = None,
    include_path: Sequence[str | os.PathLike] = (),
    batch_size: int | str = 8,
    max_length: int | None = None,
    limit: int | float | None = None,
    docs: int | None = None,
    docs_seed: int | None = None,
    num_fewshot: int | None = None,
    model_name: str | None = None,
    method: str | None = None,
    bootstrap_iters: int = 1000,
    seed: int = 1234,
) -> EvalResult:
    """Score ``model`` (a Hugging Face causal LM object, e.g. :class:`harness.MixerLMForCausalLM`)
    with lm-eval through its ``HFLM`` wrapper.

    ``tasks``: task names and/or set names (``offline``, ``table1``, ``table2``, ``table3``, ...), or
    a :class:`~harness.evaluation.tasks.PreparedTasks`; ``corpus``, ``data_spec``, ``cache_root`` and
    ``include_path`` are as in :func:`~harness.evaluation.tasks.prepare_tasks`. ``docs``: a fixed
    seeded subsample of that many documents per task (``docs_seed``; both default to
    ``data_spec.task_docs`` / ``task_seed``), see :mod:`harness.evaluation.selection`; ``limit`` caps
    documents per task in the split's own order (smoke tests only). ``tokenizer`` defaults to the
    byte tokenizer for the suite's models. Returns tidy rows
    (:class:`~harness.evaluation.results.EvalResult`) with per-document results;
    ``model_name``/``method`` override the names recorded in them.
    """
    if docs is None:
        docs = getattr(data_spec, "task_docs", None)
    if docs_seed is None:
        docs_seed = int(getattr(data_spec, "task_seed", 0) or 0)
    if docs is not None and docs < 1:
        raise EvalInputError(f"docs must be a positive number of documents per task, got {docs}.")
    if tokenizer is None:
        tokenizer = default_tokenizer(model)
    lm = make_lm(model, tokenizer, batch_size=batch_size, max_length=max_length)
    prepared = (
        tasks
        if isinstance(tasks, PreparedTasks)
        else prepare_tasks(tasks, corpus=corpus, data_spec=data_spec, cache_root=cache_root, include_path=include_path)
    )
    samples, info = selections(lm, prepared.tasks, docs, docs_seed, limit)
    empty = [t for t, i in samples.items() if not i]
    if empty:
        raise EvalInputError(
            f"no document of {', '.join(empty)} fits a {lm.max_length}-token window (answers must fit half of it); "
            "raise --max-length or leave these tasks out."
        )
    raw, truncated = _simple_evaluate(lm, prepared, samples, num_fewshot, bootstrap_iters, seed)
    if raw is None:  # a non-zero rank of a distributed run
        return EvalResult(rows=[], metadata={}, raw={})
    name, kind = model_identity(model)
    metadata = run_metadata(
        prepared.corpus_meta,
        offline_data=str(prepared.data_dir) if prepared.data_dir else None,
        limit=limit,
        docs_per_task=docs,
        docs_seed=docs_seed,
        num_fewshot=num_fewshot,
        batch_size=batch_size,
        max_length=lm.max_length,
        max_gen_toks=lm.max_gen_toks,
        truncated_contexts=truncated,
        split_notes=" | ".join(split_notes(prepared.names)),
        device=str(getattr(model, "device", "")),
        dtype=str(getattr(model, "dtype", "")).replace("torch.", ""),
    )
    rows = _rows(raw, info, prepared, model_name or name, method or kind)
    rows = [{**r, **metadata} for r in rows]
    return EvalResult(rows=rows, metadata=metadata, raw=raw)


def _simple_evaluate(
    lm: Any,
    prepared: PreparedTasks,
    samples: dict[str, list[int]],
    num_fewshot: int | None,
    bootstrap_iters: int,
    seed: int,
) -> tuple[dict[str, Any] | None, int]:
    """lm-eval's ``simple_evaluate`` of the selected documents (``samples``), every seed set to
    ``seed``, per-document results logged; returns its results (``None`` on a non-zero rank of a
    distributed run) and the number of contexts cut from the left to fit the window."""
    import lm_eval

    truncations = _CountTruncations()
    hf_logger = logging.getLogger("lm_eval.models.huggingface")
    hf_logger.addFilter(truncations)
    raw: dict[str, Any] | None = {}
    try:
        if prepared.tasks:
            raw = lm_eval.simple_evaluate(
                model=lm,
                tasks=prepared.tasks,
                task_manager=prepared.manager,
                samples=samples or None,
                num_fewshot=num_fewshot,
                bootstrap_iters=bootstrap_iters,
                log_samples=True,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
            )
    finally:
        hf_logger.removeFilter(truncations)
    return raw, truncations.count


def _rows(
    raw: dict[str, Any], info: dict[str, dict[str, Any]], prepared: PreparedTasks, model: str, method: str
) -> list[dict[str, Any]]:
    """Tidy rows of lm-eval's results, each with its status, split and document counts (a group's:
    summed over its subtasks), plus rows for the unavailable tasks; in the order tasks were asked for."""
    rows = tidy_rows(raw, model, method)
    subtasks = raw.get("group_subtasks", {})
    for row in rows:
        leaves = [info[t] for t in leaf_names(row["task"], subtasks) if t in info]
        row["status"] = "ok"
        if leaves:
            row["split"] = leaves[0]["split"]
            for key in ("docs", "examined", "skipped", "truncated"):
                row[key] = sum(leaf[key] for leaf in leaves)
    rows += _unavailable_rows(prepared, model, method)
    order = {t: i for i, t in enumerate(prepared.names)}
    rows.sort(key=lambda r: order.get(r["task"], len(order)))
    return rows


__all__ = ["MAX_GEN_TOKS", "evaluate", "make_lm"]
