"""Swap the token mixer of one of our own trained models (paper Algorithm 1 for a MixerLM teacher).

:func:`harness.conversion.hf_checkpoint.convert_checkpoint` maps Hugging Face GPT-NeoX/LLaMA checkpoints; this module
does the same for a :class:`~harness.core.modeling.MixerLMForCausalLM` teacher trained by the suite (e.g.
a softmax teacher pretrained on the embedded corpus): the student gets the teacher's config with a
new ``mixer``, every non-mixer weight is copied, and each layer's teacher Q/K/V/O go to the new
mixer's ``init_from_attention`` ("replace the attention, keep the weights").
"""

from __future__ import annotations

from typing import Any

import torch

from harness.core.mixer import AttentionWeights, MixerConfigError, TokenMixer
from harness.core.modeling import MixerLMConfig, MixerLMForCausalLM
from harness.core.projections import QKVOProjections


def attention_weights(mixer: TokenMixer) -> AttentionWeights:
    """The Q/K/V/O projections of a teacher layer's mixer (one that owns ``QKVOProjections``)."""
    proj = getattr(mixer, "proj", None)
    if not isinstance(proj, QKVOProjections):
        raise MixerConfigError(
            f"the teacher's mixer {mixer.name!r} has no Q/K/V/O projections to convert from; "
            "convert from an attention-like teacher (e.g. 'softmax')."
        )

    def bias(layer: torch.nn.Linear) -> torch.Tensor | None:
        return None if layer.bias is None else layer.bias.detach().clone()

    return AttentionWeights(
        q=proj.q_proj.weight.detach().clone(),
        k=proj.k_proj.weight.detach().clone(),
        v=proj.v_proj.weight.detach().clone(),
        o=proj.o_proj.weight.detach().clone(),
        q_bias=bias(proj.q_proj),
        k_bias=bias(proj.k_proj),
        v_bias=bias(proj.v_proj),
        o_bias=bias(proj.o_proj),
    )


@torch.no_grad()
def convert_model(
    teacher: MixerLMForCausalLM,
    mixer: str,
    options: dict[str, Any] | None = None,
    *,
    layer_mixers: dict[int, dict[str, Any]] | None = None,
    layer_selection: dict[str, Any] | None = None,
) -> MixerLMForCausalLM:
    """A new model with ``mixer`` (and its ``options``) in every layer, initialised from ``teacher``.

    A hybrid gives some layers another method (``layer_mixers``, as in
    :class:`~harness.core.modeling.MixerLMConfig`, e.g. softmax kept in layer 2) and records how they were
    chosen (``layer_selection``); a teacher's own per-layer methods never carry over.

    Embeddings, norms, MLPs and the head are copied exactly; the mixers receive the teacher's Q/K/V/O
    through :meth:`~harness.core.mixer.TokenMixer.init_from_attention`; method-specific parameters of the
    new mixer keep their documented initialisation. The teacher is not modified. The result is on
    the teacher's device and dtype, in the teacher's train/eval mode.
    """
    if not isinstance(teacher, MixerLMForCausalLM):
        raise TypeError(f"convert_model needs a MixerLMForCausalLM teacher, got {type(teacher).__name__}.")
    cfg = teacher.config.to_dict()
    for key in ("model_type", "transformers_version", "architectures", "dtype", "torch_dtype"):
        cfg.pop(key, None)
    cfg.update(
        mixer=mixer,
        mixer_options=dict(options or {}),
        mixer_form=None,
        layer_mixers=dict(layer_mixers or {}),
        layer_selection=layer_selection,
    )
    cfg["converted_from_mixer"] = teacher.config.mixer
    student = MixerLMForCausalLM(MixerLMConfig(**cfg))
    param = next(teacher.parameters())
    student.to(device=param.device, dtype=param.dtype)

    teacher_sd = teacher.state_dict()
    student_sd = student.state_dict()
    shared = {k: v for k, v in teacher_sd.items() if ".mixer." not in k}
    missing = sorted(k for k in student_sd if ".mixer." not in k and k not in shared)
    if missing:
        raise MixerConfigError(f"teacher lacks weights {missing[:5]} needed by the student.")
    for key, value in shared.items():
        if key in student_sd:
            student_sd[key].copy_(value)
    for t_layer, s_layer in zip(teacher.model.layers, student.model.layers):
        s_layer.mixer.init_from_attention(attention_weights(t_layer.mixer))
    student.train(teacher.training)
    return student
