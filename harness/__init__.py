"""Shared machinery of the suite: the method contracts (token mixers, whole architectures) and their
registry, shared linear-attention forms, the decoder language model, the model factory and
checkpoint conversion.

Importing the package registers ``mixer_lm`` with transformers' Auto classes.
"""

from harness.conversion.factory import ModelSpec, build_model, decode_state_size, load_model
from harness.core.architecture import Architecture
from harness.core.mixer import FORMS, AttentionMap, AttentionWeights, MixerConfig, MixerConfigError, TokenMixer
from harness.core.modeling import MixerCache, MixerLMConfig, MixerLMForCausalLM
from harness.core.registry import (
    build_mixer,
    capabilities,
    get_method,
    list_methods,
    register_architecture,
    register_mixer,
)

__all__ = [
    "FORMS",
    "Architecture",
    "AttentionMap",
    "AttentionWeights",
    "MixerCache",
    "MixerConfig",
    "MixerConfigError",
    "MixerLMConfig",
    "MixerLMForCausalLM",
    "ModelSpec",
    "TokenMixer",
    "build_mixer",
    "build_model",
    "capabilities",
    "decode_state_size",
    "get_method",
    "list_methods",
    "load_model",
    "register_architecture",
    "register_mixer",
]
