"""Shipped teachers and fair learning rates (issue: make the reproduction conclusive).

* :func:`harness.pipeline.teachers.converge` stops at the first doubling of tokens that gains less
  than the threshold and ships the budget before it; a curve that still pays is "not converged".
* :func:`harness.pipeline.shipped.verify` refuses weights, shapes or corpora that disagree.
* :func:`harness.pipeline.runners.controls.sweep` picks the rate with the lowest *validation* loss on
  the first seed and trains the other seeds at it.
* The report states the curve, the sweep and DiJiang's rank with its test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from harness.pipeline import shipped, stages, teachers
from harness.pipeline.runners.controls import sweep
from harness.pipeline.spec import Teacher, load_profile
from harness.report.controls import lr_sweep_lines, ranking_lines, recipe_lines
from harness.report.report import teachers_section
from harness.util.errors import UserError

LN2 = math.log(2)


def fake_run(tokens: int, bits: float, out: Path) -> stages.Run:
    model = out / "model"
    model.mkdir(parents=True, exist_ok=True)
    (model / "model.safetensors").write_bytes(f"weights {tokens}".encode())
    (model / "config.json").write_text("{}")
    result = SimpleNamespace(
        val_loss=bits * LN2,
        wall_time_s=1.0,
        out_dir=str(out),
        model_dir=str(model),
        summary={"corpus": {"hash": "abc"}, "config": {"lr": 1e-3}, "n_params": 10},
    )
    return stages.Run(label=out.name, result=result, method="softmax", tokens=tokens)  # type: ignore[arg-type]


@pytest.fixture
def curve_of(monkeypatch, tmp_path):
    """Make ``converge`` train nothing: validation bits per byte come from ``bits[tokens]``."""

    def install(bits: dict[int, float]) -> list[int]:
        trained: list[int] = []

        def run_training(ctx, label, config, method):
            trained.append(config.tokens)
            return fake_run(config.tokens, bits[config.tokens], tmp_path / label)

        monkeypatch.setattr(teachers, "run_training", run_training)
        return trained

    ctx = stages.Context(load_profile("tiny"), results_dir=tmp_path)
    return ctx, install


def test_converge_ships_the_budget_before_the_first_doubling_that_stopped_paying(curve_of):
    ctx, install = curve_of
    k = 4096
    trained = install({k: 3.0, 2 * k: 2.5, 4 * k: 2.3, 8 * k: 2.28, 16 * k: 2.0})
    curve, runs, converged = teachers.converge(ctx, ctx.profile.teacher("tiny-m"), start_tokens=k)
    assert trained == [k, 2 * k, 4 * k, 8 * k]  # 4k -> 8k gained < 2 %: stop, never train 16k
    assert converged and teachers.chosen(runs, converged).tokens == 4 * k
    assert teachers.chosen(runs, converged, tokens=2 * k).tokens == 2 * k  # a budget chosen for cost
    with pytest.raises(UserError, match="not on the curve"):
        teachers.chosen(runs, converged, tokens=3 * k)
    assert curve[1].gain == pytest.approx(0.5 / 3.0) and curve[-1].gain == pytest.approx(0.02 / 2.3)


def test_a_curve_that_still_pays_is_not_called_converged(curve_of):
    ctx, install = curve_of
    k = 4096
    install({k: 3.0, 2 * k: 2.5, 4 * k: 2.0})
    curve, runs, converged = teachers.converge(ctx, ctx.profile.teacher("tiny-m"), start_tokens=k, max_doublings=2)
    assert not converged and teachers.chosen(runs, converged).tokens == 4 * k and len(curve) == 3


def shipped_teacher(tmp_path: Path, **change) -> tuple[Teacher, Path]:
    profile = load_profile("tiny")
    t = profile.teacher("tiny-m")
    run = fake_run(4000, 2.3, tmp_path / "run")
    curve = [teachers.CurvePoint(4000, 2.3, None, 1.0, "x"), teachers.CurvePoint(8000, 2.277, 0.01, 2.0, "y")]
    t = Teacher(name=t.name, tokens=4000, shape=dict(t.shape))
    dest = teachers.ship(profile, t, run, curve, True, root=tmp_path / "teachers")
    t = Teacher(name=t.name, tokens=change.get("tokens", 4000), shape=dict(t.shape), shipped=str(dest))
    return t, dest


def test_shipping_never_overwrites_and_verify_checks_weights_shape_and_corpus(tmp_path):
    t, dest = shipped_teacher(tmp_path)
    assert dest.name == "tiny-m-v1" and shipped.verify(t, {"hash": "abc"}) == dest
    meta = json.loads((dest / "teacher.json").read_text())
    assert (
        meta["converged"]
        and meta["tokens"] == 4000
        and meta["sha256"] == shipped.sha256_file(dest / "model.safetensors")
    )
    _, again = shipped_teacher(tmp_path)
    assert again.name == "tiny-m-v2"  # a new version, the first one untouched
    with pytest.raises(UserError, match="corpus"):
        shipped.verify(t, {"hash": "another"})
    wrong_tokens = Teacher(name=t.name, tokens=8000, shape=t.shape, shipped=t.shipped)
    with pytest.raises(UserError, match="make them agree"):
        shipped.verify(wrong_tokens)
    (dest / "model.safetensors").write_bytes(b"edited")
    with pytest.raises(UserError, match="sha256"):
        shipped.verify(t)


def test_extending_a_shipped_curve_appends_the_next_doubling_and_keeps_the_weights(tmp_path, curve_of):
    """``teachers --extend`` trains twice the curve's largest budget, appends its point (gain over the
    last one) to teacher.json and curve.csv, keeps the shipped weights and budget, and names the longer
    curve in ``retrain``; edited weights are refused before anything trains."""
    ctx, install = curve_of
    profile = load_profile("tiny")
    base = profile.teacher("tiny-m")
    curve = [teachers.CurvePoint(4000, 2.5, None, 1.0, "x"), teachers.CurvePoint(8000, 2.3, 0.08, 2.0, "y")]
    t = Teacher(name=base.name, tokens=4000, shape=dict(base.shape))
    dest = teachers.ship(profile, t, fake_run(4000, 2.5, tmp_path / "run"), curve, False, root=tmp_path / "teachers")
    t = Teacher(name=t.name, tokens=4000, shape=dict(t.shape), shipped=str(dest))
    before = json.loads((dest / "teacher.json").read_text())
    trained = install({16000: 2.277})
    point = teachers.extend(ctx, t)
    assert trained == [16000] and point.tokens == 16000 and point.gain == pytest.approx(0.023 / 2.3)
    meta = json.loads((dest / "teacher.json").read_text())
    assert [p["tokens"] for p in meta["curve"]] == [4000, 8000, 16000]
    assert meta["sha256"] == before["sha256"] == shipped.sha256_file(dest / "model.safetensors")
    assert meta["tokens"] == 4000 and not meta["converged"] and meta["curve_wall_time_s"] == pytest.approx(4.0)
    assert meta["retrain"].endswith("--start-tokens 4000 --max-doublings 2 --ship-tokens 4000")
    assert pd.read_csv(dest / "curve.csv")["tokens"].tolist() == [4000, 8000, 16000]
    assert shipped.verify(t) == dest  # still a valid shipped teacher
    # 8000 -> 16000 gained 1 %: the curve converged at 8000, so it is not extended again
    assert teachers.converged_at([teachers.CurvePoint(**p) for p in meta["curve"]]) == 8000
    with pytest.raises(UserError, match="converged at 8,000 tokens"):
        teachers.extend(ctx, t)
    (dest / "model.safetensors").write_bytes(b"edited")
    with pytest.raises(UserError, match="sha256"):
        teachers.extend(ctx, t)
    assert trained == [16000]
    # a teacher shipped at the budget where its curve then converges is called converged
    t8 = Teacher(name=t.name, tokens=8000, shape=dict(t.shape))
    dest8 = teachers.ship(profile, t8, fake_run(8000, 2.3, tmp_path / "r8"), curve, False, root=tmp_path / "teachers")
    teachers.extend(ctx, Teacher(name=t.name, tokens=8000, shape=dict(t.shape), shipped=str(dest8)))
    assert json.loads((dest8 / "teacher.json").read_text())["converged"] and trained == [16000, 16000]


def test_a_curve_point_ships_as_a_teacher_of_its_own(tmp_path, curve_of):
    """``teachers --ship-point T`` ships the shipped curve's point of T (its run reused or retrained) as
    ``<name>-<T>m-v1`` with the whole curve, called converged only when the doubling after it gained
    less than the threshold; a budget off the curve is refused before anything trains."""
    ctx, install = curve_of
    profile = load_profile("tiny")
    base = profile.teacher("tiny-m")
    mi = 1 << 20
    curve = [
        teachers.CurvePoint(mi, 2.5, None, 1.0, "x"),
        teachers.CurvePoint(2 * mi, 2.3, 0.08, 2.0, "y"),
        teachers.CurvePoint(4 * mi, 2.28, 0.0087, 4.0, "z"),
    ]
    t = Teacher(name=base.name, tokens=mi, shape=dict(base.shape))
    dest = teachers.ship(profile, t, fake_run(mi, 2.5, tmp_path / "run"), curve, False, root=tmp_path / "teachers")
    t = Teacher(name=t.name, tokens=mi, shape=dict(t.shape), shipped=str(dest))
    trained = install({2 * mi: 2.3, 4 * mi: 2.28})
    with pytest.raises(UserError, match="not on tiny-m's curve"):
        teachers.ship_point(ctx, t, 3 * mi, root=tmp_path / "teachers")
    assert trained == []
    two = teachers.ship_point(ctx, t, 2 * mi, root=tmp_path / "teachers")
    four = teachers.ship_point(ctx, t, 4 * mi, root=tmp_path / "teachers")
    assert trained == [2 * mi, 4 * mi]
    assert (two.name, four.name) == ("tiny-m-2m-v1", "tiny-m-4m-v1")
    meta2, meta4 = (json.loads((d / "teacher.json").read_text()) for d in (two, four))
    assert meta2["tokens"] == 2 * mi and meta2["converged"]  # the doubling after it gained 0.87 %
    assert meta4["tokens"] == 4 * mi and not meta4["converged"]  # nothing after it yet
    assert meta2["name"] == "tiny-m-2m" and [p["tokens"] for p in meta2["curve"]] == [mi, 2 * mi, 4 * mi]
    assert meta2["retrain"].endswith("--max-doublings 2 --ship-tokens 2097152")
    assert (two / "model.safetensors").read_bytes() == f"weights {2 * mi}".encode()
    assert shipped.verify(Teacher(name="tiny-m", tokens=2 * mi, shape=dict(base.shape), shipped=str(two))) == two


def test_stages_convert_the_shipped_teacher_instead_of_training_one(tmp_path, monkeypatch):
    t, dest = shipped_teacher(tmp_path)
    monkeypatch.setattr(stages, "run_training", lambda *a, **k: pytest.fail("a shipped teacher was retrained"))
    ctx = stages.Context(load_profile("tiny"), results_dir=tmp_path)
    assert stages.teacher(ctx, t) == str(dest)


def test_sweep_selects_on_validation_loss_and_reuses_the_chosen_rate():
    calls = []
    val = {1e-4: 3.0, 1e-3: 2.0, 1e-2: 2.5}

    def train(lr, seed):
        calls.append((lr, seed))
        return SimpleNamespace(result=SimpleNamespace(val_loss=val[lr] * LN2 + 0.01 * seed))

    runs, points = sweep(train, [1e-4, 1e-3, 1e-2], [0, 1, 2])
    assert calls == [(1e-4, 0), (1e-3, 0), (1e-2, 0), (1e-3, 1), (1e-3, 2)]
    assert [p[2] for p in points] == [False, True, False] and points[1][1] == pytest.approx(2.0)
    assert set(runs) == {0, 1, 2}
    no_sweep, none = sweep(lambda lr, seed: (lr, seed), [], [0, 1])
    assert no_sweep == {0: (None, 0), 1: (None, 1)} and none == []


def test_report_shows_the_sweep_and_dijiangs_rank_with_its_test(tmp_path):
    pd.DataFrame(
        [
            dict(method="dijiang", recipe="paper", fraction=0.0625, lr=lr, val_bpb=v, chosen=lr == 1e-3)
            for lr, v in ((3e-4, 3.1), (1e-3, 3.0), (3e-3, 3.2))
        ]
    ).to_csv(tmp_path / "lr_sweep.csv", index=False)
    text = "\n".join(lr_sweep_lines(tmp_path))
    row = next(x for x in text.splitlines() if "dijiang" in x).split("|")
    assert [c.strip() for c in row[4:7]] == ["3.1", "**3.000**", "3.2"]  # columns lr 0.0003, 0.001, 0.003
    assert "lr 0.0003" in text and "lr 0.003" in text
    rows = [
        dict(method=m, recipe="paper", fraction=0.0625, seed=s, converted_bpb=base + 0.001 * s)
        for m, base in (("dijiang", 3.0), ("retnet", 3.5), ("performer", 2.9))
        for s in range(3)
    ]
    line = "\n".join(ranking_lines(pd.DataFrame(rows)))
    assert "ranks **2 of 3**" in line
    assert "retnet +0.500 bpb (p < 0.001, significant)" in line and "performer -0.100" in line


def test_the_report_tests_which_recipe_recovers_the_most():
    """Each recipe's recovery with its standard error, and the best recipe against each other one
    by Welch's test over seeds: a clear gap is significant, a gap inside the seed noise is not."""
    rows = [
        dict(method="dijiang", recipe=r, fraction=0.0625, seed=s, converted_bpb=bpb + noise, recovery=rec - noise)
        for r, bpb, rec in (("paper", 2.0, 0.5), ("transfer", 1.9, 0.6), ("distill", 2.01, 0.49))
        for s, noise in enumerate((0.0, 0.01, 0.02))
    ]
    (line,) = recipe_lines(pd.DataFrame(rows))
    assert "transfer 0.590 ± 0.006, paper 0.490 ± 0.006, distill 0.480 ± 0.006" in line
    assert "best transfer" in line
    assert "paper +0.100 bpb (p < 0.001, significant)" in line
    one_seed = [r for r in rows if r["seed"] == 0]
    (line,) = recipe_lines(pd.DataFrame(one_seed))
    assert "transfer 0.600 (one seed)" in line and "(one seed: no test)" in line and "± 0" not in line


