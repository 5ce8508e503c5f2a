"""Figure 3: the implied attention maps of the teacher (softmax) and of converted models on the same
held-out input (:mod:`analyses.attention_maps`), with each map's distance to softmax."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from harness.pipeline import stages
from harness.pipeline.runners.base import Output, Runner, heldout_ids, load_experiment, register_runner, runner_params
from harness.pipeline.spec import Experiment


@dataclass
class AttentionMapsParams:
    teacher: str
    methods: list[str]
    source: str = "table2_methods"
    tokens: int = 64
    layer: int = 0


@register_runner("attention_maps")
class AttentionMapsRunner(Runner):
    """Implied attention maps of the teacher (softmax) and of the converted models of ``source``
    (seed 0) on the same held-out input, averaged over heads, with their distance to softmax; each
    model runs on the profile's device."""

    Params = AttentionMapsParams

    def run(self, exp: Experiment, p: AttentionMapsParams, ctx: stages.Context) -> Output:
        from analyses.attention_maps import implied_attention, row_tv_distance
        from harness.conversion.factory import load_model, load_teacher
        from harness.report.figures import plot_attention_maps

        t = exp.profile.teacher(p.teacher)
        teacher = stages.teacher(ctx, t, 0)
        src = load_experiment(p.source, exp.profile)
        sp = runner_params(src)
        ids = heldout_ids(ctx, stages._source(teacher), p.tokens)
        maps, rows = {}, []
        for m in p.methods:
            if m == "softmax":
                # the suite's softmax decoder (a hub GPT-NeoX/LLaMA checkpoint converted exactly): load_model
                # would give transformers' own model, which has no mixer to hook
                model = load_teacher(stages._source(teacher)).to(ctx.device)
            else:
                run = stages.convert(
                    ctx,
                    exp.profile.teacher(sp.teacher),
                    stages.teacher(ctx, exp.profile.teacher(sp.teacher), 0),
                    m,
                    sp.conversion_fraction,
                    0,
                )
                model = load_model(stages._source(run), device=str(ctx.device))
            maps[m] = implied_attention(model, ids, p.layer).float().cpu()  # computed on the profile's device
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
