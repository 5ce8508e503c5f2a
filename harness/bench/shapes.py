"""Model shapes the benchmark sweeps: layer-level shapes of the paper's models and whole tiny models.

A *layer* shape is one decoder block (norms, token mixer, MLP) of a published model, with random
weights — no checkpoint is downloaded — fed random hidden states. A *model* shape is a whole
:class:`~harness.core.modeling.MixerLMForCausalLM` (embedding, every block, head) fed token ids, measured
end to end. Dimensions are those of the public Hugging Face configs: Pythia (Biderman et al. 2023,
``EleutherAI/pythia-*``, GPT-NeoX layout, rotary on 25% of each head, max 2048 positions) and
LLaMA2-7B (Touvron et al. 2023, ``meta-llama/Llama-2-7b-hf``, max 4096 positions).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

KINDS: tuple[str, ...] = ("layer", "model")


class UnknownShapeError(KeyError):
    """A shape name that is not defined here."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Shape:
    """A benchmark shape: ``config`` holds :class:`~harness.core.modeling.MixerLMConfig` keyword arguments
    (without ``mixer``); ``native_max_len`` is the source model's trained context length."""

    name: str
    kind: str
    config: dict[str, Any] = field(default_factory=dict)
    native_max_len: int = 2048
    source: str = ""

    def key(self) -> str:
        """A short hash of everything that defines the shape (part of a result's settings key)."""
        blob = json.dumps({"kind": self.kind, "config": self.config}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]


def _pythia(hidden: int, heads: int, layers: int) -> dict[str, Any]:
    return dict(
        hidden_size=hidden,
        num_attention_heads=heads,
        num_hidden_layers=layers,
        intermediate_size=4 * hidden,
        layout="neox",
        partial_rotary_factor=0.25,
        vocab_size=50304,
    )


_PYTHIA = {  # name: (hidden, heads, layers) from EleutherAI/pythia-* config.json
    "pythia-70m": (512, 8, 6),
    "pythia-160m": (768, 12, 12),
    "pythia-410m": (1024, 16, 24),
    "pythia-1b": (2048, 8, 16),
    "pythia-2.8b": (2560, 32, 32),
}

_LLAMA2_7B = dict(
    hidden_size=4096,
    num_attention_heads=32,
    num_key_value_heads=32,
    num_hidden_layers=32,
    intermediate_size=11008,
    layout="llama",
    vocab_size=32000,
    norm_eps=1e-5,
)


def _layer(cfg: dict[str, Any]) -> dict[str, Any]:
    """One block of ``cfg``: a single layer, and a token embedding it never uses (inputs are hidden
    states), kept minuscule."""
    return {**cfg, "num_hidden_layers": 1, "vocab_size": 8}


def _build_shapes() -> dict[str, Shape]:
    shapes: dict[str, Shape] = {}
    for name, (hidden, heads, layers) in _PYTHIA.items():
        full = _pythia(hidden, heads, layers)
        src = f"EleutherAI/{name} config (one of {layers} blocks)"
        shapes[name] = Shape(name, "layer", _layer(full), 2048, src)
        shapes[f"{name}-model"] = Shape(f"{name}-model", "model", full, 2048, f"EleutherAI/{name} config, whole model")
    shapes["llama2-7b"] = Shape(
        "llama2-7b", "layer", _layer(_LLAMA2_7B), 4096, "meta-llama/Llama-2-7b-hf (one of 32 blocks)"
    )
    shapes["llama2-7b-model"] = Shape(
        "llama2-7b-model", "model", _LLAMA2_7B, 4096, "meta-llama/Llama-2-7b-hf, whole model"
    )
    # whole tiny byte-level models, the scale of the suite's CPU profile (issue 7: ~1-5M parameters)
    shapes["tiny"] = Shape(
        "tiny",
        "model",
        dict(hidden_size=128, num_attention_heads=4, num_hidden_layers=2, intermediate_size=512, vocab_size=256),
        2048,
        "byte-level GPT-NeoX layout, 2 x 128 (about 0.5M parameters)",
    )
    shapes["tiny-llama"] = Shape(
        "tiny-llama",
        "model",
        dict(
            hidden_size=128,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_hidden_layers=2,
            intermediate_size=352,
            layout="llama",
            vocab_size=256,
        ),
        2048,
        "byte-level LLaMA layout with grouped-query attention, 2 x 128",
    )
    return shapes


SHAPES: dict[str, Shape] = _build_shapes()


def get_shape(name: str) -> Shape:
    """The shape called ``name``; a clear error lists the known names."""
    try:
        return SHAPES[name]
    except KeyError:
        raise UnknownShapeError(f"unknown shape {name!r}; known shapes: {', '.join(SHAPES)}") from None
