"""Walking the tensors inside nested decoding states, the one copy in the suite: a mixer's state is
a tensor or a tuple/list/dict of them (:class:`harness.core.modeling.MixerCache` holds one per layer), and
a Hugging Face cache is an object holding such containers.

* :func:`map_tensors` — the same structure with ``fn`` applied to every tensor (containers only);
* :func:`tensors_in` — every tensor held, in order, also through plain objects' attributes (caches).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

#: how deep :func:`tensors_in` follows nested objects (a cache is a few levels deep)
MAX_DEPTH = 6


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``obj`` with every tensor inside its tuples, lists and dicts replaced by ``fn(tensor)``."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_tensors(o, fn) for o in obj)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    return obj


def tensors_in(obj: Any, depth: int = 0) -> list[torch.Tensor]:
    """Every tensor held by ``obj``: itself, inside tuples, lists and dicts, or in the attributes of a
    plain object (a cache class; modules are not entered), up to :data:`MAX_DEPTH` levels."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if depth > MAX_DEPTH or obj is None or isinstance(obj, (str, bytes, int, float, bool)):
        return []
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in tensors_in(o, depth + 1)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in tensors_in(o, depth + 1)]
    if hasattr(obj, "__dict__") and not isinstance(obj, nn.Module):
        return [t for o in vars(obj).values() for t in tensors_in(o, depth + 1)]
    return []