def test_report_states_each_shipped_teachers_curve(tmp_path):
    t, dest = shipped_teacher(tmp_path)
    text = "\n".join(teachers_section({"tiny-m": str(dest)}, tmp_path / "report"))
    assert "**tiny-m**" in text and "4,000 tokens" in text and "2.300" in text
    assert "](teachers/tiny-m.png)" in text and (tmp_path / "report" / "teachers" / "tiny-m.png").stat().st_size
    assert "converged (doubling 4,000 to 8,000 tokens gained 1.0%, under the threshold)" in text
    assert "not converged" not in text and "below the curve's largest budget" not in text


def test_report_counts_a_byte_teachers_passes_over_its_training_split(tmp_path):
    t, dest = shipped_teacher(tmp_path)
    meta = json.loads((dest / "teacher.json").read_text())
    meta["train_config"]["tokenizer"] = "byte"
    meta["corpus"] = {"splits": {"train": {"files": 3, "bytes": 1600}}}
    (dest / "teacher.json").write_text(json.dumps(meta))
    text = "\n".join(teachers_section({"tiny-m": str(dest)}))
    assert "4,000 tokens (2.5 passes over the 1,600-byte training split" in text
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]
    column = rows[0].index("epochs")
    assert [float(r[column]) for r in rows[2:]] == [2.5, 5.0]  # 4,000 and 8,000 tokens over 1,600
    meta["train_config"]["tokenizer"] = "auto"  # tokens are not bytes: nothing to count
    (dest / "teacher.json").write_text(json.dumps(meta))
    assert "passes over" not in "\n".join(teachers_section({"tiny-m": str(dest)}))


