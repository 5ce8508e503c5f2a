"""Is a held-out sample the split? Every shipped tiny teacher scored (held-out bits per byte) on the
grid's sample (the first 4,000 characters of the first 16 test documents in name order), on tiny's
(the first 8,000 characters of every test document) and on the whole test split, with the same
scoring code and window as the profiles. Writes ``bias.json`` beside this file.

Run from the repository root: ``.venv/bin/python results/tiny/heldout_sample/bias.py``."""

from __future__ import annotations

import json
from pathlib import Path

from harness.conversion.factory import load_model
from harness.evaluation.evaluate import evaluate
from harness.evaluation.lm_eval_tasks.data import OfflineDataSpec
from harness.util.io import atomic_write_json
from harness.util.provenance import environment

SAMPLES = {
    "grid sample": {"ppl_max_docs": 16, "ppl_max_chars": 4000},
    "tiny sample": {"ppl_max_docs": None, "ppl_max_chars": 8000},
    "whole split": {"ppl_max_docs": None, "ppl_max_chars": None},
}
TEACHERS = ["tiny-s-v1", "tiny-m-4m-v1", "tiny-l-v1", "tiny-llama-v1", "tiny-m-v2", "tiny-m-64m-v1"]


def bits_per_byte(model, sample: dict) -> float:
    spec = OfflineDataSpec(max_line_chars=64, next_line_examples=100, **sample)
    rows = evaluate(model, tasks=["heldout_ppl"], corpus="stdlib", data_spec=spec, max_length=128).rows
    (value,) = [r["value"] for r in rows if r["metric"] == "bits_per_byte"]
    return value


def main() -> None:
    table = {}
    for name in TEACHERS:
        model = load_model(f"teachers/tiny/{name}", device="cpu")
        table[name] = {s: round(bits_per_byte(model, sample), 4) for s, sample in SAMPLES.items()}
        print(name, table[name], flush=True)
    atomic_write_json(Path(__file__).with_name("bias.json"), {"environment": environment(), "bits_per_byte": table})
    print(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
