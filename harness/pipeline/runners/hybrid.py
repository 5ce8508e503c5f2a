"""Hybrid conversions: how much of the teacher does each softmax layer (or window) buy, at what cost?

For each linear method, the teacher is converted with k = 0 .. L of its layers kept as softmax
attention, the k layers chosen by a criterion measured on the teacher (:func:`analyses.hybrid.select_layers`,
on validation documents, never the held-out test split) and, as the control, evenly spaced; and with
LoLCATs' window + linear mixer in every layer for a few window sizes. Every configuration is fine-tuned
on the same data and tokens, then scored on held-out bits per byte (and the profile's tasks) and
timed decoding one token at 2K, 8K and 32K tokens of context (:func:`analyses.hybrid.measure_decode`).
The Pareto front of bits per byte against decode speed says which configurations are worth having.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from harness.pipeline import stages
from harness.pipeline.runners.base import Output, PlannedRun, Runner, heldout_ids, register_runner, teacher_params
from harness.pipeline.spec import Experiment, SpecError

BPB = ("heldout_ppl", "bits_per_byte")


@dataclass
class HybridParams:
    teacher: str
    methods: list[str]
    ks: list[int]
    criteria: list[str] = field(default_factory=lambda: ["transfer", "even"])
    windows: list[int] = field(default_factory=list)
    #: the linear methods converted with window + linear in every layer (default: every method of
    #: ``methods``); window-linear needs a normalised linear method (not retnet)
    window_methods: list[str] | None = None
    fraction: float = 0.0625
    contexts: list[int] = field(default_factory=lambda: [2048, 8192, 32768])
    #: the context whose decode speed the Pareto front uses
    front_context: int = 8192
    selection_docs: int = 4
    selection_tokens: int = 128
    decode_steps: int = 8
    decode_repeats: int = 3
    seed: int = 0


@dataclass
class Config:
    """One point of the experiment: the method, how its softmax layers were chosen, and which."""

    label: str
    method: str
    criterion: str
    k: int
    window: int | None
    layer_mixers: dict[int, dict[str, Any]]
    selection: dict[str, Any] | None


def pareto_front(points: pd.DataFrame, speed: str, quality: str = "bpb") -> pd.Series:
    """Whether each point is on the front: no other point is at least as fast and at least as good,
    and strictly better in one (higher ``speed``, lower ``quality``)."""

    def dominated(i: int) -> bool:
        a = points.loc[i]
        others = points.drop(index=i)
        better = (others[speed] >= a[speed]) & (others[quality] <= a[quality])
        strictly = (others[speed] > a[speed]) | (others[quality] < a[quality])
        return bool((better & strictly).any())

    return pd.Series({i: not dominated(i) for i in points.index})


def window_methods(p: HybridParams) -> list[str]:
    """The methods converted with window + linear in every layer."""
    return list(p.methods if p.window_methods is None else p.window_methods)


def _fallbacks(decode: pd.DataFrame) -> str:
    """The (model, context) pairs whose decode cache was really prefilled, or "none"."""
    real = decode[decode["prompt_cache_built"] != "synthetic"]
    return ", ".join(f"{r.label}@{r.context}" for r in real.itertuples()) or "none"


@register_runner("hybrid")
class HybridRunner(Runner):
    """Hybrid configurations (kept softmax layers, windows) on a quality-speed plane."""

    Params = HybridParams

    def validate(self, exp: Experiment, p: HybridParams) -> None:
        super().validate(exp, p)
        from analyses.hybrid import CRITERIA

        bad = sorted(set(p.criteria) - set(CRITERIA))
        if bad:
            raise SpecError(f"experiment {exp.name!r}: unknown criteria {bad}; choose from {list(CRITERIA)}.")
        if p.front_context not in p.contexts:
            raise SpecError(f"experiment {exp.name!r}: front_context {p.front_context} must be one of contexts.")
        self._check_windows(exp, p)

    @staticmethod
    def _check_windows(exp: Experiment, p: HybridParams) -> None:
        """Every (window method, window) builds as a window-linear mixer: refused before any training."""
        from harness.core.mixer import MixerConfig, MixerConfigError
        from harness.core.registry import build_mixer

        stray = sorted(set(window_methods(p)) - set(p.methods))
        if stray:
            raise SpecError(f"experiment {exp.name!r}: window_methods {stray} are not in methods {p.methods}.")
        for m in window_methods(p):
            for w in p.windows:
                try:
                    build_mixer("window-linear", MixerConfig(d_model=16, n_heads=2, options={"window": w, "linear": m}))
                except MixerConfigError as err:
                    raise SpecError(
                        f"experiment {exp.name!r}: {err} (set window_methods to the methods it can pair with)"
                    ) from None

    def methods(self, exp: Experiment, p: HybridParams) -> list[str]:
        extra = ["window-linear"] if p.windows else []
        return sorted({*p.methods, "softmax", *extra})

    def plan(self, exp: Experiment, p: HybridParams) -> list[PlannedRun]:
        t, n = exp.profile.teacher(p.teacher), teacher_params(exp, p.teacher)
        tokens = t.tokens * p.fraction
        labels = [(m, f"{m}-{c}-k{k}") for m in p.methods for c in p.criteria for k in p.ks]
        labels += [(m, f"{m}-window{w}") for m in window_methods(p) for w in p.windows]
        return [PlannedRun(f"hybrid-{t.name}-{label}", "convert", n, tokens, m, t.name) for m, label in labels]

    def configs(self, ctx: stages.Context, p: HybridParams, teacher_path: str) -> list[Config]:
        """Every configuration, its softmax layers chosen on the teacher (one selection per method and
        criterion, cached with the runs), measured on the profile's device."""
        from analyses.hybrid import select_layers
        from harness.conversion.factory import load_teacher

        teacher = load_teacher(teacher_path).to(ctx.device)
        n_layers = teacher.config.num_hidden_layers
        batches = [heldout_ids(ctx, teacher_path, p.selection_tokens, split="validation", count=p.selection_docs)]
        out = []
        for m in p.methods:
            for c in p.criteria:
                for k in p.ks:
                    if not 0 <= k <= n_layers:
                        raise SpecError(f"k={k} softmax layers: the teacher has {n_layers} layers.")
                    sel = select_layers(teacher, c, k, batches=batches, linear=m)
                    layers = {i: {"mixer": "softmax"} for i in sel.kept}
                    out.append(Config(f"{m}-{c}-k{k}", m, c, k, None, layers, dataclasses.asdict(sel)))
            for w in p.windows if m in window_methods(p) else []:
                layers = {i: {"mixer": "window-linear", "options": {"window": w, "linear": m}} for i in range(n_layers)}
                out.append(Config(f"{m}-window{w}", m, "window", 0, w, layers, None))
        return out

    def run(self, exp: Experiment, p: HybridParams, ctx: stages.Context) -> Output:
        from analyses.hybrid import measure_decode
        from harness.conversion.factory import load_model, load_teacher
        from harness.report.figures import plot_pareto

        t = exp.profile.teacher(p.teacher)
        teacher_run = stages.teacher(ctx, t, p.seed)
        teacher_path = stages._source(teacher_run)
        points: list[dict[str, Any]] = []
        models: dict[str, Any] = {"teacher": load_teacher(teacher_path).to(ctx.device)}
        teacher_rows = stages.evaluate_model(ctx, teacher_run, p.teacher, "softmax")
        points.append(self._point("teacher", "softmax", "teacher", None, None, None, teacher_rows))
        runs: dict[str, stages.Run] = {}
        for cfg in self.configs(ctx, p, teacher_path):
            key = json.dumps([cfg.method, cfg.layer_mixers], sort_keys=True)
            if key in runs:  # e.g. k=0 or k=L under both criteria: one run
                run = runs[key]
            else:
                run = runs[key] = stages.convert_hybrid(
                    ctx, t, teacher_run, cfg.method, p.fraction, cfg.layer_mixers, cfg.selection, cfg.label, p.seed
                )
            rows = stages.evaluate_model(ctx, run, cfg.label, cfg.method)
            kept = sorted(i for i, v in cfg.layer_mixers.items() if v["mixer"] == "softmax")
            points.append(self._point(cfg.label, cfg.method, cfg.criterion, cfg.k, cfg.window, kept, rows))
            models[cfg.label] = load_model(str(run.model_dir), device=str(ctx.device))
        decode = pd.DataFrame(
            measure_decode(models, p.contexts, steps=p.decode_steps, repeats=p.decode_repeats)
        ).rename(columns={"model": "label"})
        table = pd.DataFrame(points)
        speed = decode.pivot(index="label", columns="context", values="tokens_per_s")
        state = decode.pivot(index="label", columns="context", values="state_numbers")
        for L in p.contexts:
            table[f"decode_tokens_per_s_{L}"] = table["label"].map(speed[L])
            table[f"state_{L}"] = table["label"].map(state[L])
        front_col = f"decode_tokens_per_s_{p.front_context}"
        table["on_front"] = pareto_front(table, front_col)
        figures = plot_pareto(table, ctx.root / exp.name / "hybrid_pareto", x=front_col)
        notes = [
            f"Every configuration fine-tuned on {p.fraction:g} of the teacher's tokens (the same data and "
            f"tokens); softmax layers chosen on {p.selection_docs} validation documents of "
            f"{p.selection_tokens} tokens (criteria: {', '.join(p.criteria)}; 'even' is the control).",
            "Decode speed: one-token steps after a cache of the sizes an L-token prefill leaves "
            "(harness.bench.synthetic_cache.synthetic_prompt_cache: grown from a short real prefill; "
            f"real prefills: {_fallbacks(decode)}), median of "
            f"{p.decode_repeats} calls of {p.decode_steps} steps, interleaved across models; one process, "
            f"{ctx.device.type.upper()}.",
        ]
        return Output(tables={"results": decode, "table": table}, figures=figures, notes=notes)

    @staticmethod
    def _point(
        label: str,
        method: str,
        criterion: str,
        k: int | None,
        window: int | None,
        kept: list[int] | None,
        rows: list[dict[str, Any]],
    ) -> dict[str, Any]:
        bpb = next(float(r["value"]) for r in rows if (r["task"], r["metric"]) == BPB)
        return {
            "label": label,
            "method": method,
            "criterion": criterion,
            "k": k,
            "window": window,
            "softmax_layers": "" if kept is None else " ".join(map(str, kept)),
            "bpb": bpb,
        }
