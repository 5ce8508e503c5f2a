"""Hybrid conversions: how much of the teacher does each softmax layer (or window) buy, at what cost?

For each linear method, the teacher is converted with k = 0 .. L of its layers kept as softmax
attention, the k layers chosen by a criterion measured on the teacher (:func:`analyses.hybrid.select_layers`,
on validation documents, never the held-out test split) and, as the control, evenly spaced; and with
LoLCATs' window + linear mixer in every layer for a few window sizes. Every configuration is fine-tuned
on the same data and tokens, then scored on held-out bits per byte (and the profile's tasks) and
timed decoding one token at 2K, 8K and 32K tokens of context (:func:`analyses.hybrid.measure_decode`).
The Pareto front of bits per byte against decode speed says which configurations are worth having.

With ``seeds``, every configuration is fine-tuned once per seed (the table's bits per byte are the
mean, with their spread), so the report can test a hybrid against the plain conversion and the
criterion against its control; with ``lrs``, each configuration's peak rate is swept on the first seed
(at ``sweep_fraction`` of the teacher's tokens) and chosen on the validation split, as
:mod:`harness.pipeline.runners.controls` does for the recipes (its :class:`RateSweep`); with ``noop``,
the teacher fine-tuned on the same tokens (swept likewise) is the control of "behind the teacher":
the hybrids train on tokens the teacher never saw. With ``window_only``, every window gets its own
control: the teacher's softmax over the same last W tokens in every layer and nothing beyond
(``sliding-window``), fine-tuned alike, so what the linear part adds is measured, not assumed. With
``recipes``, every configuration is also trained with the other conversion recipes
(:mod:`harness.training.recipes`; ``transfer`` is LoLCATs' own: attention transfer of the new mixer
parameters, then the LM fine-tune, Zhang et al. 2024 Sec. 3.1), at the compute of the paper's fine-tune.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from harness.pipeline import stages
from harness.pipeline.runners.base import Output, PlannedRun, Runner, heldout_ids, register_runner, teacher_params
from harness.pipeline.runners.controls import RateSweep
from harness.pipeline.spec import Experiment, SpecError
from harness.training.config import TrainConfig
from harness.training.recipes import RECIPES

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
    #: each configuration is fine-tuned once per seed
    seeds: list[int] = field(default_factory=lambda: [0])
    #: peak learning rates swept per configuration (and no-op control) on the first seed (empty: the
    #: profile's fine-tune rate, no sweep)
    lrs: list[float] = field(default_factory=list)
    #: the budget (fraction of the teacher's tokens) the rates are swept at (None: ``fraction`` itself)
    sweep_fraction: float | None = None
    #: the no-op control: the softmax teacher fine-tuned on the same tokens
    noop: bool = False
    #: the control of every window W: softmax over the last W tokens in every layer, nothing beyond
    window_only: bool = False
    #: the conversion recipes every configuration is trained with (:data:`RECIPES`); the no-op and the
    #: configurations with no linear layer (nothing new for ``transfer`` to train) get ``paper`` only
    recipes: list[str] = field(default_factory=lambda: ["paper"])


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
    recipe: str = "paper"


#: the mixers a converted layer keeps the teacher's attention in (nothing new to train)
SOFTMAX_KINDS = ("softmax", "sliding-window")
#: the criterion of the window-only control
WINDOW_ONLY = "window-only"


def recipe_label(label: str, recipe: str) -> str:
    """A configuration's label under ``recipe`` (the ``paper`` recipe's is the label itself)."""
    return label if recipe == "paper" else f"{label}-{recipe}-recipe"


def has_linear_layer(method: str, layer_mixers: dict[int, dict[str, Any]], n_layers: int) -> bool:
    """Whether a configuration has a layer that is not softmax attention of some kind: the layers
    ``transfer`` trains (the others keep the teacher's attention and nothing new)."""
    kinds = [layer_mixers.get(i, {"mixer": method})["mixer"] for i in range(n_layers)]
    return any(k not in SOFTMAX_KINDS for k in kinds)


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
        if not p.seeds:
            raise SpecError(f"experiment {exp.name!r}: seeds is empty; give at least one seed, e.g. [0].")
        bad = sorted(set(p.recipes) - set(RECIPES))
        if bad or not p.recipes:
            raise SpecError(f"experiment {exp.name!r}: recipes {p.recipes}: choose one or more of {list(RECIPES)}.")
        if p.window_only and not p.windows:
            raise SpecError(f"experiment {exp.name!r}: window_only is the control of a window; give windows too.")
        if p.sweep_fraction is not None and not p.lrs:
            raise SpecError(
                f"experiment {exp.name!r}: sweep_fraction is the budget of a learning-rate sweep; "
                "give lrs too, or drop it."
            )
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
        extra = (["window-linear"] if p.windows else []) + (["sliding-window"] if p.window_only else [])
        return sorted({*p.methods, "softmax", *extra})

    def plan(self, exp: Experiment, p: HybridParams) -> list[PlannedRun]:
        t, n = exp.profile.teacher(p.teacher), teacher_params(exp, p.teacher)
        labels = [(m, f"{m}-{c}-k{k}") for m in p.methods for c in p.criteria for k in p.ks]
        labels += [(m, f"{m}-window{w}") for m in window_methods(p) for w in p.windows]
        n_layers = t.shape.get("num_hidden_layers") if t.shape else None
        linear = [(m, label) for m, label in labels if not (label.endswith(f"-k{n_layers}") and n_layers)]
        labels = labels if "paper" in p.recipes else []
        labels += [(m, recipe_label(label, r)) for r in p.recipes if r != "paper" for m, label in linear]
        labels += [("sliding-window", f"sliding-window{w}") for w in p.windows] if p.window_only else []
        labels += [("softmax", "no-op")] if p.noop else []
        sweep = self._sweep(p)
        budgets = [(p.fraction, sweep.runs_at(p.fraction))]
        if p.lrs and p.sweep_fraction not in (None, p.fraction):  # the sweep's own runs, at its budget
            budgets.insert(0, (p.sweep_fraction, len(p.lrs)))
        return [
            PlannedRun(f"hybrid-{t.name}-{label}-f{f:g}-{i}", "convert", n, t.tokens * f, m, t.name)
            for f, count in budgets
            for m, label in labels
            for i in range(count)
        ]

    @staticmethod
    def _sweep(p: HybridParams) -> RateSweep:
        """Each configuration's rate, swept on the first seed (or the profile's rate, no sweep)."""
        return RateSweep(p.lrs, p.seeds, p.sweep_fraction)

    @staticmethod
    def _train(
        ctx: stages.Context, t: Any, teacher_run: Any, cfg: Config, fraction: float, seed: int, lr: float | None
    ) -> stages.Run:
        """Fine-tune one configuration: the plain conversion (no other layer) is
        :func:`stages.convert_with_recipe`, the run every other experiment of the method and recipe makes;
        a hybrid at a swept rate is :func:`stages.convert_hybrid` (or, under another recipe,
        :meth:`_convert_hybrid_with_recipe`) at a profile whose fine-tune rate is ``lr`` (the rate in its label)."""
        lr = stages.own_lr(lr, ctx.profile.convert)
        if not cfg.layer_mixers:
            return stages.convert_with_recipe(ctx, t, teacher_run, cfg.method, fraction, cfg.recipe, seed, lr)
        label = cfg.label
        if lr is not None:
            convert = {**ctx.profile.convert, "lr": lr}
            ctx = dataclasses.replace(ctx, profile=dataclasses.replace(ctx.profile, convert=convert))
            label = f"{cfg.label}-lr{lr:g}"
        if cfg.recipe != "paper":
            return HybridRunner._convert_hybrid_with_recipe(ctx, t, teacher_run, cfg, fraction, seed, label)
        return stages.convert_hybrid(
            ctx, t, teacher_run, cfg.method, fraction, cfg.layer_mixers, cfg.selection, label, seed
        )

    @staticmethod
    def _convert_hybrid_with_recipe(
        ctx: stages.Context, t: Any, teacher_run: Any, cfg: Config, fraction: float, seed: int, label: str
    ) -> stages.Run:
        """:func:`stages.convert_hybrid` under ``cfg.recipe``: the recipe's stages at the compute of the
        paper's fine-tune on ``fraction`` of the teacher's tokens (:func:`recipe_stages`), each a run of its
        own, the first converting the teacher to the hybrid and each next one starting from the previous
        model (as :func:`stages.convert_with_recipe` trains a plain conversion). ``label`` ends in the
        recipe's name (:func:`recipe_label`)."""
        from harness.conversion.factory import load_teacher
        from harness.training.recipes import mixer_share, recipe_stages

        teacher_path = stages._source(teacher_run)
        step = ctx.profile.batch_size * ctx.profile.block_size
        share = mixer_share(load_teacher(teacher_path))
        plan = recipe_stages(cfg.recipe, stages.conversion_tokens(ctx, t, fraction), share, step)
        source, run = teacher_path, None
        for i, stage in enumerate(plan):
            first = i == 0
            config = TrainConfig(
                model=source,
                mixer=cfg.method if first else None,
                mixer_options=dict(ctx.profile.method_options.get(cfg.method, {})) if first else {},
                layer_mixers={str(j): v for j, v in cfg.layer_mixers.items()} if first else {},
                layer_selection=cfg.selection if first else None,
                objective=stage.objective,
                teacher=teacher_path if stage.objective != "lm" else None,
                **stages._base(ctx, seed, stage.tokens, ctx.profile.convert),
            )
            run = stages.run_training(ctx, f"hybrid-{t.name}-{label}-f{fraction:g}-s{seed}-{i + 1}", config, cfg.method)
            source = str(run.model_dir)
        return run  # type: ignore[return-value]

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
        linear = [c for c in out if has_linear_layer(c.method, c.layer_mixers, n_layers)]
        out = out if "paper" in p.recipes else [c for c in out if c not in linear]
        out += [
            dataclasses.replace(c, label=recipe_label(c.label, r), recipe=r)
            for r in p.recipes
            if r != "paper"
            for c in linear
        ]
        for w in p.windows if p.window_only else []:
            layers = {i: {"mixer": "sliding-window", "options": {"window": w}} for i in range(n_layers)}
            out.append(Config(f"sliding-window{w}", "sliding-window", WINDOW_ONLY, 0, w, layers, None))
        return out

    def run(self, exp: Experiment, p: HybridParams, ctx: stages.Context) -> Output:
        from analyses.hybrid import measure_decode
        from harness.conversion.factory import load_model, load_teacher

        t = exp.profile.teacher(p.teacher)
        teacher_run = stages.teacher(ctx, t, 0)
        teacher_path = stages._source(teacher_run)
        models: dict[str, Any] = {"teacher": load_teacher(teacher_path).to(ctx.device)}
        teacher_rows = stages.evaluate_model(ctx, teacher_run, p.teacher, "softmax")
        teacher_point = self._point("teacher", "softmax", "teacher", None, None, None, teacher_rows)
        points = [{**teacher_point, "recipe": None, "seed": None}]
        sweep = self._sweep(p)
        configs = self.configs(ctx, p, teacher_path)
        if p.noop:
            configs.append(Config("no-op", "softmax", "no-op", 0, None, {}, None))
        runs: dict[str, dict[int, stages.Run]] = {}
        for cfg in configs:
            key = json.dumps([cfg.method, cfg.layer_mixers, cfg.recipe], sort_keys=True)
            if key not in runs:  # e.g. k=0 or k=L under both criteria: one run per seed
                runs[key] = sweep.runs(
                    (cfg.method, cfg.label),
                    p.fraction,
                    lambda lr, s, f, cfg=cfg: self._train(ctx, t, teacher_run, cfg, f, s, lr),
                )
            kept = sorted(i for i, v in cfg.layer_mixers.items() if v["mixer"] == "softmax")
            for seed, run in runs[key].items():
                rows = stages.evaluate_model(ctx, run, cfg.label, cfg.method)
                point = self._point(cfg.label, cfg.method, cfg.criterion, cfg.k, cfg.window, kept, rows)
                lr = run.result.summary.get("config", {}).get("lr")
                points.append({**point, "recipe": cfg.recipe, "seed": seed, "lr": lr})
            # decode speed depends on the architecture, not the weights: the first seed's model is timed
            models[cfg.label] = load_model(str(runs[key][p.seeds[0]].model_dir), device=str(ctx.device))
        decode = pd.DataFrame(
            measure_decode(models, p.contexts, steps=p.decode_steps, repeats=p.decode_repeats)
        ).rename(columns={"model": "label"})
        per_seed = pd.DataFrame(points)
        if p.recipes == ["paper"]:  # one recipe: no column for it
            per_seed = per_seed.drop(columns="recipe")
        table = self._table(per_seed, decode, p)
        from harness.report.figures import plot_pareto

        front_col = f"decode_tokens_per_s_{p.front_context}"
        figures = plot_pareto(table, ctx.root / exp.name / "hybrid_pareto", x=front_col)
        tables = {"results": decode, "table": table}
        if len(p.seeds) > 1 or p.lrs:
            tables["per_seed"] = per_seed
        if sweep.points:  # a sweep cell is (method, configuration label)
            tables["lr_sweep"] = pd.DataFrame(sweep.points).rename(columns={"recipe": "label"})
        return Output(tables=tables, figures=figures, notes=self._notes(p, ctx, decode))

    @staticmethod
    def _table(per_seed: pd.DataFrame, decode: pd.DataFrame, p: HybridParams) -> pd.DataFrame:
        """One row per configuration: its bits per byte (the mean over seeds; with more than one, their
        standard deviation and count), its rate, decode speed and state at every context, and whether it
        is on the Pareto front of mean bits per byte against decode speed at ``front_context``."""
        first = per_seed.drop_duplicates("label").drop(columns=["seed", "bpb", "lr"], errors="ignore")
        stats = per_seed.groupby("label", sort=False)["bpb"].agg(["mean", "std", "count"])
        table = first.assign(bpb=first["label"].map(stats["mean"]))
        if len(p.seeds) > 1:
            table = table.assign(bpb_sd=table["label"].map(stats["std"]), seeds=table["label"].map(stats["count"]))
        if p.lrs:
            table = table.assign(lr=table["label"].map(per_seed.groupby("label", sort=False)["lr"].first()))
        table = table.reset_index(drop=True)
        speed = decode.pivot(index="label", columns="context", values="tokens_per_s")
        state = decode.pivot(index="label", columns="context", values="state_numbers")
        for L in p.contexts:
            table[f"decode_tokens_per_s_{L}"] = table["label"].map(speed[L])
            table[f"state_{L}"] = table["label"].map(state[L])
        table["on_front"] = pareto_front(table, f"decode_tokens_per_s_{p.front_context}")
        return table

    @staticmethod
    def _notes(p: HybridParams, ctx: stages.Context, decode: pd.DataFrame) -> list[str]:
        seeds = f"seeds {', '.join(map(str, p.seeds))} (bpb: their mean)" if len(p.seeds) > 1 else f"seed {p.seeds[0]}"
        rates = (
            f"each configuration's peak rate swept over {p.lrs} on seed {p.seeds[0]}"
            + (f" at {p.sweep_fraction:g} of the teacher's tokens" if p.sweep_fraction is not None else "")
            + ", the lowest validation-split loss chosen (column lr; table lr_sweep)"
            if p.lrs
            else "the profile's fine-tune rate for every configuration (no sweep)"
        )
        return [
            f"Every configuration fine-tuned on {p.fraction:g} of the teacher's tokens (the same data and "
            f"tokens), {seeds}, {rates}"
            + ("; the no-op control is the teacher fine-tuned on the same tokens" if p.noop else "")
            + (
                "; each window's control (sliding-windowW) keeps the teacher's softmax over the same last W "
                "tokens in every layer and nothing beyond"
                if p.window_only
                else ""
            )
            + (
                f"; recipes {', '.join(p.recipes)} (harness.training.recipes, at the paper recipe's compute; a "
                "label ending in -RECIPE-recipe; the controls without a linear layer: paper only)"
                if p.recipes != ["paper"]
                else ""
            )
            + f". Softmax layers chosen on {p.selection_docs} validation documents of "
            f"{p.selection_tokens} tokens (criteria: {', '.join(p.criteria)}; 'even' is the control).",
            "Decode speed: one-token steps after a cache of the sizes an L-token prefill leaves "
            "(harness.bench.synthetic_cache.synthetic_prompt_cache: grown from a short real prefill; "
            f"real prefills: {_fallbacks(decode)}), median of "
            f"{p.decode_repeats} calls of {p.decode_steps} steps, interleaved across models; one process, "
            f"{ctx.device.type.upper()}.",
        ]

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
