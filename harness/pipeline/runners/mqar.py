"""Multi-query associative recall (Zoology, Arora et al. 2023; not in the paper): accuracy against
decoding state size per method, each trained from scratch on synthetic data (:mod:`analyses.mqar`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from harness.pipeline import stages
from harness.pipeline.runners.base import REGISTERED, Output, Runner, register_runner
from harness.pipeline.spec import Experiment, SpecError
from harness.training.fingerprint import fingerprint, method_modules


@dataclass
class MQARParams:
    #: registered methods, or ``all`` (every registered one, less ``exclude``)
    methods: list[str]
    d_models: list[int] = field(default_factory=lambda: [32, 64])
    lrs: list[float] = field(default_factory=lambda: [1e-3])
    data: dict[str, Any] = field(default_factory=dict)  # analyses.mqar.MQARConfig fields
    train: dict[str, Any] = field(default_factory=dict)  # analyses.mqar.MQARTrainConfig fields
    seeds: list[int] = field(default_factory=lambda: [0])


@register_runner("mqar")
class MQARRunner(Runner):
    """Multi-query associative recall: accuracy against decoding state size per method."""

    Params = MQARParams
    method_lists = {"methods": REGISTERED}

    def validate(self, exp: Experiment, p: MQARParams) -> None:
        from analyses.mqar import MQARConfig, MQARTrainConfig

        super().validate(exp, p)
        try:
            MQARConfig(**p.data)
            MQARTrainConfig(**p.train)
        except (TypeError, ValueError) as err:
            raise SpecError(f"experiment {exp.name!r}: bad MQAR setting: {err}") from None

    def run(self, exp: Experiment, p: MQARParams, ctx: stages.Context) -> Output:
        from analyses.mqar import MQARConfig, MQARTrainConfig, mqar_sweep
        from harness.report.figures import plot_mqar

        rows = []
        for s in p.seeds:
            train = MQARTrainConfig(**{**p.train, "seed": s})
            for method in p.methods:
                for d in p.d_models:  # one cache per point: a killed sweep resumes where it stopped
                    code = fingerprint(["analyses.mqar", *method_modules([method])]).digest
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
