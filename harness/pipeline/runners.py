"""One runner per kind of paper result. A runner declares its parameters (``Params``), validates
them against the profile (``validate``), lists the training runs it needs (``plan``, for
``--dry-run``) and produces tidy tables and figures (``run``).

Outputs go to ``<results dir>/<profile>/<experiment>/`` (``runs/<profile>/...`` by default):
``results.csv`` (tidy rows), ``table.md``, and figures as PNG and PDF. Every number comes from a run
of :mod:`harness.pipeline.stages`. Each runner names the methods its results depend on
(:meth:`Runner.methods`); with the runner's own imports they make the experiment's code fingerprint
(:meth:`Runner.code_fingerprint`, see :mod:`harness.fingerprint`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from harness.fingerprint import fingerprint, method_modules
from harness.pipeline import stages
from harness.pipeline.controls_runner import ControlsRunner
from harness.pipeline.hybrid_runner import HybridRunner
from harness.pipeline.runner import (
    Output,
    PlannedRun,
    Runner,
    heldout_ids,
    score_frame,
    teacher_params,
    wide_table,
)
from harness.pipeline.spec import Experiment, SpecError
from harness.registry import get_method, list_methods


# -- table 1 / table 3: scale ------------------------------------------------------------------------
@dataclass
class ScaleParams:
    teachers: list[str]
    method: str = "dijiang"
    conversion_fraction: float = 0.0625
    throughput_len: int = 2048
    seeds: list[int] = field(default_factory=lambda: [0])
    tasks: list[str] | None = None


class ScaleRunner(Runner):
    """Teachers of increasing size, each converted with ``conversion_fraction`` of its tokens."""

    Params = ScaleParams

    def plan(self, exp: Experiment, p: ScaleParams) -> list[PlannedRun]:
        runs = []
        for name in p.teachers:
            t, n = exp.profile.teacher(name), teacher_params(exp, name)
            for s in p.seeds:
                if not t.pretrained:
                    runs.append(PlannedRun(stages.teacher_label(t, s), "pretrain", n, t.tokens))
                label = stages.convert_label(t, p.method, p.conversion_fraction, s)
                runs.append(PlannedRun(label, "convert", n, t.tokens * p.conversion_fraction))
        return runs

    def run(self, exp: Experiment, p: ScaleParams, ctx: stages.Context) -> Output:
        from harness.pipeline.throughput import decode_throughput

        rows = []
        for name in p.teachers:
            t = exp.profile.teacher(name)
            n = teacher_params(exp, name)
            for s in p.seeds:
                teacher = stages.teacher(ctx, t, s)
                conv = stages.convert(ctx, t, teacher, p.method, p.conversion_fraction, s)
                for label, run, method in ((name, teacher, "softmax"), (f"{p.method}-{name}", conv, p.method)):
                    is_run = isinstance(run, stages.Run)
                    tps = decode_throughput(run.model_dir if is_run else run, p.throughput_len)
                    from harness.evaluate import count_parameters  # each model's own (gate, decays included)

                    extra = dict(
                        method=method,
                        teacher=name,
                        params=count_parameters(run.model_dir) if is_run else n,
                        seed=s,
                        train_tokens=run.tokens if is_run else t.tokens,
                        train_wall_s=run.result.wall_time_s if is_run else math.nan,
                        tokens_per_s=tps,
                    )
                    rows += score_frame(stages.evaluate_model(ctx, run, label, method, p.tasks), label, **extra)
        frame = pd.DataFrame(rows)
        index = ["model", "method", "teacher", "params", "train_tokens", "train_wall_s", "tokens_per_s"]
        return Output(tables={"results": frame, "table": wide_table(frame, index)})


# -- table 2: methods --------------------------------------------------------------------------------
@dataclass
class MethodsParams:
    teacher: str
    methods: list[str]
    from_scratch: list[str] = field(default_factory=list)
    conversion_fraction: float = 0.0625
    seeds: list[int] = field(default_factory=lambda: [0])
    #: from-scratch budget as a fraction of the teacher's tokens (the paper: 1, the same budget)
    scratch_fraction: float = 1.0
    scratch_seeds: list[int] | None = None  # None: the same seeds as the conversions


class MethodsRunner(Runner):
    """One teacher, every method with the same data and budget; mean and spread over seeds."""

    Params = MethodsParams

    def validate(self, exp: Experiment, p: MethodsParams) -> None:
        super().validate(exp, p)
        for m in p.methods:
            if not get_method(m).convertible:
                raise SpecError(f"experiment {exp.name!r}: {m!r} is not convertible; list it under from_scratch.")

    def plan(self, exp: Experiment, p: MethodsParams) -> list[PlannedRun]:
        t, n = exp.profile.teacher(p.teacher), teacher_params(exp, p.teacher)
        runs = [] if t.pretrained else [PlannedRun(stages.teacher_label(t, 0), "pretrain", n, t.tokens)]
        f = p.conversion_fraction
        for s in p.seeds:
            runs += [PlannedRun(stages.convert_label(t, m, f, s), "convert", n, t.tokens * f) for m in p.methods]
        for s in p.scratch_seeds if p.scratch_seeds is not None else p.seeds:
            runs += [
                PlannedRun(
                    stages.scratch_label(t, m, s, p.scratch_fraction), "scratch", n, t.tokens * p.scratch_fraction
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


# -- figure 2: training curves -----------------------------------------------------------------------
@dataclass
class CurvesParams:
    source: str = "table2_methods"


class CurvesRunner(Runner):
    """Loss against tokens for the conversions of a methods experiment (reused, not retrained)."""

    Params = CurvesParams

    def validate(self, exp: Experiment, p: CurvesParams) -> None:
        from harness.pipeline.spec import load_experiment

        src = load_experiment(p.source, exp.profile)
        if src.runner != "methods":
            raise SpecError(f"experiment {exp.name!r}: source {p.source!r} is not a methods experiment.")

    def methods(self, exp: Experiment, p: CurvesParams) -> list[str]:
        from harness.pipeline.spec import load_experiment

        src = load_experiment(p.source, exp.profile)
        return RUNNERS[src.runner].methods(src, src.runner_params())

    def run(self, exp: Experiment, p: CurvesParams, ctx: stages.Context) -> Output:
        from harness.pipeline.spec import load_experiment
        from harness.report.figures import plot_curves

        src = load_experiment(p.source, exp.profile)
        _, runs = MethodsRunner().runs(src, src.runner_params(), ctx)
        rows = [
            {"method": m, "seed": s, "step": r["step"], "tokens": r["tokens"], "loss": r["loss"]}
            for m, s, run in runs
            for r in run.log()
            if "loss" in r
        ]
        frame = pd.DataFrame(rows)
        out = ctx.root / exp.name
        return Output(tables={"results": frame}, figures=plot_curves(frame, out / "fig2_curves"))


# -- recovery curve ----------------------------------------------------------------------------------
@dataclass
class RecoveryParams:
    teacher: str
    methods: list[str]
    fractions: list[float]
    seeds: list[int] = field(default_factory=lambda: [0])


class RecoveryRunner(Runner):
    """Accuracy of converted models against the conversion budget (fraction of teacher tokens)."""

    Params = RecoveryParams

    def plan(self, exp: Experiment, p: RecoveryParams) -> list[PlannedRun]:
        t, n = exp.profile.teacher(p.teacher), teacher_params(exp, p.teacher)
        return [
            PlannedRun(stages.convert_label(t, m, f, s), "convert", n, t.tokens * f)
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


# -- MQAR ---------------------------------------------------------------------------------------------
@dataclass
class MQARParams:
    methods: list[str]
    d_models: list[int] = field(default_factory=lambda: [32, 64])
    lrs: list[float] = field(default_factory=lambda: [1e-3])
    data: dict[str, Any] = field(default_factory=dict)  # harness.mqar.MQARConfig fields
    train: dict[str, Any] = field(default_factory=dict)  # harness.mqar.MQARTrainConfig fields
    seeds: list[int] = field(default_factory=lambda: [0])


class MQARRunner(Runner):
    """Multi-query associative recall: accuracy against decoding state size per method."""

    Params = MQARParams

    def validate(self, exp: Experiment, p: MQARParams) -> None:
        from harness.mqar import MQARConfig, MQARTrainConfig

        super().validate(exp, p)
        try:
            MQARConfig(**p.data)
            MQARTrainConfig(**p.train)
        except (TypeError, ValueError) as err:
            raise SpecError(f"experiment {exp.name!r}: bad MQAR setting: {err}") from None

    def run(self, exp: Experiment, p: MQARParams, ctx: stages.Context) -> Output:
        from harness.mqar import MQARConfig, MQARTrainConfig, mqar_sweep
        from harness.report.figures import plot_mqar

        rows = []
        for s in p.seeds:
            train = MQARTrainConfig(**{**p.train, "seed": s})
            for method in p.methods:
                for d in p.d_models:  # one cache per point: a killed sweep resumes where it stopped
                    code = fingerprint(["harness.mqar", *method_modules([method])]).digest
                    key = stages.config_key([p.data, p.train, p.lrs, method, d, s, code])
                    cache = ctx.runs / f"mqar-{method}-d{d}-s{s}-{key}.json"
                    if not cache.exists():
                        found = mqar_sweep([method], [d], MQARConfig(**p.data), train, lrs=p.lrs, progress=ctx.progress)
                        stages.atomic_write_json(cache, {"rows": found})
                    rows += [{**r, "seed": s} for r in stages.read_json(cache)["rows"]]
        frame = pd.DataFrame(rows).rename(columns={"value": "accuracy"})
        grouped = frame.groupby(["method", "d_model", "state_size"], sort=False)
        table = grouped["accuracy"].agg(["mean", "count"])
        if "stderr" in frame.columns:  # per-item standard error of the mean over seeds (compare's noise estimate)
            table["mean stderr"] = grouped["stderr"].apply(lambda se: (se**2).sum() ** 0.5 / len(se))
        return Output(
            tables={"results": frame, "table": table.reset_index()},
            figures=plot_mqar(frame, ctx.root / exp.name / "mqar"),
        )


# -- inputs from the held-out split --------------------------------------------------------------------
# -- figure 3: attention maps -------------------------------------------------------------------------
@dataclass
class AttentionMapsParams:
    teacher: str
    methods: list[str]
    source: str = "table2_methods"
    tokens: int = 64
    layer: int = 0


class AttentionMapsRunner(Runner):
    """Implied attention maps of the teacher (softmax) and of the converted models of ``source``
    (seed 0) on the same held-out input, averaged over heads, with their distance to softmax."""

    Params = AttentionMapsParams

    def run(self, exp: Experiment, p: AttentionMapsParams, ctx: stages.Context) -> Output:
        from harness.attention_maps import implied_attention, row_tv_distance
        from harness.evaluate import load_model
        from harness.pipeline.spec import load_experiment
        from harness.report.figures import plot_attention_maps

        t = exp.profile.teacher(p.teacher)
        teacher = stages.teacher(ctx, t, 0)
        src = load_experiment(p.source, exp.profile)
        sp = src.runner_params()
        ids = heldout_ids(ctx, stages._source(teacher), p.tokens)
        maps, rows = {}, []
        for m in p.methods:
            if m == "softmax":
                run = teacher
            else:
                run = stages.convert(
                    ctx,
                    exp.profile.teacher(sp.teacher),
                    stages.teacher(ctx, exp.profile.teacher(sp.teacher), 0),
                    m,
                    sp.conversion_fraction,
                    0,
                )
            model = load_model(stages._source(run))
            maps[m] = implied_attention(model, ids, p.layer).float()
        for m, a in maps.items():
            rows.append(
                {
                    "method": m,
                    "layer": p.layer,
                    "tokens": p.tokens,
                    "tv_distance_to_softmax": row_tv_distance(a, maps["softmax"]) if "softmax" in maps else None,
                }
            )
        out = ctx.root / exp.name
        figs = plot_attention_maps({m: a.numpy() for m, a in maps.items()}, out / "fig3_attention_maps")
        return Output(tables={"results": pd.DataFrame(rows)}, figures=figs)


# -- kernel ablation -----------------------------------------------------------------------------------
@dataclass
class KernelAblationParams:
    teacher: str
    feature_counts: list[int]
    layer: int = 0
    tokens: int = 256
    repeats: int = 5
    pairs: int = 2048
    #: also run the estimators on Gaussian queries and keys of the same shape with this standard
    #: deviation (a control with benign inputs: does an estimator converge at all?); null: no control
    control_std: float | None = 0.5


class KernelAblationRunner(Runner):
    """Error of exp(q.k) estimators against feature count on the teacher's real queries and keys."""

    Params = KernelAblationParams

    def run(self, exp: Experiment, p: KernelAblationParams, ctx: stages.Context) -> Output:
        import torch

        from analyses.kernel_ablation import ablation_rows, slope
        from harness.attention_maps import queries_keys
        from harness.evaluate import load_model
        from harness.report.figures import plot_kernel_ablation

        teacher = stages.teacher(ctx, exp.profile.teacher(p.teacher), 0)
        path = stages._source(teacher)
        q, k = queries_keys(load_model(path), heldout_ids(ctx, path, p.tokens), p.layer)
        inputs = {"teacher": (q, k)}
        if p.control_std is not None:
            g = torch.Generator().manual_seed(0)
            inputs[f"gaussian std {p.control_std:g}"] = tuple(
                torch.randn(q.shape, generator=g, dtype=torch.float64) * p.control_std for _ in range(2)
            )
        frame = pd.concat(
            [
                pd.DataFrame(ablation_rows(a, b, p.feature_counts, p.repeats, p.pairs)).assign(inputs=name)
                for name, (a, b) in inputs.items()
            ],
            ignore_index=True,
        )
        means = frame.groupby(["inputs", "estimator", "m"], sort=False)["rel_error"].mean().reset_index()
        slopes = [
            {
                "inputs": i,
                "estimator": e,
                "loglog_slope": slope(g["m"].tolist(), g["rel_error"].tolist()),
                "error_at_max_m": float(g["rel_error"].iloc[-1]),
            }
            for (i, e), g in means.groupby(["inputs", "estimator"], sort=False)
        ]
        out = ctx.root / exp.name
        return Output(
            tables={"results": frame, "table": pd.DataFrame(slopes)},
            figures=plot_kernel_ablation(frame, out / "kernel_ablation"),
        )


