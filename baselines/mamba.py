"""Mamba (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces").

**Not an attention replacement.** Mamba is a whole architecture (a stack of RMSNorm + selective
SSM blocks, Section 3.4 / Fig. 3, no MLPs), trained from scratch; it has no Q/K/V/O to inherit, so
it is *not convertible*. The suite compares it as a language model of matching parameter count
trained on the teacher's tokens, built with ``transformers``' ``MambaForCausalLM``:

* on CPU, transformers runs its PyTorch reference path (a sequential selective scan, Alg. 2);
* on a GPU with the optional ``mamba-ssm`` and ``causal-conv1d`` packages installed, transformers
  picks up their fused CUDA kernels by itself. This module never imports those packages (nor
  transformers' Mamba modules) at import time.

**Design: an architecture, not a token mixer** (:class:`harness.core.architecture.Architecture`, registered
with ``register_architecture``). Inside our decoder blocks (each with an attention-style MLP) it
would be a hybrid that is neither the published Mamba nor what the paper's table lists, and
transformers' ``MambaMixer`` cannot continue a multi-token chunk from a saved state (its
full-sequence scan starts from zero), which our mixer contract requires. So ``mamba`` appears in
the registry (``python -m harness methods``, every table) with its capabilities —
``kind="model"``, ``convertible=False``, ``forms=("recurrent",)`` (a scan with a constant state;
there is no quadratic form) — and the model-level contract (causality, generation = forward,
save/load, finite gradients, a training step) is tested in ``tests/test_baselines.py``.

Building the model for a teacher goes through the suite's one factory, like every method::

    from harness.conversion.factory import ModelSpec, build_model
    model = build_model(ModelSpec("mamba", teacher="path/to/pythia-410m"))   # sized after a checkpoint
    model = build_model(ModelSpec("mamba", config=teacher_config))           # or a config
    model = build_model(ModelSpec("mamba", config=cfg, options={"num_hidden_layers": 3}))

:func:`build_mamba_lm` keeps the teacher's width and vocabulary, uses Mamba's published block settings
(expand 2, state size 16, conv width 4, dt rank ceil(d/16), tied embeddings, as the released
Mamba models) and chooses the number of layers so that the total parameter count is closest to the
teacher's (or to ``param_budget``) — the Mamba paper's own matching (it sets Mamba-370M, 48 layers
at d=1024, against Pythia-410M). For Pythia-410M (405.3M parameters, untied embeddings) this gives
53 layers at d=1024 (404.9M). The result works with ``generate``, ``save_pretrained`` /
``AutoModelForCausalLM.from_pretrained`` and lm-eval's HF wrapper like any HF model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig

from harness.core.architecture import Architecture
from harness.core.mixer import MixerConfigError
from harness.core.registry import register_architecture

if TYPE_CHECKING:  # imported lazily: transformers' Mamba module looks for mamba-ssm when imported
    from transformers import MambaConfig, MambaForCausalLM

#: Mamba block settings of the released models (state-spaces/mamba-*), transformers' defaults, plus
#: ``use_mambapy``: without mamba-ssm's CUDA kernels (on CPU), transformers scans a full sequence with
#: mamba.py's parallel scan (the ``mambapy`` package) instead of a Python loop over positions: the
#: same outputs (to ~1e-6), ~11x faster training steps on CPU. With the CUDA kernels it is ignored.
MAMBA_DEFAULTS: dict[str, Any] = dict(
    state_size=16, expand=2, conv_kernel=4, use_bias=False, use_conv_bias=True, use_mambapy=True
)


def count_parameters(config: PretrainedConfig) -> int:
    """Parameters of ``AutoModelForCausalLM.from_config(config)``, counted on the meta device (no
    memory, no initialisation; tied weights counted once)."""
    import harness  # noqa: F401  registers mixer_lm with the Auto classes

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def mamba_config(hidden_size: int, vocab_size: int, num_hidden_layers: int, **overrides: Any) -> MambaConfig:
    """A :class:`transformers.MambaConfig` with the published block settings (``MAMBA_DEFAULTS``)."""
    from transformers import MambaConfig

    kwargs = {**MAMBA_DEFAULTS, "tie_word_embeddings": True, **overrides}
    return MambaConfig(hidden_size=hidden_size, vocab_size=vocab_size, num_hidden_layers=num_hidden_layers, **kwargs)


def match_layers(hidden_size: int, vocab_size: int, param_budget: int, **overrides: Any) -> int:
    """The number of Mamba layers whose total parameter count is closest to ``param_budget`` (>= 1)."""
    p1 = count_parameters(mamba_config(hidden_size, vocab_size, 1, **overrides))
    p2 = count_parameters(mamba_config(hidden_size, vocab_size, 2, **overrides))
    per_layer, base = p2 - p1, 2 * p1 - p2
    return max(1, round((param_budget - base) / per_layer))


def build_mamba_lm(
    teacher: PretrainedConfig | None = None,
    *,
    param_budget: int | None = None,
    hidden_size: int | None = None,
    vocab_size: int | None = None,
    num_hidden_layers: int | None = None,
    **overrides: Any,
) -> MambaForCausalLM:
    """A freshly initialised ``MambaForCausalLM`` matching a teacher's parameter count.

    ``teacher``: a transformers config (GPT-NeoX, LLaMA, ``mixer_lm``, ...; a checkpoint's is read
    by :func:`harness.conversion.factory.build_model`). Width and vocabulary come from the teacher unless
    given; ``num_hidden_layers`` defaults to the count matching ``param_budget`` (default: the
    teacher's total parameters). ``overrides`` go to ``MambaConfig`` (e.g. ``state_size``,
    ``expand``, ``tie_word_embeddings``). The teacher's bos/eos/pad token ids are carried over.
    """
    cfg = teacher
    d = hidden_size or (cfg.hidden_size if cfg is not None else None)
    V = vocab_size or (cfg.vocab_size if cfg is not None else None)
    if d is None or V is None:
        raise MixerConfigError("build_mamba_lm needs a teacher config, or both hidden_size and vocab_size.")
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if cfg is not None and key not in overrides and getattr(cfg, key, None) is not None:
            overrides[key] = getattr(cfg, key)
    if num_hidden_layers is None:
        if param_budget is None:
            if cfg is None:
                raise MixerConfigError("build_mamba_lm needs num_hidden_layers, param_budget or a teacher config.")
            param_budget = count_parameters(cfg)
        num_hidden_layers = match_layers(d, V, param_budget, **overrides)
    from transformers import MambaForCausalLM

    return MambaForCausalLM(mamba_config(d, V, num_hidden_layers, **overrides))


def mamba_state_size(config: MambaConfig, seq_len: int = 0) -> int:
    """Numbers cached per sequence for decoding, constant in ``seq_len``: per layer the convolution
    window (expand*d x conv_kernel) and the SSM state (expand*d x state_size)."""
    inner = config.intermediate_size
    return config.num_hidden_layers * inner * (config.conv_kernel + config.state_size)


@register_architecture("mamba")
class Mamba(Architecture):
    """The Mamba language model as a method of kind ``model``; see the module docstring."""

    forms: ClassVar[tuple[str, ...]] = ("recurrent",)
    default_form: ClassVar[str] = "recurrent"
    supports_left_padding: ClassVar[bool] = True  # transformers zeroes padded positions before the scan
    paper = "Gu & Dao 2023, Mamba: Linear-Time Sequence Modeling with Selective State Spaces (Sec. 3, Alg. 2)"
    model_type = "mamba"

    @classmethod
    def build(cls, reference: PretrainedConfig, *, match: str = "params", **options: Any) -> MambaForCausalLM:
        """``match="params"``: :func:`build_mamba_lm` sized to the reference's parameter count (options such
        as ``num_hidden_layers``, ``param_budget``, ``state_size`` go to it); ``"layers"``: the reference's
        width, vocabulary and depth, nothing else taken from it (MQAR's equal-size comparison)."""
        if match == "layers":
            return build_mamba_lm(
                None,
                hidden_size=reference.hidden_size,
                vocab_size=reference.vocab_size,
                num_hidden_layers=reference.num_hidden_layers,
                **options,
            )
        return build_mamba_lm(reference, **options)

    @classmethod
    def state_size(cls, config: MambaConfig, seq_len: int) -> int:
        """:func:`mamba_state_size`: constant in ``seq_len``."""
        return mamba_state_size(config, seq_len)
