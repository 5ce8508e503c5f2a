"""A causal Linformer (after Wang et al. 2020, "Linformer: Self-Attention with Linear Complexity").

**The published method is not causal.** Linformer (Eq. 7) projects the keys and values of the
whole sequence along the sequence axis with learned ``E, F`` (k x n):

    head = softmax(Q (E K)^T / sqrt(d)) F V,

so every output sees every token, future ones included. A decoder needs a causal variant; ours:

* the sequence is cut into blocks of ``b = block_size`` positions;
* a query attends **exactly** to the earlier tokens of its own block, and to ``k`` **compressed**
  keys/values summarising all *completed earlier blocks*:
  ``K~ = sum_{j in earlier blocks} E[:, j] k_j``, ``V~ = sum_j F[:, j] v_j`` — Linformer's own
  ``E K`` and ``F V`` with the columns of the current and future blocks left out;
* one softmax over both sets of entries (``k`` summaries + at most ``b`` exact keys), scaled by
  ``1/sqrt(d)`` like the teacher.

So output ``i`` depends only on tokens ``<= i``; the first block (no summaries yet) is exact
softmax attention. ``E, F`` have one column per position, shared by all heads (the paper's
headwise sharing), separate for keys and values: the maximum length ``max_seq_len`` is binding and
longer inputs are rejected with a clear error (``check_length``). Time is ``O(T (k + b + n))`` for
windows of ``n`` tokens (below) and the
decoding state is constant: the two ``k x d`` summaries, the current block's exact keys/values
(``b`` slots) and the number of tokens seen — ``2 H_kv d (k + b) + 1`` numbers per sequence.
Defaults: ``b = max_seq_len // 16`` and ``k = max_seq_len // 8`` (for 2048 tokens: b = 128,
k = 256, i.e. Linformer's compression ratio n/k = 8).

Forms: ``parallel`` computes every query against every key with block masks (quadratic reference);
``chunk`` walks the sequence in windows of ``chunk_size`` tokens (``max(b, 64)``: with a small block,
a window of one block would cost a Python step per few tokens), folding completed blocks into the
summaries; ``recurrent`` is the same with windows of one token. Left padding: padding tokens are
neither keys nor part of a summary, positions count real tokens only.

Conversion: Q/K/V/O from the teacher, and the teacher's rotary on q and k (a summary key then is a
fixed combination of rotated keys, so ``q . K~`` is a combination of the teacher's own scores).
New parameters ``E`` and ``F`` (k x max_seq_len): Glorot uniform with gain ``1/sqrt(2)``, as in
fairseq's reference Linformer (``reset_parameters``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.core.mixer import MixerConfig, MixerConfigError
from harness.core.projections import ProjectedMixer, positions_from_mask, repeat_kv
from harness.core.registry import register_mixer

LinformerState = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@register_mixer("linformer")
class Linformer(ProjectedMixer):
    """Causal block Linformer: exact attention in the block + compressed summaries of earlier blocks."""

    paper = "Wang et al. 2020, Linformer: Self-Attention with Linear Complexity (Eq. 7; causal block variant)"
    uses_rotary = True
    forms = ("parallel", "chunk", "recurrent")
    default_form = "chunk"
    #: the least window of the chunk form: each window costs O(n (n + b + k)), the windows T / n Python steps
    CHUNK_WINDOW = 64

    @dataclass
    class Options:
        block_size: int | None = None  # b; None = max_seq_len // 16
        compressed_dim: int | None = None  # k; None = max_seq_len // 8

    def __init__(self, config: MixerConfig) -> None:
        super().__init__(config)
        L = config.max_seq_len
        self.block_size = self.opts.block_size or max(1, L // 16)
        self.compressed_dim = self.opts.compressed_dim or max(1, L // 8)
        if self.block_size <= 0 or self.compressed_dim <= 0:
            raise MixerConfigError(
                f"linformer: block_size and compressed_dim must be positive, got {self.block_size}, "
                f"{self.compressed_dim}."
            )
        # the chunk form's window (computation only, not semantics): whole blocks or CHUNK_WINDOW tokens,
        # whichever is longer, so a small block does not mean a Python step per few tokens
        self.chunk_size = max(self.block_size, self.CHUNK_WINDOW)
        self.compress_k = nn.Parameter(torch.empty(self.compressed_dim, L))
        self.compress_v = nn.Parameter(torch.empty(self.compressed_dim, L))
        self.reset_parameters(0.02)

    @torch.no_grad()
    def reset_parameters(self, init_std: float) -> None:
        """E and F: Glorot uniform, gain 1/sqrt(2) (fairseq Linformer); the projections keep theirs."""
        nn.init.xavier_uniform_(self.compress_k, gain=1 / math.sqrt(2))
        nn.init.xavier_uniform_(self.compress_v, gain=1 / math.sqrt(2))

    # -- state ---------------------------------------------------------------------------------
    def empty_state(self, batch: int, ref: torch.Tensor) -> LinformerState:
        """Zero summaries, an empty block buffer, no tokens seen."""
        c = self.config
        z = ref.new_zeros
        return (
            z(batch, c.n_kv_heads, self.compressed_dim, c.head_dim),
            z(batch, c.n_kv_heads, self.compressed_dim, c.head_dim),
            z(batch, c.n_kv_heads, self.block_size, c.head_dim),
            z(batch, c.n_kv_heads, self.block_size, c.head_dim),
            torch.zeros(batch, dtype=torch.long, device=ref.device),
        )

    def state_size(self, seq_len: int) -> int:
        """2 H_kv d (k + b) + 1 numbers, whatever ``seq_len``."""
        c = self.config
        return 2 * c.n_kv_heads * c.head_dim * (self.compressed_dim + self.block_size) + 1

    # -- the computation -----------------------------------------------------------------------
    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        pos: torch.Tensor,
        valid: torch.Tensor,
        state: LinformerState,
    ) -> tuple[torch.Tensor, LinformerState]:
        """Attention of ``n`` new tokens given the state; returns (output (B, H, n, d), new state).

        q (B, H, n, d); k, v (B, H_kv, n, d); pos (B, n) absolute positions; valid (B, n) real tokens.
        Keys are the current block's buffer followed by the new tokens; a query sees (a) exact keys of
        its own block at positions <= its own and (b) k summaries = state summaries + E-weighted keys
        of blocks before its own that are not yet folded into the state.
        """
        sk, sv, bk, bv, count = state
        b, L = self.block_size, self.config.max_seq_len
        B, H, n, d = q.shape
        rep = H // k.shape[1]
        slots = torch.arange(b, device=q.device)
        cur = count // b
        kpos = torch.cat((cur[:, None] * b + slots, pos), dim=1)  # (B, b + n)
        kvalid = torch.cat((slots[None] < (count % b)[:, None], valid), dim=1)
        kk = torch.cat((bk, k), dim=2)
        vv = torch.cat((bv, v), dim=2)
        blk_k, blk_q = kpos // b, pos // b
        exact = kvalid[:, None] & (blk_k[:, None] == blk_q[:, :, None]) & (kpos[:, None] <= pos[:, :, None])
        earlier = kvalid[:, None] & (blk_k[:, None] < blk_q[:, :, None])  # (B, n, b + n)
        col = kpos.clamp(max=L - 1)
        e_g = self.compress_k.to(q.dtype)[:, col].permute(1, 2, 0)  # (B, b + n, k): E[:, pos_j]
        f_g = self.compress_v.to(q.dtype)[:, col].permute(1, 2, 0)

        scale = d**-0.5
        kk_h, vv_h = repeat_kv(kk, rep), repeat_kv(vv, rep)
        scores = (q @ kk_h.transpose(-1, -2)) * scale  # (B, H, n, b + n)
        earlier_f = earlier[:, None].to(q.dtype)
        s_sum = (q @ repeat_kv(sk, rep).transpose(-1, -2)) * scale + (scores * earlier_f) @ e_g[:, None]
        has_sum = (blk_q >= 1)[:, None, :, None].expand(B, 1, n, self.compressed_dim)
        logits = torch.cat((s_sum, scores), dim=-1)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        allowed = torch.cat((has_sum, exact[:, None]), dim=-1)
        logits = logits.masked_fill(~allowed, torch.finfo(logits.dtype).min)  # finite: no NaN rows
        w = torch.softmax(logits, dim=-1).to(q.dtype)
        w_sum, w_ex = w[..., : self.compressed_dim], w[..., self.compressed_dim :]
        mix = (w_sum @ f_g[:, None].transpose(-1, -2)) * earlier_f + w_ex  # weights on raw values
        out = w_sum @ repeat_kv(sv, rep) + mix @ vv_h

        # new state: fold blocks completed by now into the summaries, keep the current block's slots
        seen = torch.where(valid, pos + 1, torch.zeros_like(pos)).amax(dim=1) if n else count
        count_new = torch.maximum(count, seen)
        cur_new = (count_new // b)[:, None]
        fold = (kvalid & (blk_k < cur_new)).to(q.dtype)[..., None]
        sk = sk + torch.einsum("bjr,bhjd->bhrd", e_g * fold, kk)
        sv = sv + torch.einsum("bjr,bhjd->bhrd", f_g * fold, vv)
        keep = (kvalid & (blk_k == cur_new))[..., None] & ((kpos % b)[..., None] == slots)
        keep = keep.to(q.dtype)  # (B, b + n, b): token j -> slot pos_j mod b
        bk = torch.einsum("bjs,bhjd->bhsd", keep, kk)
        bv = torch.einsum("bjs,bhjd->bhsd", keep, vv)
        return out, (sk, sv, bk, bv, count_new)

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
        past = 0 if state is None else int(state[4].max())
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask, B, past, T, x.device)
        valid = (
            torch.ones(B, T, dtype=torch.bool, device=x.device)
            if attention_mask is None
            else attention_mask[:, -T:].bool()
        )
        if T:
            self.check_length(int(position_ids.max()) + 1)
        q, k, v = self.project(x, position_ids)
        if state is None:
            state = self.empty_state(B, q)
        else:
            state = tuple(s.to(q.dtype) if s.is_floating_point() else s for s in state)
        window = {"parallel": max(T, 1), "chunk": max(1, self.chunk_size), "recurrent": 1}[run_form]
        outs = []
        for s in range(0, T, window):
            sl = slice(s, s + window)
            o, state = self.attend(q[:, :, sl], k[:, :, sl], v[:, :, sl], position_ids[:, sl], valid[:, sl], state)
            outs.append(o)
        o = torch.cat(outs, dim=2) if outs else q
        return self.proj.out(o), state
