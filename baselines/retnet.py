"""RetNet's multi-scale retention (Sun et al. 2023, "Retentive Network: A Successor to Transformer
for Large Language Models", arXiv 2307.08621).

Retention (Eq. 5, parallel form; Eq. 6 recurrent; Eq. 7 chunkwise), per head h:

    Retention(X) = (Q K^T ⊙ D) V,   D_nm = gamma_h^(n-m) for n >= m, else 0,
    gamma_h = 1 - 2^(-5-h),  h = 0..H-1                         (Section 2.2, multi-scale)

with ``Q, K`` rotated by position and ``K`` scaled by ``d^-1/2`` (as the authors' torchscale code),
followed by Eq. 8: ``MSR(X) = W_O (swish(X W_G) ⊙ GroupNorm_h(heads))`` — one GroupNorm group
per head (:class:`harness.layers.gated_output.GatedGroupNormOutput`). There is no softmax-style
normaliser: GroupNorm makes each head's output scale-invariant.

**Position: rotary, not xPos.** The paper's xPos multiplies the rotation by ``zeta^n`` on queries
and ``zeta^-n`` on keys; the product ``zeta^(n-m)`` is a second per-head decay of the same form as
``gamma^(n-m)`` and ``zeta^-n`` overflows with the absolute position. The released torchscale
RetNet also rotates without the xPos scale. We apply the teacher's own rotary embedding (same
dims, same base), so a converted model keeps the teacher's query/key geometry.

**Forms agree.** torchscale's parallel form divides the decay mask and the scores by running sums
(``D / sqrt(sum D)``, ``|QK^T ⊙ D|`` row sums clamped to [1, 5e4]); these only rescale each head,
which GroupNorm undoes exactly except for its epsilon and the clamp, which is why its forms did not
agree bit for bit. We drop them: all three forms compute exactly Eq. 5, through the shared
:mod:`harness.core.ops.linear_attention`, whose decay powers are built as ``exp(e * log gamma)`` with
``0 <= e <= chunk`` (no ``gamma^-n``), so nothing overflows at any length. In float16 the
unnormalised sums grow up to ``1 / (1 - gamma) = 2^(5+h)`` times a score; bfloat16/float32 are safe.

New parameters and initialisation: the gate ``W_G`` (Xavier uniform, gain 2^-2.5, as torchscale)
and GroupNorm's affine weight/bias (ones/zeros), set in :meth:`reset_parameters`. Conversion keeps
the teacher's Q/K/V/O. The decays are fixed, not learned (paper Section 2.2).

State per sequence: ``H x d x d`` (constant).
"""

from __future__ import annotations

import torch

from harness.core.mixer import MixerConfig
from harness.core.registry import register_mixer
from harness.layers.gated_output import GatedGroupNormOutput
from harness.layers.linear_mixer import LinearAttentionMixer


def retnet_log_decay(n_heads: int) -> torch.Tensor:
    """log gamma_h = log(1 - 2^(-5-h)) for h = 0..H-1 (RetNet Section 2.2), float64."""
    h = torch.arange(n_heads, dtype=torch.float64)
    return torch.log1p(-torch.pow(2.0, -5.0 - h))


@register_mixer("retnet")
class RetNet(LinearAttentionMixer):
    """Multi-scale retention with GroupNorm and swish gate; see the module docstring."""

    paper = "Sun et al. 2023, Retentive Network (Eq. 5-8, multi-scale retention)"
    uses_rotary = True
    forms = ("parallel", "chunk", "recurrent")
    default_form = "chunk"
    normalize = False

    def __init__(self, config: MixerConfig) -> None:
        super().__init__(config)
        self.gated = GatedGroupNormOutput(config.d_model, config.n_heads, config.head_dim)
        self.gated.reset_parameters()

    def reset_parameters(self, init_std: float) -> None:
        """W_G Xavier (gain 2^-2.5), GroupNorm ones/zeros; Q/K/V/O keep the generic init."""
        self.gated.reset_parameters()

    def feature_map(self, x: torch.Tensor, position_ids: torch.Tensor, is_query: bool) -> torch.Tensor:
        """Identity on queries, ``d^-1/2`` scaling on keys (rotary is applied before)."""
        return x if is_query else x * self.config.head_dim**-0.5

    def log_decay(self) -> torch.Tensor:
        """Fixed per-head log gamma (computed, not stored: nothing to save or convert)."""
        return retnet_log_decay(self.config.n_heads).to(self.proj.q_proj.weight.device)

    def output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """W_O (swish(X W_G) ⊙ GroupNorm(o)) (Eq. 8)."""
        return self.proj.o_proj(self.gated(o, x))
