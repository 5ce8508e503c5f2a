"""Shared machinery of the suite: the token-mixer contract and registry, shared linear-attention
forms, the decoder language model and checkpoint conversion.

Importing the package registers ``mixer_lm`` with transformers' Auto classes.
"""

from harness.mixer import FORMS, AttentionWeights, MixerConfig, MixerConfigError, TokenMixer
from harness.modeling import MixerCache, MixerLMConfig, MixerLMForCausalLM
from harness.registry import build_mixer, capabilities, get_method, list_methods, register_mixer

__all__ = [
    "FORMS",
    "AttentionWeights",
    "MixerCache",
    "MixerConfig",
    "MixerConfigError",
    "MixerLMConfig",
    "MixerLMForCausalLM",
    "TokenMixer",
    "build_mixer",
    "capabilities",
    "get_method",
    "list_methods",
    "register_mixer",
]
