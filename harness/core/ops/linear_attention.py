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
built as ``exp(e * log_decay)`` in float32 (float64 for float64 inputs) — never ``gamma^-n`` over the
sequence — so they underflow harmlessly towards 0 instead of overflowing, in any dtype and at any length.

State: a tensor (batch, heads, m, d_v), or (batch, heads, m, d_v + 1) when normalised (the last
column is the running normaliser ``sum_j gamma^(i-j) k_j``). It is ``sum_j gamma^(t-j) k_j v_j^T``
after token ``t``; passing it back as ``initial_state`` continues the sequence.
"""

from __future__ import annotations

import torch

LINEAR_FORMS: tuple[str, ...] = ("parallel", "chunk", "recurrent")
#: tokens per block in the chunk form: a few chunks whose temporaries stay in cache (measured on CPU)
BLOCK_TOKENS: int = 512


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


def attention_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    log_decay: torch.Tensor | None = None,
    normalize: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor:
    """The (B, H, T, T) matrix the parallel form applies to the values of a fresh sequence:
    ``A_ij = gamma^(i-j) q_i . k_j`` for ``j <= i`` (0 above the diagonal), divided by its row sum
    plus ``eps`` when ``normalize`` — so ``o = A v`` (the attention map of a linear-attention mixer)."""
    scores = (q @ k.transpose(-1, -2)) * _causal_decay_mask(log_decay, q.shape[-2], q)
    if normalize:
        scores = scores / (scores.sum(-1, keepdim=True) + eps)
    return scores


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
    o = attention_weights(q, k, log_decay=log_decay) @ va
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


class _ChunkPlan:
    """Decay weights for chunks of ``C`` tokens processed in blocks of up to ``G`` chunks.

    With ``g = gamma_h`` and ``L = g^C`` (one chunk's decay), every factor is a non-negative power:
    ``mask[i, j] = g^(i-j)`` (j <= i), ``kw[j] = g^(C-1-j)``, ``qw[i] = g^(i+1)`` inside a chunk;
    ``w_local[a, b] = L^(a-1-b)`` (b < a), ``w_in[a] = L^a``, ``w_tot[b] = L^(G-1-b)`` across the
    chunks of a block. Without decay they are 0/1 and skipped (``None``).
    """

    def __init__(self, log_decay: torch.Tensor | None, C: int, G: int, ref: torch.Tensor) -> None:
        self.C, self.G = C, G
        self.mask = _causal_decay_mask(log_decay, C, ref)[:, None]  # (H|1, 1, C, C)
        local = torch.arange(C, device=ref.device)
        kw = _decay_pow(log_decay, C - 1 - local, ref)
        qw = _decay_pow(log_decay, local + 1, ref)
        self.kw = None if kw is None else kw[:, None, :, None]  # (H, 1, C, 1)
        self.qw = None if qw is None else qw[:, None, :, None]
        blocks = torch.arange(G, device=ref.device)
        self.w_local = torch.tril(torch.ones(G, G, dtype=ref.dtype, device=ref.device), -1)
        self.w_in = self.w_tot = self.log_chunk = None
        if log_decay is not None:
            self.log_chunk = log_decay * C
            expo = blocks[:, None] - 1 - blocks[None, :]
            self.w_local = _decay_pow(self.log_chunk, expo.clamp(min=0), ref) * self.w_local  # (H, G, G)
            self.w_in = _decay_pow(self.log_chunk, blocks, ref)[:, :, None]  # (H, G, 1)
            self.w_tot = _decay_pow(self.log_chunk, G - 1 - blocks, ref)[:, :, None]  # (H, G, 1)

    def block_decay(self, n: int, ref: torch.Tensor) -> torch.Tensor | None:
        """L^n per head, (1, H, 1)."""
        if self.log_chunk is None:
            return None
        return _decay_pow(self.log_chunk, torch.tensor(n, device=ref.device), ref).reshape(1, -1, 1)


def _carry(
    contrib: torch.Tensor, plan: _ChunkPlan, n: int, prev: torch.Tensor | None, inplace: bool, ref: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunk-start states and the state after the block, for per-chunk contributions ``contrib``
    (B, H, n, X) and the state ``prev`` (B, H, X) at the block's start (None: zero)."""
    starts = plan.w_local[..., :n, :n] @ contrib  # from earlier chunks of this block
    if prev is not None:
        if plan.w_in is None:
            starts = starts.add_(prev[:, :, None]) if inplace else starts + prev[:, :, None]
        else:
            w_in = plan.w_in[:, :n]
            starts = starts.addcmul_(w_in, prev[:, :, None]) if inplace else starts + w_in * prev[:, :, None]
    if plan.w_tot is None:
        total = contrib.sum(2)
    else:
        total = (plan.w_tot[:, plan.G - n :].transpose(-1, -2) @ contrib).squeeze(2)  # sum_b L^(n-1-b) x_b
    if prev is None:
        return starts, total
    decay_n = plan.block_decay(n, ref)
    return starts, (prev if decay_n is None else prev * decay_n) + total


def _chunk_block(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: _ChunkPlan,
    normalize: bool,
    state: torch.Tensor | None,
    zstate: torch.Tensor | None,
    inplace: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """One block of ``n <= G`` full chunks: un-normalised output (B, H, n*C, d_v), normaliser
    (B, H, n*C) or None, the state (B, H, m*d_v) and key sum (B, H, m) after the block.

    ``inplace``: update freshly computed temporaries in place (allowed unless autograd needs the
    decay's gradient, which would need the values from before the update).
    """
    B, H, Tb, m = q.shape
    dv = v.shape[-1]
    C = plan.C
    n = Tb // C
    # one contiguous copy per operand and block (cache-resident), instead of one per matmul
    qc = q.contiguous().view(B, H, n, C, m)
    kc = k.contiguous().view(B, H, n, C, m)
    vc = v.contiguous().view(B, H, n, C, dv)

    scores = qc @ kc.transpose(-1, -2)  # (B, H, n, C, C): intra-chunk, masked and decayed
    scores = scores.mul_(plan.mask) if inplace else scores * plan.mask
    kc_w = kc if plan.kw is None else kc * plan.kw  # g^(C-1-j) k_j
    kv = (kc_w.transpose(-1, -2) @ vc).reshape(B, H, n, m * dv)
    starts, new_state = _carry(kv, plan, n, state, inplace, q)

    o = qc @ starts.view(B, H, n, m, dv)  # earlier chunks, through the chunk-start states
    if plan.qw is not None:
        o = o.mul_(plan.qw) if inplace else o * plan.qw
    o.view(-1, C, dv).baddbmm_(scores.view(-1, C, C), vc.view(-1, C, dv))  # + intra-chunk part

    z = new_z = None
    if normalize:
        z_starts, new_z = _carry(kc_w.sum(-2), plan, n, zstate, inplace, q)  # (B, H, n, m)
        z = (qc @ z_starts[..., None]).squeeze(-1)  # (B, H, n, C)
        if plan.qw is not None:
            z = z * plan.qw.squeeze(-1)
        z = (z + scores.sum(-1)).reshape(B, H, Tb)
    return o.reshape(B, H, Tb, dv), z, new_state, new_z


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
    ``gamma^C S + sum_j gamma^(C-1-j) k_j v_j^T``. All exponents are >= 0 (see :class:`_ChunkPlan`).

    Speed (measured on CPU, see dijiang/README.md): tokens go in blocks of ``BLOCK_TOKENS`` (a few
    chunks) so a block's temporaries stay in cache; inside a block the chunk-start states come from
    one small matmul with the weights ``L^(a-1-b)``, and blocks carry the state sequentially.
    Temporaries are updated in place unless autograd needs them. A partial last chunk is a block of
    its own (no padding copies). The normaliser is not an extra value column (which would make the
    matmuls d_v + 1 wide): it is the row sum of the intra-chunk scores plus ``q . z`` with a
    separately carried key sum ``z``.
    """
    B, H, T, m = q.shape
    dv = v.shape[-1]
    C = max(1, min(chunk_size, T))
    G = max(1, BLOCK_TOKENS // C)
    N, r = divmod(T, C)
    state = zstate = None
    if initial_state is not None:
        st = initial_state.to(q.dtype)
        state, zstate = (st[..., :-1], st[..., -1]) if normalize else (st, None)
        state = state.reshape(B, H, m * dv)
    inplace = not (log_decay is not None and log_decay.requires_grad and torch.is_grad_enabled())
    outs: list[torch.Tensor] = []
    zs: list[torch.Tensor | None] = []
    if N:
        plan = _ChunkPlan(log_decay, C, G, q)
        for s in range(0, N * C, G * C):
            e = min(s + G * C, N * C)
            o, z, state, zstate = _chunk_block(
                q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], plan, normalize, state, zstate, inplace
            )
            outs.append(o)
            zs.append(z)
    if r:
        tail = _ChunkPlan(log_decay, r, 1, q)
        o, z, state, zstate = _chunk_block(
            q[:, :, N * C :], k[:, :, N * C :], v[:, :, N * C :], tail, normalize, state, zstate, inplace
        )
        outs.append(o)
        zs.append(z)
    o = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    if normalize:
        z = zs[0] if len(zs) == 1 else torch.cat(zs, dim=2)
        o = o / (z[..., None] + eps)
    if not output_final_state:
        return o, None
    final = state.view(B, H, m, dv)
    return o, (torch.cat((final, zstate[..., None]), dim=-1) if normalize else final)


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
    g = None
    if log_decay is not None:
        g = torch.exp(log_decay.to(_compute_dtype(q))).to(q.dtype).reshape(1, H, 1, 1)
    outs = []
    for t in range(T):
        decayed = state if g is None else state * g
        state = torch.addcmul(decayed, k[:, :, t, :, None], va[:, :, t, None, :])
        outs.append(q[:, :, t, None, :] @ state)
    o = outs[0] if T == 1 else torch.cat(outs, dim=2)
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
