"""The name under which transformers passes a model's decoding cache, across its 5.x releases.

transformers 5.24 renamed the generation cache from ``past_key_values`` (and Mamba's
``cache_params``) to ``cache``: ``GenerationMixin`` now hands ``cache=`` to ``forward`` and reads
``outputs.cache``; the old names survive as deprecation shims that warn on every use. This module is
the one place that knows both spellings, so the rest of the suite never touches a deprecated name:

* :func:`cache_kwarg` — the keyword a given model's ``forward`` takes its cache under;
* :func:`output_cache` — the cache held by a model output, read without the shims.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from torch import nn

#: every name transformers has used for a decoder's generation cache, newest first
CACHE_NAMES: tuple[str, ...] = ("cache", "past_key_values", "cache_params")


def cache_kwarg(model: nn.Module) -> str:
    """Keyword ``model.forward`` takes its decoding cache under (the newest name it accepts)."""
    params = inspect.signature(model.forward).parameters
    for name in CACHE_NAMES:
        if name in params:
            return name
    raise TypeError(f"{type(model).__name__}.forward takes no decoding cache (none of {list(CACHE_NAMES)})")


def output_cache(output: Any) -> Any:
    """The cache a ``ModelOutput`` (or a ``(hidden, cache)`` tuple) holds, read by its declared field
    name so that no deprecation shim fires; ``None`` if it holds none."""
    if isinstance(output, tuple):
        return output[1]
    names = {f.name for f in dataclasses.fields(output)}
    for name in CACHE_NAMES:
        if name in names:
            return getattr(output, name)
    return None