def test_convergence_state_places_the_shipped_budget_on_the_curve():
    from harness.report.report import convergence_state

    curve = pd.DataFrame({"tokens": [1000, 2000, 4000, 8000], "gain": [None, 0.10, 0.05, 0.01]})
    assert convergence_state(curve, 4000, 0.02).startswith("converged (doubling 4,000 to 8,000 tokens gained 1.0%")
    below = convergence_state(curve, 2000, 0.02)
    assert below.startswith("**not converged at its shipped budget**: its curve converges at 4,000 tokens")
    still = convergence_state(curve.iloc[:3], 2000, 0.02)
    assert still.startswith("**not converged** (the last doubling still paid)")
    assert "below the curve's largest budget (4,000 tokens)" in still
    assert "below" not in convergence_state(curve.iloc[:3], 4000, 0.02)


def test_tables_name_the_teachers_that_were_not_shipped(tmp_path):
    from harness.report.report import unshipped_teachers_line

    pd.DataFrame(
        [
            dict(teacher="tiny-s", method="softmax", train_tokens=1048576),
            dict(teacher="tiny-s", method="dijiang", train_tokens=65536),
            dict(teacher="tiny-m", method="softmax", train_tokens=8388608),
        ]
    ).to_csv(tmp_path / "table.csv", index=False)
    line = "\n".join(unshipped_teachers_line(tmp_path, {"tiny-m": "teachers/tiny/tiny-m-v1"}))
    assert "tiny-s (1,048,576 tokens)" in line and "tiny-m" not in line
    assert unshipped_teachers_line(tmp_path, {"tiny-m": "x", "tiny-s": "y"}) == []


