"""Accuracy and perplexity of a model through lm-eval (EleutherAI's lm-evaluation-harness).

lm-eval is the accuracy harness: any Hugging Face causal LM (our :class:`~harness.MixerLMForCausalLM`
included) is wrapped in lm-eval's ``HFLM`` and scored on named task sets:

* ``offline`` — the suite's own tasks (``heldout_ppl``, ``next_line``; YAMLs in
  :mod:`harness.lm_eval_tasks`) over jsonl data generated from the corpus's held-out split. No
  network is needed.
* ``table1`` / ``table2`` — the DiJiang paper's (Chen et al. 2024, arXiv 2403.19928) Table 1/2
  tasks: piqa, winogrande, wsc, arc_easy, arc_challenge, logiqa.
* ``table3`` — its Table 3 (7B) tasks: piqa, social_iqa (SIQA), boolq, wsc, hellaswag, arc_easy,
  arc_challenge, mmlu, nq_open, copa, race_middle.

The paper's "WSC" is SuperGLUE WSC (lm-eval ``wsc``, 104 examples), not ``wsc273``: its scores
are whole multiples of 1/104 (.4327 = 45/104, .6058 = 63/104, .6346 = 66/104), which no count out
of 273 gives. ``wsc273`` and any other lm-eval task can still be named directly. Its Table 3 column
is RACE-middle (``race_middle``, shipped here), while lm-eval's ``race`` is RACE-high.

The hub tasks need their data sets from the Hugging Face hub (or its local cache); offline they stop
with one message naming the fix. Results are tidy rows — model, method, task, metric, value,
stderr, n — with the run's metadata (corpus hash, git commit, library versions, date), written
atomically to CSV and JSON.

Command line: ``python -m harness eval MODEL --tasks offline,table1 --out results/eval/NAME.csv``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import difflib
import functools
import json
import logging
import math
import os
import platform
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.io import atomic_write_json, atomic_write_text
from harness.lm_eval_tasks import DATA_DIR_KEY, OFFLINE_TASKS, TASK_DIR
from harness.provenance import commit_label

#: named task sets (see the module docstring)
TABLE12_TASKS: tuple[str, ...] = ("piqa", "winogrande", "wsc", "arc_easy", "arc_challenge", "logiqa")
TASK_SETS: dict[str, tuple[str, ...]] = {
    "offline": OFFLINE_TASKS,
    "table1": TABLE12_TASKS,
    "table2": TABLE12_TASKS,
    "table3": (
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
    ),
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
    items = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    out: list[str] = []
    for item in (t.strip() for t in items):
        if not item:
            continue
        for name in TASK_SETS.get(item, (item,)):
            name = TASK_ALIASES.get(name, name)
            if name not in out:
                out.append(name)
    if not out:
        raise EvalInputError(f"no task given; name tasks or task sets ({', '.join(TASK_SETS)}).")
    return out


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


def task_manager(
    tasks: Sequence[str],
    data_dir: str | os.PathLike | None = None,
    include_path: Sequence[str | os.PathLike] = (),
    full: bool = False,
) -> Any:
    """An lm-eval ``TaskManager`` that knows the suite's tasks (``include_path=TASK_DIR``, plus any
    folders of your own task YAMLs) and, for the offline tasks, where their generated data lives
    (task metadata ``harness_data_dir``).

    It first indexes only the suite's folder and the lm-eval folders of the paper's tasks (well
    under a second); when a requested name is not there (or with ``full``) it indexes all of
    lm-eval's ~15k tasks (several seconds). Indexes are built once per process."""
    include = (str(TASK_DIR), *(str(Path(p).expanduser().resolve()) for p in include_path))
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
    check_task_names(tasks, manager)
    task_logger = logging.getLogger("lm_eval.api.task")
    if not any(isinstance(f, _QuietCustomDataset) for f in task_logger.filters):
        task_logger.addFilter(_QuietCustomDataset())
    loaded, unreachable = [], []
    for name in tasks:
        try:
            result = manager.load([name])
        except Exception as err:
            if _is_network_error(err) or (_is_offline() and isinstance(err, (OSError, FileNotFoundError))):
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
            "cache them, or evaluate without a network using the suite's offline tasks: --tasks offline."
        )
    return loaded


