"""The paper's own numbers as tidy CSV under ``results/paper/``.

Source: ``shared/paper/*.csv`` (transcriptions of DiJiang, Chen et al. 2024, arXiv 2403.19928 v2:
Table 1, Table 2, Table 3, and the official repository README's throughput plot read off its
pixels). This module only reshapes those files — one row per (table, model, task) — so that our
reports can set each of our tables beside the paper's; nothing here is typed by hand.

Run ``python -m harness.report.paper_numbers [SHARED_PAPER_DIR]`` to regenerate.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from harness.util.io import atomic_write_text

#: the method the paper reports as best (its own, Table 2), against which every other one is tested
PAPER_BEST = "dijiang"
SOURCES: dict[str, str] = {
    "table1_scale": "DiJiang arXiv 2403.19928 v2, Table 1",
    "table2_methods": "DiJiang arXiv 2403.19928 v2, Table 2",
    "table3_7b": "DiJiang arXiv 2403.19928 v2, Table 3",
    "speed_readme_plot": "github.com/YuchuanTian/DiJiang README throughput plot (read off pixels, +-0.2)",
}
#: columns that name a row rather than hold a task score
ID_COLUMNS: dict[str, list[str]] = {
    "table1_scale": ["model", "family", "params", "train_days", "infer_tokens_per_s", "note"],
    "table2_methods": ["method", "note"],
    "table3_7b": ["model", "train_tokens"],
}
#: paper column names -> lm-eval task names. The paper's "wsc" stays "wsc": its scores .365/.635
#: are 38/104 and 66/104, i.e. SuperGLUE WSC's 104 validation examples (lm-eval ``wsc``), not
#: ``wsc273``'s 273.
TASK_NAMES: dict[str, str] = {"nq": "nq_open", "siqa": "social_iqa"}
#: SuperGLUE WSC's validation set, which the paper's "wsc" column scores (lm-eval ``wsc``): its size,
#: and the two scores (as counts) that answering every example with the same class gives
#: (shared/paper/README.md: ".365/.635 are constant-class predictions on its 104 examples")
WSC_EXAMPLES = 104
WSC_CONSTANT_CLASS_COUNTS: frozenset[int] = frozenset({38, 66})


def tidy_table(name: str, frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, task): columns table, model, task, value, plus the id columns."""
    ids = [c for c in ID_COLUMNS[name] if c in frame.columns]
    long = frame.melt(id_vars=ids, var_name="task", value_name="value")
    long["task"] = long["task"].map(lambda t: TASK_NAMES.get(t, t))
    if "method" in long.columns and "model" not in long.columns:
        long = long.rename(columns={"method": "model"})
    long.insert(0, "table", name)
    long["source"] = SOURCES[name]
    return long


def build(shared_dir: Path, out_dir: Path) -> list[Path]:
    """Write ``results/paper/<table>.csv`` for every transcribed table; returns the paths."""
    written = []
    for name in SOURCES:
        src = shared_dir / f"{name}.csv"
        if not src.exists():
            raise FileNotFoundError(f"{src} is missing; pass the directory holding the paper's CSVs.")
        frame = pd.read_csv(src)
        if name == "speed_readme_plot":
            tidy = frame.melt(id_vars=["seq_len"], var_name="model", value_name="tokens_per_s")
            tidy["model"] = tidy["model"].str.replace("_tokens_per_s", "", regex=False)
            tidy.insert(0, "table", name)
            tidy["source"] = SOURCES[name]
        else:
            tidy = tidy_table(name, frame)
        path = out_dir / f"{name}.csv"
        atomic_write_text(path, tidy.to_csv(index=False))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(__file__).resolve().parents[2]
    shared = Path(argv[0]) if argv else root.parent / "shared" / "paper"
    for p in build(shared, root / "results" / "paper"):
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
