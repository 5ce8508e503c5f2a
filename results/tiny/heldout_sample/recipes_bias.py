"""The held-out sample's bias on converted models: the models of tiny's ``recipes_controls`` (DiJiang
and RetNet converted at 1/256 with the paper and transfer recipes, their from-scratch and no-op
controls, 2 seeds) scored on the whole test split, beside their score on tiny's sample (read from the
evaluation each run cached when the profile ran). Needs the run folder of a tiny run (the models are
not committed). Writes ``recipes_bias.json`` beside this file.

Run from the repository root: ``.venv/bin/python results/tiny/heldout_sample/recipes_bias.py RUNS``
(``RUNS``: e.g. ``runs/tiny/runs``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from harness.conversion.factory import load_model
from harness.evaluation.evaluate import evaluate
from harness.evaluation.lm_eval_tasks.data import OfflineDataSpec
from harness.util.io import atomic_write_json
from harness.util.provenance import environment

FRACTION = "f0.00390625"  # recipes_controls' budget at tiny: 1/256 of the teacher's tokens


def describe(name: str) -> dict[str, str]:
    """kind (converted, scratch, no-op), method, recipe and seed from a run folder's name."""
    parts = name.split("-")
    method = parts[3]
    kind = "scratch" if parts[0] == "scratch" else "no-op" if method == "softmax" else "converted"
    recipe = "transfer" if "transfer2" in parts else "" if kind != "converted" else "paper"
    seed = next(p for p in parts if p.startswith("s") and p[1:].isdigit())
    return {"kind": kind, "method": method, "recipe": recipe, "seed": seed}


def cached_sample_bpb(run: Path) -> float:
    """Held-out bits per byte on the profile's sample, as the run cached it (its only bits-per-byte-only cache)."""
    for cache in sorted(run.glob("eval-*.json")):
        rows = json.loads(cache.read_text())["rows"]
        if {r["task"] for r in rows} == {"heldout_ppl"}:
            return next(r["value"] for r in rows if r["metric"] == "bits_per_byte")
    raise FileNotFoundError(f"{run}: no held-out-only evaluation cached")


def whole_split_bpb(run: Path) -> float:
    model = load_model(str(run / "model"), device="cpu")
    spec = OfflineDataSpec(max_line_chars=64, next_line_examples=100, ppl_max_docs=None, ppl_max_chars=None)
    rows = evaluate(model, tasks=["heldout_ppl"], corpus="stdlib", data_spec=spec, max_length=128).rows
    return next(r["value"] for r in rows if r["metric"] == "bits_per_byte")


def main(runs: Path) -> None:
    folders = [
        p
        for p in sorted(runs.iterdir())
        if FRACTION in p.name and (p / "model").is_dir() and "transfer1" not in p.name
        if any(json.loads(c.read_text())["rows"] and True for c in p.glob("eval-*.json"))
    ]
    rows = []
    for run in folders:
        row = {"run": run.name, **describe(run.name), "sample_bpb": cached_sample_bpb(run)}
        row["whole_bpb"] = whole_split_bpb(run)
        rows.append(row)
        print(row, flush=True)
    atomic_write_json(Path(__file__).with_name("recipes_bias.json"), {"environment": environment(), "runs": rows})


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        sys.exit("usage: recipes_bias.py RUNS (the run folder of a tiny run, e.g. runs/tiny/runs)")
    main(Path(sys.argv[1]))