def test_a_diverged_sweep_point_scores_infinity_and_is_not_chosen():
    from harness.training.config import TrainingDiverged

    def train(lr, seed):
        if lr == 1e-2:
            raise TrainingDiverged("non-finite loss")
        return SimpleNamespace(result=SimpleNamespace(val_loss={1e-4: 3.0, 1e-3: 2.0}[lr] * LN2))

    runs, points = sweep(train, [1e-4, 1e-3, 1e-2], [0])
    assert points[2][1] == math.inf and [p[2] for p in points] == [False, True, False]
    with pytest.raises(TrainingDiverged, match="every learning rate"):
        sweep(train, [1e-2], [0])


def test_the_report_flags_a_rate_chosen_at_the_edge_of_its_sweep():
    from harness.report.controls import sweep_edge_lines

    def cell(method, vals):
        return [
            dict(fraction=0.0625, method=method, recipe="paper", lr=lr, val_bpb=v, chosen=v == min(vals.values()))
            for lr, v in vals.items()
        ]

    sweep = pd.DataFrame(
        cell("dijiang", {3e-4: 3.2, 1e-3: 3.1, 3e-3: 3.0})  # best at the top: flagged
        + cell("retnet", {3e-4: 3.2, 1e-3: 3.0, 3e-3: 3.1})  # inside: not flagged
        + cell("performer", {3e-4: 3.0, 1e-3: 3.1, 3e-3: math.inf})  # lowest finite: flagged
    )
    text = "\n".join(sweep_edge_lines(sweep))
    assert "2 of 3 cells" in text and "dijiang/paper at 0.0625 (highest, 0.003)" in text
    assert "performer/paper at 0.0625 (lowest, 0.0003)" in text and "retnet" not in text
    assert sweep_edge_lines(pd.DataFrame(cell("retnet", {3e-4: 3.2, 1e-3: 3.0, 3e-3: 3.1}))) == []


