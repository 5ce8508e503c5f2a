"""The report's statistics and verdicts, on synthetic results whose answers are known.

The synthetic Table 2 is built the way the pipeline builds it (tidy rows with per-item results ->
:func:`harness.report.tables.wide_table` -> :func:`~harness.report.tables.seed_table`), so the
report reads what a run would have written.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.evaluation.items import Items, encode_items
from harness.report.report import PAPER_DIR, paper_quirks, paper_wide, scale_section, table2_section
from harness.report.stats import describe_tau, paired_difference, ranking_agreement
from harness.report.tables import seed_table, wide_table

N_ITEMS = 400
TASKS = ("piqa_local", "arc_easy_local")


# -- statistics ---------------------------------------------------------------------------------------
def test_paired_difference_on_known_items():
    """60 of 400 items differ, all in A's favour: diff 0.15, item standard error about
    sd(d)/sqrt(n) = sqrt(0.15 * 0.85 / 400); the seed spread adds sd^2/k per model."""
    a = np.zeros(N_ITEMS)
    a[:260] = 1
    b = np.zeros(N_ITEMS)
    b[:200] = 1
    d = paired_difference([Items("k", a)], [Items("k", b)])
    assert d.diff == pytest.approx(0.15)
    assert d.se_items == pytest.approx(math.sqrt(0.15 * 0.85 / N_ITEMS), rel=0.1)
    assert d.seed_spread == "none" and d.p < 1e-6
    with_seeds = paired_difference([Items("k", a)] * 3, [Items("k", b)] * 3, sd=(0.03, 0.06))
    assert with_seeds.se_seeds == pytest.approx(math.sqrt(0.03**2 / 3 + 0.06**2 / 3))
    assert paired_difference([Items("k", a)], [Items("other", b)]) is None  # not the same items


def test_bits_per_byte_difference_is_the_ratio_difference():
    ll_a, ll_b, nbytes = np.array([-100.0, -50.0]), np.array([-120.0, -40.0]), np.array([80.0, 40.0])
    a, b = Items("k", np.stack([ll_a, nbytes], 1)), Items("k", np.stack([ll_b, nbytes], 1))
    d = paired_difference([a], [b])
    expected = (-ll_a.sum() + ll_b.sum()) / (nbytes.sum() * math.log(2))
    assert d.diff == pytest.approx(expected) and d.n_items == 2


def test_tau_is_worded_by_its_p_value():
    paper = pd.Series({"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": 5.0, "f": 6.0, "g": 7.0})
    same4 = ranking_agreement(paper[:4], paper)  # tau 1 over 4 methods: p = 0.083
    assert same4["tau"] == 1.0 and same4["p"] > 0.05
    assert "no evidence that our ranking agrees" in describe_tau(same4, "x")
    assert "agrees with the paper's" in describe_tau(ranking_agreement(paper, paper), "x")
    assert "reverses the paper's" in describe_tau(ranking_agreement(-paper, paper), "x")


# -- a synthetic Table 2 ------------------------------------------------------------------------------
def table2_rows(acc: dict[str, float], seed_jitter: int = 2, scattered: bool = False) -> pd.DataFrame:
    """Tidy rows for every method and 3 seeds (the teacher: 1): on each task, method m gets
    ``acc[m] * N_ITEMS`` items right, plus ``seed_jitter * seed`` more per seed: the first ones, or
    (``scattered``) ones drawn at random per method, so two methods disagree both ways, as real ones do."""
    rows = []
    for k, (method, p) in enumerate(acc.items()):
        order = np.random.default_rng(k).permutation(N_ITEMS) if scattered else np.arange(N_ITEMS)
        for seed in range(1 if method == "softmax" else 3):
            for task in TASKS:
                right = np.zeros(N_ITEMS, dtype=int)
                right[order[: int(p * N_ITEMS) + seed_jitter * seed]] = 1
                value, se = right.mean(), right.std(ddof=1) / math.sqrt(N_ITEMS)
                items = encode_items(list(range(N_ITEMS)), right.tolist())
                rows.append(
                    dict(
                        model=method,
                        method=method,
                        seed=seed,
                        task=task,
                        metric="acc",
                        value=value,
                        stderr=se,
                        n=N_ITEMS,
                        status="ok",
                        items=items,
                    )
                )
            rows.append(
                dict(
                    model=method,
                    method=method,
                    seed=seed,
                    task="wsc",
                    metric="acc",
                    value=None,
                    stderr=None,
                    n=0,
                    status="not available offline",
                    items=None,
                )
            )
    return pd.DataFrame(rows)


def write_table2(folder: Path, acc: dict[str, float], seed_jitter: int = 2, scattered: bool = False) -> Path:
    frame = table2_rows(acc, seed_jitter, scattered)
    per_seed = wide_table(frame, ["model", "method", "seed"])
    folder.mkdir(parents=True, exist_ok=True)
    seed_table(per_seed, ["model", "method"]).to_csv(folder / "table.csv", index=False)
    frame.to_csv(folder / "results.csv", index=False)
    return folder


#: our accuracies in the paper's order of its average over piqa and arc_easy (DiJiang > PFF > Performer
#: > Linformer > Cosformer > RetNet), with wide gaps
PAPER_ORDER = {
    "softmax": 0.7,
    "dijiang": 0.8,
    "pff": 0.6,
    "performer": 0.5,
    "linformer": 0.4,
    "cosformer": 0.35,
    "retnet": 0.3,
}


def test_table_carries_stderr_avg_and_unavailable_tasks(tmp_path):
    table = pd.read_csv(write_table2(tmp_path, PAPER_ORDER) / "table.csv").set_index("method")
    dj = table.loc["dijiang"]
    assert dj["piqa_local"] == pytest.approx(0.8 + 2 / N_ITEMS)  # mean over seeds 0, 1, 2
    assert dj["avg tasks"] == 2 and dj["avg"] == pytest.approx(dj["piqa_local"])
    assert dj["avg stderr"] == pytest.approx(math.hypot(dj["piqa_local stderr"], dj["arc_easy_local stderr"]) / 2)
    assert dj["piqa_local n"] == N_ITEMS and dj["wsc n"] == 0 and math.isnan(dj["wsc"])
    assert dj["unavailable"] == "wsc" and dj["seeds"] == 3 and dj["piqa_local sd"] > 0


def test_report_ranking_best_and_deltas_on_a_known_table(tmp_path):
    text = "\n".join(table2_section(write_table2(tmp_path, PAPER_ORDER), PAPER_DIR))
    assert "| wsc " in text and "not available offline" in text  # kept as a column, not dropped
    assert "0.805 ± 0.020" in text  # dijiang's piqa: mean over seeds ± the items' standard error
    # Kendall's tau: the paper's order over the same 2 tasks, 6 methods -> tau 1, p = 2/720
    line = next(x for x in text.splitlines() if x.startswith("- Ranking by mean accuracy"))
    assert "tau = 1.00" in line and "p = 0.0028" in line and "agrees with the paper's" in line
    assert "its average over the same 2 tasks" in line
    best = next(x for x in text.splitlines() if x.startswith("- Best converted method by mean accuracy"))
    assert "**dijiang**" in best and "dijiang − pff" in best and "+0.200 ±" in best and "a significant lead" in best
    delta = next(x for x in text.splitlines() if x.startswith("| performer − dijiang"))
    assert delta.split("|")[2].strip().startswith("-0.300 ±")  # piqa: 0.505 - 0.805


def test_methods_the_paper_lacks_are_listed_and_left_out_of_the_ranking(tmp_path):
    """A method with no row in the paper (here ``mamba``, however good) is named "not in the paper";
    the ranking against the paper still covers exactly the paper's 6 converted methods."""
    text = "\n".join(table2_section(write_table2(tmp_path, {**PAPER_ORDER, "mamba": 0.95}), PAPER_DIR))
    line = next(x for x in text.splitlines() if x.startswith("Not in the paper"))
    assert "mamba" in line and "dijiang" not in line
    ranking = next(x for x in text.splitlines() if x.startswith("- Ranking by mean accuracy"))
    assert "tau = 1.00" in ranking and "p = 0.0028" in ranking  # 6 methods, mamba not among them
    plain = "\n".join(table2_section(write_table2(tmp_path / "b", PAPER_ORDER), PAPER_DIR))
    assert "Not in the paper" not in plain


