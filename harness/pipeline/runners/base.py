"""The runner contract every kind of paper result implements, the registry of runners, and the
helpers runners share.

A runner declares its parameters (``Params``), validates them against the profile (``validate``),
lists the training runs it needs (``plan``, for ``--dry-run``), names the methods its results depend
on (``methods``) and produces tidy tables and figures (``run``). Its code fingerprint (the module it
is defined in, what that imports, and its methods' modules; :mod:`harness.training.fingerprint`) decides
whether a finished experiment is still up to date.

The registry: :func:`register_runner` puts an instance of a runner class in :data:`RUNNERS` under
the name experiment YAMLs use (``runner: methods``). The package :mod:`harness.pipeline.runners`
imports every module of itself, so a runner module registers itself with no other edit.
:func:`load_experiment` reads an experiment (:func:`harness.pipeline.spec.read_experiment`) and
validates it against its runner; :func:`runner_params` gives the runner's typed parameters, with
``all`` in a method list resolved (:data:`ALL`, :attr:`Runner.method_lists`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pandas as pd

from harness.core.registry import capabilities, list_methods
from harness.pipeline import stages
from harness.pipeline.spec import Experiment, Profile, SpecError, read_experiment
from harness.training.fingerprint import Fingerprint, fingerprint, method_modules, scoped_imports

#: evaluation row columns kept in results.csv besides the scores: status ("not available offline"),
#: the scored split, document counts and per-item results (for the report's paired tests)
EVAL_DETAIL_COLUMNS: tuple[str, ...] = ("status", "split", "docs", "examined", "skipped", "truncated", "items")

#: ``methods: all`` in an experiment: every registered method the field takes (see :func:`all_methods`)
ALL = "all"
#: the parameter that leaves methods out of ``all`` (``exclude: [sliding-window]``); not a ``Params`` field
EXCLUDE = "exclude"
#: what ``all`` stands for in a method list (:attr:`Runner.method_lists`): the methods a teacher
#: converts to (``convertible``); those that cannot be converted, only trained from scratch (Mamba);
#: every registered method
CONVERTIBLE, SCRATCH_ONLY, REGISTERED = "convertible", "scratch-only", "registered"
#: the parameters the base runner treats as method lists (validated, counted in :meth:`Runner.methods`)
METHOD_FIELDS: tuple[str, ...] = ("methods", "from_scratch")


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
    #: the method trained and the teacher whose shape it has (for the memory plan)
    method: str = "softmax"
    teacher: str = ""


class Runner:
    """A kind of paper result (see the module docstring); subclasses register with :func:`register_runner`."""

    Params: ClassVar[type]
    #: the name experiment YAMLs use (``runner:``), set by :func:`register_runner`
    name: ClassVar[str] = ""
    #: the ``Params`` fields that may be ``all``, and which registered methods it stands for there
    #: (:data:`CONVERTIBLE`, :data:`SCRATCH_ONLY`, :data:`REGISTERED`); resolved by :func:`runner_params`
    method_lists: ClassVar[dict[str, str]] = {}

    def validate(self, exp: Experiment, params: Any) -> None:
        """Check ``params`` against the profile: every method registered, every teacher defined."""
        for m in getattr(params, "methods", []) + getattr(params, "from_scratch", []):
            _check_method(exp, m)
        if getattr(params, "method", None):
            _check_method(exp, params.method)
        for t in getattr(params, "teachers", []) + ([params.teacher] if getattr(params, "teacher", None) else []):
            exp.profile.teacher(t)

    def plan(self, exp: Experiment, params: Any) -> list[PlannedRun]:
        """The training runs the experiment needs (for ``--dry-run``)."""
        return []

    def run(self, exp: Experiment, params: Any, ctx: stages.Context) -> Output:
        """Produce the experiment's tables and figures (training what it needs on first use)."""
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
        (:mod:`harness.training.fingerprint`)."""
        module = type(self).__module__
        own = scoped_imports(module, type(self).__name__)
        return fingerprint([module, *own, *method_modules(self.methods(exp, params))], shallow=[module])


#: runner name (``runner:`` in an experiment YAML) -> the runner; filled by :func:`register_runner`
RUNNERS: dict[str, Runner] = {}

RunnerT = TypeVar("RunnerT", bound=Runner)


def register_runner(name: str) -> Callable[[type[RunnerT]], type[RunnerT]]:
    """Class decorator: register an instance of the runner class as ``name`` in :data:`RUNNERS` (one
    name, one class: a second class under a taken name is an error)."""

    def register(cls: type[RunnerT]) -> type[RunnerT]:
        old = RUNNERS.get(name)
        if old is not None and (type(old).__module__, type(old).__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"runner name {name!r} is taken by {type(old).__module__}.{type(old).__qualname__}")
        cls.name = name
        RUNNERS[name] = cls()
        return cls

    return register


def get_runner(exp: Experiment) -> Runner:
    """The runner of ``exp``; an unknown runner name is a :class:`SpecError`."""
    if exp.runner not in RUNNERS:
        where = exp.path if exp.path is not None else f"experiment {exp.name!r}"
        raise SpecError(f"{where}: unknown runner {exp.runner!r}; known: {sorted(RUNNERS)}.")
    return RUNNERS[exp.runner]


def all_methods(which: str) -> list[str]:
    """The registered methods ``all`` stands for (:attr:`Runner.method_lists`), in the registry's order:
    the convertible ones (``convertible``: a teacher's attention can be replaced by them), the ones
    that can only be trained from scratch (``scratch-only``, e.g. Mamba) or every one (``registered``)."""
    if which == REGISTERED:
        return list_methods()
    if which in (CONVERTIBLE, SCRATCH_ONLY):
        return [m for m in list_methods() if bool(capabilities(m)["convertible"]) == (which == CONVERTIBLE)]
    raise ValueError(f"'all' cannot stand for {which!r}; choose {CONVERTIBLE}, {SCRATCH_ONLY} or {REGISTERED}")


def runner_params(exp: Experiment) -> Any:
    """The typed parameters of ``exp``'s runner (its ``Params``): an unknown key is a
    :class:`SpecError`, and ``all`` in a method list is resolved to the registered methods it stands
    for (:func:`all_methods`) less those under ``exclude`` — so a new method module is in every
    experiment that says ``all``, with no edit of the YAML."""
    runner = get_runner(exp)
    raw = dict(exp.params)
    exclude = raw.pop(EXCLUDE, []) if runner.method_lists else []
    known = {f.name for f in dataclasses.fields(runner.Params)}
    unknown = sorted(set(raw) - known)
    if unknown:
        extra = {EXCLUDE} if runner.method_lists else set()
        raise SpecError(
            f"experiment {exp.name!r}: unknown parameter(s) {unknown} for runner {exp.runner!r}; "
            f"known: {sorted(known | extra)}."
        )
    if not isinstance(exclude, list) or not all(isinstance(m, str) for m in exclude):
        raise SpecError(f"experiment {exp.name!r}: {EXCLUDE} must be a list of method names, not {exclude!r}.")
    for m in exclude:
        _check_method(exp, m)
    for key in METHOD_FIELDS:
        if raw.get(key) != ALL:
            continue
        if key not in runner.method_lists:
            raise SpecError(
                f"experiment {exp.name!r}: runner {exp.runner!r} takes an explicit list in {key!r}, not {ALL!r}."
            )
        raw[key] = [m for m in all_methods(runner.method_lists[key]) if m not in exclude]
    try:
        return runner.Params(**raw)
    except TypeError as err:
        raise SpecError(f"experiment {exp.name!r}: {err}") from None


def load_experiment(name: str, profile: str | Profile, directory: Path | None = None) -> Experiment:
    """Experiment ``name`` at ``profile``, validated: its YAML (:func:`harness.pipeline.spec.read_experiment`),
    its runner, the runner's parameters (:func:`runner_params`), teachers and methods (:meth:`Runner.validate`)."""
    exp = read_experiment(name, profile, directory)
    get_runner(exp).validate(exp, runner_params(exp))
    return exp


def _check_method(exp: Experiment, method: str) -> None:
    """An unregistered ``method`` is a :class:`SpecError` naming the registered ones."""
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

    from harness.conversion.factory import load_model
    from harness.data.corpus import load_corpus
    from harness.evaluation.models import default_tokenizer

    tok = default_tokenizer(load_model(model_path), model_path)
    rows = []
    for doc in load_corpus(ctx.profile.data).documents(split):
        ids = tok(doc.text, add_special_tokens=False)["input_ids"]
        if len(ids) >= n_tokens:
            rows.append(ids[:n_tokens])
            if len(rows) == count:
                return torch.tensor(rows)
    raise SpecError(f"fewer than {count} {split} documents have {n_tokens} tokens; lower 'tokens'.")
