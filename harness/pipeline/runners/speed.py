"""Figure 4: throughput and memory against sequence length (the benchmark sweep, :mod:`harness.bench`),
into the experiment's folder; resumable."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from harness.pipeline import stages
from harness.pipeline.runners.base import REGISTERED, Output, Runner, register_runner
from harness.pipeline.spec import Experiment, SpecError


@dataclass
class SpeedParams:
    shapes: list[str]
    lengths: list[int]
    #: registered methods, or ``all`` (every registered method, less ``exclude``)
    methods: list[str]
    phases: list[str] = field(default_factory=lambda: ["prefill", "decode", "train"])
    extra_args: list[str] = field(default_factory=list)  # passed to `python -m harness bench`


@register_runner("speed")
class SpeedRunner(Runner):
    """The benchmark sweep (:mod:`harness.bench`) into this experiment's folder; resumable."""

    Params = SpeedParams
    method_lists = {"methods": REGISTERED}

    def validate(self, exp: Experiment, p: SpeedParams) -> None:
        from harness.bench.shapes import UnknownShapeError, get_shape

        super().validate(exp, p)
        if not p.methods:
            raise SpecError(f"experiment {exp.name!r}: methods names no method; list some, or say 'all'.")
        for s in p.shapes:
            try:
                get_shape(s)
            except UnknownShapeError as err:
                raise SpecError(f"experiment {exp.name!r}: {err}") from None

    def run(self, exp: Experiment, p: SpeedParams, ctx: stages.Context) -> Output:
        """``python -m harness bench`` in this process. It goes through the command line's options: the
        sweep, its summary and its plots are written by :func:`harness.bench.cli.main` (no library
        function does all three), and ``extra_args`` are that command's options."""
        import argparse

        from harness.bench.cli import add_arguments
        from harness.bench.cli import main as bench

        out = ctx.root / exp.name
        args = [
            "--no-supervise",
            "--shapes",
            ",".join(p.shapes),
            "--lengths",
            ",".join(map(str, p.lengths)),
            "--phases",
            ",".join(p.phases),
            "--out",
            str(out),
            "--name",
            "bench",
            "--methods",
            ",".join(p.methods),
            *p.extra_args,
        ]
        if ctx.fresh:  # the earlier sweep's points are stale: bench keeps them as a backup
            args.append("--fresh")
        parser = argparse.ArgumentParser(prog="python -m harness bench")
        add_arguments(parser)
        if bench(parser.parse_args(args)) != 0:
            raise RuntimeError(f"benchmark sweep failed: python -m harness bench {' '.join(args)}")
        rows = stages.read_json(out / "bench.json")
        rows = rows.get("rows", rows) if isinstance(rows, dict) else rows
        frame = pd.DataFrame(rows)
        figures = sorted(out.glob("bench*.png")) + sorted(out.glob("bench*.pdf"))
        notes = [f"Benchmark summary: `{exp.name}/bench.md` (log-log slopes, crossovers, skipped points)."]
        return Output(tables={"results": frame}, figures=figures, notes=notes)
