"""Compared methods, one module each; importing the package registers them all."""

from baselines import (
    cosformer,  # noqa: F401
    linformer,  # noqa: F401
    mamba,  # noqa: F401
    performer,  # noqa: F401
    retnet,  # noqa: F401
    softmax,  # noqa: F401
)
