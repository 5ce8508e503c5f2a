"""Which documents of each task an evaluation scores, and the counts reported beside the scores.

A benchmark document is scored when each of its answers fits in half the
context window (``max_length // 2`` tokens; the suite's own ``next_line`` sizes its lines to the
window itself, so only the whole window applies to it); a longer context is cut from the left, as
lm-eval does, and counted. Documents whose answers do not fit are skipped and counted (``skipped``), never
hidden: byte-level models with 128-token windows cannot take PIQA's longest solutions.
``docs=N`` scores a fixed subsample per task: the first ``N`` documents that fit, in an order
shuffled with a seeded :class:`random.Random` (seed string ``"<task>:<docs_seed>"``), so every model
with the same tokenizer and window gets the same items (a group's subtasks share its ``N``: MMLU
takes ``ceil(N / 57)`` per subject). Generation tasks generate at most half the
window (:func:`harness.evaluation.evaluate.make_lm`).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from harness.evaluation.lm_eval_tasks import OFFLINE_TASKS


@dataclass(frozen=True)
class Selection:
    """The documents of one task that are scored, and the counts behind them.

    ``indices``: positions in the task's evaluation split (sorted); ``docs``: the split's size;
    ``examined``: documents looked at (in the seeded order) to find them; ``skipped``: of those, the
    ones whose answers do not fit half the window; ``truncated``: scored documents whose context was
    cut from the left to fit."""

    indices: tuple[int, ...]
    docs: int
    examined: int
    skipped: int
    truncated: int


def _tokenizer_key(lm: Any) -> str:
    tok = lm.tokenizer
    return f"{type(tok).__name__}:{len(tok)}:{'' if type(tok).__name__ == 'ByteTokenizer' else tok.name_or_path}"


def _request_fit(lm: Any, task: Any, indices: list[int], budget: int) -> dict[int, tuple[bool, bool]]:
    """``index -> (fits, truncated)`` for documents ``indices`` of ``task``, from the requests lm-eval
    builds for them and the same encoding lm-eval scores them with: a document fits when every answer
    takes at most ``budget`` tokens."""
    task.build_all_requests(samples=indices, rank=0, world_size=1)
    half, window = budget, lm.max_length
    out: dict[int, list[bool]] = {}
    for inst in task.instances:
        context, second = inst.args[0], inst.args[1] if len(inst.args) > 1 else None
        if isinstance(second, str):  # loglikelihood: (context, continuation)
            n_ctx, n_cont = _pair_lengths(lm, context, second)
            fits, cut = n_cont <= half, n_ctx + n_cont > window + 1
        else:  # generate_until: the prompt gets the window less the generation budget
            fits, cut = True, _length(lm, context) > window - lm.max_gen_toks
        f, c = out.get(inst.doc_id, [True, False])
        out[inst.doc_id] = [f and fits, c or cut]
    task._instances = None
    return {indices[doc_id]: (f, c) for doc_id, (f, c) in out.items()}


def _is_bytes(lm: Any) -> bool:
    return type(lm.tokenizer).__name__ == "ByteTokenizer"


def _length(lm: Any, text: str) -> int:
    """Tokens of ``text`` as lm-eval encodes it (the byte tokenizer: its UTF-8 bytes, counted directly)."""
    return len(text.encode("utf-8")) if _is_bytes(lm) else len(lm.tok_encode(text))


def _pair_lengths(lm: Any, context: str, continuation: str) -> tuple[int, int]:
    """Tokens of a (context, continuation) request as lm-eval's ``loglikelihood`` encodes it: an empty
    context becomes the prefix token; a context's trailing whitespace moves to the continuation."""
    if not context:
        return 1, len(continuation.encode("utf-8")) if _is_bytes(lm) else len(lm.tok_encode(continuation))
    if _is_bytes(lm):
        kept = context.rstrip()
        return len(kept.encode("utf-8")), len((context[len(kept) :] + continuation).encode("utf-8"))
    ctx, cont = lm._encode_pair(context, continuation)
    return len(ctx), len(cont)


_SELECTIONS: dict[tuple[Any, ...], Selection] = {}


