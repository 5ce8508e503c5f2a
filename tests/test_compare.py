"""``python -m harness compare``: two runs agree up to the seed noise their own Table 2 measured."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.cli import main
from harness.report.compare import compare


def write_run(root: Path, bpb_shift: float = 0.0, drop_row: bool = False) -> Path:
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


def test_identical_runs_agree(tmp_path):
    a, b = write_run(tmp_path / "a"), write_run(tmp_path / "b")
    frame, ok = compare(a, b)
    assert ok and set(frame["experiment"]) == {"table2_methods", "table1_scale", "kernel_ablation"}
    assert "tokens_per_s" not in set(frame["metric"])
    assert frame.set_index(["experiment", "metric"]).loc[("kernel_ablation", "loglog_slope"), "verdict"] == (
        "no noise estimate"
    )


def test_tolerance_is_the_measured_seed_noise(tmp_path):
    """The noise of bpb is the median sd over Table 2's methods (0.02): a mean over 3 seeds may move by
    3 x 0.02 x sqrt(2/3) = 0.049, a single run by 3 x 0.02 x sqrt(2) = 0.085."""
    a = write_run(tmp_path / "a")
    frame, ok = compare(a, write_run(tmp_path / "b", bpb_shift=0.04))
    assert ok
    tol = frame.set_index(["experiment", "metric"])["tolerance"]
    assert abs(tol[("table2_methods", "heldout_ppl bpb")] - 0.0490) < 1e-3
    assert abs(tol[("table1_scale", "heldout_ppl bpb")] - 0.0849) < 1e-3
    frame, ok = compare(a, write_run(tmp_path / "c", bpb_shift=0.06))
    verdicts = frame.set_index(["experiment", "metric"])["verdict"]
    assert not ok and verdicts[("table2_methods", "heldout_ppl bpb")] == "DIFFERS"
    assert verdicts[("table1_scale", "heldout_ppl bpb")] == "within seed noise"


def test_missing_rows_fail_and_the_cli_says_so(tmp_path, capsys):
    a = write_run(tmp_path / "a")
    write_run(tmp_path / "b" / "tiny", drop_row=True)
    assert main(["compare", str(a), str(tmp_path / "b"), "--out", str(tmp_path / "cmp.md")]) == 1
    assert "do NOT agree" in capsys.readouterr().out and (tmp_path / "cmp.md").exists()
    assert main(["compare", str(a), str(tmp_path / "nowhere")]) == 2


def test_report_says_when_a_ranking_is_inside_the_seed_noise(tmp_path):
    """Table 2's 'best method' line says when its lead (or the whole spread) is within seed noise."""
    from harness.report.report import PAPER_DIR, table2_section

    def section(scores: list[float]) -> str:
        t = pd.DataFrame(
            {
                "model": ["dijiang", "performer", "retnet"],
                "method": ["dijiang", "performer", "retnet"],
                "heldout_ppl bpb": scores,
                "heldout_ppl bpb sd": [0.01, 0.01, 0.01],
                "seeds": [3, 3, 3],
            }
        )
        (tmp_path / "table.csv").unlink(missing_ok=True)
        t.to_csv(tmp_path / "table.csv", index=False)
        return "\n".join(table2_section(tmp_path, PAPER_DIR))

    # noise = 3 x 0.01 x sqrt(2/3) = 0.0245
    assert "no ranking" in section([2.50, 2.51, 2.52])
    lead = section([2.50, 2.51, 2.70])
    assert "**dijiang**" in lead and "inside the seed noise" in lead and "no ranking" not in lead
    clear = section([2.40, 2.51, 2.70])
    assert "**dijiang**" in clear and "seed noise" not in clear