def test_a_lead_inside_the_item_noise_is_no_ranking(tmp_path):
    """Seeds that agree closely (one item apart) and a lead of 4 items of 400 for methods that
    disagree on many items both ways: the seed spread alone would call the lead real (it is many of
    its standard deviations); the paired test over the items does not."""
    acc = {**PAPER_ORDER, "dijiang": 0.61, "pff": 0.60}
    folder = write_table2(tmp_path, acc, seed_jitter=1, scattered=True)
    table = pd.read_csv(folder / "table.csv").set_index("method")
    gap = table.loc["dijiang", "avg"] - table.loc["pff", "avg"]
    assert gap > 3 * table.loc[["dijiang", "pff"], "avg sd"].max()  # beyond the seed noise
    text = "\n".join(table2_section(folder, PAPER_DIR))
    best = next(x for x in text.splitlines() if x.startswith("- Best converted method by mean accuracy"))
    assert "**dijiang**" in best and "not a significant lead" in best and "no ranking" in best


# -- tables 1 and 3 -----------------------------------------------------------------------------------
def test_scale_section_states_throughput_and_converted_minus_teacher(tmp_path):
    frame = table2_rows({"softmax": 0.6, "dijiang": 0.6}, seed_jitter=0)
    frame = frame[frame["seed"] == 0].assign(teacher="tiny-s")
    frame["model"] = frame["method"].map({"softmax": "tiny-s", "dijiang": "dijiang-tiny-s"})
    frame["tokens_per_s"] = frame["method"].map({"softmax": 200.0, "dijiang": 100.0})
    table = wide_table(frame, ["model", "method", "teacher", "tokens_per_s"])
    table.to_csv(tmp_path / "table.csv", index=False)
    frame.to_csv(tmp_path / "results.csv", index=False)
    text = "\n".join(scale_section(tmp_path, PAPER_DIR, "table1_scale"))
    assert "slower than its teacher for tiny-s (0.50x)" in text and "This disagrees with the paper" in text
    assert "tiny-s: mean accuracy over 2 tasks +0.000 ± 0.000" in text