def select_documents(lm: Any, task: Any, docs: int | None = None, seed: int = 0, limit: int | None = None) -> Selection:
    """The documents of ``task`` to score (see the module docstring): the first ``docs`` (all when
    None) in a seeded shuffle whose answers fit half of ``lm``'s window; with ``limit`` (smoke tests),
    the first ``limit`` that fit in the split's own order. Memoised per task (its documents), tokenizer
    and window."""
    name = task.config.task
    # the suite's own tasks size their answers to the window themselves (next_line: lines of at most
    # half of it, indentation aside): only lm-eval's own limit, the whole window, applies to them
    budget = lm.max_length if name in OFFLINE_TASKS else lm.max_length // 2
    n = len(task.eval_docs)
    probe = [task.eval_docs[i] for i in sorted({0, n // 2, n - 1})] if n else []
    content = hashlib.sha256(json.dumps(probe, sort_keys=True, default=str).encode()).hexdigest()
    key = (name, n, content, _tokenizer_key(lm), lm.max_length, docs, seed, limit)
    if key in _SELECTIONS:
        return _SELECTIONS[key]
    order = list(range(n))
    if limit is None:
        random.Random(f"{name}:{seed}").shuffle(order)
    want = min(n, limit if limit is not None else docs if docs is not None else n)
    chosen: list[int] = []
    examined = skipped = truncated = 0
    step = max(16, want + want // 2)  # most documents fit: look at a few more than wanted per round
    while len(chosen) < want and examined < n:
        batch = order[examined : examined + step]
        fit = _request_fit(lm, task, sorted(batch), budget)
        for i in batch:
            examined += 1
            ok, cut = fit.get(i, (False, False))
            if ok:
                chosen.append(i)
                truncated += cut
                if len(chosen) == want:
                    break
            else:
                skipped += 1
    selection = Selection(tuple(sorted(chosen)), n, examined, skipped, truncated)
    _SELECTIONS[key] = selection
    return selection


def _leaf_tasks_with_share(objs: Iterable[Any]) -> list[tuple[Any, int]]:
    """The Task objects of lm-eval Tasks and Groups, each with the number of tasks sharing its
    document budget (a group's subtasks share the group's: MMLU's 57 subjects split ``docs``)."""
    out = []
    for obj in objs:
        leaves = obj.get_all_tasks() if hasattr(obj, "get_all_tasks") else [obj]
        out.extend((leaf, len(leaves)) for leaf in leaves)
    return out


def _split(task: Any) -> str | None:
    """The split a Task scores (lm-eval: test when it has one, else validation)."""
    cfg = task.config
    return cfg.test_split if task.has_test_docs() else cfg.validation_split


def selections(
    lm: Any, tasks: list[Any], docs: int | None, seed: int, limit: int | float | None
) -> tuple[dict[str, list[int]], dict[str, dict[str, Any]]]:
    """lm-eval's ``samples`` (task -> document indices) and each leaf task's counts and split, for
    lm-eval Task/Group objects ``tasks``: :func:`select_documents` of every leaf task (``docs`` split
    over a group's subtasks), every document of a rolling-loglikelihood task (``limit``: the first)."""
    samples: dict[str, list[int]] = {}
    info: dict[str, dict[str, Any]] = {}
    for task, share in _leaf_tasks_with_share(tasks):
        name = task.config.task
        n = len(task.eval_docs)
        cap = None if limit is None else (int(limit) if limit >= 1 else max(1, math.ceil(limit * n)))
        if task.OUTPUT_TYPE == "loglikelihood_rolling":  # whole documents in rolling windows: all fit
            picked = list(range(min(n, cap))) if cap is not None else None
            sel = Selection(tuple(picked or range(n)), n, len(picked or range(n)), 0, 0)
        else:
            budget = None if docs is None else max(1, math.ceil(docs / share))
            sel = select_documents(lm, task, docs=budget, seed=seed, limit=cap)
            picked = list(sel.indices)
        if picked is not None:
            samples[name] = picked
        info[name] = {
            "split": _split(task),
            "docs": sel.docs,
            "examined": sel.examined,
            "skipped": sel.skipped,
            "truncated": sel.truncated,
        }
    return samples, info
