"""What tiny's held-out sample costs to score: one model (the converged tiny-m teacher) scored with
the profile's tasks under the old sample (the first 4,000 characters of the first 16 test documents)
and the new one (the first 8,000 characters of every test document), alternating, 3 times each after
a warm-up, on this machine's 2 torch threads. Writes ``cost.json`` beside this file.

Run from the repository root: ``.venv/bin/python results/tiny/heldout_sample/cost.py``."""

from __future__ import annotations

import json
import time
from pathlib import Path

from harness.conversion.factory import load_model
from harness.evaluation.evaluate import evaluate
from harness.evaluation.lm_eval_tasks.data import OfflineDataSpec
from harness.util.io import atomic_write_json
from harness.util.provenance import environment

SAMPLES = {
    "grid (16 documents x 4,000 characters)": {"ppl_max_docs": 16, "ppl_max_chars": 4000},
    "tiny (35 documents x 8,000 characters)": {"ppl_max_docs": None, "ppl_max_chars": 8000},
}
TASKS = {"all tasks": ["heldout_ppl", "next_line", "table1"], "heldout_ppl only": ["heldout_ppl"]}


def main() -> None:
    model = load_model("teachers/tiny/tiny-m-64m-v1", device="cpu")

    def seconds(sample: dict, tasks: list[str]) -> float:
        spec = OfflineDataSpec(max_line_chars=64, next_line_examples=100, task_docs=100, **sample)
        start = time.perf_counter()
        evaluate(model, tasks=tasks, corpus="stdlib", data_spec=spec, max_length=128)
        return time.perf_counter() - start

    for sample in SAMPLES.values():  # warm-up: generates and caches the task data
        seconds(sample, TASKS["all tasks"])
    times = {s: {t: [] for t in TASKS} for s in SAMPLES}
    for _ in range(3):
        for s, sample in SAMPLES.items():
            for t, tasks in TASKS.items():
                times[s][t].append(round(seconds(sample, tasks), 2))
    out = {"environment": environment(), "seconds": times}
    atomic_write_json(Path(__file__).with_name("cost.json"), out)
    print(json.dumps(out["seconds"], indent=1))


if __name__ == "__main__":
    main()
