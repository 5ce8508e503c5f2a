"""Softmax attention (Vaswani et al. 2017, Eq. 1) through torch's scaled_dot_product_attention.

The reference method and the teacher every other method is converted from. Decoding keeps a KV
cache, so its state grows linearly with the context (``state_size``). The cache grows like a Python
list (:func:`append_kv`): a decoding step writes its key and value into spare capacity instead of
copying the whole cache, as ``torch.cat`` (and transformers' ``DynamicCache``) does every step, so
the decoding baseline the linear methods are compared against is not slowed by O(L) copies.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from harness.core.mixer import AttentionMap, MixerConfig
from harness.core.projections import ProjectedMixer, positions_from_mask, repeat_kv
from harness.core.registry import register_mixer

#: spare capacity allocated when a KV cache grows: a quarter of its new length, at least this many tokens
MIN_HEADROOM = 64


def _has_room(past: torch.Tensor, total: int) -> bool:
    """Whether ``past`` (B, H, n, D) is a prefix view of a buffer laid out as (B, H, cap, D) with
    ``cap >= total``."""
    B, H, _, D = past.shape
    st = past.stride()
    if st[3] != 1 or st[2] != D or st[1] % D or st[1] // D < total or (B > 1 and st[0] != H * st[1]):
        return False
    needed = past.storage_offset() + (B - 1) * st[0] + H * st[1]
    return past.untyped_storage().nbytes() >= needed * past.element_size()


def append_kv(past: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``past ++ new`` along the sequence (dim 2) of a (B, H, n, D) cache, with amortised O(1) copying
    per token: ``new`` is written into spare capacity behind ``past`` when there is some; otherwise
    both are copied into a buffer with ``max(MIN_HEADROOM, total / 4)`` tokens to spare, and the
    returned tensor is a view of it.

    Like transformers' ``DynamicCache`` (updated in place), a cache is meant to be continued once:
    two continuations of the same cache would share the spare capacity. Under autograd it falls back
    to ``torch.cat``."""
    n, m = past.shape[2], new.shape[2]
    total = n + m
    if torch.is_grad_enabled() and (past.requires_grad or new.requires_grad):
        return torch.cat((past, new), dim=2)
    new = new.to(past.dtype)
    if _has_room(past, total):
        out = past.as_strided((*past.shape[:2], total, past.shape[3]), past.stride(), past.storage_offset())
    else:
        B, H, _, D = past.shape
        buf = past.new_empty(B, H, total + max(MIN_HEADROOM, total // 4), D)
        out = buf[:, :, :total]
        out[:, :, :n] = past
    out[:, :, n:] = new
    return out


@register_mixer("softmax")
class SoftmaxAttention(ProjectedMixer):
    """``softmax(Q K^T / sqrt(d)) V`` with a causal mask; the state is the (K, V) cache."""

    forms = ("parallel",)
    default_form = "parallel"
    uses_rotary = True
    paper = "Vaswani et al. 2017, Attention Is All You Need (Eq. 1)"

    def __init__(self, config: MixerConfig) -> None:
        super().__init__(config)
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
        self.resolve_form(form, x.shape[1], state is not None)
        B, T, _ = x.shape
        past = 0 if state is None else state[0].shape[2]
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask, B, past, T, x.device)
        q, k, v = self.project(x, position_ids)
        if state is not None:
            k, v = append_kv(state[0], k), append_kv(state[1], v)
        new_state = (k, v)
        mask = None
        is_causal = past == 0 and T > 1
        if attention_mask is not None or (past and T > 1):
            S = past + T
            causal = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=past)
            mask = causal[None, None].expand(B, 1, T, S)
            if attention_mask is not None:
                keys = attention_mask[:, None, None, -S:].bool()
                # a padding query row would see no key at all; let it see itself (its output is unused)
                own = (torch.arange(S, device=x.device)[None] == torch.arange(T, device=x.device)[:, None] + past)[
                    None, None
                ]
                mask = (mask & keys) | own
            is_causal = False
        rep = q.shape[1] // k.shape[1]
        o = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, scale=self.scale, enable_gqa=rep > 1
        )
        return self.proj.out(o), new_state

    def attention_map(self, x: torch.Tensor, *, position_ids: torch.Tensor | None = None) -> AttentionMap:
        """``softmax(q k^T / sqrt(d))`` under the causal mask (Eq. 1), explicitly; ``A V`` through
        ``o_proj`` is what :meth:`forward` computes with SDPA."""
        B, T, _ = x.shape
        if position_ids is None:
            position_ids = positions_from_mask(None, B, 0, T, x.device)
        q, k, v = self.project(x, position_ids)
        rep = q.shape[1] // k.shape[1]
        k, v = repeat_kv(k, rep), repeat_kv(v, rep)
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        weights = ((q @ k.transpose(-1, -2)) * self.scale).masked_fill(future, float("-inf")).softmax(-1)
        return AttentionMap(weights, v, self.proj.out)

    def state_size(self, seq_len: int) -> int:
        """K and V for every past token: 2 x heads_kv x head_dim x seq_len."""
        return 2 * self.config.n_kv_heads * self.config.head_dim * seq_len
