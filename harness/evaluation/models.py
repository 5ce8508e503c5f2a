"""The model an evaluation scores, read without the evaluator: its tokenizer, its parameter count
and the names it is recorded under. Models themselves load with :func:`harness.conversion.factory.load_model`
(the suite's one loader), so the pipeline and the analyses get weights without importing lm-eval.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from harness.evaluation.errors import EvalInputError


def count_parameters(spec: str | os.PathLike) -> int:
    """The parameters of the model saved at ``spec`` (a checkpoint folder), counted on the meta device
    from its config: a converted model's own, the new gate and decays included (not its teacher's)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    import harness  # noqa: F401  (registers mixer_lm with the Auto classes)

    config = AutoConfig.from_pretrained(str(spec))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


#: a model whose vocabulary is at most this large and has no tokenizer of its own gets the byte tokenizer
BYTE_VOCAB_LIMIT = 512


def default_tokenizer(model: Any, model_path: str | os.PathLike | None = None) -> Any:
    """The tokenizer saved beside the model if any, else the hub id's, else the byte tokenizer for a
    model with a byte-sized vocabulary (a converted Pythia/LLaMA without its tokenizer is an error,
    not silently scored with bytes)."""
    from harness.data.tokenizer import load_tokenizer

    model_path = model_path or getattr(model, "name_or_path", None) or None  # where it was loaded from
    if model_path is not None:
        path = Path(model_path).expanduser()
        if (path / "tokenizer_config.json").is_file():
            return load_tokenizer(path)
        if not path.exists():
            return load_tokenizer(str(model_path))
    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    if 0 < vocab <= BYTE_VOCAB_LIMIT:
        return load_tokenizer("byte")
    raise EvalInputError(
        f"the model has no tokenizer saved beside it and its vocabulary ({vocab} tokens) is not byte-level; pass "
        "--tokenizer (the tokenizer folder or hub id it was trained with, e.g. the teacher's)."
    )


def model_identity(model: Any) -> tuple[str, str]:
    """``(model name, method)``: the checkpoint's name and its mixer (``mixer_lm``) or model type."""
    config = model.config
    name = str(getattr(config, "_name_or_path", "") or type(model).__name__)
    name = Path(name).name if name else type(model).__name__
    method = getattr(config, "mixer", None) if getattr(config, "model_type", None) == "mixer_lm" else None
    return name or type(model).__name__, str(method or getattr(config, "model_type", "unknown"))
