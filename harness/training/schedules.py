"""The learning-rate schedule of every training loop in the suite (conversion fine-tuning,
pretraining, from-scratch training in :mod:`harness.training.loop`; the MQAR runs of :mod:`analyses.mqar`).

Linear warm-up then cosine decay (Loshchilov & Hutter 2017, SGDR, Eq. 5, one cycle without
restarts), the schedule of GPT-3/Pythia/LLaMA training and of the DiJiang fine-tuning:

    lr(s) = peak (s + 1) / W                                          for s < W
    lr(s) = floor + (peak - floor) (1 + cos(pi min(1, (s - W) / S))) / 2   after

with ``W`` warm-up steps and ``S`` decay steps (the decay reaches ``floor`` at step ``W + S``).
"""

from __future__ import annotations

import math


def warmup_cosine(
    step: int,
    *,
    peak: float,
    warmup_steps: int,
    decay_steps: int,
    floor: float = 0.0,
    constant: bool = False,
) -> float:
    """Learning rate of optimizer step ``step`` (0-based); ``constant`` keeps ``peak`` after warm-up."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if constant:
        return peak
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))
