"""The teacher's training as a control (``harness/report/teacher_training.py``): conversions from a
more trained teacher beside the grid's at the same tokens, compared only where their from-scratch
controls agree, each difference with Welch's t-test over seeds."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.report.teacher_training import trained_teacher_lines

TOKENS = 4_194_304


def results(out: Path, rows: list[tuple], teacher: float, fraction: float) -> Path:
    """A ``results.csv`` of per-seed cells (method, recipe, seed, converted, scratch)."""
    out.mkdir(parents=True)
    frame = pd.DataFrame(
        [
            {
                "method": m,
                "recipe": r,
                "fraction": fraction,
                "seed": s,
                "tokens": TOKENS,
                "converted_bpb": c,
                "scratch_bpb": sc,
                "teacher_bpb": teacher,
                "recovery": (sc - c) / (sc - teacher),
            }
            for m, r, s, c, sc in rows
        ]
    )
    frame.to_csv(out / "results.csv", index=False)
    return out


def grid(tmp_path: Path, scratch: tuple[float, float] = (1.45, 1.47)) -> list[Path]:
    """The grid's two extensions at 1/4 of a 1.18-bpb teacher: paper and transfer, two seeds."""
    paper = results(
        tmp_path / "grid" / "recipes_controls_extended",
        [("dijiang", "paper", 0, 1.259, scratch[0]), ("dijiang", "paper", 1, 1.266, scratch[1])],
        1.18,
        0.25,
    )
    transfer = results(
        tmp_path / "grid" / "recipes_controls_extended_transfer",
        [("dijiang", "transfer", 0, 1.29, scratch[0]), ("dijiang", "transfer", 1, 1.30, scratch[1])],
        1.18,
        0.25,
    )
    return [paper, transfer]


def trained(tmp_path: Path, scratch: tuple[float, float] = (1.45, 1.47)) -> Path:
    """The 64M-token teacher (1.05 bpb) converted at 1/16: paper much better, transfer the same."""
    return results(
        tmp_path / "grid-64m" / "recipes_controls_trained_teacher",
        [
            ("dijiang", "paper", 0, 1.150, scratch[0]),
            ("dijiang", "paper", 1, 1.155, scratch[1]),
            ("dijiang", "transfer", 0, 1.285, scratch[0]),
            ("dijiang", "transfer", 1, 1.305, scratch[1]),
        ],
        1.05,
        0.0625,
    )


def test_the_two_teachers_are_compared_cell_by_cell_with_their_tests(tmp_path):
    text = "\n".join(trained_teacher_lines(trained(tmp_path), grid(tmp_path)))
    assert "4,194,304 tokens" in text and "2 from-scratch controls" in text and "0.0e+00" in text
    assert "the grid's teacher 1.180, this teacher 1.050 (-11.0%)" in text
    paper = next(line for line in text.splitlines() if line.startswith("- **dijiang / paper**"))
    transfer = next(line for line in text.splitlines() if line.startswith("- **dijiang / transfer**"))
    # paper: 1.1525 against 1.2625 over seeds that differ by ~0.005: better; its relative gap 9.8 % vs 7.0 %
    assert "converted model is better (p" in paper and "gap to its own teacher is larger (p" in paper
    # transfer: the same converted bpb, so not different; but its gap to a better teacher is larger
    assert "converted model is not significantly different" in transfer
    rows = [line.split("|")[1:4] for line in text.splitlines() if line.startswith("| dijiang")]
    assert [[c.strip() for c in r] for r in rows] == [
        ["dijiang", "paper", "1.262 ± 0.004"],
        ["dijiang", "transfer", "1.295 ± 0.005"],
    ]


def test_nothing_is_compared_when_the_scratch_controls_disagree(tmp_path):
    lines = trained_teacher_lines(trained(tmp_path, scratch=(1.45, 1.50)), grid(tmp_path))
    assert "differ by up to 0.030" in lines[0] and len(lines) == 2


def test_without_the_grids_runs_there_is_nothing_to_compare(tmp_path):
    assert trained_teacher_lines(trained(tmp_path), []) == []
    other = results(tmp_path / "grid" / "x", [("retnet", "paper", 0, 1.3, 1.7)], 1.18, 0.25)
    assert "ran at these tokens" in trained_teacher_lines(trained(tmp_path / "b"), [other])[0]


def test_each_budget_is_compared_at_its_own_tokens(tmp_path):
    """An experiment of the more trained teacher at several token counts is set beside the grid's runs of
    each, budget by budget; a budget the grid never ran is named, not compared."""
    base = results(
        tmp_path / "grid" / "recipes_controls",
        [("dijiang", "paper", s, 1.30 + s / 100, 1.45 + s / 50) for s in (0, 1)],
        1.18,
        0.0625,
    )
    mine = pd.read_csv(trained(tmp_path).joinpath("results.csv"))
    small = mine.assign(tokens=TOKENS // 4, fraction=0.015625, scratch_bpb=[1.45, 1.47, 1.45, 1.47])
    large = mine.assign(tokens=TOKENS * 4, fraction=0.25)
    both = tmp_path / "both"
    both.mkdir()
    pd.concat([small, large]).to_csv(both / "results.csv", index=False)
    base.joinpath("results.csv").write_text(
        pd.read_csv(base / "results.csv").assign(tokens=TOKENS // 4).to_csv(index=False)
    )
    text = "\n".join(trained_teacher_lines(both, [base, *grid(tmp_path)]))
    assert "same 1,048,576 tokens** (the grid's 1/16; here 1/64)" in text
    assert "ran at these tokens (16,777,216)" in text
    assert text.count("- **dijiang / paper**") == 1 and "- **dijiang / transfer**" not in text


def test_controls_that_moved_with_the_thread_count_or_chose_another_rate_are_named(tmp_path):
    """The same runs on another torch thread count move by up to THREAD_TOLERANCE: still the same data,
    and said so. A method whose from-scratch control chose another rate is named, as its recovery rests
    on other controls; where no control ran at the same rate, nothing shows the data are the same."""
    base_outs = grid(tmp_path)
    for out in base_outs:
        pd.read_csv(out / "results.csv").assign(scratch_lr=0.004).to_csv(out / "results.csv", index=False)
    mine = trained(tmp_path, scratch=(1.453, 1.468))
    frame = pd.read_csv(mine / "results.csv")
    extra = frame[frame["recipe"] == "paper"].assign(method="retnet", scratch_lr=0.002)
    pd.concat([frame.assign(scratch_lr=0.004), extra]).to_csv(mine / "results.csv", index=False)
    base_retnet = pd.read_csv(base_outs[0] / "results.csv")
    pd.concat([base_retnet, base_retnet.assign(method="retnet")]).to_csv(base_outs[0] / "results.csv", index=False)
    text = "\n".join(trained_teacher_lines(mine, base_outs))
    assert "2 from-scratch controls both ran (method, seed) at the same rate agree to 3.0e-03" in text
    assert "within the 0.005 by which a torch thread count alone moves a run" in text
    assert "- retnet's from-scratch control chose another rate here (0.002) than in the grid (0.004" in text
    frame.assign(scratch_lr=0.002).to_csv(mine / "results.csv", index=False)
    assert "never ran at the same learning rate" in trained_teacher_lines(mine, base_outs)[0]
