"""Sliding window + linear attention in one normalised attention (Zhang et al. 2024, "LoLCATs:
On Low-Rank Linearizing of Large Language Models", arXiv 2410.10254; reference code
``hybrid_attention_quadratic`` in ``src/model/linear_attention/linear_window_attention_sw.py``): exact
softmax over the last ``W`` tokens, a linear-attention method beyond them.

For query ``i`` (window ``i-W < j <= i``, the query's own token included):

    y_i = [ sum_{win} exp(s_ij - m_i) v_j + f sum_{j <= i-W} gamma^(i-j) phi(q_i).phi(k_j) v_j ]
        / [ sum_{win} exp(s_ij - m_i)     + f sum_{j <= i-W} gamma^(i-j) phi(q_i).phi(k_j) + eps ]

``s_ij = q_i . k_j / sqrt(d)`` with the teacher's rotary (the softmax part is the teacher's attention
restricted to the window), ``m_i`` the largest score inside the window (every form uses the same
stabiliser, so they compute the same function), ``phi``, ``gamma`` and the output path (gates,
GroupNorm, ``o_proj``) those of a wrapped linear method (option ``linear``, default ``dijiang``, with
``linear_options``), and ``f = exp(log_factor_h)`` a learnable per-head factor (LoLCATs' window
factor, there put on the softmax part: ``f`` is its inverse). ``eps`` is the wrapped method's.

**Which linear methods.** Only normalised ones (:attr:`LinearAttentionMixer.normalize`): their
scores are positive and can share the softmax's denominator. Methods with a ``normalize`` option
(``dijiang``, ``pff``) get ``normalize=True`` unless ``linear_options`` says otherwise; methods that
are not normalised (``retnet``, ``dijiang-official``) or that compute their features inside their
own ``forward`` (``performer``'s running key stabiliser) are refused with one line.

**O(T) prefill through the shared op.** The sum beyond the window is causal linear attention with
keys and values shifted right by ``W`` positions (zeros in front) and keys scaled by ``gamma^W``:

    sum_{j <= i-W} gamma^(i-j) phi(k_j) v_j  =  sum_{t <= i} gamma^(i-t) [gamma^W phi(k_{t-W})] v_{t-W},

so :func:`harness.core.ops.linear_attention.linear_attention` computes it unnormalised, on ``v``
augmented with a ones column (numerator and denominator at once): the ``chunk`` form for prefill,
the ``recurrent`` form for decoding, where the shifted key at step ``i`` is the token leaving the
window. The softmax part runs query block by query block over the band (O(T W)).

Decoding state: the window's keys (as the linear method sees them) and values, ``min(L, W)`` tokens,
plus the linear state ``H x m x (d + 1)``: ``state_size(L) = 2 H_kv d min(L, W) + H m (d + 1)``,
constant once ``L >= W``. ``phi(k)`` is computed when a token leaves the window, not cached.

Conversion (LoLCATs' attention transfer): :meth:`init_from_attention` delegates to the wrapped method, which
receives the teacher's Q/K/V/O; the teacher's projections live at ``proj`` as in ``softmax`` (so the
``transfer`` objective trains only the linear method's own parameters and ``log_factor``).

**Initial f = 2** (``factor_init``): LoLCATs' initialisation. Its code weights the window's
``exp(s_ij - m_i)`` by ``sigmoid(w_h)`` with ``w_h = 0`` at the start and the linear scores by 1, the
same function as ``f = 1 / sigmoid(0) = 2`` here. ``f`` trains, log-parametrised (it stays positive).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from baselines.sliding_window import band_mask, extend_window, key_slot_mask
from harness.core.mixer import AttentionMap, AttentionWeights, MixerConfig, MixerConfigError, TokenMixer
from harness.core.ops.linear_attention import linear_attention, linear_state_size
from harness.core.projections import positions_from_mask, repeat_kv
from harness.core.registry import build_mixer, get_method, register_mixer
from harness.core.rotary import apply_rotary, rotary_cos_sin
from harness.layers.linear_mixer import LinearAttentionMixer


@dataclass
class WindowLinearOptions:
    """``window``: W, tokens under exact softmax (the query's own included; 0 = the linear method
    alone, normalised). ``linear``: the wrapped linear method; ``linear_options``: its options.
    ``factor_init``: f at initialisation (see the module docstring)."""

    window: int = 64
    linear: str = "dijiang"
    linear_options: dict[str, Any] = field(default_factory=dict)
    factor_init: float = 2.0


def wrapped_linear_method(name: str, options: dict[str, Any], config: MixerConfig) -> LinearAttentionMixer:
    """Build linear method ``name`` for window + linear attention, or refuse it with one line.

    A method with a ``normalize`` option gets ``normalize=True`` unless ``options`` sets it."""
    cls = get_method(name)
    base = LinearAttentionMixer
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise MixerConfigError(f"window-linear: linear={name!r} is not a linear-attention method ({base.__name__}).")
    if cls.forward is not base.forward or cls.attention_inputs is not base.attention_inputs:
        raise MixerConfigError(
            f"window-linear: linear={name!r} computes its features inside its own forward (not per token through "
            "feature_map), so its scores cannot be shifted past the window; use dijiang, pff or cosformer."
        )
    opts = dict(options)
    fields = {f.name for f in dataclasses.fields(cls.Options)} if dataclasses.is_dataclass(cls.Options) else set()
    if "normalize" in fields:
        opts.setdefault("normalize", True)
    mixer = build_mixer(name, dataclasses.replace(config, options=opts))
    if not mixer.normalize:
        raise MixerConfigError(
            f"window-linear: linear={name!r} is not normalised (normalize=False), so its scores cannot share the "
            "softmax's denominator; use a normalised method (dijiang, pff with normalize=True, cosformer)."
        )
    return mixer


def _gather_shifted(t: torch.Tensor, n_past: int, window: int, length: int) -> torch.Tensor:
    """Rows ``n_past + i - window`` (i < length) of ``t`` (B, H, S, X) along dim 2, zeros where that is
    before the first row: the keys/values leaving the window, one per query."""
    start = n_past - window
    if start >= 0:
        return t[:, :, start : start + length]
    zeros = min(length, -start)
    body = t[:, :, : length - zeros]
    return torch.cat((t.new_zeros(*t.shape[:2], zeros, t.shape[3]), body), dim=2)


def window_softmax_sums(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    n_past: int,
    window: int,
    block: int,
    scale: float,
    key_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised band softmax, query block by query block: ``A_i = sum_win exp(s_ij - m_i) v_j``
    (B, H, T, d) and ``Z_i = sum_win exp(s_ij - m_i)`` (B, H, T), in float32 (float64 for float64).

    Slots as in :func:`baselines.sliding_window.window_attention`: queries at ``n_past ..``, keys and
    values (B, H_kv, n_past+T, d), ``key_mask`` (B, n_past+T). Grouped-query heads share their keys
    through a broadcast (no copy). A padding query sees its own key, so ``m_i`` is finite."""
    B, H, T, d = q.shape
    hkv = k.shape[1]
    ct = torch.promote_types(q.dtype, torch.float32)
    qg = q.view(B, hkv, H // hkv, T, d)
    A, Z = [], []
    for t0 in range(0, T, block):
        t1 = min(T, t0 + block)
        lo, hi = max(0, n_past + t0 - window + 1), n_past + t1
        s = (qg[:, :, :, t0:t1].to(ct) @ k[:, :, None, lo:hi].to(ct).transpose(-1, -2)) * scale
        if t1 - t0 > 1 or key_mask is not None:  # one query without padding sees exactly its window
            q_slots = torch.arange(n_past + t0, n_past + t1, device=q.device)
            k_slots = torch.arange(lo, hi, device=q.device)
            allowed = band_mask(q_slots, k_slots, window)[None, None, None]  # (1, 1, 1, tb, kb)
            if key_mask is not None:
                own = (q_slots[:, None] == k_slots[None, :])[None, None, None]
                allowed = (allowed & key_mask[:, None, None, None, lo:hi]) | own
            s = s.masked_fill(~allowed, float("-inf"))
        p = torch.exp(s - s.amax(-1, keepdim=True))
        A.append((p @ v[:, :, None, lo:hi].to(ct)).reshape(B, H, t1 - t0, d))
        Z.append(p.sum(-1).reshape(B, H, t1 - t0))
    if len(A) == 1:
        return A[0], Z[0]
    return torch.cat(A, dim=2), torch.cat(Z, dim=2)


@register_mixer("window-linear")
class WindowLinearAttention(TokenMixer):
    """Softmax over the last ``window`` tokens plus a wrapped linear method beyond them, one
    normaliser (LoLCATs); see the module docstring."""

    forms = ("parallel", "chunk", "recurrent")
    default_form = "chunk"
    uses_rotary = True
    convertible = True
    paper = "Zhang et al. 2024 (LoLCATs, arXiv 2410.10254): sliding window + linear attention"
    Options = WindowLinearOptions
    #: tokens per chunk of the linear part's chunk form and per query block of the softmax part
    chunk_size: int = 64

    def __init__(self, config: MixerConfig) -> None:
        super().__init__(config)
        o = self.opts
        if o.window < 0:
            raise MixerConfigError(f"window-linear: window must be >= 0 tokens, got {o.window}.")
        if not o.factor_init > 0:
            raise MixerConfigError(f"window-linear: factor_init must be positive, got {o.factor_init}.")
        self.window = int(o.window)
        self.scale = config.head_dim**-0.5
        linear = wrapped_linear_method(o.linear, o.linear_options, config)
        # the teacher's projections are registered here, as `proj` (softmax's names); the wrapped method
        # keeps a plain reference to the same module for its own code (its output path uses it)
        proj = linear.proj
        del linear._modules["proj"]
        linear.__dict__["proj"] = proj
        self.proj = proj
        self.linear = linear
        self.log_factor = nn.Parameter(torch.full((config.n_heads,), math.log(o.factor_init)))

    # -- pieces ------------------------------------------------------------------------------
    def factor(self) -> torch.Tensor:
        """f per head (H,), positive (exp of the learnable ``log_factor``)."""
        return self.log_factor.exp()

    def _rotate(self, t: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """The teacher's rotary embedding of ``t`` (B, H, T, d) at ``position_ids`` (B, T)."""
        if not self.config.rotary_dim:
            return t
        cos, sin = rotary_cos_sin(position_ids, self.config.rotary_dim, self.config.rope_theta, t.dtype)
        return apply_rotary(t, cos, sin)

    def _views(
        self, x: torch.Tensor, position_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q for the softmax, q for the linear method, k as the linear method sees it, v) from one
        projection: q/k are rotated for the linear method iff it uses rotary; the softmax always."""
        if self.linear.uses_rotary or not self.config.rotary_dim:
            q, k, v = self.linear.project(x, position_ids)  # rotated iff the linear method rotates
            return q, q, k, v
        q, k, v = self.proj.qkv(x)
        return self._rotate(q, position_ids), q, k, v

    def _softmax_keys(self, k_all: torch.Tensor, position_ids: torch.Tensor, n_past: int) -> torch.Tensor:
        """Keys of all slots as the softmax sees them: the cached keys are the linear method's, so they
        are rotated here when it does not rotate (positions of cached slots counted back from the
        first new token; padded slots get clamped positions, they are masked anyway)."""
        if self.linear.uses_rotary or not self.config.rotary_dim:
            return k_all
        back = torch.arange(-n_past, 0, device=k_all.device)
        pos = torch.cat(((position_ids[:, :1] + back).clamp(min=0), position_ids), dim=1)
        return self._rotate(k_all, pos)

    def _leaving(
        self,
        k_all: torch.Tensor,
        v_all: torch.Tensor,
        position_ids: torch.Tensor,
        key_mask: torch.Tensor | None,
        n_past: int,
        log_decay: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The shifted keys ``gamma^W phi(k_{t-W})`` (B, H, T, m) and values ``[v_{t-W}, 1]``
        (B, H, T, d+1) of the tokens leaving the window, zero where none leaves or it is padding."""
        T = position_ids.shape[1]
        rep = self.config.n_heads // self.config.n_kv_heads
        W = self.window
        k_out = repeat_kv(_gather_shifted(k_all, n_past, W, T), rep)
        v_out = repeat_kv(_gather_shifted(v_all, n_past, W, T), rep)
        fk = self.linear.feature_map(k_out, (position_ids - W).clamp(min=0), False)
        if fk.shape[1] != self.config.n_heads:
            fk = repeat_kv(fk, rep)
        # a real leaving token exists where its slot is >= 0 (and, with padding, is not padding)
        if n_past < W or key_mask is not None:
            slot = torch.arange(n_past - W, n_past - W + T, device=fk.device)
            keep = (slot >= 0)[None, :].expand(fk.shape[0], T)
            if key_mask is not None:
                keep = keep & _gather_shifted(key_mask[:, None, :, None], n_past, W, T)[:, 0, :, 0]
            fk = fk * keep[:, None, :, None].to(fk.dtype)
        if log_decay is not None and W:
            ct = torch.promote_types(fk.dtype, torch.float32)
            fk = fk * torch.exp(W * log_decay.to(ct)).to(fk.dtype)[None, :, None, None]
        v_aug = torch.cat((v_out.to(fk.dtype), v_out.new_ones(*v_out.shape[:-1], 1).to(fk.dtype)), dim=-1)
        return fk, v_aug

    # -- the contract ------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        state: Any | None = None,
        form: str | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Any]:
        """``y`` of the module docstring; the state is ``(window k, window v, linear state, seen)``."""
        B, T, _ = x.shape
        run_form = self.resolve_form(form, T, state is not None)
        k_past, v_past, s_past, seen = (None, None, None, 0) if state is None else state
        n = 0 if k_past is None else k_past.shape[2]
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask, B, seen, T, x.device)
        q_sm, q_lin, k_lin, v = self._views(x, position_ids)
        k_all, k_keep = extend_window(k_past, k_lin, self.window)
        v_all, v_keep = extend_window(v_past, v, self.window)
        key_mask = key_slot_mask(attention_mask, n + T)

        fq = self.linear.feature_map(q_lin, position_ids, True)
        log_decay = self.linear.log_decay()
        fk_out, v_aug = self._leaving(k_all, v_all, position_ids, key_mask, n, log_decay)
        lin, s_new = linear_attention(
            fq,
            fk_out,
            v_aug,
            form=run_form,
            log_decay=log_decay,
            normalize=False,
            initial_state=s_past,
            output_final_state=True,
            chunk_size=self.chunk_size,
        )
        f = self.factor().to(lin.dtype)[None, :, None, None]
        num, den = f * lin[..., :-1], f[..., 0] * lin[..., -1]
        if self.window:
            block = {"parallel": max(T, 1), "chunk": max(1, self.chunk_size), "recurrent": 1}[run_form]
            A, Z = window_softmax_sums(
                q_sm,
                self._softmax_keys(k_all, position_ids, n),
                v_all,
                n_past=n,
                window=self.window,
                block=block,
                scale=self.scale,
                key_mask=key_mask,
            )
            num, den = A + num.to(A.dtype), Z + den.to(Z.dtype)
        o = num / (den + self.linear.eps)[..., None]
        return self.linear.output(o.to(x.dtype), x), (k_keep, v_keep, s_new, seen + T)

    def attention_map(self, x: torch.Tensor, *, position_ids: torch.Tensor | None = None) -> AttentionMap:
        """The weights of the module docstring's formula, built explicitly as a (T, T) matrix (not
        through the shifted op): band softmax plus ``f gamma^(i-j) phi(q_i).phi(k_j)`` beyond it."""
        B, T, _ = x.shape
        if position_ids is None:
            position_ids = positions_from_mask(None, B, 0, T, x.device)
        q_sm, q_lin, k_lin, v = self._views(x, position_ids)
        rep = self.config.n_heads // self.config.n_kv_heads
        ct = torch.promote_types(x.dtype, torch.float32)
        k_sm = repeat_kv(self._softmax_keys(k_lin, position_ids, 0), rep)
        slots = torch.arange(T, device=x.device)
        diff = slots[:, None] - slots[None, :]
        win, beyond = band_mask(slots, slots, self.window), diff >= self.window
        fq = self.linear.feature_map(q_lin, position_ids, True).to(ct)
        fk = self.linear.feature_map(repeat_kv(k_lin, rep), position_ids, False)
        fk = (fk if fk.shape[1] == self.config.n_heads else repeat_kv(fk, rep)).to(ct)
        log_decay = self.linear.log_decay()
        decay = torch.ones(1, T, T, dtype=ct, device=x.device)
        if log_decay is not None:
            decay = torch.exp(log_decay.to(ct)[:, None, None] * diff.clamp(min=0).to(ct))
        lin = (fq @ fk.transpose(-1, -2)) * decay * beyond * self.factor().to(ct)[None, :, None, None]
        weights = lin
        if self.window:
            s = ((q_sm.to(ct) @ k_sm.to(ct).transpose(-1, -2)) * self.scale).masked_fill(~win, float("-inf"))
            weights = torch.exp(s - s.amax(-1, keepdim=True)) + lin
        weights = weights / (weights.sum(-1, keepdim=True) + self.linear.eps)
        return AttentionMap(weights, repeat_kv(v, rep), lambda o: self.linear.output(o.to(x.dtype), x))

    def state_size(self, seq_len: int) -> int:
        """Window keys and values ``2 H_kv d min(L, W)`` plus the linear state ``H m (d + 1)``."""
        c = self.config
        window = 2 * c.n_kv_heads * c.head_dim * min(seq_len, self.window)
        return window + linear_state_size(c.n_heads, self.linear.feature_dim, c.head_dim, True)

    def init_from_attention(self, weights: AttentionWeights) -> None:
        """The wrapped method's conversion (it receives the teacher's Q/K/V/O); ``f`` keeps its init."""
        self.linear.init_from_attention(weights)

    def reset_parameters(self, init_std: float) -> None:
        """The wrapped method's own initialisation, and ``f = factor_init``."""
        self.linear.reset_parameters(init_std)
        with torch.no_grad():
            self.log_factor.fill_(math.log(self.opts.factor_init))
