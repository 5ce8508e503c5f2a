"""The runner contract every kind of paper result implements, and helpers runners share.

A runner declares its parameters (``Params``), validates them against the profile (``validate``),
lists the training runs it needs (``plan``, for ``--dry-run``), names the methods its results depend
on (``methods``) and produces tidy tables and figures (``run``). Its code fingerprint (the module it
is defined in, what that imports, and its methods' modules; :mod:`harness.fingerprint`) decides
whether a finished experiment is still up to date. :data:`harness.pipeline.runners.RUNNERS` maps the
runner names experiment YAMLs use to instances.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from harness.fingerprint import Fingerprint, fingerprint, method_modules, scoped_imports
from harness.pipeline import stages
from harness.pipeline.spec import Experiment, SpecError
from harness.registry import list_methods

#: the metric that stands for "accuracy" in averages (lm-eval's acc; the paper reports acc)
ACC = "acc"
#: evaluation row columns kept in results.csv besides the scores: status ("not available offline"),
#: the scored split, document counts and per-item results (for the report's paired tests)
EVAL_DETAIL_COLUMNS: tuple[str, ...] = ("status", "split", "docs", "examined", "skipped", "truncated", "items")


@dataclass
class Output:
    """What a runner produced: named tidy tables and figure paths."""

    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class PlannedRun:
    """A training run an experiment needs (for ``--dry-run``)."""

    label: str
    kind: str  # pretrain | convert | scratch
    params: float
    tokens: float


class Runner:
    Params: ClassVar[type]

    def validate(self, exp: Experiment, params: Any) -> None:
        for m in getattr(params, "methods", []) + getattr(params, "from_scratch", []):
            _check_method(exp, m)
        if getattr(params, "method", None):
            _check_method(exp, params.method)
        for t in getattr(params, "teachers", []) + ([params.teacher] if getattr(params, "teacher", None) else []):
            exp.profile.teacher(t)

    def plan(self, exp: Experiment, params: Any) -> list[PlannedRun]:
        return []

    def run(self, exp: Experiment, params: Any, ctx: stages.Context) -> Output:
        raise NotImplementedError

    def methods(self, exp: Experiment, params: Any) -> list[str]:
        """Every method the results depend on: the ones named in the parameters, and softmax (the
        teachers' mixer) where there is a teacher."""
        found = list(getattr(params, "methods", [])) + list(getattr(params, "from_scratch", []))
        if getattr(params, "method", None):
            found.append(params.method)
        if getattr(params, "teacher", None) or getattr(params, "teachers", None):
            found.append("softmax")
        return sorted(set(found))

    def code_fingerprint(self, exp: Experiment, params: Any) -> Fingerprint:
        """The code the experiment's results depend on: this module, what it imports at module level
        and in this runner's class, and the modules of :meth:`methods` — with their import closures
        (:mod:`harness.fingerprint`)."""
        module = type(self).__module__
        own = scoped_imports(module, type(self).__name__)
        return fingerprint([module, *own, *method_modules(self.methods(exp, params))], shallow=[module])


def _check_method(exp: Experiment, method: str) -> None:
    if method not in list_methods():
        raise SpecError(f"experiment {exp.name!r}: unknown method {method!r}; registered: {', '.join(list_methods())}.")


def teacher_params(exp: Experiment, name: str) -> float:
    """Parameter count of a teacher (from the profile, or counted on the meta device)."""
    t = exp.profile.teacher(name)
    if t.params:
        return float(t.params)
    import torch

    from harness import MixerLMConfig, MixerLMForCausalLM

    with torch.device("meta"):
        model = MixerLMForCausalLM(MixerLMConfig(vocab_size=258, **t.shape))
    return float(sum(p.numel() for p in model.parameters()))


def score_frame(rows: list[dict[str, Any]], label: str, **extra: Any) -> list[dict[str, Any]]:
    """Keep the columns a table needs from tidy eval rows, tagging them with ``label`` and ``extra``."""
    keep = ("task", "metric", "value", "stderr", "n", *EVAL_DETAIL_COLUMNS)
    return [{"model": label, **extra, **{k: r.get(k) for k in keep}} for r in rows]


def wide_table(frame: pd.DataFrame, index: list[str]) -> pd.DataFrame:
    """Rows per model, one column per task (accuracy with its standard error and item count), plus
    bits per byte and the average over the benchmark tasks scored (:func:`harness.report.tables.wide_table`)."""
    from harness.report.tables import wide_table as _wide

    return _wide(frame, index)


def heldout_ids(ctx: stages.Context, model_path: str, n_tokens: int, split: str = "test", count: int = 1) -> Any:
    """``(count, n_tokens)`` ids: the first ``n_tokens`` tokens of the first ``count`` documents of
    ``split`` (the held-out ``test`` split by default) that are long enough."""
    import torch

    from harness.data.corpus import load_corpus
    from harness.evaluate import default_tokenizer, load_model

    tok = default_tokenizer(load_model(model_path), model_path)
    rows = []
    for doc in load_corpus(ctx.profile.data).documents(split):
        ids = tok(doc.text, add_special_tokens=False)["input_ids"]
        if len(ids) >= n_tokens:
            rows.append(ids[:n_tokens])
            if len(rows) == count:
                return torch.tensor(rows)
    raise SpecError(f"fewer than {count} {split} documents have {n_tokens} tokens; lower 'tokens'.")
