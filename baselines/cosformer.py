"""cosFormer (Qin et al. 2022, "cosFormer: Rethinking Softmax in Attention", ICLR).

ReLU features with a cos-based re-weighting of the scores (Eq. 7-11):

    s(q_i, k_j) = relu(q_i) . relu(k_j) cos(pi/2 * (i - j) / M)
    o_i = sum_{j<=i} s(q_i, k_j) v_j / sum_{j<=i} s(q_i, k_j)

and, by ``cos(a - b) = cos a cos b + sin a sin b`` (Eq. 10), the score is a dot product of
position-dependent features

    phi(x_i) = [relu(x_i) cos(pi i / 2M), relu(x_i) sin(pi i / 2M)]   (2d features),

so the method is a feature map on the shared linear-attention machinery (all three forms).

**Fixed M.** The reference code re-weights with ``M = max(current lengths)``: a score computed
while the sequence had length t changes once it grows, so training on full sequences and decoding
token by token would compute different functions. We use ``M = max_seq_len`` (the model's maximum
length), fixed: the weights depend only on ``i - j``, training and incremental decoding agree, and
``cos`` stays in ``[0, 1]`` (0 <= i - j < M), so the scores stay non-negative and the normaliser
positive. Past ``max_seq_len`` the re-weighting would turn negative, so longer inputs are rejected
(``check_length``). Positions are the absolute positions of real tokens (left padding aware).

Conversion: Q/K/V/O from the teacher; no new parameters. The published cosFormer has no rotary
embedding (the cos re-weighting is its position signal), so the teacher's rotary is not applied.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from harness.core.registry import register_mixer
from harness.layers.linear_mixer import LinearAttentionMixer


@register_mixer("cosformer")
class CosFormer(LinearAttentionMixer):
    """ReLU features with cos/sin re-weighting at fixed M = max_seq_len; see the module docstring."""

    paper = "Qin et al. 2022, cosFormer: Rethinking Softmax in Attention (Eq. 7-11)"
    uses_rotary = False
    forms = ("parallel", "chunk", "recurrent")
    default_form = "chunk"
    normalize = True
    eps = 1e-6  # as the reference code

    @property
    def feature_dim(self) -> int:
        return 2 * self.config.head_dim

    def angles(self, position_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """pi/2 * i / M for absolute positions i (B, T), in float32 or wider; past M is an error."""
        self.check_length(int(position_ids.max()) + 1 if position_ids.numel() else 0)
        dt = torch.promote_types(dtype, torch.float32)
        return position_ids.to(dt) * (math.pi / (2 * self.config.max_seq_len))

    def feature_map(self, x: torch.Tensor, position_ids: torch.Tensor, is_query: bool) -> torch.Tensor:
        """[relu(x) cos(pi i / 2M), relu(x) sin(pi i / 2M)]: (B, H, T, d) -> (B, H, T, 2d)."""
        a = self.angles(position_ids, x.dtype)[:, None, :, None]  # (B, 1, T, 1)
        r = F.relu(x)
        return torch.cat((r * torch.cos(a).to(x.dtype), r * torch.sin(a).to(x.dtype)), dim=-1)
