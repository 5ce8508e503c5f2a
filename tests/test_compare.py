"""``python -m harness compare``: two runs agree up to their noise (seed spread and per-item standard
errors); a metric with no noise estimate is not passed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from harness.cli import main
from harness.evaluation.items import encode_items
from harness.report.compare import compare


def write_run(root: Path, bpb_shift: float = 0.0, drop_row: bool = False, params: float = 1000.0) -> Path:
    t2 = pd.DataFrame(
        {
            "model": ["dijiang", "performer"],
            "method": ["dijiang", "performer"],
            "heldout_ppl bpb": [2.50 + bpb_shift, 2.60],
            "heldout_ppl bpb sd": [0.010, 0.030],
            "seeds": [3, 3],
        }
    )
    t1 = pd.DataFrame(
        {
            "model": ["tiny-s", "dijiang-tiny-s"],
            "method": ["softmax", "dijiang"],
            "params": [params, 1100.0],
            "heldout_ppl bpb": [2.40, 2.45 + bpb_shift],
            "tokens_per_s": [100.0, 50.0 + 1000 * bpb_shift],  # machine-dependent: never compared
        }
    )
    ka = pd.DataFrame({"estimator": ["wdcf"], "loglog_slope": [-0.5 + bpb_shift]})
    for name, frame in (("table2_methods", t2), ("table1_scale", t1), ("kernel_ablation", ka)):
        (root / name).mkdir(parents=True)
        (frame.iloc[:-1] if drop_row and name == "table1_scale" else frame).to_csv(
            root / name / "table.csv", index=False
        )
    return root


def verdicts(frame: pd.DataFrame) -> pd.Series:
    return frame.set_index(["experiment", "metric"])["verdict"]


def test_identical_runs_agree(tmp_path):
    a, b = write_run(tmp_path / "a"), write_run(tmp_path / "b")
    frame, ok = compare(a, b)
    assert ok and set(frame["experiment"]) == {"table2_methods", "table1_scale", "kernel_ablation"}
    assert "tokens_per_s" not in set(frame["metric"])
    assert set(frame["verdict"]) == {"identical"}


def test_tolerance_is_the_measured_seed_noise(tmp_path):
    """The noise of bpb is the median sd over Table 2's methods (0.02): a mean over 3 seeds may move by
    3 x 0.02 x sqrt(2/3) = 0.049, a single run by 3 x 0.02 x sqrt(2) = 0.085."""
    a = write_run(tmp_path / "a")
    frame, ok = compare(a, write_run(tmp_path / "b", bpb_shift=0.04), allow_unjudged=True)
    assert ok
    tol = frame.set_index(["experiment", "metric"])["tolerance"]
    assert abs(tol[("table2_methods", "heldout_ppl bpb")] - 0.0490) < 1e-3
    assert abs(tol[("table1_scale", "heldout_ppl bpb")] - 0.0849) < 1e-3
    frame, ok = compare(a, write_run(tmp_path / "c", bpb_shift=0.06), allow_unjudged=True)
    assert not ok and verdicts(frame)[("table2_methods", "heldout_ppl bpb")] == "DIFFERS"
    assert verdicts(frame)[("table1_scale", "heldout_ppl bpb")] == "within seed noise"


def test_a_metric_without_noise_estimate_is_not_passed(tmp_path):
    """The kernel ablation's slope has no noise estimate: a difference in it fails the comparison
    unless explicitly accepted."""
    a = write_run(tmp_path / "a")
    frame, ok = compare(a, write_run(tmp_path / "b", bpb_shift=0.01))
    assert not ok and verdicts(frame)[("kernel_ablation", "loglog_slope")] == "no noise estimate"
    assert verdicts(frame)[("table2_methods", "heldout_ppl bpb")] == "within seed noise"
    assert compare(a, tmp_path / "b", allow_unjudged=True)[1]
    assert main(["compare", str(a), str(tmp_path / "b")]) == 1
    assert main(["compare", str(a), str(tmp_path / "b"), "--allow-unjudged"]) == 0


def test_counts_and_parameters_must_match_exactly(tmp_path):
    frame, ok = compare(write_run(tmp_path / "a"), write_run(tmp_path / "b", params=1001.0))
    assert not ok and verdicts(frame)[("table1_scale", "params")] == "DIFFERS"


def write_scored(root: Path, flipped: int, with_items: bool = True) -> Path:
    """A one-task table (200 items, 100 right) whose second run turns ``flipped`` wrong items right."""
    right = np.zeros(200, dtype=int)
    right[:100] = 1
    right[100 : 100 + flipped] = 1
    acc, se = right.mean(), right.std(ddof=1) / np.sqrt(200)
    folder = root / "table1_scale"
    folder.mkdir(parents=True)
    pd.DataFrame(
        {"model": ["m"], "method": ["dijiang"], "piqa_local": [acc], "piqa_local stderr": [se], "piqa_local n": [200]}
    ).to_csv(folder / "table.csv", index=False)
    if with_items:
        items = encode_items(list(range(200)), right.tolist())
        pd.DataFrame(
            {"model": ["m"], "method": ["dijiang"], "task": ["piqa_local"], "metric": ["acc"], "items": [items]}
        ).to_csv(folder / "results.csv", index=False)
    return root


def test_accuracies_are_judged_by_their_per_item_standard_errors(tmp_path):
    """Paired over the items, 2 flipped items of 200 (+0.01) are noise and 20 (+0.10) are not; with
    only each run's own standard error (no items) the tolerance is the unpaired, wider one."""
    a = write_scored(tmp_path / "a", 0)
    frame, ok = compare(a, write_scored(tmp_path / "b", 2))
    assert ok and frame.set_index("metric").loc["piqa_local", "noise"] == "items (paired)"
    frame, ok = compare(a, write_scored(tmp_path / "c", 20))
    assert not ok and verdicts(frame)[("table1_scale", "piqa_local")] == "DIFFERS"
    frame, ok = compare(write_scored(tmp_path / "d", 0, False), write_scored(tmp_path / "e", 20, False))
    row = frame.set_index("metric").loc["piqa_local"]
    assert ok and row["noise"] == "items (per-run stderr)" and row["tolerance"] > 0.14


