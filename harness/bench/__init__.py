"""Benchmarks: throughput and memory against sequence length for every registered method
(``python -m harness bench``, whose command is :mod:`harness.bench.cli`; see ``harness/bench/README.md``).

Nothing is imported here: the hybrids' decode timing uses :mod:`harness.bench.workloads` and
:mod:`harness.bench.synthetic_cache`, and importing the command line from this file would put it, its
sweep and its summary in those experiments' code fingerprints (editing the command would mark them stale)."""
