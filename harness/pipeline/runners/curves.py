"""Figure 2: loss against tokens for the conversions of a Table 2 experiment (its runs, reused, not
retrained)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from harness.pipeline import stages
from harness.pipeline.runners.base import RUNNERS, Output, Runner, load_experiment, register_runner, runner_params
from harness.pipeline.runners.methods import MethodsRunner
from harness.pipeline.spec import Experiment, SpecError


@dataclass
class CurvesParams:
    source: str = "table2_methods"


@register_runner("curves")
class CurvesRunner(Runner):
    """Loss against tokens for the conversions of a methods experiment (reused, not retrained)."""

    Params = CurvesParams

    def validate(self, exp: Experiment, p: CurvesParams) -> None:
        src = load_experiment(p.source, exp.profile)
        if src.runner != "methods":
            raise SpecError(f"experiment {exp.name!r}: source {p.source!r} is not a methods experiment.")

    def methods(self, exp: Experiment, p: CurvesParams) -> list[str]:
        src = load_experiment(p.source, exp.profile)
        return RUNNERS[src.runner].methods(src, runner_params(src))

    def run(self, exp: Experiment, p: CurvesParams, ctx: stages.Context) -> Output:
        from harness.report.figures import plot_curves

        src = load_experiment(p.source, exp.profile)
        _, runs = MethodsRunner().runs(src, runner_params(src), ctx)
        rows = [
            {"method": m, "seed": s, "step": r["step"], "tokens": r["tokens"], "loss": r["loss"]}
            for m, s, run in runs
            for r in run.log()
            if "loss" in r
        ]
        frame = pd.DataFrame(rows)
        out = ctx.root / exp.name
        return Output(tables={"results": frame}, figures=plot_curves(frame, out / "fig2_curves"))
