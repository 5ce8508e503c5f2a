"""The architecture contract: a method that is a whole language model, not a token mixer.

Most methods replace attention inside the suite's decoder (:class:`harness.core.mixer.TokenMixer`). A few
are architectures of their own — Mamba (Gu & Dao 2023) is a stack of selective-SSM blocks with no
attention and no MLP — and are compared as language models of matching size trained from scratch.
They register with :func:`harness.core.registry.register_architecture` under a subclass of
:class:`Architecture`, which declares the same capabilities as a mixer (so the registry, the
tables and ``python -m harness methods`` treat every method alike) and implements two class methods:

* :meth:`Architecture.build` — a freshly initialised ``transformers`` causal LM sized after a
  reference config (the teacher's), either to the same parameter count or to the same depth;
* :meth:`Architecture.state_size` — the numbers it caches per sequence for decoding.

Nothing else is looked up: :func:`harness.conversion.factory.build_model` and
:func:`harness.conversion.factory.decode_state_size` call these for every architecture.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from transformers import PretrainedConfig, PreTrainedModel

#: how an architecture is sized after its reference config (see :meth:`Architecture.build`)
MATCHES: tuple[str, ...] = ("params", "layers")


class UnsupportedMethodError(RuntimeError):
    """A method that cannot build a model for the requested spec (e.g. an architecture asked for a
    shape it has no form of)."""


class Architecture(ABC):
    """Base class of every whole-architecture method. Subclasses set the class attributes and
    implement :meth:`build` and :meth:`state_size`; they are never instantiated."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "model"
    forms: ClassVar[tuple[str, ...]] = ("recurrent",)
    default_form: ClassVar[str] = "recurrent"
    uses_rotary: ClassVar[bool] = False
    convertible: ClassVar[bool] = False  # no Q/K/V/O to inherit: trained from scratch
    supports_left_padding: ClassVar[bool] = True
    paper: ClassVar[str] = ""
    #: ``model_type`` of the transformers models :meth:`build` returns (maps a loaded model back to its method)
    model_type: ClassVar[str] = ""

    @classmethod
    @abstractmethod
    def build(cls, reference: PretrainedConfig, *, match: str = "params", **options: Any) -> PreTrainedModel:
        """A freshly initialised causal LM sized after ``reference`` (a decoder config with
        ``hidden_size``, ``vocab_size`` and ``num_hidden_layers``): ``match="params"`` keeps its width
        and vocabulary and chooses the depth whose parameter count is closest to the reference
        model's; ``match="layers"`` keeps width, vocabulary and depth. ``options`` are the method's
        own settings (unknown ones are an error)."""

    @classmethod
    @abstractmethod
    def state_size(cls, config: PretrainedConfig, seq_len: int) -> int:
        """Numbers cached per sequence for decoding after ``seq_len`` tokens (all layers), for a
        model of ``config`` (as :meth:`build` returned it)."""
