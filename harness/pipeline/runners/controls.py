"""Conversion recipes against their controls: does converting a teacher beat training from scratch?

For every method and budget (a fraction of the teacher's pretraining tokens), in held-out bits per
byte (the primary metric at byte scale):

* the conversion under each recipe (:mod:`harness.training.recipes`: ``paper``, ``distill``, ``transfer``),
  all at the compute of the ``paper`` recipe on the budget;
* control (a): the same architecture trained from scratch on the same data and tokens;
* control (b): the softmax teacher fine-tuned on the same tokens (the no-op conversion);
* control (c): the converted model before any training ("step 0");
* the recovery score ``(scratch - converted) / (scratch - teacher)``: 1 when the conversion
  inherits all of the teacher, 0 when it is no better than training from scratch, below 0 when worse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from harness.pipeline import stages
from harness.pipeline.runners.base import CONVERTIBLE, Output, PlannedRun, Runner, register_runner, teacher_params
from harness.pipeline.spec import Experiment, SpecError
from harness.training.objectives import ObjectiveError
from harness.training.recipes import RECIPES

#: the metric every number of this experiment is (lower is better)
BPB = ("heldout_ppl", "bits_per_byte")


@dataclass
class ControlsParams:
    teacher: str
    #: convertible methods, or ``all`` (every convertible one, less ``exclude``)
    methods: list[str]
    fractions: list[float]
    recipes: list[str] = field(default_factory=lambda: ["paper", "transfer"])
    seeds: list[int] = field(default_factory=lambda: [0])


def recovery(scratch: float, converted: float, teacher: float) -> float:
    """``(scratch - converted) / (scratch - teacher)``; NaN when the teacher is no better than scratch."""
    gap = scratch - teacher
    return (scratch - converted) / gap if gap > 0 else math.nan


@register_runner("controls")
class ControlsRunner(Runner):
    """Recipes x budgets x methods, each beside its from-scratch, no-op and step-0 controls."""

    Params = ControlsParams
    method_lists = {"methods": CONVERTIBLE}

    def validate(self, exp: Experiment, p: ControlsParams) -> None:
        super().validate(exp, p)
        bad = sorted(set(p.recipes) - set(RECIPES))
        if bad:
            raise SpecError(f"experiment {exp.name!r}: unknown recipe(s) {bad}; choose from {list(RECIPES)}.")

    def plan(self, exp: Experiment, p: ControlsParams) -> list[PlannedRun]:
        t, n = exp.profile.teacher(p.teacher), teacher_params(exp, p.teacher)
        runs = []
        for f in p.fractions:
            for s in p.seeds:
                tokens = t.tokens * f
                runs.append(PlannedRun(stages.convert_label(t, "softmax", f, s), "convert", n, tokens))
                for m in p.methods:
                    runs.append(PlannedRun(stages.scratch_label(t, m, s, f) + "-control", "scratch", n, tokens))
                    runs += [
                        PlannedRun(f"{stages.convert_label(t, m, f, s)}-{r}", "convert", n, tokens) for r in p.recipes
                    ]
        return runs

    def run(self, exp: Experiment, p: ControlsParams, ctx: stages.Context) -> Output:
        t = exp.profile.teacher(p.teacher)
        teacher = stages.teacher(ctx, t, 0)
        tasks = [BPB[0]]

        def bpb(run: Any, name: str, method: str) -> float:
            rows = stages.evaluate_model(ctx, run, name, method, tasks=tasks)
            return next(float(r["value"]) for r in rows if (r["task"], r["metric"]) == BPB)

        teacher_bpb = bpb(teacher, p.teacher, "softmax")
        step0 = {m: bpb(stages.untrained_conversion(ctx, t, teacher, m), f"{m}-step0", m) for m in p.methods}
        rows: list[dict[str, Any]] = []
        for f in p.fractions:
            for s in p.seeds:
                noop = bpb(stages.convert(ctx, t, teacher, "softmax", f, s), "softmax", "softmax")
                for m in p.methods:
                    scratch = bpb(stages.scratch_control(ctx, t, teacher, m, f, s), f"{m}-scratch", m)
                    for r in p.recipes:
                        try:
                            conv = bpb(stages.convert_with_recipe(ctx, t, teacher, m, f, r, s), m, m)
                            note = ""
                        except ObjectiveError as err:
                            conv, note = math.nan, f"not applicable: {err}"
                        rows.append(
                            {
                                "method": m,
                                "recipe": r,
                                "fraction": f,
                                "seed": s,
                                "tokens": stages.conversion_tokens(ctx, t, f),
                                "converted_bpb": conv,
                                "scratch_bpb": scratch,
                                "teacher_bpb": teacher_bpb,
                                "noop_bpb": noop,
                                "step0_bpb": step0[m],
                                "recovery": recovery(scratch, conv, teacher_bpb),
                                "beats_scratch": bool(conv < scratch) if not math.isnan(conv) else None,
                                "note": note,
                            }
                        )
        frame = pd.DataFrame(rows)
        table = (
            frame.groupby(["method", "recipe", "fraction"], as_index=False)
            .agg(
                converted_bpb=("converted_bpb", "mean"),
                scratch_bpb=("scratch_bpb", "mean"),
                step0_bpb=("step0_bpb", "mean"),
                noop_bpb=("noop_bpb", "mean"),
                teacher_bpb=("teacher_bpb", "mean"),
                recovery=("recovery", "mean"),
                **{"recovery sd": ("recovery", "std")},
                seeds=("seed", "nunique"),
            )
            .sort_values(["fraction", "method", "recipe"])
        )
        from harness.report.figures import plot_recipe_recovery

        figures = plot_recipe_recovery(frame, ctx.root / exp.name / "recipes_controls")
        notes = [
            "All numbers are held-out bits per byte (lower is better). Recipes spend the compute of the "
            "paper recipe on the budget, counting the teacher's forward passes (harness/training/recipes.py).",
            "Learning rates are the profile's (convert: fine-tunes; pretrain: from-scratch controls); no "
            "per-method learning-rate sweep was run, so a method that needs another rate looks worse than it is.",
        ]
        return Output(tables={"results": frame, "table": table}, figures=figures, notes=notes)
