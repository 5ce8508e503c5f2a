"""Shared machinery for linear-attention mixers: a method supplies a feature map and a decay.

Performer, PFF, cosFormer, RetNet and DiJiang all compute
``o_i = sum_{j<=i} gamma^(i-j) phi(q_i) . phi(k_j) v_j`` (optionally normalised), followed by an
output path (``o_proj``, or RetNet's GroupNorm + swish gate). :class:`LinearAttentionMixer` runs the
projections, rotary, padding mask, grouped-query heads, the three forms of
:mod:`harness.core.ops.linear_attention` and the decoding state; a subclass overrides
:meth:`feature_map`, and where needed :meth:`log_decay`, :meth:`output` and :attr:`normalize`. The
attention map (:meth:`LinearAttentionMixer.attention_map`, paper Fig. 3) comes from the same code.
"""

from __future__ import annotations

from typing import Any

import torch

from harness.core.mixer import AttentionMap
from harness.core.ops.linear_attention import attention_weights, linear_attention, linear_state_size
from harness.core.projections import ProjectedMixer, positions_from_mask, repeat_kv


class LinearAttentionMixer(ProjectedMixer):
    """Base class: linear attention with feature map ``phi`` and optional per-head decay."""

    forms = ("parallel", "chunk", "recurrent")
    default_form = "chunk"
    #: divide by sum_j gamma^(i-j) phi(q_i).phi(k_j) (Katharopoulos et al. 2020, Eq. 6)
    normalize: bool = True
    eps: float = 1e-6
    chunk_size: int = 64

    # -- what a method supplies --------------------------------------------------------------
    def feature_map(self, x: torch.Tensor, position_ids: torch.Tensor, is_query: bool) -> torch.Tensor:
        """phi: (B, H, T, head_dim) -> (B, H, T, feature_dim)."""
        raise NotImplementedError

    @property
    def feature_dim(self) -> int:
        """m, the number of features per head."""
        return self.config.head_dim

    def log_decay(self) -> torch.Tensor | None:
        """log gamma_h per head (H,), values <= 0; ``None`` for no decay."""
        return None

    def output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(B, H, T, d) mixed values -> (B, T, D); ``x`` is the mixer input (for gates)."""
        return self.proj.out(o)

    # -- the contract ------------------------------------------------------------------------
    def attention_inputs(
        self, x: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What every form mixes: ``phi(q)``, ``phi(k)`` (padding keys zeroed, so they add nothing to
        the state) and ``v``, (B, H, T, ·) with grouped-query heads repeated."""
        T = x.shape[1]
        q, k, v = self.project(x, position_ids)
        rep = self.config.n_heads // self.config.n_kv_heads
        fq = self.feature_map(q, position_ids, True)
        fk = self.feature_map(repeat_kv(k, rep) if rep > 1 else k, position_ids, False)
        if fk.shape[1] != fq.shape[1]:
            fk = repeat_kv(fk, rep)
        v = repeat_kv(v, rep)
        if attention_mask is not None:
            keep = attention_mask[:, -T:].to(fk.dtype)[:, None, :, None]
            fk = fk * keep
        return fq, fk, v

    def forward(
        self,
        x: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        state: Any | None = None,
        form: str | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Any]:
        B, T, _ = x.shape
        run_form = self.resolve_form(form, T, state is not None)
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask, B, 0, T, x.device)
        fq, fk, v = self.attention_inputs(x, position_ids, attention_mask)
        o, new_state = linear_attention(
            fq,
            fk,
            v,
            form=run_form,
            log_decay=self.log_decay(),
            normalize=self.normalize,
            eps=self.eps,
            initial_state=state,
            output_final_state=True,
            chunk_size=self.chunk_size,
        )
        return self.output(o, x), new_state

    def attention_map(self, x: torch.Tensor, *, position_ids: torch.Tensor | None = None) -> AttentionMap:
        """``A_ij = gamma^(i-j) phi(q_i) . phi(k_j)`` (row-normalised when :attr:`normalize`), from the
        same :meth:`attention_inputs` the forms run; ``A v`` through :meth:`output` is the output."""
        B, T, _ = x.shape
        if position_ids is None:
            position_ids = positions_from_mask(None, B, 0, T, x.device)
        fq, fk, v = self.attention_inputs(x, position_ids, None)
        weights = attention_weights(fq, fk, log_decay=self.log_decay(), normalize=self.normalize, eps=self.eps)
        return AttentionMap(weights, v, lambda o: self.output(o.to(x.dtype), x))

    def state_size(self, seq_len: int) -> int:
        """Constant in ``seq_len``: heads x m x (head_dim [+1 for the normaliser])."""
        return linear_state_size(self.config.n_heads, self.feature_dim, self.config.head_dim, self.normalize)
