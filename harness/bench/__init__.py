"""Benchmarks: throughput and memory against sequence length for every registered method
(``python -m harness bench``; see ``harness/bench/README.md``)."""

from harness.bench.cli import add_arguments, main

__all__ = ["add_arguments", "main"]
