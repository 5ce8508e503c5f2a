"""Generation throughput of a trained model after a long prompt (the paper's Table 1 column,
"inference throughput at 2048 tokens"): prefill ``prompt_len`` tokens once, then time greedy
decoding of ``new_tokens`` tokens with the model's cache, median over repeats. The model comes from
:func:`harness.conversion.factory.load_model` (any method), the clock from :func:`harness.util.timing.time_once`."""

from __future__ import annotations

import copy
import functools
import statistics
from pathlib import Path

import torch

from harness.conversion.factory import load_model
from harness.core.hf_cache import cache_kwarg, output_cache
from harness.util.timing import time_once


@torch.inference_mode()
def decode_throughput(
    model_path: str | Path,
    prompt_len: int,
    new_tokens: int = 128,
    repeats: int = 5,
    device: str | torch.device | None = None,
) -> float:
    """Tokens per second of cached greedy decoding after a ``prompt_len``-token prompt (batch 1), on
    ``device`` (default: where :func:`~harness.conversion.factory.load_model` leaves it, the CPU; the
    pipeline passes its profile's device).

    At the tiny profile a token takes ~1-3 ms, so 32 tokens x 3 repeats (the first setting) gave
    values that moved by 2x between two runs on the same idle machine; 128 x 5 costs ~1 s a model."""
    model = load_model(str(model_path), device=None if device is None else str(device))
    vocab = model.get_output_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (1, prompt_len), generator=torch.Generator().manual_seed(0)).to(model.device)
    out = model(ids, use_cache=True, logits_to_keep=1)
    cache_name = cache_kwarg(model)
    prompt_cache = output_cache(out)

    def decode(cache: object) -> None:
        tok = ids[:, -1:]
        for _ in range(new_tokens):
            step = model(tok, use_cache=True, **{cache_name: cache})
            cache, tok = output_cache(step), step.logits[:, -1:].argmax(-1)

    # each repeat continues its own copy of the prompt's cache, made before the clock starts
    times = [time_once(functools.partial(decode, copy.deepcopy(prompt_cache)), model.device) for _ in range(repeats)]
    return new_tokens / statistics.median(times)
