"""Long-range copying: how much does a model gain from a span it saw ``d`` tokens earlier?

A sliding softmax window of ``W`` tokens cannot look further back than ``W - 1`` tokens in one layer;
what a linear method beyond the window (LoLCATs' window + linear mixer, Zhang et al. 2024, Sec. 3.2)
can add is recall from further back. Held-out bits per byte barely ask for it: most of the loss of
natural text is predicted from the last few dozen bytes. This probe asks for it directly, on real
held-out text and within the length the models were trained on (so nothing extrapolates):

* **copy**: ``A F A``: a span ``A`` of ``span`` tokens, the text that followed it (``F``), then ``A``
  again, its second copy starting ``d`` tokens after the first;
* **control**: ``B F A``: the same, with the first ``A`` replaced by another span ``B`` of the split.

The two sequences differ only in their first ``span`` tokens, so the same tokens of the second ``A``
are predicted from the same nearby context, with or without the earlier copy. The **copy gain** is
the control's loss minus the copy's, in bits per token, averaged over the second ``A``'s tokens after
its first (what no model can copy before it has seen where the repeat starts). A model that copies
from ``d`` tokens back gains; one that cannot see that far gains nothing. The examples are the same
for every model (drawn from a seeded generator), so two models can be compared example by example.

Stacked windows see further than one: ``L`` layers of window ``W`` reach ``L (W - 1)`` tokens back,
so a window-only model's gain beyond ``W`` is measured, not assumed to be zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


class CopyProbeError(ValueError):
    """A probe setting that cannot be built (distances, span, text too short)."""


@dataclass(frozen=True)
class CopyProbeConfig:
    """The probe's setting.

    ``distances``: tokens from the start of the first copy of ``A`` to the start of the second (each
    at least ``span``, so the copies do not overlap); ``span``: tokens per copied span; ``examples``:
    examples per distance (each one a copy and a control sequence); ``seed``: the examples' draw."""

    distances: tuple[int, ...] = (16, 32, 48, 80, 96, 112)
    span: int = 16
    examples: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if self.span < 2:
            raise CopyProbeError(f"span {self.span}: a copied span needs at least 2 tokens.")
        if self.examples < 2:
            raise CopyProbeError(f"examples {self.examples}: a standard error needs at least 2 examples.")
        if not self.distances:
            raise CopyProbeError("distances is empty; give at least one, e.g. [32, 96].")
        short = [d for d in self.distances if d < self.span]
        if short:
            raise CopyProbeError(
                f"distances {short} are shorter than the span ({self.span}): the copies would overlap."
            )

    @property
    def length(self) -> int:
        """The longest probe sequence, in tokens (the model must be scored on at least this many)."""
        return max(self.distances) + self.span


@dataclass(frozen=True)
class ProbeBatch:
    """The sequences of one distance: ``copy[i]`` and ``control[i]`` are example ``i``'s two sequences
    (``(examples, distance + span)`` token ids), identical but for their first ``span`` tokens."""

    distance: int
    copy: torch.Tensor
    control: torch.Tensor


def _stretches(docs: Sequence[Sequence[int]], n: int, count: int, rng: np.random.Generator) -> list[list[int]]:
    """``count`` stretches of ``n`` consecutive tokens, each from a document drawn with probability
    proportional to the stretches it holds, at a uniformly drawn offset."""
    usable = [d for d in docs if len(d) >= n]
    if not usable:
        raise CopyProbeError(
            f"no document of the split has the {n} tokens a probe sequence needs; lower the distances."
        )
    weights = np.array([len(d) - n + 1 for d in usable], dtype=float)
    picks = rng.choice(len(usable), size=count, p=weights / weights.sum())
    return [list(usable[i][(o := int(rng.integers(len(usable[i]) - n + 1))) : o + n]) for i in picks]


def probe_batches(docs: Sequence[Sequence[int]], config: CopyProbeConfig) -> list[ProbeBatch]:
    """The probe's sequences, one batch per distance, from tokenized documents ``docs``.

    Example ``i`` is one stretch ``S`` of the text (``max(distances)`` tokens) and one other span ``B``
    (``span`` tokens from elsewhere), shared by every distance: at distance ``d`` the copy is
    ``S[:d] + S[:span]`` and the control ``B + S[span:d] + S[:span]``."""
    rng = np.random.default_rng(config.seed)
    stretches = _stretches(docs, max(config.distances), config.examples, rng)
    others = _stretches(docs, config.span, config.examples, rng)
    batches = []
    for d in config.distances:
        copy = [s[:d] + s[: config.span] for s in stretches]
        control = [b + s[config.span : d] + s[: config.span] for s, b in zip(stretches, others, strict=True)]
        batches.append(ProbeBatch(d, torch.tensor(copy), torch.tensor(control)))
    return batches


@torch.no_grad()
def repeat_bits(model: Any, ids: torch.Tensor, span: int, batch_size: int = 64) -> torch.Tensor:
    """Per sequence, the model's mean loss in bits per token on the last ``span - 1`` tokens (the
    second copy of the span after its first token), each predicted from every token before it."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(ids), batch_size):
        x = ids[i : i + batch_size].to(device)
        logits = model(input_ids=x).logits[:, -span:-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, -span + 1 :], reduction="none")
        out.append(nll.mean(dim=1).cpu() / math.log(2))
    return torch.cat(out)


def copy_gains(model: Any, batches: Sequence[ProbeBatch], span: int, batch_size: int = 64) -> list[dict[str, Any]]:
    """One row per distance: the copy and control losses (bits per token, mean over examples), the copy
    gain (control minus copy) with its standard error over examples, and the per-example gains
    (``items``, for tests between models on the same examples)."""
    rows = []
    for b in batches:
        copy = repeat_bits(model, b.copy, span, batch_size)
        control = repeat_bits(model, b.control, span, batch_size)
        gain = (control - copy).double()
        rows.append(
            {
                "distance": b.distance,
                "bits_copy": float(copy.mean()),
                "bits_control": float(control.mean()),
                "gain": float(gain.mean()),
                "gain_se": float(gain.std(unbiased=True) / math.sqrt(len(gain))),
                "n": len(gain),
                "items": [round(float(g), 6) for g in gain],
            }
        )
    return rows


def encode_gains(gains: Sequence[float]) -> str:
    """Per-example gains as one table cell: space-separated, 4 decimals (:func:`decode_gains`)."""
    return " ".join(f"{g:.4f}" for g in gains)


def decode_gains(cell: str) -> np.ndarray:
    """The per-example gains of a cell :func:`encode_gains` wrote."""
    return np.array([float(g) for g in str(cell).split()])


__all__ = [
    "CopyProbeConfig",
    "CopyProbeError",
    "ProbeBatch",
    "copy_gains",
    "decode_gains",
    "encode_gains",
    "probe_batches",
    "repeat_bits",
]
