"""Tiny randomly initialised GPT-NeoX and LLaMA checkpoints, saved locally (no download)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM


def make_neox(path: Path, parallel_residual: bool = True, seed: int = 0) -> GPTNeoXForCausalLM:
    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(
        vocab_size=96,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
        use_parallel_residual=parallel_residual,
    )
    model = GPTNeoXForCausalLM(cfg).eval()
    model.save_pretrained(path)
    return model


def make_llama(path: Path, tied: bool = True, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
        tie_word_embeddings=tied,
    )
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(path)
    return model
