"""Causal linear attention with an optional per-head decay, in three forms that compute the same thing.

Given feature-mapped queries ``q = phi(Q)`` and keys ``k = phi(K)`` (batch, heads, seq, m), values
``v`` (batch, heads, seq, d_v) and a per-head decay ``gamma_h = exp(log_decay_h)`` in (0, 1], every
form computes

    o_i = sum_{j <= i} gamma^(i - j) (q_i . k_j) v_j                      (unnormalised)
    o_i = [sum_j gamma^(i-j) (q_i . k_j) v_j] / [sum_j gamma^(i-j) q_i . k_j + eps]   (normalised)

This is linear attention (Katharopoulos et al. 2020, Eq. 4-6; DiJiang Eq. 13) with RetNet's decay
(Sun et al. 2023, Eq. 5-8). Performer, cosFormer, RetNet, PFF and DiJiang differ only in ``phi``,
the decay and the normaliser, so they all share this module.

Forms (as in flash-linear-attention's naive/chunk/recurrent split):

* ``parallel`` — the quadratic reference: O(T^2) time and memory.
* ``chunk`` — chunkwise: exact attention inside chunks of ``chunk_size`` tokens and a running
  ``m x d_v`` state between chunks; O(T) time and memory.
* ``recurrent`` — one token at a time with an ``m x d_v`` state; constant memory per token.

Numerical safety: decay factors are only ever ``gamma^e`` with ``0 <= e <= max(chunk_size, T)``,
built as ``exp(e * log_decay)`` in float32 (float64 for float64 inputs) — never ``gamma^-n`` over the sequence — so they
underflow harmlessly towards 0 instead of overflowing, in any dtype and at any length.

State: a tensor (batch, heads, m, d_v), or (batch, heads, m, d_v + 1) when normalised (the last
column is the running normaliser ``sum_j gamma^(i-j) k_j``). It is ``sum_j gamma^(t-j) k_j v_j^T``
after token ``t``; passing it back as ``initial_state`` continues the sequence.
"""

from __future__ import annotations

import torch

LINEAR_FORMS: tuple[str, ...] = ("parallel", "chunk", "recurrent")