def test_missing_rows_fail_and_the_cli_says_so(tmp_path, capsys):
    a = write_run(tmp_path / "a")
    write_run(tmp_path / "b" / "tiny", drop_row=True)
    assert main(["compare", str(a), str(tmp_path / "b"), "--out", str(tmp_path / "cmp.md")]) == 1
    assert "do NOT agree" in capsys.readouterr().out and (tmp_path / "cmp.md").exists()
    assert main(["compare", str(a), str(tmp_path / "nowhere")]) == 2


def test_float_rounding_is_no_difference_but_a_real_change_still_is(tmp_path):
    """1e-7 bits per byte (the same sum in another order) is identical; 1e-4 without a noise estimate
    is not passed, and the exact columns stay exact."""
    a = write_run(tmp_path / "a")
    frame, ok = compare(a, write_run(tmp_path / "b", bpb_shift=1e-7))
    assert ok and set(frame["verdict"]) == {"identical"}
    frame, ok = compare(a, write_run(tmp_path / "c", bpb_shift=1e-4))
    assert not ok and verdicts(frame)[("kernel_ablation", "loglog_slope")] == "no noise estimate"
    frame, ok = compare(a, write_run(tmp_path / "d", params=1000.0001))
    assert not ok and verdicts(frame)[("table1_scale", "params")] == "DIFFERS"


def write_recipes(root: Path, shift: float = 0.0) -> Path:
    """A recipes table (two cells, means over 3 seeds) beside its per-seed results.csv; no Table 2, as
    in the grid profiles. Seed spread: cell sd 0.01 and 0.03, median 0.02."""
    folder = root / "recipes_controls"
    folder.mkdir(parents=True)
    per_seed = pd.DataFrame(
        {
            "method": ["dijiang"] * 6,
            "recipe": ["paper"] * 3 + ["transfer"] * 3,
            "fraction": [0.0625] * 6,
            "seed": [0, 1, 2] * 2,
            "converted_bpb": [1.26, 1.27, 1.28, 1.18, 1.21, 1.24],
            "noop_bpb": [0.88] * 6,
        }
    )
    per_seed["converted_bpb"] += shift
    per_seed.to_csv(folder / "results.csv", index=False)
    table = per_seed.groupby(["method", "recipe", "fraction"], as_index=False)[["converted_bpb", "noop_bpb"]].mean()
    table.assign(seeds=3).to_csv(folder / "table.csv", index=False)
    return root


def test_a_table_with_per_seed_rows_is_judged_by_its_own_seed_spread(tmp_path):
    """With no Table 2 to borrow from, the recipes table's own seed spread judges it: a mean over 3 seeds
    may move by 3 x 0.02 x sqrt(2/3) = 0.049; a metric with no spread (the no-op here) stays unjudged
    unless equal."""
    a = write_recipes(tmp_path / "a")
    frame, ok = compare(a, write_recipes(tmp_path / "b", shift=0.04))
    row = frame.set_index("metric").loc["converted_bpb"]
    assert ok and row["noise"] == "seeds (own)" and abs(row["tolerance"] - 0.0490) < 1e-3
    assert frame.set_index("metric").loc["noop_bpb", "verdict"] == "identical"
    frame, ok = compare(a, write_recipes(tmp_path / "c", shift=0.06))
    assert not ok and verdicts(frame)[("recipes_controls", "converted_bpb")] == "DIFFERS"
    (tmp_path / "a" / "recipes_controls" / "results.csv").unlink()
    (tmp_path / "c" / "recipes_controls" / "results.csv").unlink()
    frame, ok = compare(a, tmp_path / "c")
    assert not ok and verdicts(frame)[("recipes_controls", "converted_bpb")] == "no noise estimate"


def test_a_derived_column_is_shown_but_not_judged(tmp_path):
    """A recovery score is computed from the compared bits per byte: how far it moved is printed (a
    reader can quote it), and it neither passes nor fails the comparison on its own."""
    a, b = write_recipes(tmp_path / "a"), write_recipes(tmp_path / "b")
    for root, recovery in ((a, [0.30, 0.45]), (b, [0.30, 0.95])):
        table = pd.read_csv(root / "recipes_controls" / "table.csv")
        table.assign(recovery=recovery).to_csv(root / "recipes_controls" / "table.csv", index=False)
    frame, ok = compare(a, b)
    row = frame.set_index("metric").loc["recovery"]
    assert ok and row["verdict"] == "derived: not judged" and abs(row["max |A-B|"] - 0.5) < 1e-12
    assert verdicts(frame)[("recipes_controls", "converted_bpb")] == "identical"
