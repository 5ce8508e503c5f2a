"""DiJiang as the official code computes it (``dijiang-official``; github.com/YuchuanTian/DiJiang,
``modeling_gpt_neox_dijiang.py``), in the three forms of the suite.

Per head (shared/paper/README.md, "What the official code actually does"):

    phi(x) = softmax(x P),  P = C T frozen                       (points 2-3; C T, so x P applies C^T)
    S      = (phi(Q) * D1)(phi(K) * D2)^T  masked causally;  O = S V    (points 4-5; no 1/sqrt(d))
    y      = W_O [ swish(X W_G) * GroupNorm(num_groups=head_size)(O) ]  (point 6)

with the teacher's rotary kept on q and k (point 1), ``D1[h, n] = g_h^n`` and ``D2[h, m] = g_h^-m``
learnable per-position tensors of length ``max_seq_len`` and ``W_G`` Xavier-initialised with gain
``2^-2.5``.

**Exact in chunk and recurrent form.** ``D1`` and ``D2`` are per position, so they fold into the
features: ``q'_i = phi(q_i) D1[i]``, ``k'_j = phi(k_j) D2[j]``; then ``S = (q' k'^T) * mask`` is plain
causal linear attention without normaliser, which the shared forms compute in O(T). Positions are
absolute (``position_ids``), so decoding continues the training computation.

Quirks reproduced (defaults) and the corrected alternatives (options):

* ``decay="per_position"`` (official): ``D2 = g^-m`` overflows float16 from position 350 on and, in
  float32 from position 2795 on (both for ``g = 1 - 1/32``); sequences are limited to ``max_seq_len``
  (:meth:`check_length`). ``decay="per_head"``: one learned ``gamma_h`` per head, applied as relative
  powers inside chunks — safe in bf16/fp16 at any length.
* ``norm_groups="head_size"`` (official): GroupNorm with ``head_size`` groups of ``H`` consecutive
  channels (a group straddles two heads when ``H`` does not divide ``head_size``);
  ``norm_groups="head"``: one group per head (RetNet).
* ``projection="random"`` (official): pseudo-random uniforms; ``sobol``/``halton``: quasi-Monte Carlo
  (the paper's method). ``dct="official"`` (``x C T``, i.e. ``C^T``) or ``dct="paper"`` (``T C x``).
* No ``1/sqrt(d)`` (``scale_qk=False``); set ``scale_qk=True`` to scale q and k by ``d^-1/4``.

Not reproduced (they are bugs that would break the suite's contract): the official cached-decoding
path slices ``D1`` from position 0 for every new token (inconsistent with training; we use the
absolute position), and it ignores the padding mask (we zero padded keys, so left padding is exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dijiang.decay import init_decay_rate, log_decay_from_rate, official_position_decay
from dijiang.features import QMC_METHODS, SoftmaxDCTFeatures, layer_seed
from dijiang.mixer import NORM_GROUPS, check_choice
from harness.core.mixer import MixerConfig
from harness.core.registry import register_mixer
from harness.layers.gated_output import GatedGroupNormOutput
from harness.layers.linear_mixer import LinearAttentionMixer

OFFICIAL_DECAYS: tuple[str, ...] = ("per_position", "per_head")


@dataclass
class OfficialOptions:
    """``dijiang-official`` options; the defaults reproduce the official code (see module docstring)."""

    decay: str = "per_position"
    norm_groups: str = "head_size"
    projection: str = "random"
    dct: str = "official"
    seed: int = 0
    rotary: bool = True
    scale_qk: bool = False


@register_mixer("dijiang-official")
class DiJiangOfficialMixer(LinearAttentionMixer):
    """DiJiang exactly as the official training code computes it (see the module docstring)."""

    paper = "Chen et al. 2024 (DiJiang, ICML), official code github.com/YuchuanTian/DiJiang"
    uses_rotary = True
    convertible = True
    normalize = False
    Options = OfficialOptions

    def __init__(self, config: MixerConfig) -> None:
        super().__init__(config)
        o, c = self.opts, config
        check_choice(self.name, "decay", o.decay, OFFICIAL_DECAYS)
        check_choice(self.name, "norm_groups", o.norm_groups, NORM_GROUPS)
        check_choice(self.name, "projection", o.projection, QMC_METHODS)
        self.uses_rotary = bool(o.rotary)
        self.qk_scale = c.head_dim**-0.25 if o.scale_qk else 1.0
        self.features = SoftmaxDCTFeatures(
            c.head_dim, method=o.projection, seed=layer_seed(o.seed, c.layer_idx), dct=o.dct, input_scale=self.qk_scale
        )
        self.per_position = o.decay == "per_position"
        if self.per_position:
            d1, d2 = official_position_decay(c.n_heads, c.max_seq_len)
            self.D1 = nn.Parameter(d1)  # (H, max_seq_len): g^n, learnable as in the official code
            self.D2 = nn.Parameter(d2)  # (H, max_seq_len): g^-n
        else:  # a_h with gamma_h = exp(-exp(a_h)), held by the mixer itself (see dijiang.mixer)
            self.decay_rate = nn.Parameter(init_decay_rate(c.n_heads))
        groups = c.head_dim if o.norm_groups == "head_size" else c.n_heads
        self.gated = GatedGroupNormOutput(c.d_model, c.n_heads, c.head_dim, num_groups=groups, gate_gain=2**-2.5)
        self.gated.reset_parameters()

    def feature_map(self, x: torch.Tensor, position_ids: torch.Tensor, is_query: bool) -> torch.Tensor:
        f = self.features(x, is_query)
        if self.per_position:
            self.check_length(int(position_ids.max()) + 1)
            table = self.D1 if is_query else self.D2
            f = f * table[:, position_ids].permute(1, 0, 2).unsqueeze(-1).to(f.dtype)  # (B, H, T, 1)
        return f

    def log_decay(self) -> torch.Tensor | None:
        return None if self.per_position else log_decay_from_rate(self.decay_rate)

    def output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.proj.o_proj(self.gated(o.to(x.dtype), x))

    @torch.no_grad()
    def reset_parameters(self, init_std: float) -> None:
        """As the official constructor: ``D1 = g^n``, ``D2 = g^-n``, ``W_G`` Xavier (gain ``2^-2.5``),
        GroupNorm ones/zeros, ``P`` from the seed (the official ``_init_weights`` touches none of them)."""
        self.features.reset_parameters()
        if self.per_position:
            d1, d2 = official_position_decay(self.config.n_heads, self.config.max_seq_len)
            self.D1.copy_(d1)
            self.D2.copy_(d2)
        else:
            self.decay_rate.copy_(init_decay_rate(self.config.n_heads))
        self.gated.reset_parameters()
