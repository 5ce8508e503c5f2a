"""The recovery curve (the training-cost claim of Table 1 as a curve): accuracy of converted models
against the conversion budget, a fraction of the teacher's pretraining tokens, per method."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from harness.pipeline import stages
from harness.pipeline.runners.base import (
    CONVERTIBLE,
    Output,
    PlannedRun,
    Runner,
    register_runner,
    score_frame,
    teacher_params,
    wide_table,
)
from harness.pipeline.spec import Experiment


@dataclass
class RecoveryParams:
    teacher: str
    #: convertible methods, or ``all`` (every convertible one, less ``exclude``)
    methods: list[str]
    fractions: list[float]
    seeds: list[int] = field(default_factory=lambda: [0])


@register_runner("recovery")
class RecoveryRunner(Runner):
    """Accuracy of converted models against the conversion budget (fraction of teacher tokens)."""

    Params = RecoveryParams
    method_lists = {"methods": CONVERTIBLE}

    def plan(self, exp: Experiment, p: RecoveryParams) -> list[PlannedRun]:
        t, n = exp.profile.teacher(p.teacher), teacher_params(exp, p.teacher)
        return [
            PlannedRun(stages.convert_label(t, m, f, s), "convert", n, t.tokens * f, m, t.name)
            for m in p.methods
            for f in p.fractions
            for s in p.seeds
        ]

    def run(self, exp: Experiment, p: RecoveryParams, ctx: stages.Context) -> Output:
        from harness.report.figures import plot_recovery

        t = exp.profile.teacher(p.teacher)
        teacher = stages.teacher(ctx, t, 0)
        rows = score_frame(
            stages.evaluate_model(ctx, teacher, p.teacher, "softmax"),
            p.teacher,
            method="softmax",
            fraction=math.nan,
            seed=0,
        )
        for m in p.methods:
            for f in p.fractions:
                for s in p.seeds:
                    run = stages.convert(ctx, t, teacher, m, f, s)
                    rows += score_frame(stages.evaluate_model(ctx, run, m, m), m, method=m, fraction=f, seed=s)
        frame = pd.DataFrame(rows)
        out = ctx.root / exp.name
        return Output(
            tables={"results": frame, "table": wide_table(frame, ["model", "method", "fraction", "seed"])},
            figures=plot_recovery(frame, out / "recovery_curve"),
        )
