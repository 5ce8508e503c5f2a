"""One module per kind of paper result, each registering its runner (:mod:`harness.pipeline.runners.base`).

Importing this package imports every module in it, so a new runner module (``@register_runner("name")``
on a :class:`~harness.pipeline.runners.base.Runner` subclass) is in :data:`RUNNERS` with no other
edit. Runner modules import what they share from :mod:`harness.pipeline.runners.base`, never from
this package: a runner's code fingerprint is its own module and what that imports, not its siblings.

Outputs go to ``<results dir>/<profile>/<experiment>/`` (``runs/<profile>/...`` by default):
``results.csv`` (tidy rows), ``table.md``, and figures as PNG and PDF. Every number comes from a run
of :mod:`harness.pipeline.stages`.
"""

from __future__ import annotations

import importlib
import pkgutil

from harness.pipeline.runners.base import (
    ALL,
    RUNNERS,
    Output,
    PlannedRun,
    Runner,
    get_runner,
    load_experiment,
    register_runner,
    runner_params,
)

for _module in pkgutil.iter_modules(__path__, f"{__name__}."):
    importlib.import_module(_module.name)

__all__ = [
    "ALL",
    "RUNNERS",
    "Output",
    "PlannedRun",
    "Runner",
    "get_runner",
    "load_experiment",
    "register_runner",
    "runner_params",
]
