"""Experiment pipeline: definitions, shared stages, runners, the reproduce command."""