def _augment(v: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Append a column of ones so the normaliser rides along with the values."""
    if not normalize:
        return v
    return torch.cat((v, v.new_ones(v.shape[:-1] + (1,))), dim=-1)


def _finish(o: torch.Tensor, normalize: bool, eps: float) -> torch.Tensor:
    if not normalize:
        return o
    return o[..., :-1] / (o[..., -1:] + eps)


def _compute_dtype(ref: torch.Tensor) -> torch.dtype:
    """Decay factors are built in float32 (float64 for float64 inputs), then cast."""
    return torch.float64 if ref.dtype == torch.float64 else torch.float32


def _decay_pow(log_decay: torch.Tensor | None, exponent: torch.Tensor, ref: torch.Tensor) -> torch.Tensor | None:
    """gamma_h ** exponent (exponent >= 0), shape (heads, *exponent.shape), float32 -> ref dtype."""
    if log_decay is None:
        return None
    ct = _compute_dtype(ref)
    lg = log_decay.to(ct).reshape(-1, *([1] * exponent.dim()))
    return torch.exp(lg * exponent.to(ct)).to(ref.dtype)


def _causal_decay_mask(log_decay: torch.Tensor | None, n: int, ref: torch.Tensor) -> torch.Tensor:
    """D[h, i, j] = gamma_h^(i-j) for j <= i, else 0; shape (heads or 1, n, n)."""
    idx = torch.arange(n, device=ref.device)
    diff = idx[:, None] - idx[None, :]
    causal = diff >= 0
    if log_decay is None:
        return causal.to(ref.dtype)[None]
    ct = _compute_dtype(ref)
    lg = log_decay.to(ct)[:, None, None]
    expo = torch.where(causal, diff, torch.zeros_like(diff)).to(ct)
    return torch.where(causal, torch.exp(lg * expo), 0.0).to(ref.dtype)


def linear_attention_parallel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor | None = None,
    normalize: bool = False,
    eps: float = 1e-6,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Quadratic reference form: ``O = (Q K^T * D) V`` with D the causal decay mask."""
    T = q.shape[-2]
    va = _augment(v, normalize)
    scores = (q @ k.transpose(-1, -2)) * _causal_decay_mask(log_decay, T, q)
    o = scores @ va
    pos = torch.arange(T, device=q.device)
    if initial_state is not None:
        w = _decay_pow(log_decay, pos + 1, q)  # gamma^(i+1)
        q_in = q if w is None else q * w[..., None]
        o = o + q_in @ initial_state.to(q.dtype)
    final = None
    if output_final_state:
        w = _decay_pow(log_decay, T - 1 - pos, q)  # gamma^(T-1-j)
        k_w = k if w is None else k * w[..., None]
        final = k_w.transpose(-1, -2) @ va
        if initial_state is not None:
            g = _decay_pow(log_decay, torch.tensor(T, device=q.device), q)
            s0 = initial_state.to(q.dtype)
            final = final + (s0 if g is None else s0 * g.reshape(-1, 1, 1))
    return _finish(o, normalize, eps), final


def linear_attention_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor | None = None,
    normalize: bool = False,
    eps: float = 1e-6,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunkwise form (RetNet's chunkwise retention, Sun et al. 2023 Eq. 7), O(T) time and memory.

    Inside a chunk of C tokens (local index i), with S the state at the chunk's start:
    ``o_i = gamma^(i+1) q_i S + sum_{j<=i} gamma^(i-j) (q_i.k_j) v_j`` and the next state is
    ``gamma^L S + sum_j gamma^(L-1-j) k_j v_j^T`` (L = the chunk's real length). All exponents
    lie in [0, C].
    """
    B, H, T, m = q.shape
    C = max(1, min(chunk_size, T))
    N = -(-T // C)
    pad = N * C - T
    va = _augment(v, normalize)
    dv = va.shape[-1]
    if pad:
        q, k, va = (torch.nn.functional.pad(t, (0, 0, 0, pad)) for t in (q, k, va))
    qc = q.reshape(B, H, N, C, m)
    kc = k.reshape(B, H, N, C, m)
    vc = va.reshape(B, H, N, C, dv)

    # intra-chunk: exact (masked, decayed) attention
    mask = _causal_decay_mask(log_decay, C, q)  # (H|1, C, C)
    o = ((qc @ kc.transpose(-1, -2)) * mask[:, None]) @ vc

    # per-chunk key weights gamma^(L-1-j), L = C except the (possibly short) last chunk
    local = torch.arange(C, device=q.device)
    lengths = torch.full((N,), C, device=q.device)
    lengths[-1] = C - pad
    key_expo = (lengths[:, None] - 1 - local[None, :]).clamp(min=0)  # (N, C); padded keys are zero
    kw = _decay_pow(log_decay, key_expo, q)
    kc_w = kc if kw is None else kc * kw[None, :, :, :, None]
    chunk_kv = kc_w.transpose(-1, -2) @ vc  # (B, H, N, m, dv)

    # scan over chunks: states at each chunk's start
    chunk_decay = _decay_pow(log_decay, lengths, q)  # (H, N)
    state = initial_state.to(q.dtype) if initial_state is not None else q.new_zeros(B, H, m, dv)
    starts = []
    for n in range(N):
        starts.append(state)
        g = None if chunk_decay is None else chunk_decay[:, n].reshape(1, H, 1, 1)
        state = (state if g is None else state * g) + chunk_kv[:, :, n]
    start_states = torch.stack(starts, dim=2)  # (B, H, N, m, dv)
    qw = _decay_pow(log_decay, local + 1, q)  # gamma^(i+1), (H, C)
    qc_w = qc if qw is None else qc * qw[None, :, None, :, None]
    o = o + qc_w @ start_states

    o = o.reshape(B, H, N * C, dv)[:, :, :T]
    return _finish(o, normalize, eps), (state if output_final_state else None)


def linear_attention_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor | None = None,
    normalize: bool = False,
    eps: float = 1e-6,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Recurrent form (RetNet Eq. 6): ``S_t = gamma S_{t-1} + k_t v_t^T``, ``o_t = q_t S_t``."""
    B, H, T, m = q.shape
    va = _augment(v, normalize)
    state = initial_state.to(q.dtype) if initial_state is not None else q.new_zeros(B, H, m, va.shape[-1])
    g = _decay_pow(log_decay, torch.tensor(1, device=q.device), q)
    g = None if g is None else g.reshape(1, H, 1, 1)
    outs = []
    for t in range(T):
        kv = k[:, :, t, :, None] * va[:, :, t, None, :]
        state = (state if g is None else state * g) + kv
        outs.append((q[:, :, t, None, :] @ state).squeeze(-2))
    o = torch.stack(outs, dim=2)
    return _finish(o, normalize, eps), (state if output_final_state else None)


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    form: str = "chunk",
    log_decay: torch.Tensor | None = None,
    normalize: bool = False,
    eps: float = 1e-6,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Dispatch to one of the three forms; see the module docstring for the shared semantics.

    Shapes: q, k (B, H, T, m); v (B, H, T, d_v); log_decay (H,) with values <= 0, or None.
    Returns ``(o, final_state)``; ``final_state`` is None unless ``output_final_state``.
    """
    if q.shape != k.shape or q.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"linear_attention: shapes q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)} do not fit")
    kwargs = dict(
        log_decay=log_decay,
        normalize=normalize,
        eps=eps,
        initial_state=initial_state,
        output_final_state=output_final_state,
    )
    if form == "parallel":
        return linear_attention_parallel(q, k, v, **kwargs)
    if form == "chunk":
        return linear_attention_chunk(q, k, v, chunk_size=chunk_size, **kwargs)
    if form == "recurrent":
        return linear_attention_recurrent(q, k, v, **kwargs)
    raise ValueError(f"unknown linear-attention form {form!r}; choose one of {LINEAR_FORMS}")


def linear_state_size(n_heads: int, feature_dim: int, value_dim: int, normalize: bool) -> int:
    """Numbers in the recurrent state of one sequence: heads x m x (d_v [+1])."""
    return n_heads * feature_dim * (value_dim + int(normalize))
