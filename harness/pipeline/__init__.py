"""Experiment pipeline: definitions (``spec``), shared stages, runners (one module each, ``runners/``), the
reproduce and teachers libraries (their command lines are in :mod:`harness.cli`)."""
