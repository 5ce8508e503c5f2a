"""Tables 1 and 3: teachers of increasing size, each converted to one method with a fixed fraction of
its own pretraining tokens (the paper: 1/16 of Pythia's, Table 1; 1/50 of LLaMA2-7B's, Table 3), with
accuracy per task, training cost and decoding throughput beside the teacher's."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from harness.pipeline import stages
from harness.pipeline.runners.base import (
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
class ScaleParams:
    teachers: list[str]
    method: str = "dijiang"
    conversion_fraction: float = 0.0625
    throughput_len: int = 2048
    seeds: list[int] = field(default_factory=lambda: [0])
    tasks: list[str] | None = None


@register_runner("scale")
class ScaleRunner(Runner):
    """Teachers of increasing size, each converted with ``conversion_fraction`` of its tokens."""

    Params = ScaleParams

    def plan(self, exp: Experiment, p: ScaleParams) -> list[PlannedRun]:
        runs = []
        for name in p.teachers:
            t, n = exp.profile.teacher(name), teacher_params(exp, name)
            for s in p.seeds:
                if t.trained_here:
                    runs.append(PlannedRun(stages.teacher_label(t, s), "pretrain", n, t.tokens, teacher=t.name))
                label = stages.convert_label(t, p.method, p.conversion_fraction, s)
                runs.append(PlannedRun(label, "convert", n, t.tokens * p.conversion_fraction, p.method, t.name))
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
                    tps = decode_throughput(run.model_dir if is_run else run, p.throughput_len, device=ctx.device)
                    from harness.evaluation.models import count_parameters  # each model's own (gate, decays included)

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
