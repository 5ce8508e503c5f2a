"""The kernel ablation (Sec. 3, the QMC error theorem; Table 2's ablation rows): the error of Monte
Carlo, quasi-Monte Carlo and weighted DCT estimators of exp(q.k) against the feature count, on the
teacher's real queries and keys (:mod:`analyses.kernel_ablation`)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from harness.pipeline import stages
from harness.pipeline.runners.base import Output, Runner, heldout_ids, register_runner
from harness.pipeline.spec import Experiment


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


@register_runner("kernel_ablation")
class KernelAblationRunner(Runner):
    """Error of exp(q.k) estimators against feature count on the teacher's real queries and keys."""

    Params = KernelAblationParams

    def run(self, exp: Experiment, p: KernelAblationParams, ctx: stages.Context) -> Output:
        import torch

        from analyses.attention_maps import queries_keys
        from analyses.kernel_ablation import ablation_rows, slope
        from harness.conversion.factory import load_teacher
        from harness.report.figures import plot_kernel_ablation

        teacher = stages.teacher(ctx, exp.profile.teacher(p.teacher), 0)
        path = stages._source(teacher)
        # the suite's softmax decoder (a hub GPT-NeoX/LLaMA checkpoint converted exactly): load_model would
        # give transformers' own model, which has no mixer to read queries and keys from
        model = load_teacher(path).to(ctx.device)
        # the teacher's forward on the profile's device; the estimators (float64, NNLS) on the CPU
        q, k = (t.cpu() for t in queries_keys(model, heldout_ids(ctx, path, p.tokens), p.layer))
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
