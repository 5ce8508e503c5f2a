"""One way to get any method's model: build it from a spec, load a saved one, size its decoding state.

Training (:mod:`harness.training.train`), MQAR (:mod:`analyses.mqar`), the benchmark
(:mod:`harness.bench.workloads`) and the pipeline (:mod:`harness.pipeline.throughput`) all go
through these three functions, whatever the method:

* :func:`build_model` — a :class:`ModelSpec` names a method and either a config (a fresh model) or a
  teacher checkpoint (conversion, paper Algorithm 1). A *token mixer* goes into every layer of the
  suite's decoder (:class:`~harness.core.modeling.MixerLMForCausalLM`); a converted model keeps every
  teacher weight and hands each layer's Q/K/V/O to the new mixer. An *architecture* (kind
  ``model``, e.g. Mamba) builds its own model sized after the config or the teacher's config
  (:meth:`~harness.core.architecture.Architecture.build`). Without a method, a config or checkpoint of
  any transformers causal-LM type is built or loaded as it is.
* :func:`load_model` — a model saved with ``save_pretrained`` (any method: ``mixer_lm`` is
  registered with the Auto classes on ``import harness``), or a hub id.
* :func:`decode_state_size` — numbers cached per sequence for decoding: the sum of the layers'
  :meth:`~harness.core.mixer.TokenMixer.state_size`, or the architecture's
  :meth:`~harness.core.architecture.Architecture.state_size`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from harness.core.architecture import MATCHES, Architecture
from harness.core.mixer import MixerConfigError
from harness.core.modeling import MixerLMConfig, MixerLMForCausalLM, MixerLMModel
from harness.core.registry import get_method, list_methods

#: dtypes :func:`load_model` accepts by name
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ModelSpec:
    """What model to build (see :func:`build_model`).

    ``method``: a registered method (``None``: the config's own ``mixer``, or the teacher as it is).
    ``config``: the shape of a fresh model — a :class:`~harness.core.modeling.MixerLMConfig` for a token
    mixer, any decoder config as the reference an architecture is sized after, or another
    transformers config (no method) built as it is. ``teacher``: a checkpoint directory or hub id to
    convert from (a token mixer) or to size after (an architecture); give ``config`` or ``teacher``.
    ``options``: the method's options (a token mixer's ``Options``; an architecture's settings).
    ``match``: how an architecture is sized after the reference, ``params`` (same parameter count)
    or ``layers`` (same width, depth and vocabulary). ``body_only``: a token-mixer decoder without
    its LM head (:class:`~harness.core.modeling.MixerLMModel`, for benchmarking one block).
    ``layer_mixers``/``layer_selection``: a hybrid of token mixers, some layers with another method
    (as in :class:`~harness.core.modeling.MixerLMConfig`), and how those layers were chosen.
    """

    method: str | None = None
    config: PretrainedConfig | None = None
    teacher: str | os.PathLike | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    match: str = "params"
    body_only: bool = False
    layer_mixers: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    layer_selection: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if (self.config is None) == (self.teacher is None):
            raise MixerConfigError("a ModelSpec needs exactly one of config (a fresh model) or teacher (a checkpoint).")
        if self.match not in MATCHES:
            raise MixerConfigError(f"ModelSpec.match must be one of {list(MATCHES)}, got {self.match!r}.")
        if self.layer_mixers and not self.method:
            raise MixerConfigError("a hybrid (layer_mixers) needs the method of its other layers (method).")

    @property
    def hybrid(self) -> dict[str, Any]:
        """``layer_mixers``/``layer_selection`` as config keys (empty for a plain model)."""
        if not self.layer_mixers:
            return {}
        layers = {int(i): dict(v) for i, v in self.layer_mixers.items()}
        return {"layer_mixers": layers, "layer_selection": self.layer_selection}


def build_model(spec: ModelSpec) -> nn.Module:
    """The model ``spec`` describes, freshly initialised (fp32, CPU) or converted from its teacher."""
    method = get_method(spec.method) if spec.method else None
    if method is not None and issubclass(method, Architecture):
        reference = spec.config if spec.config is not None else teacher_config(spec.teacher)
        return method.build(reference, match=spec.match, **dict(spec.options))
    if spec.teacher is not None:
        return _from_teacher(spec.teacher, spec.method, dict(spec.options), spec.hybrid)
    return _fresh(spec.config, spec.method, dict(spec.options), spec.body_only, spec.hybrid)


def teacher_config(teacher: str | os.PathLike) -> PretrainedConfig:
    """The transformers config of a checkpoint directory or hub id (a clear error if unreadable)."""
    try:
        return AutoConfig.from_pretrained(str(teacher))
    except (OSError, ValueError) as err:
        raise MixerConfigError(
            f"cannot read a teacher config from {str(teacher)!r} ({err}); pass a checkpoint directory with "
            "config.json (or a hub id, with network)."
        ) from None


def _fresh(
    config: PretrainedConfig, method: str | None, options: dict[str, Any], body_only: bool, hybrid: dict[str, Any]
) -> nn.Module:
    """A fresh model of ``config``; for ``mixer_lm``, with ``method`` (and ``options``) in every layer,
    or in every layer but those ``hybrid`` gives another method."""
    if not isinstance(config, MixerLMConfig):
        if method:
            raise MixerConfigError(
                f"method {method!r} is a token mixer for the suite's decoder (model_type 'mixer_lm'), not for a "
                f"{config.model_type!r} config."
            )
        return AutoModelForCausalLM.from_config(config)
    if (method and method != config.mixer) or options or hybrid:
        fields = {k: v for k, v in config.to_dict().items() if k not in ("model_type", "transformers_version")}
        if method:
            fields["mixer"] = method
        if options:
            fields["mixer_options"] = dict(options)
        config = MixerLMConfig(**{**fields, **hybrid})
    return MixerLMModel(config) if body_only else MixerLMForCausalLM(config)


def _from_teacher(
    teacher: str | os.PathLike, method: str | None, options: dict[str, Any], hybrid: dict[str, Any]
) -> nn.Module:
    """A checkpoint converted to ``method`` (paper Algorithm 1; a hybrid keeps other methods in the
    layers ``hybrid`` names), or loaded as it is without one."""
    from harness.conversion.hf_checkpoint import (
        SUPPORTED_ARCHITECTURES,
        CheckpointError,
        convert_checkpoint,
        resolve_checkpoint,
    )
    from harness.conversion.mixer_swap import convert_model

    path = resolve_checkpoint(teacher)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} has no config.json; pass a checkpoint directory written by save_pretrained.")
    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    if model_type == MixerLMConfig.model_type:
        model = MixerLMForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        if method and (method != model.config.mixer or options or hybrid):
            model = convert_model(model, method, options, **hybrid)
        return model
    if model_type in SUPPORTED_ARCHITECTURES:
        if hybrid:  # per-layer methods: through the exact softmax conversion of the checkpoint
            return convert_model(convert_checkpoint(path, "softmax"), method, options, **hybrid)
        return convert_checkpoint(path, method or "softmax", options)
    if method:
        raise CheckpointError(
            f"cannot convert a {model_type!r} checkpoint to method {method!r}: conversion reads GPT-NeoX, LLaMA "
            "and the suite's own mixer_lm checkpoints."
        )
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", ".", "~")) or (os.sep in spec and Path(spec.split(os.sep)[0]).exists())


def _hub_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def load_teacher(spec: str | os.PathLike) -> nn.Module:
    """A teacher as the suite's own softmax decoder (:class:`~harness.core.modeling.MixerLMForCausalLM`),
    in eval mode, whatever its checkpoint: ours, or a GPT-NeoX/LLaMA one (converted, paper Algorithm 1
    with the softmax mixer: the same function). Analyses that read a teacher's layers (attention maps,
    layer selection, mixer shares) need this, not :func:`load_model`, which returns transformers' own
    class for a hub checkpoint."""
    return build_model(ModelSpec("softmax", teacher=str(spec))).eval()


def load_model(spec: str | os.PathLike, device: str | None = None, dtype: str | None = None) -> nn.Module:
    """A saved causal LM (``save_pretrained`` folder) or a hub id (needs network), in eval mode.

    Any method's model loads with ``AutoModelForCausalLM`` (importing :mod:`harness` registers
    ``mixer_lm``). ``dtype`` is one of :data:`DTYPES` (default: as saved). Errors are
    :class:`~harness.conversion.hf_checkpoint.CheckpointError` with the fix in the message."""
    from harness.conversion.hf_checkpoint import CheckpointError

    spec = str(spec)
    path = Path(spec).expanduser()
    if dtype is not None and dtype not in DTYPES:
        raise CheckpointError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}.")
    if not path.exists() and (_looks_like_path(spec) or _hub_offline()):
        offline = "is not a local folder, and the hub is offline (HF_HUB_OFFLINE=1)"
        where = "does not exist" if _looks_like_path(spec) else offline
        raise CheckpointError(
            f"model {spec!r} {where}; pass a checkpoint folder written by `python -m harness train` / "
            "`convert` (save_pretrained), or a hub id with network access."
        )
    if path.exists() and not (path / "config.json").is_file():
        raise CheckpointError(f"{spec} has no config.json; pass a folder written by save_pretrained.")
    torch_dtype = getattr(torch, dtype) if dtype else None
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path) if path.exists() else spec, dtype=torch_dtype)
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"cannot load model {spec!r}: {str(err).splitlines()[0] if str(err) else type(err).__name__}. Pass a "
            "checkpoint folder written by save_pretrained (with config.json and weights), or a hub id with network."
        ) from None
    if device:
        model = model.to(device)
    return model.eval()


def method_of(model: nn.Module) -> str:
    """The registered method a model was built with: its mixer (``mixer_lm``), or the architecture
    whose ``model_type`` it has."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type == MixerLMConfig.model_type:
        return config.mixer
    for name in list_methods():
        cls = get_method(name)
        if issubclass(cls, Architecture) and cls.model_type == model_type:
            return name
    raise MixerConfigError(f"no registered method builds {type(model).__name__} models (model_type {model_type!r}).")


def decode_state_size(model: nn.Module, seq_len: int, method: str | None = None) -> int:
    """Numbers cached per sequence for decoding after ``seq_len`` tokens, all layers: the sum of the
    mixers' :meth:`~harness.core.mixer.TokenMixer.state_size` for the suite's decoder, else the
    architecture's :meth:`~harness.core.architecture.Architecture.state_size` (``method``, or the one
    :func:`method_of` finds). A mixer without a declared size raises ``NotImplementedError``."""
    if isinstance(model, (MixerLMForCausalLM, MixerLMModel)):
        body = model.model if isinstance(model, MixerLMForCausalLM) else model
        return int(sum(layer.mixer.state_size(seq_len) for layer in body.layers))
    cls = get_method(method or method_of(model))
    if not issubclass(cls, Architecture):
        raise MixerConfigError(f"a {type(model).__name__} is not a model of token mixer {cls.name!r}.")
    return int(cls.state_size(model.config, seq_len))