# -- models and tokenizers ----------------------------------------------------------------------------
def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", ".", "~")) or (os.sep in spec and Path(spec.split(os.sep)[0]).exists())


DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")


def load_model(spec: str | os.PathLike, device: str | None = None, dtype: str | None = None) -> Any:
    """A causal LM from a local checkpoint folder (``save_pretrained``) or a hub id (needs network).

    Importing :mod:`harness` registers ``mixer_lm``, so the suite's models load with
    ``AutoModelForCausalLM`` like any other."""
    import torch
    from transformers import AutoModelForCausalLM

    import harness  # noqa: F401  (registers mixer_lm with the Auto classes)

    spec = str(spec)
    path = Path(spec).expanduser()
    if dtype is not None and dtype not in DTYPES:
        raise EvalInputError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}.")
    if not path.exists() and (_looks_like_path(spec) or _is_offline()):
        offline = "is not a local folder, and the hub is offline (HF_HUB_OFFLINE=1)"
        where = "does not exist" if _looks_like_path(spec) else offline
        raise EvalInputError(
            f"model {spec!r} {where}; pass a checkpoint folder written by `python -m harness train` / "
            "`convert` (save_pretrained), or a hub id with network access."
        )
    if path.exists() and not (path / "config.json").is_file():
        raise EvalInputError(f"{spec} has no config.json; pass a folder written by save_pretrained.")
    torch_dtype = getattr(torch, dtype) if dtype else None
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path) if path.exists() else spec, dtype=torch_dtype)
    except (OSError, ValueError, KeyError) as err:
        raise EvalInputError(
            f"cannot load model {spec!r}: {str(err).splitlines()[0] if str(err) else type(err).__name__}. Pass a "
            "checkpoint folder written by save_pretrained (with config.json and weights), or a hub id with network."
        ) from None
    if device:
        model = model.to(device)
    return model.eval()


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


def make_lm(model: Any, tokenizer: Any, batch_size: int | str = 8, max_length: int | None = None) -> Any:
    """lm-eval's ``HFLM`` around a model object, after checking that the tokenizer fits its vocabulary.

    The byte tokenizer adds no special tokens to a text (``add_bos_token=False``), so every scored
    token is one byte of the text and bits per byte mean the same for every method."""
    from lm_eval.models.huggingface import HFLM

    from harness.data.tokenizer import ByteTokenizer, TokenizerError, check_vocab

    rows = model.get_input_embeddings().num_embeddings
    try:
        check_vocab(tokenizer, min(rows, int(getattr(model.config, "vocab_size", rows))))
    except TokenizerError as err:
        raise EvalInputError(str(err)) from None
    kwargs: dict[str, Any] = {"add_bos_token": False} if isinstance(tokenizer, ByteTokenizer) else {}
    return HFLM(
        pretrained=model,
        tokenizer=tokenizer,
        backend="causal",
        batch_size=batch_size,
        max_length=max_length,
        **kwargs,
    )


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
    return rows


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
    """Tasks ready to score: lm-eval Task/Group objects, their manager, and the offline data used."""

    names: list[str]
    manager: Any
    tasks: list[Any]
    data_dir: Path | None = None
    corpus_meta: dict[str, Any] | None = None


