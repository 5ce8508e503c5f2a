"""Sliding-window softmax attention (Beltagy et al. 2020, "Longformer", Sec. 3.1 "Sliding Window";
Jiang et al. 2023, "Mistral 7B", Sec. 2 "Sliding Window Attention" and "Rolling Buffer Cache").

Exact softmax attention (Vaswani et al. 2017, Eq. 1) restricted to the last ``W`` tokens, the query's
own included:

    o_i = sum_{i-W < j <= i} exp(s_ij) v_j / sum_{i-W < j <= i} exp(s_ij),   s_ij = q_i . k_j / sqrt(d)

with the teacher's rotary embedding on q and k and grouped-query heads, so a converted model keeps
the teacher's attention inside the window (with ``W >= T`` it *is* the teacher's softmax attention).

Forms (one band-masked computation, three block sizes):

* ``parallel`` — all queries against all keys at once under the band mask: O(T^2), the reference;
* ``chunk`` — query blocks of ``chunk_size`` tokens, each against only the keys its band reaches
  (``chunk_size + W - 1`` of them): O(T W) time and memory, for long prompts;
* ``recurrent`` — one query at a time against the last ``W`` keys (decoding).

Decoding state: the keys and values of the last ``min(L, W)`` tokens (Mistral's rolling buffer),
``state_size(L) = 2 H_kv d min(L, W)``, constant once ``L >= W``. The buffer has spare capacity
(:func:`extend_window`), so a decoding step writes one key and value instead of copying the window,
like the softmax baseline's list-like cache (:func:`baselines.softmax.append_kv`). Left padding: padded
keys are masked; since padding is leading, the band over slots is the band over real positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from harness.core.mixer import AttentionMap, MixerConfig, MixerConfigError
from harness.core.projections import ProjectedMixer, positions_from_mask, repeat_kv
from harness.core.registry import register_mixer

#: spare capacity of a window buffer: a quarter of the window, at least this many tokens
MIN_HEADROOM = 64


def _start_with_room(past: torch.Tensor, extra: int) -> bool:
    """Whether ``past`` (B, H, n, D) is a slice ``buf[:, :, s:s+n]`` of a contiguous buffer
    (B, H, cap, D) with ``s + n + extra <= cap``: ``extra`` more slots can be written behind it
    without touching another head's row."""
    B, H, n, D = past.shape
    st = past.stride()
    if D == 0 or st[3] != 1 or st[2] != D or st[1] % D or (B > 1 and st[0] != H * st[1]):
        return False
    cap = st[1] // D
    start = (past.storage_offset() % st[1]) // D if st[1] else 0
    if start + n + extra > cap:
        return False
    last = past.storage_offset() + (B - 1) * st[0] + (H - 1) * st[1] + (n + extra) * D
    return past.untyped_storage().nbytes() >= last * past.element_size()


