"""Summarise ``recipes_bias.json``: per kind, method and recipe, the mean over seeds on tiny's sample
and on the whole split, and each method and recipe's recovery, (scratch - converted) / (scratch -
teacher), on both (the teacher's scores from ``bias.json``). Writes ``recipes_bias_summary.json``.

Run from the repository root: ``.venv/bin/python results/tiny/heldout_sample/recipes_bias_summary.py``."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from statistics import mean

from harness.util.io import atomic_write_json

HERE = Path(__file__).parent
SPLITS = {"sample": ("sample_bpb", "tiny sample"), "whole split": ("whole_bpb", "whole split")}


def main() -> None:
    runs = json.loads((HERE / "recipes_bias.json").read_text())["runs"]
    teacher = json.loads((HERE / "bias.json").read_text())["bits_per_byte"]["tiny-m-64m-v1"]
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for r in runs:
        groups[(r["kind"], r["method"], r["recipe"])].append(r)
    means = {k: {s: mean(r[col] for r in rs) for s, (col, _) in SPLITS.items()} for k, rs in groups.items()}
    out = {"means": [{"kind": k, "method": m, "recipe": rc, **v} for (k, m, rc), v in sorted(means.items())]}
    out["recovery"] = [
        {
            "method": m,
            "recipe": rc,
            **{
                s: (means[("scratch", m, "")][s] - v[s]) / (means[("scratch", m, "")][s] - teacher[name])
                for s, (_, name) in SPLITS.items()
            },
        }
        for (k, m, rc), v in sorted(means.items())
        if k == "converted"
    ]
    atomic_write_json(HERE / "recipes_bias_summary.json", out)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
