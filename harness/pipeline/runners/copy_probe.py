"""The control of recall: another experiment's models on a long-range copy probe.

A window + linear hybrid scored on held-out text can owe its score to its window alone
(``hybrid_window_controls``: the window alone scores better). What a linear method beyond the window
can add is recall from further back, which natural text's bits per byte barely ask for.
``copy_probe`` asks for it directly (:mod:`analyses.copy_probe`): every model the experiment ``of``
scores (its runs reused by their key, nothing trained that ``of`` did not train) predicts a span of
held-out text that it saw ``d`` tokens earlier, against the same span without the earlier copy, at
distances inside and beyond the window, all within the length the models were trained on.

The models are the ones ``of``'s runner passes to :func:`harness.pipeline.stages.evaluate_model`, the
one function through which every scored model of the suite goes (:func:`scored_models` records them
while ``of`` runs); each is probed once per run and cached in the run folder (``copy-probe/``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd

from harness.pipeline import stages
from harness.pipeline.runners.base import Output, get_runner, register_runner, runner_params
from harness.pipeline.runners.whole_split import WholeSplitRunner
from harness.pipeline.spec import Experiment, SpecError
from harness.util.io import atomic_write_json

#: what the probe keeps of a hybrid experiment's configurations (its report pairs each window hybrid
#: with its window-only control by them)
CONFIG_COLUMNS: tuple[str, ...] = ("label", "method", "criterion", "window", "recipe")
#: the held-out metric recorded beside each probed model's gains (as the probed experiment scored it)
BPB = ("heldout_ppl", "bits_per_byte")


@dataclass
class CopyProbeParams:
    #: the experiment (defined for the same profile) whose models are probed
    of: str
    #: tokens from a span's first copy to its second (each at least ``span``; at most the profile's
    #: block size less ``span``: the models are probed within the length they were trained on)
    distances: list[int] = field(default_factory=lambda: [16, 32, 48, 80, 96, 112])
    span: int = 16
    examples: int = 128
    seed: int = 0
    #: the corpus split the spans are drawn from (``test``: held out from every training run)
    split: str = "test"
    #: parameters of ``of`` replaced for the probe (e.g. ``{recipes: [paper]}``: only the models the
    #: probe needs, where ``of`` trains more); its runs are still ``of``'s, reused by their key
    of_params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ScoredModel:
    """A model an experiment scored: the name it gave it, its method, where it is (a run, or a model
    directory or hub id) and its held-out bits per byte in that scoring (None: not scored on them)."""

    label: str
    method: str
    run: stages.Run | str
    bpb: float | None = None

    @property
    def path(self) -> str:
        return str(self.run.model_dir) if isinstance(self.run, stages.Run) else self.run

    @property
    def seed(self) -> int | None:
        """The run's seed (None: a model not trained here, such as a shipped teacher)."""
        return self.run.result.summary.get("config", {}).get("seed") if isinstance(self.run, stages.Run) else None


@contextlib.contextmanager
def scored_models() -> Iterator[list[ScoredModel]]:
    """Record every model :func:`harness.pipeline.stages.evaluate_model` scores while the block runs, in
    order (every runner calls it through the module, so it sees them all); its scores are unchanged."""
    seen: list[ScoredModel] = []
    evaluate = stages.evaluate_model

    def recording(ctx: stages.Context, run: stages.Run | str, name: str, method: str, tasks: Any = None) -> Any:
        rows = evaluate(ctx, run, name, method, tasks)
        bpb = [r["value"] for r in rows if (r.get("task"), r.get("metric")) == BPB]
        seen.append(ScoredModel(name, method, run, float(bpb[0]) if bpb and bpb[0] is not None else None))
        return rows

    stages.evaluate_model = recording
    try:
        yield seen
    finally:
        stages.evaluate_model = evaluate