def _new_buffer(parts: list[torch.Tensor], keep: int) -> torch.Tensor:
    """``cat(parts)`` (along dim 2) written into a fresh buffer with spare capacity for
    ``max(MIN_HEADROOM, keep // 4)`` more slots; returns the view of the written slots."""
    total = sum(p.shape[2] for p in parts)
    B, H, _, D = parts[0].shape
    buf = parts[0].new_empty(B, H, total + max(MIN_HEADROOM, keep // 4), D)
    at = 0
    for p in parts:
        buf[:, :, at : at + p.shape[2]] = p
        at += p.shape[2]
    return buf[:, :, :total]


def extend_window(past: torch.Tensor | None, new: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(past ++ new, its last keep slots)`` along dim 2 of (B, H, n, D) caches.

    The first is what this call attends over (a view; ``new`` itself when there is no past), the
    second the state to carry (a view of a buffer with spare capacity, never of ``new``, so a long
    prompt's projections are not kept alive). A decoding step writes ``new`` into the spare capacity
    behind ``past`` (no copy of the window); when the capacity is used up, the window is copied into
    a fresh buffer: amortised O(1) copying per token. As with the softmax cache, a state is meant to be
    continued once. Under autograd it falls back to ``torch.cat``.
    """
    n = 0 if past is None else past.shape[2]
    m = new.shape[2]
    if keep <= 0:
        full = new if n == 0 else torch.cat((past, new.to(past.dtype)), dim=2)
        return full, new.new_empty(*new.shape[:2], 0, new.shape[3])
    if n == 0:
        return new, _new_buffer([new[:, :, max(0, m - keep) :]], keep)
    new = new.to(past.dtype)
    if torch.is_grad_enabled() and (past.requires_grad or new.requires_grad):
        full = torch.cat((past, new), dim=2)
        return full, full[:, :, -keep:]
    if _start_with_room(past, m):
        full = past.as_strided((*past.shape[:2], n + m, past.shape[3]), past.stride(), past.storage_offset())
        full[:, :, n:] = new
    else:
        full = _new_buffer([past, new], keep)
    return full, full[:, :, -keep:]


def band_mask(q_slots: torch.Tensor, k_slots: torch.Tensor, window: int) -> torch.Tensor:
    """(Tq, Tk) bool: key slot ``j`` is in query slot ``i``'s window, ``i - W < j <= i``."""
    diff = q_slots[:, None] - k_slots[None, :]
    return (diff >= 0) & (diff < window)


def key_slot_mask(attention_mask: torch.Tensor | None, slots: int) -> torch.Tensor | None:
    """The padding mask (B, slots) of the last ``slots`` tokens (None: no padding)."""
    return None if attention_mask is None else attention_mask[:, -slots:].bool()


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    n_past: int,
    window: int,
    block: int,
    scale: float,
    key_mask: torch.Tensor | None,
) -> torch.Tensor:
    """Band-masked softmax attention, query block by query block (through SDPA).

    ``q`` (B, H, T, d) are the queries at slots ``n_past .. n_past+T-1`` of the keys/values ``k``,
    ``v`` (B, H_kv, n_past+T, d); ``key_mask`` (B, n_past+T) marks real keys. Each block of ``block``
    queries sees only the keys its band reaches, so memory is O(block (block + W)). A padding query
    sees its own key (its output is unused), so no row is empty.
    """
    B, H, T, _ = q.shape
    rep = H // k.shape[1]
    outs = []
    for t0 in range(0, T, block):
        t1 = min(T, t0 + block)
        lo, hi = max(0, n_past + t0 - window + 1), n_past + t1
        q_slots = torch.arange(n_past + t0, n_past + t1, device=q.device)
        k_slots = torch.arange(lo, hi, device=q.device)
        band = band_mask(q_slots, k_slots, window)
        mask: torch.Tensor | None = band[None, None]
        if key_mask is not None:
            own = (q_slots[:, None] == k_slots[None, :])[None, None]
            mask = (band[None, None] & key_mask[:, None, None, lo:hi]) | own
        elif bool(band.all()):
            mask = None  # e.g. a decoding step: the sliced keys are exactly the window
        outs.append(
            F.scaled_dot_product_attention(
                q[:, :, t0:t1], k[:, :, lo:hi], v[:, :, lo:hi], attn_mask=mask, scale=scale, enable_gqa=rep > 1
            )
        )
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


@dataclass
class SlidingWindowOptions:
    """``window``: W, the number of most recent tokens (the query's own included) each query attends
    to. 64 is LoLCATs' window (Zhang et al. 2024); Mistral 7B uses 4096."""

    window: int = 64


@register_mixer("sliding-window")
class SlidingWindowAttention(ProjectedMixer):
    """Exact causal softmax attention over the last ``window`` tokens; see the module docstring."""

    forms = ("parallel", "chunk", "recurrent")
    default_form = "chunk"
    uses_rotary = True
    paper = "Beltagy et al. 2020 (Longformer, Sec. 3.1); Jiang et al. 2023 (Mistral 7B, Sec. 2)"
    Options = SlidingWindowOptions
    #: queries per block of the ``chunk`` form
    chunk_size: int = 128

    def __init__(self, config: MixerConfig) -> None:
        super().__init__(config)
        if self.opts.window < 1:
            raise MixerConfigError(f"sliding-window: window must be >= 1 token, got {self.opts.window}.")
        self.window = int(self.opts.window)
        self.scale = config.head_dim**-0.5

    def forward(
        self,
        x: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        state: Any | None = None,
        form: str | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Any]:
        """Band softmax over the cached window and ``x``; the state is ``(k, v, tokens seen)``."""
        B, T, _ = x.shape
        run_form = self.resolve_form(form, T, state is not None)
        k_past, v_past, seen = (None, None, 0) if state is None else state
        n = 0 if k_past is None else k_past.shape[2]
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask, B, seen, T, x.device)
        q, k, v = self.project(x, position_ids)
        k_all, k_keep = extend_window(k_past, k, self.window)
        v_all, v_keep = extend_window(v_past, v, self.window)
        block = {"parallel": max(T, 1), "chunk": max(1, self.chunk_size), "recurrent": 1}[run_form]
        o = window_attention(
            q,
            k_all,
            v_all,
            n_past=n,
            window=self.window,
            block=block,
            scale=self.scale,
            key_mask=key_slot_mask(attention_mask, n + T),
        )
        return self.proj.out(o), (k_keep, v_keep, seen + T)

    def attention_map(self, x: torch.Tensor, *, position_ids: torch.Tensor | None = None) -> AttentionMap:
        """``softmax(q k^T / sqrt(d))`` under the band mask, explicitly (the parallel form's weights)."""
        B, T, _ = x.shape
        if position_ids is None:
            position_ids = positions_from_mask(None, B, 0, T, x.device)
        q, k, v = self.project(x, position_ids)
        rep = q.shape[1] // k.shape[1]
        k, v = repeat_kv(k, rep), repeat_kv(v, rep)
        slots = torch.arange(T, device=x.device)
        band = band_mask(slots, slots, self.window)
        weights = ((q @ k.transpose(-1, -2)) * self.scale).masked_fill(~band, float("-inf")).softmax(-1)
        return AttentionMap(weights, v, self.proj.out)

    def state_size(self, seq_len: int) -> int:
        """Keys and values of the last ``min(L, W)`` tokens: ``2 H_kv d min(L, W)``."""
        return 2 * self.config.n_kv_heads * self.config.head_dim * min(seq_len, self.window)
