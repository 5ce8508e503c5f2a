"""The control of the held-out metric's sample: another experiment's models scored on the whole split.

A profile scores held-out bits per byte on a sample of the test split (``eval.data``'s
``ppl_max_docs`` documents, the first ``ppl_max_chars`` characters of each), which keeps scoring
cheap across hundreds of runs. The openings of the first few documents are not the split: in a
corpus of source files they are licence headers, docstrings and imports, and documents in name order
bunch by package (generated codec modules, say), text that can be far easier or harder to predict
than the rest. A comparison read off the sample means something about the held-out text only if it
holds on the whole split; the report sets the two side by side.

``whole_split`` re-runs the experiment named by ``of`` (at the same profile, with its own
parameters and runner) with the cap on the perplexity documents lifted: every run is reused by its
key from the profile's run folder (nothing is trained that ``of`` did not train) and every model is
scored again, on every document of the split, whole (or, where a profile cannot afford that, the
smoke profile, on a larger sample: ``ppl_max_docs``, ``ppl_max_chars``). Its tables have ``of``'s
columns, so the report sets the two side by side (:func:`harness.report.controls.whole_split_lines`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

from harness.data.corpus import load_corpus
from harness.evaluation.lm_eval_tasks.data import OfflineDataSpec, heldout_rows
from harness.pipeline import stages
from harness.pipeline.runners.base import Output, PlannedRun, Runner, get_runner, register_runner, runner_params
from harness.pipeline.spec import Experiment, Profile, SpecError, read_experiment
from harness.training.fingerprint import Fingerprint


@dataclass
class WholeSplitParams:
    #: the experiment (defined for the same profile) whose models are scored on the whole split
    of: str
    #: caps on the documents scored (None: none, the whole split); only for a profile too small to
    #: afford the whole split (smoke), which then checks the mechanics on a larger sample
    ppl_max_docs: int | None = None
    ppl_max_chars: int | None = None


@register_runner("whole_split")
class WholeSplitRunner(Runner):
    """Experiment ``of`` again, every model scored on the whole held-out split."""

    Params = WholeSplitParams

    def validate(self, exp: Experiment, p: WholeSplitParams) -> None:
        inner = self._inner(exp, p)
        if inner.runner == self.name:
            raise SpecError(f"experiment {exp.name!r}: 'of' must name an experiment of another runner, not {p.of!r}.")
        get_runner(inner).validate(inner, runner_params(inner))

    def plan(self, exp: Experiment, p: WholeSplitParams) -> list[PlannedRun]:
        inner = self._inner(exp, p)
        return get_runner(inner).plan(inner, runner_params(inner))

    def methods(self, exp: Experiment, p: WholeSplitParams) -> list[str]:
        inner = self._inner(exp, p)
        return get_runner(inner).methods(inner, runner_params(inner))

    def run(self, exp: Experiment, p: WholeSplitParams, ctx: stages.Context) -> Output:
        inner = self._inner(exp, p)
        whole = whole_split_profile(ctx.profile, p.ppl_max_docs, p.ppl_max_chars)
        out = get_runner(inner).run(
            dataclasses.replace(inner, profile=whole), runner_params(inner), dataclasses.replace(ctx, profile=whole)
        )
        out.notes.insert(
            0,
            f"The models of `{p.of}` (its runs, reused by their key), every held-out score on "
            f"{sample_description(whole)} ({sample_size(whole)}) instead of the profile's sample "
            f"({sample_description(ctx.profile)}: {sample_size(ctx.profile)}).",
        )
        out.notes.insert(
            1, "The profile's sample, in order: " + ", ".join(r["source"] for r in sample_rows(ctx.profile)) + "."
        )
        return out

    def code_fingerprint(self, exp: Experiment, p: WholeSplitParams) -> Fingerprint:
        """This module's code, ``of``'s runner's code and ``of``'s definition: the results are stale
        when any of them changes."""
        inner = self._inner(exp, p)
        own = super().code_fingerprint(exp, p)
        theirs = get_runner(inner).code_fingerprint(inner, runner_params(inner))
        definition = stages.config_key([p.of, inner.runner, inner.params])
        files = {**own.files, **theirs.files, f"experiments/{p.of}.yaml (definition)": definition}
        # the digest as harness.training.fingerprint.fingerprint makes it (that module is in every
        # experiment's fingerprint, so it is not edited to share this line)
        digest = hashlib.sha256("".join(f"{k}\0{v}\n" for k, v in sorted(files.items())).encode()).hexdigest()
        return Fingerprint(digest[: len(own.digest)], files)

    @staticmethod
    def _inner(exp: Experiment, p: WholeSplitParams) -> Experiment:
        """``of`` at ``exp``'s profile, written into ``exp``'s folder (its figures carry ``exp``'s name)."""
        if p.of == exp.name:
            raise SpecError(f"experiment {exp.name!r}: 'of' names the experiment itself.")
        inner = read_experiment(p.of, exp.profile, exp.path.parent if exp.path is not None else None)
        return dataclasses.replace(inner, name=exp.name)


def whole_split_profile(profile: Profile, max_docs: int | None = None, max_chars: int | None = None) -> Profile:
    """``profile`` with its held-out perplexity documents uncapped (every document, whole), or capped at
    ``max_docs`` documents of ``max_chars`` characters."""
    ev = dict(profile.eval)
    ev["data"] = {**(ev.get("data") or {}), "ppl_max_docs": max_docs, "ppl_max_chars": max_chars}
    return dataclasses.replace(profile, eval=ev)


def sample_description(profile: Profile) -> str:
    """The profile's held-out sample in words, e.g. ``the first 4000 characters of the first 16 documents
    of the test split``."""
    data = profile.eval.get("data") or {}
    docs, chars = data.get("ppl_max_docs"), data.get("ppl_max_chars")
    if docs is None and chars is None:
        return "the whole test split"
    return (
        f"{'the first ' + str(chars) + ' characters' if chars is not None else 'all'} of "
        f"{'the first ' + str(docs) + ' documents' if docs is not None else 'every document'} of the test split"
    )


def sample_rows(profile: Profile) -> list[dict]:
    """The held-out perplexity task's documents at ``profile`` (``source``: the document's name; ``text``)."""
    spec = OfflineDataSpec(**(profile.eval.get("data") or {}))
    return heldout_rows([(d.name, d.text) for d in load_corpus(profile.data).documents(spec.split)], spec)


def sample_size(profile: Profile) -> str:
    """How much text the profile's held-out perplexity task scores: ``N documents, B bytes``."""
    rows = sample_rows(profile)
    return f"{len(rows)} documents, {sum(len(r['text'].encode('utf-8')) for r in rows):,} bytes"