def test_an_extension_budget_is_read_beside_its_base_experiments_budgets(tmp_path):
    from harness.report.controls import budget_trend_lines

    def table(folder: str, rows: list[tuple]) -> Path:
        out = tmp_path / folder
        out.mkdir()
        cols = ["method", "recipe", "fraction", "converted_bpb", "teacher_bpb", "recovery", "recovery sd"]
        pd.DataFrame(rows, columns=cols).to_csv(out / "table.csv", index=False)
        return out

    base = table(
        "recipes_controls",
        [
            ("dijiang", "paper", 0.0625, 1.8, 1.2, 0.54, 0.02),
            ("dijiang", "paper", 0.015625, 2.0, 1.2, 0.40, 0.01),
            ("dijiang", "transfer", 0.0625, 1.7, 1.2, 0.58, 0.01),
            ("performer", "paper", 0.0625, 2.5, 1.2, 0.20, 0.01),
        ],
    )
    ext = table("recipes_controls_extended", [("dijiang", "paper", 0.25, 1.5, 1.2, 0.75, float("nan"))])
    (line,) = [x for x in budget_trend_lines(ext, [base]) if x]
    assert line.startswith("- **dijiang / paper across budgets**")
    assert "0.40 ± 0.01 (2.000 bpb) at 0.015625, 0.54 ± 0.02 (1.800 bpb) at 0.0625, 0.75 (1.500 bpb) at 0.25" in line
    assert "transfer" not in line and "performer" not in line  # only what the extension ran
    assert budget_trend_lines(ext, [tmp_path / "missing"]) == []
    # a larger budget of another extension joins the trend; a budget two bases ran is read from the first
    full = table("recipes_controls_full", [("dijiang", "paper", 1.0, 1.25, 1.2, 0.5, 0.1)])
    again = table("again", [("dijiang", "paper", 0.0625, 9.9, 1.2, 0.0, 0.0)])
    (line,) = [x for x in budget_trend_lines(ext, [base, full, again]) if x]
    assert "(with `recipes_controls`, `recipes_controls_full`)" in line and "9.9" not in line
    assert line.endswith("0.75 (1.500 bpb) at 0.25, 0.50 ± 0.10 (1.250 bpb) at 1; the teacher is at 1.200 bpb.")