def test_paper_quirks_are_stated():
    t3 = "\n".join(paper_quirks(paper_wide(PAPER_DIR, "table3_7b"), "Table 3"))
    assert "LLaMA2-7B's printed average is 0.565" in t3 and "mean of its 11 cells is 0.556" in t3
    t2 = "\n".join(paper_quirks(paper_wide(PAPER_DIR, "table2_methods"), "Table 2"))
    assert "Linformer 0.635 (= 66/104)" in t2 and "constant-class" in t2 and "DiJiang" not in t2.split("gives")[0]


def test_hybrid_report_weighs_the_criterion_against_even_spacing_and_prices_each_layer():
    from harness.report.hybrids import criterion_lines, per_layer_lines

    rows = [
        dict(label="dj-even-k0", method="dijiang", criterion="even", k=0, softmax_layers="", bpb=3.0),
        dict(label="dj-even-k1", method="dijiang", criterion="even", k=1, softmax_layers="1", bpb=2.8),
        dict(label="dj-transfer-k1", method="dijiang", criterion="transfer", k=1, softmax_layers="2", bpb=2.7),
        dict(label="dj-even-k2", method="dijiang", criterion="even", k=2, softmax_layers="0,2", bpb=2.5),
    ]
    speed = {0: 400.0, 1: 300.0, 2: 200.0}
    for r in rows:
        r["decode_tokens_per_s_8192"] = speed[r["k"]]
        r["state_8192"] = 1000.0 * (1 + 10 * r["k"])
    table = pd.DataFrame(rows)
    crit = "\n".join(criterion_lines(table))
    assert "transfer keeps layer(s) 2, evenly spaced 1: -0.100 bpb" in crit
    layer = "\n".join(per_layer_lines(table, ["decode_tokens_per_s_8192"]))
    assert "dijiang (even), k 0 -> 1: -0.200 bpb for 0.75x the decode speed and 11.00x the state" in layer
    assert "k 1 -> 2: -0.300 bpb for 0.67x" in layer


