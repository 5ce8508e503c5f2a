"""Performer's FAVOR+ (Choromanski et al. 2021, "Rethinking Attention with Performers", ICLR).

Softmax attention ``softmax(Q K^T / sqrt(d)) V`` is approximated by linear attention with positive
random features of the softmax kernel (Lemma 1, Eq. 7 with h(x) = exp(-|x|^2/2)):

    phi(x) = exp(W x - |x|^2 / 2) / sqrt(m),   E_W[phi(q) . phi(k)] = exp(q . k),

applied to ``x = q / d^(1/4)`` and ``x = k / d^(1/4)`` so that the kernel is the teacher's
``exp(q . k / sqrt(d))``; the attention is normalised (Eq. 4-5: ``D^-1 A V``) and causal through
prefix sums (Section 2.6), i.e. the shared forms of :mod:`harness.core.ops.linear_attention`.

* **Orthogonal random features** (Section 2.4): the rows of ``W`` come in blocks of ``d`` exactly
  orthogonal directions (QR of a Gaussian matrix), each row rescaled to the length of an independent
  ``N(0, I_d)`` vector, so every row is still marginally Gaussian (the estimator stays unbiased) and
  the variance drops (Theorem 2). ``orthogonal=False`` gives plain Monte Carlo (i.i.d. Gaussian rows),
  the first row of the DiJiang paper's ablation (Table 2).
* ``m = n_features`` defaults to the head size: the DiJiang paper compares methods at equal cost.
* **Redraw** (Section 4, "feature redrawing"): with ``redraw_interval = N > 0`` the features are
  redrawn every ``N`` training forward passes (never in eval mode, never inside a decoding run).
* **Stable exponentials.** Every key feature ``i`` is shifted by ``c_i``, the running maximum of
  the key exponents ``e_ji = (W k_j)_i - |k_j|^2/2`` seen so far (per sequence, head and feature),
  and the query exponents ``a_i`` get ``+ c_i`` back, minus their per-token maximum
  ``s_q = max_i (a_i + c_i)``: each product ``phi(q)_i phi(k_j)_i = exp(a_i + e_ji - s_q) / m`` is
  the FAVOR+ term times ``exp(-s_q)``, one factor per query that cancels in the normalised output.
  All features lie in ``(0, 1/sqrt(m)]``. When a later call sees larger key exponents, the
  carried state is rescaled row by row by ``exp(c_old - c_new) <= 1`` (the online-softmax trick),
  so decoding continues the same function and nothing overflows. The attention runs in float32
  whatever the model dtype (cast back at the end). The stabiliser is updated between the windows
  of a form: once per call (``parallel``), per chunk (``chunk``), per token (``recurrent`` and
  decoding). The reference code shifts keys by one maximum over the whole sequence, future tokens
  included. Limit (shared with the reference): inside one window the shift covers all of that
  window's keys, so in float32 a query whose kernel values lie more than ~80 nats below the largest
  key exponent of its window loses precision (the output stays finite); ``recurrent`` has no such
  window and matches the float64 definition even where plain float32 FAVOR+ underflows to 0/0.

Attention map (paper Fig. 3): the ``parallel`` form's, from :meth:`Performer.attention_inputs` — the
same stabilised features, over the whole input as one window — so the map drawn is the function the
model computes (the contract tests check ``map @ V`` against the output).

State per sequence: ``H x m x (d + 1)`` (prefix sums of ``phi(k) v^T`` and ``phi(k)``) plus the
``H x m`` key stabilisers.

Conversion: Q/K/V/O are the teacher's (:meth:`ProjectedMixer.init_from_attention`); the random
features are a buffer, not trained (they are saved with the model so it reloads identically), and
the teacher's rotary embedding is kept on q and k so the kernel approximates the teacher's own
attention scores. No new trainable parameters, so :meth:`reset_parameters` has nothing to do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from harness.core.mixer import MixerConfig, MixerConfigError
from harness.core.ops.linear_attention import linear_attention, linear_state_size
from harness.core.projections import positions_from_mask, repeat_kv
from harness.core.registry import register_mixer
from harness.layers.linear_mixer import LinearAttentionMixer


def draw_features(
    m: int,
    d: int,
    orthogonal: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Random feature directions W (m, d) in float32 (Performer Section 2.4).

    ``orthogonal``: stacked blocks of ``d`` orthogonal rows (the last block truncated), row norms
    drawn as the norms of independent ``N(0, I_d)`` vectors (chi distribution with ``d`` degrees of
    freedom), so each row is marginally ``N(0, I_d)``. Otherwise i.i.d. ``N(0, I_d)`` rows.
    """
    if m <= 0 or d <= 0:
        raise MixerConfigError(f"random features need m > 0 and d > 0, got m={m}, d={d}.")
    kw = dict(generator=generator, device=device, dtype=torch.float32)
    if not orthogonal:
        return torch.randn(m, d, **kw)
    q, r = torch.linalg.qr(torch.randn(-(-m // d), d, d, **kw))  # one orthogonal block per d rows
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]  # Haar-distributed
    w = q.transpose(-1, -2).reshape(-1, d)[:m]
    norms = torch.randn(m, d, **kw).norm(dim=-1, keepdim=True)
    return w * norms


@register_mixer("performer")
class Performer(LinearAttentionMixer):
    """FAVOR+ causal linear attention; see the module docstring."""

    paper = "Choromanski et al. 2021, Rethinking Attention with Performers (FAVOR+, Lemma 1, Sec. 2.4-2.6)"
    uses_rotary = True
    forms = ("parallel", "chunk", "recurrent")
    default_form = "chunk"
    normalize = True
    eps = 1e-12  # float32 attention; the stabilised denominator is >= exp(-(spread of exponents))

    @dataclass
    class Options:
        n_features: int | None = None  # m; None = head size
        orthogonal: bool = True  # False: plain Monte Carlo (i.i.d. Gaussian directions)
        redraw_interval: int = 0  # redraw W every N training forward passes (0: never)

    def __init__(self, config: MixerConfig) -> None:
        super().__init__(config)
        m = self.opts.n_features or config.head_dim
        if m <= 0 or self.opts.redraw_interval < 0:
            raise MixerConfigError(
                f"performer: n_features must be positive and redraw_interval >= 0, got "
                f"n_features={self.opts.n_features}, redraw_interval={self.opts.redraw_interval}."
            )
        self.m = m
        self.register_buffer("features", draw_features(m, config.head_dim, self.opts.orthogonal))
        self._calls = 0

    @property
    def feature_dim(self) -> int:
        return self.m

    @torch.no_grad()
    def redraw_features(self, generator: torch.Generator | None = None) -> None:
        """Draw new directions W in place (Performer's feature redrawing)."""
        w = draw_features(self.m, self.config.head_dim, self.opts.orthogonal, generator, device="cpu")
        self.features.copy_(w.to(self.features.device))

    def _scaled(self, x: torch.Tensor) -> torch.Tensor:
        """x / d^(1/4) in float32 (float64 inputs stay float64)."""
        return x.to(torch.promote_types(x.dtype, torch.float32)) * self.config.head_dim**-0.25

    def exponents(self, x: torch.Tensor) -> torch.Tensor:
        """``W x' - |x'|^2/2`` with ``x' = x / d^(1/4)``: (B, H, T, d) -> (B, H, T, m), float32 or wider."""
        xs = self._scaled(x)
        return xs @ self.features.to(xs.dtype).T - 0.5 * xs.pow(2).sum(-1, keepdim=True)

    def stabilised_features(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        keep: torch.Tensor | None,
        c_old: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query and key features sharing a per-feature key stabiliser ``c`` (B, H, 1, m).

        ``phi(k_j)_i = exp(e_ji - c_i) / sqrt(m)`` and ``phi(q)_i = exp(a_i + c_i - s_q) / sqrt(m)``
        with ``c_i`` the running max of the key exponents ``e_ji`` and ``s_q = max_i (a_i + c_i)``:
        their products are ``exp(a_i + e_ji - s_q) / m``, the FAVOR+ kernel up to the per-query
        factor ``exp(-s_q)``, which cancels in the normalised attention. ``keep`` (B, 1, T, 1) marks
        real tokens (padding enters neither the max nor the state). Returns (phi(q), phi(k), c).
        """
        ek = self.exponents(k)
        masked = ek if keep is None else ek.masked_fill(keep == 0, float("-inf"))
        c = masked.detach().amax(dim=-2, keepdim=True)
        if c_old is not None:
            c = torch.maximum(c, c_old)
        c_safe = torch.where(torch.isfinite(c), c, torch.zeros_like(c))  # -inf: no key seen yet
        fk = torch.exp(ek - c_safe) / math.sqrt(self.m)
        if keep is not None:
            fk = fk * keep.to(fk.dtype)
        aq = self.exponents(q) + c_safe
        fq = torch.exp(aq - aq.detach().amax(dim=-1, keepdim=True)) / math.sqrt(self.m)
        return fq, fk, c

    def _heads(
        self, x: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """q, k, v (B, H, T, d) with grouped-query heads repeated, and ``keep`` (B, 1, T, 1) marking
        real tokens (None without padding)."""
        T = x.shape[1]
        q, k, v = self.project(x, position_ids)
        rep = self.config.n_heads // self.config.n_kv_heads
        keep = None if attention_mask is None else attention_mask[:, -T:][:, None, :, None]
        return q, repeat_kv(k, rep), repeat_kv(v, rep), keep

    def attention_inputs(
        self, x: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """phi(q), phi(k), v of a fresh sequence taken as one window, as the ``parallel`` form
        computes them (:meth:`stabilised_features`); the attention map is built from these."""
        q, k, v, keep = self._heads(x, position_ids, attention_mask)
        fq, fk, _ = self.stabilised_features(q, k, keep, None)
        return fq, fk, v.to(fk.dtype)

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
        if self.training and self.opts.redraw_interval and state is None:
            if self._calls % self.opts.redraw_interval == 0 and self._calls:
                self.redraw_features()
            self._calls += 1
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask, B, 0, T, x.device)
        q, k, v, keep = self._heads(x, position_ids, attention_mask)
        s_run, c_run = (None, None) if state is None else state
        # the key stabiliser is updated causally between windows: the whole call (parallel), each
        # chunk (chunk) or each token (recurrent); all compute the same function
        window = {"parallel": max(T, 1), "chunk": max(1, self.chunk_size), "recurrent": 1}[run_form]
        outs = []
        for t0 in range(0, T, window):
            sl = slice(t0, t0 + window)
            keep_w = None if keep is None else keep[:, :, sl]
            fq, fk, c = self.stabilised_features(q[:, :, sl], k[:, :, sl], keep_w, c_run)
            if s_run is not None:  # re-express the carried sums with the new stabiliser (factors <= 1)
                c_safe = torch.where(torch.isfinite(c), c, torch.zeros_like(c))
                s_run = s_run * torch.exp(c_run - c_safe).transpose(-1, -2)
            o, s_run = linear_attention(
                fq,
                fk,
                v[:, :, sl].to(fk.dtype),
                form=run_form,
                normalize=True,
                eps=self.eps,
                initial_state=s_run,
                output_final_state=True,
                chunk_size=self.chunk_size,
            )
            c_run = c
            outs.append(o)
        o = torch.cat(outs, dim=2) if outs else q.new_zeros(B, self.config.n_heads, 0, self.config.head_dim)
        if s_run is None:  # empty input
            return self.output(o.to(x.dtype), x), state
        return self.output(o.to(x.dtype), x), (s_run, c_run)

    def state_size(self, seq_len: int) -> int:
        """H x m x (d + 1) prefix sums plus the H x m key stabilisers; constant in ``seq_len``."""
        c = self.config
        return linear_state_size(c.n_heads, self.m, c.head_dim, True) + c.n_heads * self.m
