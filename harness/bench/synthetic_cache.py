"""Synthetic prompt caches: the decoding cache an L-token prefill leaves, built without the prefill.

The time of one decoding step depends on the sizes of the cache it continues from — the L keys and
values a softmax step reads (Vaswani et al. 2017, Eq. 1), a recurrent state's fixed ``m x d`` size
(DiJiang, Chen et al. 2024, Eq. 13) — and on the position it runs at (rotary angles, a causal mask's
width, a KV length), never on the cached values. So ``--prompt-cache synthetic`` times decoding after
an L-token prompt from a cache that has exactly the sizes and counters a real L-token prefill would
leave, at the cost of a prefill of a few dozen tokens instead of O(L) (or O(L^2)) work.

How, for any method, without code of its own (:func:`grow_cache`): two real prefills of the first
``p - 1`` and ``p`` prompt tokens are walked side by side — tuples, lists, dicts and the attributes of
plain objects (the suite's :class:`~harness.core.modeling.MixerCache`, transformers' ``DynamicCache`` and
its layers), as :func:`harness.util.tensor_tree.tensors_in` walks them:

* a tensor of one shape in both is a fixed-size state (a recurrent state, Linformer's summaries, Mamba's
  convolution window and SSM state): kept as the ``p``-token prefill left it; an integer tensor whose
  values grew by exactly one is a position counter (Linformer's tokens seen) and is advanced by ``L - p``;
* a floating tensor one entry longer along exactly one dimension is sequence-indexed (a KV cache, a
  window that is not yet full): grown along that dimension by tiling its ``p`` entries;
* a Python int that grew by exactly one is a counter (``MixerCache.seen_tokens``, a window's tokens
  seen): advanced by ``L - p``; everything else must be equal in both probes and is kept.

Anything else (a structure that changed, a tensor that changed otherwise, a sequence-indexed integer
tensor such as cached position ids) cannot be grown safely (:class:`CannotSynthesize`), and the caller
falls back to a real prefill. Sequence-indexed tensors can saturate (a sliding window of ``W`` tokens
stops growing at ``W``), which two short probes cannot see; so the grown cache is checked against the
method's declared state size at ``L`` (:func:`harness.conversion.factory.decode_state_size`, or the
KV-cache size of the transformers reference): the sequence-indexed tensors are grown to the one length
``n <= L`` at which the cache holds exactly the declared numbers (``n = L`` for a KV cache, ``n = W``
for a full window), counters always to ``L``. A cache with sequence-indexed tensors and no declared
size, or without such an ``n``, is not grown; one without them must hold the declared size as it is.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.util.tensor_tree import tensors_in

#: how the decode phase's starting cache is built: a real L-token prefill, or grown from a short one
PROMPT_CACHE_MODES: tuple[str, ...] = ("prefill", "synthetic")
#: tokens really prefilled for a synthetic cache (the last of the two probes); shorter prompts are prefilled
PROBE_TOKENS = 64
#: how deep :func:`grow_cache` follows nested objects (as :data:`harness.util.tensor_tree.MAX_DEPTH`, plus room)
MAX_DEPTH = 8


class CannotSynthesize(ValueError):
    """A cache that cannot be grown safely to the size of a longer prefill (the reason is the message)."""


@dataclass
class PromptCache:
    """The decode phase's starting cache and how it was built.

    ``fresh()`` returns a new, independent copy of the starting cache (each timed decode run continues
    one; called outside the timed region). ``built``: ``"prefill"`` (a real prefill of the L-token
    prompt; ``fresh`` deep-copies it) or ``"synthetic"`` (``fresh`` grows it anew from the short
    prefills, so only they are kept between runs, not a second L-sized cache); ``prefilled_tokens``: the
    tokens really prefilled; ``note``: why a synthetic cache was asked for but not built."""

    fresh: Callable[[], Any]
    built: str
    prefilled_tokens: int
    note: str | None = None
    #: length the sequence-indexed tensors are grown to (L, or a window's size), None without any
    seq_tensors_len: int | None = None

    @classmethod
    def of_prefill(cls, cache: Any, seq_len: int, note: str | None = None) -> PromptCache:
        """A real prefill's cache, deep-copied by ``fresh()``."""
        return cls(lambda: copy.deepcopy(cache), "prefill", seq_len, note)


def tile_along(t: torch.Tensor, dim: int, n: int) -> torch.Tensor:
    """A new contiguous tensor with ``n`` entries along ``dim``: ``t``'s entries repeated (doubling
    copies, O(n) bytes written), same dtype and device."""
    m = t.shape[dim]
    if m == 0:
        raise CannotSynthesize("a sequence-indexed tensor is empty")
    out = t.new_empty(*t.shape[:dim], n, *t.shape[dim + 1 :])
    first = min(m, n)
    out.narrow(dim, 0, first).copy_(t.narrow(dim, 0, first))
    filled = first
    while filled < n:
        w = min(filled, n - filled)
        out.narrow(dim, filled, w).copy_(out.narrow(dim, 0, w))
        filled += w
    return out