def test_an_experiment_the_report_does_not_name_still_gets_a_section(tmp_path):
    """SECTIONS orders the known experiments; one it does not name (a new experiment) comes after
    them, with the generic section, instead of being left out of the report."""
    from harness.report.report import SECTIONS, section_order, write_report
    from harness.util.io import atomic_write_json

    metas = {"zz_new_experiment": {}, "mqar": {}, "table2_methods": {}}
    assert section_order(metas) == ["table2_methods", "mqar", "zz_new_experiment"]
    assert "zz_new_experiment" not in SECTIONS
    out = tmp_path / "smoke" / "zz_new_experiment"
    out.mkdir(parents=True)
    meta = {"paper_ref": "nothing", "description": "a new experiment", "wall_time_s": 1.0, "environment": {}}
    atomic_write_json(out / "meta.json", meta)
    text = write_report("smoke", tmp_path, ["zz_new_experiment"], {}).read_text()
    assert "## zz_new_experiment — nothing" in text and "a new experiment" in text


def test_the_header_shows_the_shared_environment_and_the_table_which_ran_where(tmp_path):
    """Two experiments on two CPUs: the header lists only what both share (the thread count), and the
    provenance table gives each experiment's CPU, instead of the first experiment's CPU for both."""
    from harness.report.report import write_report
    from harness.util.io import atomic_write_json

    for name, cpu in (("aa_first", "Intel Xeon"), ("bb_second", "AMD EPYC")):
        (tmp_path / "smoke" / name).mkdir(parents=True)
        env = {"cpu": cpu, "threads": 2, "git_commit": "abc", "date": "2026-12-03"}
        meta = {"paper_ref": "x", "description": name, "wall_time_s": 1.0, "environment": env}
        atomic_write_json(tmp_path / "smoke" / name / "meta.json", meta)
    text = write_report("smoke", tmp_path, ["aa_first", "bb_second"], {}).read_text()
    assert "| threads | 2 |" in text and "| cpu |" not in text
    assert "each one's cpu" in text
    rows = {
        line.split("|")[1].strip(): line
        for line in text.splitlines()
        if line.startswith("| aa_") or line.startswith("| bb_")
    }
    assert "Intel Xeon" in rows["aa_first"] and "AMD EPYC" in rows["bb_second"]


def test_hybrid_report_tests_each_hybrid_against_the_plain_conversion_and_the_no_op_over_seeds(tmp_path):
    """With seeds (per_seed.csv), a hybrid is weighed against the plain conversion of its method and the
    no-op control by Welch's test, its gap to the teacher carries a standard error, and the criterion
    against even spacing is tested too; the whole split is set beside the sample."""
    from harness.report.hybrids import hybrid_section, is_hybrid_table, whole_split_hybrid_lines

    def write(folder, shift):
        folder.mkdir()
        configs = [  # label, criterion, k, window, layers, per-seed bpb
            ("dj-transfer-k0", "transfer", 0, None, "", [2.00, 2.02, 2.04]),
            ("dj-even-k0", "even", 0, None, "", [2.00, 2.02, 2.04]),  # the same run under the control's label
            ("dj-transfer-k1", "transfer", 1, None, "2", [1.50, 1.51, 1.52]),
            ("dj-even-k1", "even", 1, None, "1", [1.50, 1.52, 1.51]),
            ("dj-window64", "window", 0, 64, "", [1.30, 1.31, 1.29]),
            ("no-op", "no-op", 0, None, "", [1.20, 1.21, 1.19]),
        ]
        per_seed = [dict(label="teacher", method="softmax", criterion="teacher", bpb=1.25 + shift, seed=None)]
        table = [dict(label="teacher", method="softmax", criterion="teacher", k=None, window=None, bpb=1.25 + shift)]
        for label, crit, k, window, layers, bpbs in configs:
            method = "softmax" if label == "no-op" else "dijiang"
            per_seed += [
                dict(label=label, method=method, criterion=crit, bpb=b + shift, seed=s) for s, b in enumerate(bpbs)
            ]
            row = dict(label=label, method=method, criterion=crit, k=k, window=window, softmax_layers=layers)
            table.append({**row, "bpb": sum(bpbs) / 3 + shift})
        table = pd.DataFrame(table).assign(decode_tokens_per_s_8192=100.0, state_8192=10.0, on_front=True)
        table.to_csv(folder / "table.csv", index=False)
        pd.DataFrame(per_seed).to_csv(folder / "per_seed.csv", index=False)

    write(tmp_path / "sample", 0.0)
    write(tmp_path / "whole", 0.4)
    text = "\n".join(hybrid_section(tmp_path / "sample"))
    assert "- dj-window64: -0.720 bpb (p < 0.001, significant) against dj-transfer-k0 (the plain conversion)" in text
    assert "+0.100 bpb (p < 0.001, significant) against no-op (the no-op control)" in text
    assert "- dj-window64: +0.050 ± 0.006 bpb against the teacher" in text
    criterion = "transfer keeps layer(s) 2, evenly spaced 1: -0.000 bpb (p = 1, not significant) against evenly spaced"
    assert criterion in text
    assert "- dj-transfer-k0: +0.040 bpb" not in text  # the plain conversion is not weighed against itself
    assert "- dj-even-k0: " not in text.split("against the teacher")[-1]  # the plain conversion's Welch lines once
    assert is_hybrid_table(tmp_path / "sample") and not is_hybrid_table(tmp_path / "missing")
    assert "`missing` has no results here" in whole_split_hybrid_lines(tmp_path / "whole", tmp_path / "missing")[0]
    whole = "\n".join(whole_split_hybrid_lines(tmp_path / "whole", tmp_path / "sample"))
    assert (
        "- dj-window64: 1.300 on the sample, 1.700 on the whole split; against the teacher +0.050 and +0.050" in whole
    )