def test_the_recovery_curve_pools_every_budget_of_one_teacher(tmp_path):
    """The report's pooled recovery curve: every budget the experiments of one teacher ran, drawn once
    (a PNG beside the last of them); nothing from one budget, a refusal where the teachers differ."""
    from harness.report.controls import recovery_curve_lines

    def results(folder: str, fraction: float, teacher: float = 1.18) -> Path:
        out = tmp_path / folder
        out.mkdir()
        rows = [
            dict(
                method="dijiang",
                recipe=r,
                fraction=fraction,
                seed=s,
                converted_bpb=2 - fraction + s / 100,
                scratch_bpb=2.5 - fraction,
                teacher_bpb=teacher,
            )
            for r in ("paper", "transfer")
            for s in (0, 1)
        ]
        pd.DataFrame(rows).to_csv(out / "results.csv", index=False)
        return out

    small, large = results("small", 0.015625), results("large", 0.25)
    lines = recovery_curve_lines([small, large], large / "recovery_budgets")
    assert "(0.015625, 0.25 of the teacher's tokens)" in lines[0] and "`small`, `large`" in lines[0]
    assert "![recovery curve over every budget](large/recovery_budgets.png)" in lines
    assert (large / "recovery_budgets.png").stat().st_size > 0 and not (large / "recovery_budgets.pdf").exists()
    assert recovery_curve_lines([small], small / "x") == [] and not (small / "x.png").exists()
    other = results("other", 1.0, teacher=0.92)
    assert "teachers differ by 0.260" in recovery_curve_lines([small, other], other / "x")[0]