@dataclass
class _SeqTensor:
    """A sequence-indexed tensor found by the dry run: numbers per position and its length at ``p``."""

    per_position: int
    length: int


class _Grower:
    """Walks the caches of a ``p - 1`` and a ``p``-token prefill side by side (see the module docstring).

    With ``seq_len_target=None`` it is a dry run: sequence-indexed tensors are recorded (``seq``), not
    grown, and ``fixed`` counts the numbers of every other tensor; otherwise they are grown to
    ``seq_len_target + (their length - p)`` entries."""

    def __init__(self, probe: int, seq_len: int, seq_len_target: int | None) -> None:
        self.p, self.L, self.n = probe, seq_len, seq_len_target
        self.seq: list[_SeqTensor] = []
        self.fixed = 0
        self.counters: list[str] = []

    def grow(self, a: Any, b: Any, path: str, depth: int = 0) -> Any:
        """``b`` (the ``p``-token cache) with counters advanced to ``L`` and sequence-indexed tensors
        grown; ``a`` is the same structure after ``p - 1`` tokens."""
        if depth > MAX_DEPTH:
            raise CannotSynthesize(f"{path}: nested deeper than {MAX_DEPTH} levels")
        if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
            return self._tensor(a, b, path)
        if isinstance(a, bool) or isinstance(b, bool):
            return self._equal(a, b, path)
        if isinstance(a, int) and isinstance(b, int):
            if b - a == 1:
                self.counters.append(path)
                return b + (self.L - self.p)
            return self._equal(a, b, path)
        if a is None or b is None or isinstance(b, (float, str, bytes, torch.dtype, torch.device)):
            return self._equal(a, b, path)
        if type(a) is not type(b):
            raise CannotSynthesize(f"{path}: {type(a).__name__}, then {type(b).__name__} one token later")
        if isinstance(b, (tuple, list)):
            if len(a) != len(b):
                raise CannotSynthesize(f"{path}: {len(a)} entries after {self.p - 1} tokens, {len(b)} after {self.p}")
            items = [self.grow(x, y, f"{path}[{i}]", depth + 1) for i, (x, y) in enumerate(zip(a, b))]
            return type(b)(*items) if hasattr(b, "_fields") else type(b)(items)
        if isinstance(b, dict):
            if list(a) != list(b):
                raise CannotSynthesize(f"{path}: keys {list(a)} after {self.p - 1} tokens, {list(b)} after {self.p}")
            grown = {k: self.grow(a[k], b[k], f"{path}[{k!r}]", depth + 1) for k in b}
            out = copy.copy(b)  # the same dict type (e.g. a defaultdict), new values
            out.clear()
            out.update(grown)
            return out
        if isinstance(b, nn.Module) or not hasattr(b, "__dict__"):
            return self._equal(a, b, path)
        va, vb = vars(a), vars(b)
        if list(va) != list(vb):
            raise CannotSynthesize(f"{path}: attributes {list(va)}, then {list(vb)} one token later")
        out = copy.copy(b)
        out.__dict__.update({k: self.grow(va[k], vb[k], f"{path}.{k}", depth + 1) for k in vb})
        return out

    def _equal(self, a: Any, b: Any, path: str) -> Any:
        try:
            same = a is b or bool(a == b)
        except Exception:  # an object whose == is not a truth value
            same = False
        if not same:
            raise CannotSynthesize(f"{path}: {a!r} after {self.p - 1} tokens, {b!r} after {self.p} (not a counter)")
        return b

    def _tensor(self, a: Any, b: Any, path: str) -> torch.Tensor:
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            raise CannotSynthesize(f"{path}: a tensor in one probe only")
        if a.dtype != b.dtype or a.dim() != b.dim():
            raise CannotSynthesize(f"{path}: dtype or rank changed between {self.p - 1} and {self.p} tokens")
        if a.shape == b.shape:
            if b.is_floating_point() or b.is_complex():
                self.fixed += b.numel()
                return b  # a fixed-size state: its cost does not depend on its values
            if torch.equal(a, b):
                self.fixed += b.numel()
                return b
            if b.dtype != torch.bool and bool(((b - a) == 1).all()):
                self.counters.append(path)
                self.fixed += b.numel()
                return b + (self.L - self.p)
            raise CannotSynthesize(f"{path}: an integer tensor that changed but is not a counter")
        grew = [d for d in range(b.dim()) if a.shape[d] != b.shape[d]]
        d = grew[0]
        if len(grew) != 1 or b.shape[d] - a.shape[d] != 1:
            raise CannotSynthesize(
                f"{path}: shape {tuple(a.shape)} after {self.p - 1} tokens, {tuple(b.shape)} after {self.p}"
            )
        if not (b.is_floating_point() or b.is_complex()):
            raise CannotSynthesize(f"{path}: a sequence-indexed {b.dtype} tensor (positions?) cannot be tiled")
        length = b.shape[d]
        if self.n is None:
            self.seq.append(_SeqTensor(b.numel() // length, length))
            return b
        return tile_along(b, d, length + self.n - self.p)


def _numel(cache: Any) -> int:
    return sum(t.numel() for t in tensors_in(cache))


def plan_growth(shorter: Any, short: Any, probe: int, seq_len: int, declared_numel: int | None) -> int | None:
    """Check that the caches of ``probe - 1`` (``shorter``) and ``probe`` (``short``) tokens can be grown
    to an ``seq_len``-token prefill's (:class:`CannotSynthesize` if not), without allocating anything;
    returns the length the sequence-indexed tensors grow to (None when there are none).
    ``declared_numel``: the numbers the cache must hold after ``seq_len`` tokens, all sequences of the
    batch (None: undeclared)."""
    if not 2 <= probe <= seq_len:
        raise ValueError(f"probe length {probe} must be in 2..{seq_len}")
    dry = _Grower(probe, seq_len, None)
    dry.grow(shorter, short, "cache")
    if not dry.seq:
        if declared_numel is not None and dry.fixed != declared_numel:
            raise CannotSynthesize(f"the cache holds {dry.fixed:,} numbers, the method declares {declared_numel:,}")
        return None
    if declared_numel is None:
        raise CannotSynthesize("the method declares no state size to check a grown cache against")
    per = sum(s.per_position for s in dry.seq)
    at_probe = dry.fixed + sum(s.per_position * s.length for s in dry.seq)
    extra, rest = divmod(declared_numel - at_probe, per)
    target = probe + extra
    if rest or not probe <= target <= seq_len:
        raise CannotSynthesize(
            f"no length of its sequence-indexed tensors gives the declared {declared_numel:,} numbers "
            f"({at_probe:,} after {probe} tokens, {per:,} per position)"
        )
    return target


def grow_cache(
    shorter: Any,
    short: Any,
    probe: int,
    seq_len: int,
    declared_numel: int | None,
) -> tuple[Any, int | None]:
    """The cache of an ``seq_len``-token prefill, grown from the caches of ``probe - 1`` (``shorter``)
    and ``probe`` (``short``) tokens (:func:`plan_growth`), and the length its sequence-indexed tensors
    were grown to (None when it has none). Fixed-size states are ``short``'s own tensors, not copies.
    Raises :class:`CannotSynthesize`."""
    target = plan_growth(shorter, short, probe, seq_len, declared_numel)
    grown = _Grower(probe, seq_len, target or probe).grow(shorter, short, "cache")
    held = _numel(grown)
    if declared_numel is not None and held != declared_numel:
        raise CannotSynthesize(f"the grown cache holds {held:,} numbers, the method declares {declared_numel:,}")
    return grown, target


def reported_length(cache: Any) -> int | None:
    """The number of tokens a cache says it holds (``get_seq_length()``: ``MixerCache.seen_tokens``, a
    ``DynamicCache``'s KV length), or None for one that keeps no length (Mamba's recurrent layers)."""
    fn = getattr(cache, "get_seq_length", None)
    if fn is None:
        return None
    try:
        return int(fn())
    except (ValueError, TypeError, AttributeError):
        return None


def synthetic_prompt_cache(
    prefill: Callable[[int], Any],
    seq_len: int,
    declared_numel: Callable[[int], int | None],
    probe_tokens: int = PROBE_TOKENS,
) -> PromptCache:
    """The decode phase's starting cache for an ``seq_len``-token prompt, grown from real prefills of
    its first ``p - 1`` and ``p = min(seq_len, probe_tokens)`` tokens (:func:`grow_cache`); a prompt of
    at most ``probe_tokens`` is simply prefilled. ``prefill(n)`` prefills the first ``n`` prompt tokens
    and returns the cache; ``declared_numel(n)``: the numbers a cache of ``n`` tokens holds, all
    sequences (None: undeclared). A cache that cannot be grown falls back to a real prefill of
    ``seq_len`` tokens, with the reason in ``note``."""
    p = min(seq_len, max(2, probe_tokens))
    if seq_len <= p:
        return PromptCache.of_prefill(prefill(seq_len), seq_len)
    shorter, short = prefill(p - 1), prefill(p)
    declared = declared_numel(seq_len)
    try:
        target = plan_growth(shorter, short, p, seq_len, declared)
    except CannotSynthesize as err:
        del shorter, short
        note = f"cannot grow a short prefill's cache ({err}); a real prefill of L tokens"
        return PromptCache.of_prefill(prefill(seq_len), seq_len, note)

    def fresh() -> Any:
        with torch.inference_mode():  # the fixed-size states are copied too: a decode step may update them in place
            return grow_cache(shorter, copy.deepcopy(short), p, seq_len, declared)[0]

    return PromptCache(fresh, "synthetic", p, seq_tensors_len=target)
