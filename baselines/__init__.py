"""Compared methods, one module each; importing the package registers them all."""

from baselines import softmax  # noqa: F401
