"""Table 2: one teacher converted to every method with the same data and token budget (Algorithm 1),
methods that cannot be converted (Mamba) trained from scratch on the teacher's data; mean and spread
over seeds. ``methods: all`` is every convertible method, ``from_scratch: all`` every other one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from harness.core.registry import get_method
from harness.pipeline import stages
from harness.pipeline.runners.base import (
    CONVERTIBLE,
    SCRATCH_ONLY,
    Output,
    PlannedRun,
    Runner,
    register_runner,
    score_frame,
    teacher_params,
    wide_table,
)
from harness.pipeline.spec import Experiment, SpecError


@dataclass
class MethodsParams:
    teacher: str
    #: convertible methods, or ``all`` (every convertible one, less ``exclude``)
    methods: list[str]
    #: methods trained from scratch on the teacher's data, or ``all`` (every one that is not convertible)
    from_scratch: list[str] = field(default_factory=list)
    conversion_fraction: float = 0.0625
    seeds: list[int] = field(default_factory=lambda: [0])
    #: from-scratch budget as a fraction of the teacher's tokens (the paper: 1, the same budget)
    scratch_fraction: float = 1.0
    scratch_seeds: list[int] | None = None  # None: the same seeds as the conversions


@register_runner("methods")
class MethodsRunner(Runner):
    """One teacher, every method with the same data and budget; mean and spread over seeds."""

    Params = MethodsParams
    method_lists = {"methods": CONVERTIBLE, "from_scratch": SCRATCH_ONLY}

    def validate(self, exp: Experiment, p: MethodsParams) -> None:
        super().validate(exp, p)
        for m in p.methods:
            if not get_method(m).convertible:
                raise SpecError(f"experiment {exp.name!r}: {m!r} is not convertible; list it under from_scratch.")

    def plan(self, exp: Experiment, p: MethodsParams) -> list[PlannedRun]:
        t, n = exp.profile.teacher(p.teacher), teacher_params(exp, p.teacher)
        runs = (
            [PlannedRun(stages.teacher_label(t, 0), "pretrain", n, t.tokens, teacher=t.name)] if t.trained_here else []
        )
        f = p.conversion_fraction
        for s in p.seeds:
            runs += [
                PlannedRun(stages.convert_label(t, m, f, s), "convert", n, t.tokens * f, m, t.name) for m in p.methods
            ]
        for s in p.scratch_seeds if p.scratch_seeds is not None else p.seeds:
            runs += [
                PlannedRun(
                    stages.scratch_label(t, m, s, p.scratch_fraction),
                    "scratch",
                    n,
                    t.tokens * p.scratch_fraction,
                    m,
                    t.name,
                )
                for m in p.from_scratch
            ]
        return runs

    def runs(self, exp: Experiment, p: MethodsParams, ctx: stages.Context) -> tuple[Any, list[tuple[str, int, Any]]]:
        """The teacher and every (method, seed, run) of this comparison (trained on first use)."""
        t = exp.profile.teacher(p.teacher)
        teacher = stages.teacher(ctx, t, 0)
        out = []
        for s in p.seeds:
            out += [(m, s, stages.convert(ctx, t, teacher, m, p.conversion_fraction, s)) for m in p.methods]
        for s in p.scratch_seeds if p.scratch_seeds is not None else p.seeds:
            out += [(m, s, stages.from_scratch(ctx, t, teacher, m, s, p.scratch_fraction)) for m in p.from_scratch]
        return teacher, out

    def run(self, exp: Experiment, p: MethodsParams, ctx: stages.Context) -> Output:
        teacher, runs = self.runs(exp, p, ctx)
        rows = score_frame(
            stages.evaluate_model(ctx, teacher, p.teacher, "softmax"), p.teacher, method="softmax", seed=0
        )
        for m, s, run in runs:
            rows += score_frame(stages.evaluate_model(ctx, run, m, m), m, method=m, seed=s)
        frame = pd.DataFrame(rows)
        per_seed = wide_table(frame, ["model", "method", "seed"])
        from harness.report.tables import seed_table

        table = seed_table(per_seed, ["model", "method"]).set_index(["model", "method"])
        notes = []
        if p.from_scratch and p.scratch_fraction != 1.0:
            notes.append(
                f"{', '.join(p.from_scratch)} trained from scratch on {p.scratch_fraction:g} of the teacher's tokens "
                "(the paper: the full budget) to fit this profile's time; compare it with that in mind."
            )
        for m, opts in ctx.profile.method_options.items():
            if m in p.methods:
                notes.append(f"{m} converted with options {opts} (the profile's method_options, see profiles.yaml).")
        return Output(tables={"results": frame, "per_seed": per_seed, "table": table.reset_index()}, notes=notes)
