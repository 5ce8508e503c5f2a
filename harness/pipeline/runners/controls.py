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

Fair learning rates: with ``convert_lrs`` / ``scratch_lrs`` given, every conversion (method x recipe
x budget), the no-op control and every from-scratch control is trained at each rate on the first
seed, and the rate with the lowest loss on the **validation** split (never the held-out test split
that the table scores) is used for all seeds. The sweep is a table of its own (``lr_sweep``) and the
chosen rate is a column of the results.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from harness.pipeline import stages
from harness.pipeline.runners.base import CONVERTIBLE, Output, PlannedRun, Runner, register_runner, teacher_params
from harness.pipeline.spec import Experiment, SpecError
from harness.training.config import TrainingDiverged
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
    #: peak learning rates swept for conversions and the no-op control (empty: the profile's convert lr)
    convert_lrs: list[float] = field(default_factory=list)
    #: peak learning rates swept for the from-scratch controls (empty: the profile's pretrain lr)
    scratch_lrs: list[float] = field(default_factory=list)


def sweep(train: Callable[[float | None, int], Any], lrs: list[float], seeds: list[int]) -> tuple[dict[int, Any], list]:
    """Train at every rate of ``lrs`` on the first seed, keep the rate whose run has the lowest
    validation loss, and train the other seeds at it. ``train(lr, seed)`` returns a run (``lr``
    None: the profile's rate, no sweep). Returns the run per seed and the sweep's
    ``(lr, validation bits, chosen)`` points; a rate whose run diverged scores infinity (and the others
    are chosen from)."""
    if not lrs:
        return {s: train(None, s) for s in seeds}, []
    tried, val = {}, {}
    for lr in lrs:
        try:
            tried[lr] = train(lr, seeds[0])
            val[lr] = tried[lr].result.val_loss / math.log(2)
        except TrainingDiverged:  # a rate too high for this model: a sweep point, not a failure
            val[lr] = math.inf
    if not tried:
        raise TrainingDiverged(f"every learning rate of {lrs} diverged; sweep lower rates.")
    best = min(tried, key=lambda lr: val[lr])
    runs = {seeds[0]: tried[best], **{s: train(best, s) for s in seeds[1:]}}
    return runs, [(lr, val[lr], lr == best) for lr in lrs]


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
        # a sweep trains every rate on the first seed, then the chosen one on the others
        conv_runs = len(p.convert_lrs) + len(p.seeds) - 1 if p.convert_lrs else len(p.seeds)
        scratch_runs = len(p.scratch_lrs) + len(p.seeds) - 1 if p.scratch_lrs else len(p.seeds)
        for f in p.fractions:
            tokens = t.tokens * f
            for i in range(conv_runs):
                runs.append(
                    PlannedRun(f"{stages.convert_label(t, 'softmax', f, 0)}-{i}", "convert", n, tokens, teacher=t.name)
                )
            for m in p.methods:
                for i in range(scratch_runs):
                    label = f"{stages.scratch_label(t, m, 0, f)}-control-{i}"
                    runs.append(PlannedRun(label, "scratch", n, tokens, m, t.name))
                for r in p.recipes:
                    for i in range(conv_runs):
                        label = f"{stages.convert_label(t, m, f, 0)}-{r}-{i}"
                        runs.append(PlannedRun(label, "convert", n, tokens, m, t.name))
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
        swept: list[dict[str, Any]] = []

        def lr_of(run: Any) -> float:
            return float(run.result.summary.get("config", {}).get("lr", math.nan))

        def record(method: str, recipe: str, f: float, points: list) -> None:
            swept.extend(
                dict(method=method, recipe=recipe, fraction=f, lr=lr, val_bpb=v, chosen=c) for lr, v, c in points
            )

        for f in p.fractions:
            noop_runs, points = sweep(
                lambda lr, s, f=f: stages.convert(ctx, t, teacher, "softmax", f, s, lr), p.convert_lrs, p.seeds
            )
            record("softmax", "no-op", f, points)
            noop = {s: bpb(run, "softmax", "softmax") for s, run in noop_runs.items()}
            for m in p.methods:
                scratch_runs, points = sweep(
                    lambda lr, s, f=f, m=m: stages.scratch_control(ctx, t, teacher, m, f, s, lr), p.scratch_lrs, p.seeds
                )
                record(m, "scratch", f, points)
                scratch = {s: bpb(run, f"{m}-scratch", m) for s, run in scratch_runs.items()}
                for r in p.recipes:
                    try:
                        conv_runs, points = sweep(
                            lambda lr, s, f=f, m=m, r=r: stages.convert_with_recipe(ctx, t, teacher, m, f, r, s, lr),
                            p.convert_lrs,
                            p.seeds,
                        )
                        record(m, r, f, points)
                        conv = {s: bpb(run, m, m) for s, run in conv_runs.items()}
                        lrs = {s: lr_of(run) for s, run in conv_runs.items()}
                        note = ""
                    except ObjectiveError as err:
                        conv, lrs = dict.fromkeys(p.seeds, math.nan), dict.fromkeys(p.seeds, math.nan)
                        note = f"not applicable: {err}"
                    for s in p.seeds:
                        rows.append(
                            {
                                "method": m,
                                "recipe": r,
                                "fraction": f,
                                "seed": s,
                                "tokens": stages.conversion_tokens(ctx, t, f),
                                "lr": lrs[s],
                                "scratch_lr": lr_of(scratch_runs[s]),
                                "converted_bpb": conv[s],
                                "scratch_bpb": scratch[s],
                                "teacher_bpb": teacher_bpb,
                                "noop_bpb": noop[s],
                                "step0_bpb": step0[m],
                                "recovery": recovery(scratch[s], conv[s], teacher_bpb),
                                "beats_scratch": bool(conv[s] < scratch[s]) if not math.isnan(conv[s]) else None,
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
                lr=("lr", "first"),
                scratch_lr=("scratch_lr", "first"),
            )
            .sort_values(["fraction", "method", "recipe"])
        )
        from harness.report.figures import plot_recipe_recovery

        figures = plot_recipe_recovery(frame, ctx.root / exp.name / "recipes_controls")
        notes = [
            "All numbers are held-out bits per byte (lower is better). Recipes spend the compute of the "
            "paper recipe on the budget, counting the teacher's forward passes (harness/training/recipes.py).",
            (
                f"Learning rates: each conversion and the no-op control swept over {p.convert_lrs}, each "
                f"from-scratch control over {p.scratch_lrs}, on seed {p.seeds[0]}; the rate with the lowest "
                "validation-split loss is used for every seed (columns lr, scratch_lr; table lr_sweep)."
                if p.convert_lrs and p.scratch_lrs
                else "Learning rates are the profile's (convert: fine-tunes; pretrain: from-scratch controls); no "
                "per-method learning-rate sweep was run, so a method that needs another rate looks worse than it is."
            ),
        ]
        tables = {"results": frame, "table": table}
        if swept:
            tables["lr_sweep"] = pd.DataFrame(swept)
        return Output(tables=tables, figures=figures, notes=notes)