def test_the_pooled_curve_takes_each_cell_whole_from_the_experiment_with_most_seeds():
    """Two experiments ran one cell (dijiang / paper at 1/16): the first on seeds 0-1, the second on
    seeds 0-2 with other controls. The pool takes the cell from the second alone, never seeds 0-1 from
    one and seed 2 from the other; a cell only the first ran (transfer) comes from the first."""
    from harness.report.controls import one_run_per_cell

    def frame(seeds: list[int], scratch: float, recipes: tuple[str, ...]) -> pd.DataFrame:
        return pd.DataFrame(
            [
                dict(method="dijiang", recipe=r, fraction=0.0625, seed=s, scratch_bpb=scratch)
                for r in recipes
                for s in seeds
            ]
        )

    first, second = frame([0, 1], 1.73, ("paper", "transfer")), frame([0, 1, 2], 1.78, ("paper",))
    pooled = one_run_per_cell([first, second])
    paper = pooled[pooled["recipe"] == "paper"]
    assert sorted(paper["seed"]) == [0, 1, 2] and set(paper["scratch_bpb"]) == {1.78}
    assert set(pooled[pooled["recipe"] == "transfer"]["scratch_bpb"]) == {1.73} and len(pooled) == 5
    tie = one_run_per_cell([frame([0, 1], 1.73, ("paper",)), frame([0, 1], 1.78, ("paper",))])
    assert set(tie["scratch_bpb"]) == {1.73} and "_source" not in tie.columns


def test_controls_section_says_when_recovery_is_undefined(tmp_path):
    """At the teacher's own budget, scratch on the same tokens can match the teacher: the recovery's
    denominator is then <= 0 and the runner writes NaN; the report names the lowest bpb instead."""
    from harness.report.controls import controls_section

    cols = ["method", "recipe", "fraction", "converted_bpb", "scratch_bpb", "teacher_bpb", "recovery", "seeds"]
    rows = [("dijiang", "paper", 1.0, 4.47, 4.77, 4.78, float("nan"), 1)]
    pd.DataFrame(rows, columns=cols).to_csv(tmp_path / "table.csv", index=False)
    text = "\n".join(controls_section(tmp_path))
    assert "paper beats scratch (4.470 vs 4.770 bpb; recovery undefined)" in text
    assert "Recovery undefined (scratch is no worse than the teacher here); lowest bpb: paper." in text
    assert "Most recovered" not in text


def test_extensions_are_pooled_only_when_their_shared_controls_agree(tmp_path):
    """The recipes_controls_extended* experiments convert the same teacher at the same budget for
    different methods or recipes: pooled, DiJiang ranks among all methods and the recipes are compared;
    a shared control (no-op, or from scratch for the same method and seed) that differs refuses it."""
    from harness.report.controls import pooled_extension_lines

    def results(folder: str, cells: dict[tuple[str, str], list[float]], noop=1.13, scratch=1.45) -> Path:
        out = tmp_path / folder
        out.mkdir()
        rows = [
            dict(
                method=m,
                recipe=r,
                fraction=0.25,
                seed=s,
                converted_bpb=v,
                teacher_bpb=1.18,
                noop_bpb=noop,
                scratch_bpb=scratch,
                recovery=(scratch - v) / (scratch - 1.18),
            )
            for (m, r), vals in cells.items()
            for s, v in enumerate(vals)
        ]
        pd.DataFrame(rows).to_csv(out / "results.csv", index=False)
        return out

    ext = results("ext", {("dijiang", "paper"): [1.26, 1.27], ("retnet", "paper"): [1.38, 1.39]})
    base = results("baselines", {("performer", "paper"): [1.20, 1.21], ("cosformer", "paper"): [1.50, 1.52]})
    transfer = results("transfer", {("dijiang", "transfer"): [1.22, 1.23], ("retnet", "transfer"): [1.36, 1.37]})
    text = "\n".join(pooled_extension_lines([ext, base, transfer]))
    # teacher and no-op per seed (2 x 2), scratch of dijiang and retnet per seed (4): shared by ext and transfer
    assert "the 8 controls that more than one of them ran" in text and "agree to 0.0e+00" in text
    assert "dijiang ranks **2 of 4** at 0.25 with the paper recipe" in text
    assert "performer -0.060" in text and "cosformer +0.245" in text
    assert "Recipes for **dijiang at 0.25**" in text and "best transfer" in text and "paper +0.040" in text
    moved = results("moved", {("dijiang", "transfer"): [1.22, 1.23]}, scratch=1.46)
    refused = "\n".join(pooled_extension_lines([ext, moved]))
    assert "disagree on a shared control by 0.010" in refused and "ranks" not in refused
    other = results("other", {("performer", "paper"): [1.20, 1.21]}, noop=1.20)
    assert "disagree on a shared control by 0.070" in "\n".join(pooled_extension_lines([ext, other]))
    assert pooled_extension_lines([ext, tmp_path / "missing"]) == []