def test_hybrid_report_weighs_each_window_against_the_window_alone_and_each_recipe_against_the_papers():
    """The window hybrid against its window-only control (what the linear part adds) and each
    configuration under another recipe against the same one under the paper's, Welch over seeds; a
    recipe's hybrid is weighed against the plain conversion of the same recipe."""
    from harness.report.hybrids import control_lines, per_layer_lines, recipe_lines, window_only_lines

    configs = [  # label, method, criterion, window, recipe, per-seed bpb
        ("dj-even-k0", "dijiang", "even", None, "paper", [2.00, 2.02, 2.04]),
        ("dj-window64", "dijiang", "window", 64, "paper", [1.30, 1.31, 1.29]),
        ("dj-even-k0-transfer-recipe", "dijiang", "even", None, "transfer", [1.90, 1.92, 1.94]),
        ("dj-window64-transfer-recipe", "dijiang", "window", 64, "transfer", [1.30, 1.32, 1.31]),
        ("sliding-window64", "sliding-window", "window-only", 64, "paper", [1.40, 1.41, 1.39]),
    ]
    seeds = {label: pd.Series(b) for label, *_, b in configs}
    rows = [
        dict(label=lab, method=m, criterion=c, k=0, window=w, recipe=r, bpb=sum(b) / 3, softmax_layers="")
        for lab, m, c, w, r, b in configs
    ]
    table = pd.DataFrame(rows).assign(decode_tokens_per_s_8192=100.0, state_8192=10.0)
    window = "\n".join(window_only_lines(table, seeds))
    assert (
        "- dj-window64 against sliding-window64 (the window alone, nothing beyond it): -0.100 bpb (p < 0.001" in window
    )
    assert "- dj-window64-transfer-recipe against sliding-window64" in window
    recipe = "\n".join(recipe_lines(table, seeds))
    assert "- dj-even-k0-transfer-recipe against dj-even-k0 (the transfer recipe against the paper's): -0.100" in recipe
    assert (
        "- dj-window64-transfer-recipe against dj-window64 (the transfer recipe against the paper's): +0.010" in recipe
    )
    assert len(recipe.splitlines()) == 2
    controls = "\n".join(control_lines(table, seeds))
    assert (
        "dj-window64-transfer-recipe: -0.610 bpb (p < 0.001, significant) against dj-even-k0-transfer-recipe"
        in controls
    )
    assert "sliding-window64: " not in controls  # no plain conversion of its own, and no no-op here
    assert per_layer_lines(table, ["decode_tokens_per_s_8192"]) == []  # k = 0 under two recipes is no step in k
    assert window_only_lines(table.drop(columns="recipe"), {}) != []  # one seed each, no recipe column: still read