def prepare_tasks(
    tasks: str | Iterable[str] = "offline",
    *,
    corpus: Any = "stdlib",
    data_spec: Any = None,
    cache_root: str | os.PathLike | None = None,
    include_path: Sequence[str | os.PathLike] = (),
) -> PreparedTasks:
    """Resolve task names and sets, generate the offline tasks' data (from ``corpus``'s held-out
    split, only when they are requested) and load every task — so unknown names and unreachable
    data sets fail before a model is loaded. ``corpus`` is a :class:`harness.data.Corpus` or a
    corpus spec (``"stdlib"``, a folder, a file); ``data_spec`` an
    :class:`~harness.lm_eval_tasks.data.OfflineDataSpec`; ``include_path`` folders of your own
    lm-eval task YAMLs."""
    names = expand_tasks(tasks)
    corpus_meta = data_dir = None
    if any(t in OFFLINE_TASKS for t in names):
        from harness.lm_eval_tasks.data import build_offline_data, corpus_info

        if isinstance(corpus, (str, os.PathLike)):
            from harness.data.corpus import load_corpus

            corpus = load_corpus(corpus)
        corpus_meta = corpus_info(corpus)
        data_dir = build_offline_data(corpus, data_spec, cache_root=cache_root)
    manager = task_manager(names, data_dir, include_path=include_path)
    return PreparedTasks(names, manager, load_tasks(names, manager), data_dir, corpus_meta)


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
    num_fewshot: int | None = None,
    model_name: str | None = None,
    method: str | None = None,
    bootstrap_iters: int = 1000,
    seed: int = 1234,
) -> EvalResult:
    """Score ``model`` (a Hugging Face causal LM object, e.g. :class:`harness.MixerLMForCausalLM`)
    with lm-eval through its ``HFLM`` wrapper.

    ``tasks``: task names and/or set names (``offline``, ``table1``, ``table2``, ``table3``), or a
    :class:`PreparedTasks`; ``corpus``, ``data_spec``, ``cache_root`` and ``include_path`` are as in
    :func:`prepare_tasks`. ``limit`` caps documents per task (lm-eval's ``limit``; smoke tests only).
    ``tokenizer`` defaults to the byte tokenizer for the suite's models. Returns tidy rows
    (:class:`EvalResult`); ``model_name``/``method`` override the names recorded in them.
    """
    import lm_eval

    if tokenizer is None:
        tokenizer = default_tokenizer(model)
    lm = make_lm(model, tokenizer, batch_size=batch_size, max_length=max_length)
    prepared = (
        tasks
        if isinstance(tasks, PreparedTasks)
        else prepare_tasks(tasks, corpus=corpus, data_spec=data_spec, cache_root=cache_root, include_path=include_path)
    )
    truncations = _CountTruncations()
    hf_logger = logging.getLogger("lm_eval.models.huggingface")
    hf_logger.addFilter(truncations)
    try:
        raw = lm_eval.simple_evaluate(
            model=lm,
            tasks=prepared.tasks,
            task_manager=prepared.manager,
            limit=limit,
            num_fewshot=num_fewshot,
            bootstrap_iters=bootstrap_iters,
            log_samples=False,
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
        num_fewshot=num_fewshot,
        batch_size=batch_size,
        max_length=lm.max_length,
        truncated_contexts=truncations.count,
        device=str(getattr(model, "device", "")),
        dtype=str(getattr(model, "dtype", "")).replace("torch.", ""),
    )
    rows = [{**r, **metadata} for r in tidy_rows(raw, model_name or name, method or kind)]
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
    parser.add_argument("--limit", type=float, default=None, help="documents per task (smoke tests only)")
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
            num_fewshot=args.num_fewshot,
            model_name=args.name,
            method=args.method,
        )
    except (EvalInputError, TokenizerError, CorpusError, OfflineDataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    frame = result.frame()
    if not frame.empty:
        print(frame[list(ROW_COLUMNS)].to_string(index=False))
    if args.out is not None:
        for p in result.save(args.out, overwrite=args.overwrite):
            print(f"wrote {p}")
    return 0


__all__ = [
    "TASK_SETS",
    "EvalInputError",
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
