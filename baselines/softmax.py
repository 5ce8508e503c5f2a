"""Softmax attention (Vaswani et al. 2017, Eq. 1) through torch's scaled_dot_product_attention.

The reference method and the teacher every other method is converted from. Decoding keeps a KV
cache, so its state grows linearly with the context (``state_size``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from harness.mixer import MixerConfig
from harness.projections import ProjectedMixer, positions_from_mask
from harness.registry import register_mixer


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
            k = torch.cat((state[0], k), dim=2)
            v = torch.cat((state[1], v), dim=2)
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

    def state_size(self, seq_len: int) -> int:
        """K and V for every past token: 2 x heads_kv x head_dim x seq_len."""
        return 2 * self.config.n_kv_heads * self.config.head_dim * seq_len
