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
that the table scores) is used for all seeds. With ``sweep_fraction`` the rates are swept once per
cell (method x recipe), at that budget, and the chosen rate is used at every budget: the sweep then
costs ``len(lrs)`` runs at a small budget instead of at each. The sweep is a table of its own
(``lr_sweep``, with the budget it ran at) and the chosen rate is a column of the results.
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
    #: the budget (fraction of the teacher's tokens) at which each cell's rate is swept and chosen for
    #: every budget; None: every budget sweeps its own
    sweep_fraction: float | None = None


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
    runs = {seeds[0]: tried[best], **{s: at_rate_or_lower(train, best, lrs, s) for s in seeds[1:]}}
    return runs, [(lr, val[lr], lr == best) for lr in lrs]


def at_rate_or_lower(train: Callable[[float, int], Any], lr: float, lrs: list[float], seed: int) -> Any:
    """``train(lr, seed)``; if that diverges (a rate chosen on another seed or budget can be on the edge
    of stability), the next lower rate of ``lrs`` that does not. The run's config records the rate it
    used, so the table's per-seed ``lr`` shows the fallback."""
    for rate in [lr, *sorted((r for r in lrs if r < lr), reverse=True)]:
        try:
            return train(rate, seed)
        except TrainingDiverged:
            continue
    raise TrainingDiverged(f"seed {seed} diverged at {lr:g} and every lower rate of {lrs}; sweep lower rates.")


#: one cell of the grid, whose rate is chosen once: (method, recipe), e.g. ("dijiang", "transfer")
Cell = tuple[str, str]


@dataclass
class RateSweep:
    """Each cell's learning rate, chosen by :func:`sweep` on the first seed, at every budget or (``at``)
    once at one budget and reused at the others. ``train(lr, seed, fraction)`` returns a run."""

    lrs: list[float]
    seeds: list[int]
    at: float | None = None
    chosen: dict[Cell, float] = field(default_factory=dict)
    #: every sweep point: method, recipe, fraction, lr, val_bpb, chosen
    points: list[dict[str, Any]] = field(default_factory=list)

    def runs(self, cell: Cell, fraction: float, train: Callable[[float | None, int, float], Any]) -> dict[int, Any]:
        """The run per seed of ``cell`` at budget ``fraction``, at the cell's chosen rate."""
        if not self.lrs:
            return {s: train(None, s, fraction) for s in self.seeds}
        if self.at is None or self.at == fraction:
            runs, points = sweep(lambda lr, s: train(lr, s, fraction), self.lrs, self.seeds)
            self._record(cell, fraction, points)
            return runs
        if cell not in self.chosen:  # the sweep budget is not a budget of the table: sweep there first
            _, points = sweep(lambda lr, s: train(lr, s, self.at), self.lrs, self.seeds[:1])
            self._record(cell, self.at, points)
        return {
            s: at_rate_or_lower(lambda lr, s: train(lr, s, fraction), self.chosen[cell], self.lrs, s)
            for s in self.seeds
        }

    def runs_at(self, fraction: float) -> int:
        """Training runs one cell costs at budget ``fraction`` (for the plan)."""
        if self.lrs and (self.at is None or self.at == fraction):
            return len(self.lrs) + len(self.seeds) - 1
        return len(self.seeds)

    def _record(self, cell: Cell, fraction: float, points: list) -> None:
        self.chosen[cell] = next(lr for lr, _, chosen in points if chosen)
        self.points.extend(
            dict(method=cell[0], recipe=cell[1], fraction=fraction, lr=lr, val_bpb=v, chosen=c) for lr, v, c in points
        )


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
        if p.sweep_fraction is not None and not (p.convert_lrs and p.scratch_lrs):
            raise SpecError(
                f"experiment {exp.name!r}: sweep_fraction is the budget of a learning-rate sweep; give "
                "convert_lrs and scratch_lrs too, or drop it."
            )
        if p.sweep_fraction is not None and not 0 < p.sweep_fraction <= 1:
            raise SpecError(f"experiment {exp.name!r}: sweep_fraction must be in (0, 1], got {p.sweep_fraction}.")

    def plan(self, exp: Experiment, p: ControlsParams) -> list[PlannedRun]:
        t, n = exp.profile.teacher(p.teacher), teacher_params(exp, p.teacher)
        conv, scratch = self._sweeps(p)
        runs = []
        budgets = [(f, conv.runs_at(f), scratch.runs_at(f)) for f in p.fractions]
        if p.sweep_fraction is not None and p.sweep_fraction not in p.fractions:  # sweep-only runs
            budgets.insert(0, (p.sweep_fraction, len(p.convert_lrs), len(p.scratch_lrs)))
        for f, conv_runs, scratch_runs in budgets:
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

    @staticmethod
    def _sweeps(p: ControlsParams) -> tuple[RateSweep, RateSweep]:
        """The learning-rate sweeps of the conversions (and no-op control) and of the from-scratch controls."""
        return RateSweep(p.convert_lrs, p.seeds, p.sweep_fraction), RateSweep(p.scratch_lrs, p.seeds, p.sweep_fraction)

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
        conv_sweep, scratch_sweep = self._sweeps(p)

        def lr_of(run: Any) -> float:
            return float(run.result.summary.get("config", {}).get("lr", math.nan))

        # the sweep's own budget first, so its chosen rates exist when the other budgets need them
        for f in sorted(p.fractions, key=lambda f: f != p.sweep_fraction):
            noop_runs = conv_sweep.runs(
                ("softmax", "no-op"), f, lambda lr, s, f: stages.convert(ctx, t, teacher, "softmax", f, s, lr)
            )
            noop = {s: bpb(run, "softmax", "softmax") for s, run in noop_runs.items()}
            for m in p.methods:
                scratch_runs = scratch_sweep.runs(
                    (m, "scratch"), f, lambda lr, s, f, m=m: stages.scratch_control(ctx, t, teacher, m, f, s, lr)
                )
                scratch = {s: bpb(run, f"{m}-scratch", m) for s, run in scratch_runs.items()}
                for r in p.recipes:
                    try:
                        conv_runs = conv_sweep.runs(
                            (m, r),
                            f,
                            lambda lr, s, f, m=m, r=r: stages.convert_with_recipe(ctx, t, teacher, m, f, r, s, lr),
                        )
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
                f"from-scratch control over {p.scratch_lrs}, on seed {p.seeds[0]}"
                + (
                    f", once per method and recipe at {p.sweep_fraction:g} of the teacher's tokens"
                    if p.sweep_fraction is not None
                    else ", at every budget"
                )
                + "; the rate with the lowest validation-split loss is used for every seed"
                + (" and budget" if p.sweep_fraction is not None else "")
                + " (columns lr, scratch_lr; table lr_sweep)."
                if p.convert_lrs and p.scratch_lrs
                else "Learning rates are the profile's (convert: fine-tunes; pretrain: from-scratch controls); no "
                "per-method learning-rate sweep was run, so a method that needs another rate looks worse than it is."
            ),
        ]
        tables = {"results": frame, "table": table}
        swept = conv_sweep.points + scratch_sweep.points
        if swept:
            tables["lr_sweep"] = pd.DataFrame(swept)
        return Output(tables=tables, figures=figures, notes=notes)