@register_runner("copy_probe")
class CopyProbeRunner(WholeSplitRunner):
    """Experiment ``of`` again, every model it scores probed for long-range copying."""

    Params = CopyProbeParams

    def validate(self, exp: Experiment, p: CopyProbeParams) -> None:
        from analyses.copy_probe import CopyProbeConfig, CopyProbeError

        try:
            config = CopyProbeConfig(tuple(p.distances), p.span, p.examples, p.seed)
        except CopyProbeError as err:
            raise SpecError(f"experiment {exp.name!r}: {err}") from None
        if config.length > exp.profile.block_size:
            raise SpecError(
                f"experiment {exp.name!r}: distance {max(p.distances)} + span {p.span} is longer than the "
                f"{exp.profile.block_size} tokens the models are trained on; lower the distances."
            )
        super().validate(exp, p)

    @staticmethod
    def _inner(exp: Experiment, p: CopyProbeParams) -> Experiment:  # type: ignore[override]
        """``of`` at ``exp``'s profile (:meth:`WholeSplitRunner._inner`), with ``of_params`` replacing its own."""
        inner = WholeSplitRunner._inner(exp, p)
        unknown = sorted(set(p.of_params) - set(inner.params) - {f.name for f in fields(get_runner(inner).Params)})
        if unknown:
            raise SpecError(f"experiment {exp.name!r}: of_params {unknown} are not parameters of {p.of!r}'s runner.")
        return dataclasses.replace(inner, params={**inner.params, **p.of_params})

    def run(self, exp: Experiment, p: CopyProbeParams, ctx: stages.Context) -> Output:
        from analyses.copy_probe import CopyProbeConfig

        inner = self._inner(exp, p)
        with scored_models() as seen:
            done = get_runner(inner).run(inner, runner_params(inner), ctx)
        for figure in done.figures:  # ``of``'s figures, drawn again into this folder: not this experiment's
            Path(figure).unlink(missing_ok=True)
        if not seen:
            raise SpecError(
                f"experiment {exp.name!r}: {p.of!r} scores no model (its runner never calls evaluate_model); "
                "probe an experiment that does (a hybrid, controls or methods experiment)."
            )
        config = CopyProbeConfig(tuple(p.distances), p.span, p.examples, p.seed)
        rows, probed = [], {}
        for m in seen:
            if m.path not in probed:
                probed[m.path] = self._probe(ctx, m.path, config, p.split)
            rows += [{"label": m.label, "method": m.method, "seed": m.seed, "bpb": m.bpb, **r} for r in probed[m.path]]
        results = pd.DataFrame(rows).drop_duplicates(["label", "seed", "distance"])
        tables = {"results": results, "table": gain_table(results)}
        configs = done.tables.get("table")
        if configs is not None and {"criterion", "window"} <= set(configs.columns):  # a hybrid experiment's
            tables["configs"] = configs[[c for c in CONFIG_COLUMNS if c in configs.columns]]
        return Output(tables=tables, notes=self._notes(p, ctx, seen))

    @staticmethod
    def _probe(ctx: stages.Context, path: str, config: Any, split: str) -> list[dict[str, Any]]:
        """The copy gains of the model at ``path`` (:func:`analyses.copy_probe.copy_gains`), computed once
        and cached under the profile's runs (keyed by the model, the probe and the probe's code)."""
        from analyses.copy_probe import copy_gains, encode_gains
        from harness.conversion.factory import load_model
        from harness.training.fingerprint import fingerprint

        code = fingerprint(["analyses.copy_probe"]).digest
        key = stages.config_key([path, config, split, ctx.profile.data, code])
        cache = ctx.runs / "copy-probe" / f"{key}.json"
        if not cache.exists():
            model = load_model(path, device=str(ctx.device))
            found = copy_gains(model, _batches(ctx, model, path, config, split), config.span)
            atomic_write_json(cache, {"model": path, "rows": found})
        rows = stages.read_json(cache)["rows"]
        return [{**r, "items": encode_gains(r["items"])} for r in rows]

    @staticmethod
    def _notes(p: CopyProbeParams, ctx: stages.Context, seen: list[ScoredModel]) -> list[str]:
        return [
            f"The models `{p.of}` scores ({len({m.path for m in seen})} distinct; its runs, reused by their key), each "
            f"predicting a {p.span}-token span of the {p.split} split that it saw d tokens earlier, against the same "
            f"span after another one (analyses.copy_probe): {p.examples} examples per distance, the same for every "
            f"model (seed {p.seed}), at d = {', '.join(map(str, p.distances))}, within the "
            f"{ctx.profile.block_size} tokens the models were trained on.",
            "gain: the control's loss minus the copy's on the second span after its first token, in bits per token "
            "(bits per byte for the byte-level models), mean over examples with its standard error (results), then "
            "mean over seeds with their spread (table).",
        ]


def _batches(ctx: stages.Context, model: Any, path: str, config: Any, split: str) -> list[Any]:
    """The probe's sequences in the model's tokens (:func:`analyses.copy_probe.probe_batches`)."""
    from analyses.copy_probe import probe_batches
    from harness.data.corpus import load_corpus
    from harness.evaluation.models import default_tokenizer

    tok = default_tokenizer(model, path)
    docs = [tok(d.text, add_special_tokens=False)["input_ids"] for d in load_corpus(ctx.profile.data).documents(split)]
    return probe_batches(docs, config)


def gain_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per model and distance: the copy gain's mean over seeds (``gain``), their standard
    deviation and count where there is more than one seed, the mean copy and control losses and the
    model's mean held-out bits per byte."""
    grouped = results.groupby(["label", "method", "distance"], sort=False, dropna=False)
    columns = {
        "gain": ("gain", "mean"),
        "gain_sd": ("gain", "std"),
        "seeds": ("gain", "count"),
        "bits_copy": ("bits_copy", "mean"),
        "bits_control": ("bits_control", "mean"),
        **({"bpb": ("bpb", "mean")} if "bpb" in results.columns else {}),
    }
    table = grouped.agg(**columns).reset_index()
    if int(table["seeds"].max()) < 2:
        table = table.drop(columns=["gain_sd", "seeds"])
    return table


__all__ = ["CopyProbeParams", "CopyProbeRunner", "ScoredModel", "gain_table", "scored_models"]