def test_a_repeated_cell_says_how_far_its_two_runs_are_apart(tmp_path):
    """An experiment that runs a cell (method, recipe, budget, seed) that an earlier one ran says, per
    column, whether the two runs agree to the bit or how far apart they are; cells it does not share,
    and an experiment that shares none, say nothing."""
    from harness.report.controls import repeated_cells_lines

    def results(folder: str, rows: list[tuple]) -> Path:
        out = tmp_path / folder
        out.mkdir()
        cols = ["method", "recipe", "fraction", "seed", "lr", "scratch_lr", "converted_bpb", "scratch_bpb"]
        frame = pd.DataFrame(rows, columns=cols).assign(noop_bpb=0.88, teacher_bpb=0.92)
        frame.to_csv(out / "results.csv", index=False)
        return out

    before = results("before", [("dijiang", "paper", 0.0625, 0, 6e-3, 4e-3, 1.2607, 1.4347)])
    mine = results(
        "mine",
        [
            ("dijiang", "paper", 0.0625, 0, 6e-3, 4e-3, 1.2607, 1.4391),  # repeated: scratch moved
            ("dijiang", "paper", 0.0625, 2, 6e-3, 4e-3, 1.2700, 1.4500),  # a new seed
        ],
    )
    (line,) = [x for x in repeated_cells_lines(mine, [before]) if x]
    assert "**Repeats `before`**: 1 cell (method, recipe, budget, seed) ran in both, at the same rates" in line
    assert "converted to the bit" in line and "from scratch 0.004 apart" in line
    assert "no-op to the bit" in line and "teacher to the bit" in line
    rerated = results("rerated", [("dijiang", "paper", 0.0625, 0, 3e-3, 4e-3, 1.2655, 1.4347)])
    (line,) = [x for x in repeated_cells_lines(rerated, [before]) if x]
    assert "1 cell (method, recipe, budget, seed) ran in both; 1 of them at another learning rate" in line
    assert "converted 0.005 apart" in line and "from scratch to the bit" in line
    other = results("other", [("retnet", "paper", 0.0625, 0, 3e-3, 4e-3, 1.27, 1.73)])
    assert repeated_cells_lines(mine, [other, tmp_path / "missing"]) == []


def test_each_conversion_is_tested_against_its_from_scratch_control_over_seeds(tmp_path):
    """ "Beats scratch" carries Welch's test over the seeds of results.csv: a lead of 0.02 bpb over
    seeds that spread as much is named, with its p, as not significant."""
    from harness.report.controls import controls_section

    cols = ["method", "recipe", "fraction", "converted_bpb", "scratch_bpb", "teacher_bpb", "recovery", "seeds"]
    pd.DataFrame([("dijiang", "paper", 0.25, 1.04, 1.06, 0.92, 0.14, 2)], columns=cols).to_csv(
        tmp_path / "table.csv", index=False
    )
    seeds = pd.DataFrame(
        {
            "method": "dijiang",
            "recipe": "paper",
            "fraction": 0.25,
            "seed": [0, 1],
            "converted_bpb": [1.03, 1.05],
            "scratch_bpb": [1.06, 1.06],
        }
    )
    seeds.to_csv(tmp_path / "results.csv", index=False)
    text = "\n".join(controls_section(tmp_path))
    assert "paper beats scratch (1.040 vs 1.060 bpb; recovery 0.14" in text
    assert "(converted minus scratch: -0.020 bpb (p = 0.3, not significant))" in text
    seeds.assign(converted_bpb=[0.95, 0.97], scratch_bpb=[1.05, 1.07]).to_csv(tmp_path / "results.csv", index=False)
    assert "(converted minus scratch: -0.100 bpb (p = 0.0" in "\n".join(controls_section(tmp_path))
    assert ", significant))" in "\n".join(controls_section(tmp_path))
