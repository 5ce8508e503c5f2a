"""``methods: all`` in the experiments: a throwaway method module, written at run time into a fresh
method package with no other edit anywhere (``tests/test_method_discovery.py``), is in every
experiment that says ``all`` — it gets a row of the smoke Table 2 and a point of the smoke Fig. 4,
and is planned in the paper's Table 2, Fig. 2, recovery curve, MQAR and Fig. 4."""

from __future__ import annotations

import dataclasses

from harness.pipeline import stages
from harness.pipeline.runners import get_runner, load_experiment, runner_params
from tests.test_method_discovery import NAME, throwaway  # noqa: F401 (the fixture)


def methods_of(name: str, profile: str) -> list[str]:
    exp = load_experiment(name, profile)
    return get_runner(exp).methods(exp, runner_params(exp))


def test_a_new_method_is_in_every_experiment_that_says_all(throwaway):  # noqa: F811
    for name in ("table2_methods", "fig2_curves", "fig4_speed_memory"):
        assert NAME in methods_of(name, "smoke"), name
    for name in ("table2_methods", "fig2_curves", "recovery_curve", "mqar", "fig4_speed_memory"):
        assert NAME in methods_of(name, "paper"), name
    assert NAME in methods_of("table2_methods", "tiny")
    # tiny's MQAR lists its methods (each costs CPU minutes)
    assert NAME not in methods_of("mqar", "tiny")


def test_a_new_method_gets_a_row_in_the_smoke_table2_and_fig4(throwaway, tmp_path):  # noqa: F811
    """The smoke Table 2 and Fig. 4, run for the new method alone (the teacher trained for it)."""
    runs = {}
    for name in ("table2_methods", "fig4_speed_memory"):
        exp = load_experiment(name, "smoke")
        params = runner_params(exp)
        assert NAME in params.methods
        ctx = stages.Context(exp.profile, results_dir=tmp_path)
        runs[name] = get_runner(exp).run(exp, dataclasses.replace(params, methods=[NAME]), ctx).tables
    table2 = runs["table2_methods"]["table"].set_index("method")
    assert set(table2.index) == {"softmax", NAME} and table2.loc[NAME].notna().any()
    bench = runs["fig4_speed_memory"]["results"]
    measured = bench[(bench["method"] == NAME) & (bench["status"] == "ok")]
    assert set(measured["phase"]) == {"prefill", "decode"}, bench[["method", "phase", "status"]]