# -- figure 4: speed and memory -----------------------------------------------------------------------
@dataclass
class SpeedParams:
    shapes: list[str]
    lengths: list[int]
    methods: list[str] = field(default_factory=list)  # empty: every registered method
    phases: list[str] = field(default_factory=lambda: ["prefill", "decode", "train"])
    extra_args: list[str] = field(default_factory=list)  # passed to `python -m harness bench`


class SpeedRunner(Runner):
    """The benchmark sweep (:mod:`harness.bench`) into this experiment's folder; resumable."""

    Params = SpeedParams

    def validate(self, exp: Experiment, p: SpeedParams) -> None:
        from harness.bench.shapes import UnknownShapeError, get_shape

        super().validate(exp, p)
        for s in p.shapes:
            try:
                get_shape(s)
            except UnknownShapeError as err:
                raise SpecError(f"experiment {exp.name!r}: {err}") from None

    def methods(self, exp: Experiment, p: SpeedParams) -> list[str]:
        return sorted(p.methods or list_methods())

    def run(self, exp: Experiment, p: SpeedParams, ctx: stages.Context) -> Output:
        import argparse

        from harness.bench import add_arguments
        from harness.bench import main as bench

        out = ctx.root / exp.name
        args = [
            "--no-supervise",
            "--shapes",
            ",".join(p.shapes),
            "--lengths",
            ",".join(map(str, p.lengths)),
            "--phases",
            ",".join(p.phases),
            "--out",
            str(out),
            "--name",
            "bench",
            *p.extra_args,
        ]
        if p.methods:
            args += ["--methods", ",".join(p.methods)]
        if ctx.fresh:  # the earlier sweep's points are stale: bench keeps them as a backup
            args.append("--fresh")
        parser = argparse.ArgumentParser(prog="python -m harness bench")
        add_arguments(parser)
        if bench(parser.parse_args(args)) != 0:
            raise RuntimeError(f"benchmark sweep failed: python -m harness bench {' '.join(args)}")
        rows = stages.read_json(out / "bench.json")
        rows = rows.get("rows", rows) if isinstance(rows, dict) else rows
        frame = pd.DataFrame(rows)
        figures = sorted(out.glob("bench*.png")) + sorted(out.glob("bench*.pdf"))
        notes = [f"Benchmark summary: `{exp.name}/bench.md` (log-log slopes, crossovers, skipped points)."]
        return Output(tables={"results": frame}, figures=figures, notes=notes)


RUNNERS: dict[str, Runner] = {
    "speed": SpeedRunner(),
    "attention_maps": AttentionMapsRunner(),
    "kernel_ablation": KernelAblationRunner(),
    "mqar": MQARRunner(),
    "scale": ScaleRunner(),
    "methods": MethodsRunner(),
    "curves": CurvesRunner(),
    "recovery": RecoveryRunner(),
    "controls": ControlsRunner(),
    "hybrid": HybridRunner(),
}


def params_dict(params: Any) -> dict[str, Any]:
    return dataclasses.asdict(params)
