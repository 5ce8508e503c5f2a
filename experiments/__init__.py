"""Experiment definitions (one file per paper result)."""
