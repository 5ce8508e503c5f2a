"""The control of the scoring context: another experiment's models scored on the whole held-out split
with a context longer than the one they were trained on.

Every model of the suite is trained and scored on the profile's ``block_size`` tokens (128 for the
CPU profiles; :func:`harness.pipeline.stages.evaluate_model`). A hybrid whose softmax window covers half
of that context can owe its score to the window alone: what a linear method beyond the window adds
is recall from further back, which a 128-token score cannot show. ``long_context`` re-runs the
experiment named by ``of`` as :mod:`harness.pipeline.runners.whole_split` does (every run reused by its
key, nothing trained, every model scored on the whole split) with the scoring window raised to
``max_length`` tokens.

What it measures is length extrapolation as much as long-range recall: a model meets distances it
was never trained on. Softmax attention over the last ``W`` tokens (``sliding-window``, and the window
of ``window-linear``) never sees a distance beyond ``W - 1`` and so extrapolates by construction; the
teacher's full softmax does not (its rotary positions past the training length), nor, necessarily,
a linear method's features of them. So the comparison it is built for is a window + linear hybrid
against its window-only control: the same window, with or without the linear part beyond it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from harness.pipeline import stages
from harness.pipeline.runners.base import Output, register_runner
from harness.pipeline.runners.whole_split import WholeSplitParams, WholeSplitRunner
from harness.pipeline.spec import Experiment, SpecError

#: what is scored: held-out bits per byte only (the question is text beyond the window; the accuracy
#: tasks' prompts are short, and they cost most of a model's scoring time)
TASKS: tuple[str, ...] = ("heldout_ppl",)


@dataclass
class LongContextParams(WholeSplitParams):
    #: the scoring window, in tokens (longer than the profile's ``block_size``, the training length)
    max_length: int = 512


@register_runner("long_context")
class LongContextRunner(WholeSplitRunner):
    """Experiment ``of`` again, every model scored on the whole held-out split at ``max_length`` tokens."""

    Params = LongContextParams

    def validate(self, exp: Experiment, p: LongContextParams) -> None:
        if p.max_length <= exp.profile.block_size:
            raise SpecError(
                f"experiment {exp.name!r}: max_length {p.max_length} is not longer than the "
                f"{exp.profile.block_size} tokens the models are trained on; raise it."
            )
        super().validate(exp, p)

    def run(self, exp: Experiment, p: LongContextParams, ctx: stages.Context) -> Output:
        ev = {**ctx.profile.eval, "max_length": p.max_length, "tasks": list(TASKS)}
        longer = dataclasses.replace(ctx, profile=dataclasses.replace(ctx.profile, eval=ev))
        out = super().run(exp, p, longer)
        out.notes.insert(
            0,
            f"Held-out bits per byte only, scored with a context of up to {p.max_length} tokens; every model "
            f"was trained on {ctx.profile.block_size}-token blocks (and `{p.of}` scored them at that length).",
        )
        return out
