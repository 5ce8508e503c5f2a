"""The error every part of an evaluation raises for input it cannot use; :mod:`harness.cli` prints
its message (which names the fix) in one line."""

from __future__ import annotations


class EvalInputError(ValueError):
    """Bad input to an evaluation (unknown task, missing model, unreachable data set, ...)."""
