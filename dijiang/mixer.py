"""The DiJiang mixer as the paper writes it (``dijiang``), and positive fixed features (``pff``).

Both are linear attention with a per-head decay (paper Eq. 13 with "learned gating like RetNet",
Section 4.1) and differ only in the feature map, so the paper's ablation (Table 2: Monte Carlo ->
quasi-Monte Carlo -> weighted DCT) changes one thing at a time:

    o_i = sum_{j<=i} gamma_h^(i-j) phi(q_i) . phi(k_j) v_j          (optionally / normaliser)
    y   = W_O [ swish(x W_G) * GroupNorm_h(o) ]                   (RetNet's output path)

* ``dijiang``: ``phi`` = weighted discrete cosine features (Eq. 12, :class:`~dijiang.features.WDCFeatures`).
* ``pff``: ``phi`` = positive fixed features (Eq. 9, :class:`~dijiang.features.PFFeatures`).

Defaults are what we recommend for converting a pretrained Transformer (dijiang/README.md explains
each): the teacher's rotary kept, ``q`` and ``k`` scaled by ``d^-1/4`` (the teacher's ``1/sqrt(d)``),
scrambled Sobol points, a learned per-head decay initialised as RetNet/the official code, RetNet's
gated output with one GroupNorm group per head, no normaliser (the GroupNorm divides out any
per-head, per-token scale, so a normaliser would only cost time), stabilised query exponents.

The three forms (``parallel``, ``chunk``, ``recurrent``) come from
:class:`harness.layers.linear_mixer.LinearAttentionMixer`; the decay is applied as relative powers inside
chunks (:mod:`harness.core.ops.linear_attention`), safe in bf16/fp16 at any length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dijiang.decay import init_decay_rate, log_decay_from_rate
from dijiang.features import QMC_METHODS, PFFeatures, WDCFeatures, layer_seed
from harness.core.mixer import MixerConfig, MixerConfigError
from harness.core.registry import register_mixer
from harness.layers.gated_output import GatedGroupNormOutput
from harness.layers.linear_mixer import LinearAttentionMixer

DECAYS: tuple[str, ...] = ("learned", "fixed", "none")
OUTPUTS: tuple[str, ...] = ("gated", "linear")
NORM_GROUPS: tuple[str, ...] = ("head", "head_size")


def check_choice(method: str, option: str, value: object, choices: tuple[str, ...]) -> None:
    """One clear error for an option value outside its choices."""
    if value not in choices:
        raise MixerConfigError(f"{method}: option {option}={value!r} is not one of {list(choices)}.")


@dataclass
class KernelOptions:
    """Options shared by ``dijiang`` and ``pff`` (see dijiang/README.md, "Options").

    qmc: quasi-Monte Carlo points, ``sobol`` | ``halton`` (scrambled, scipy.stats.qmc) | ``random``
    (pseudo-random uniforms, as the official code). seed: base seed (each layer derives its own).
    stabilize: per-token max subtracted in the exponent: ``query`` | ``both`` | ``none``.
    scale_qk: multiply q and k by ``d^-1/4`` (the teacher's ``1/sqrt(d)``). rotary: keep the
    teacher's rotary embedding. decay: ``learned`` | ``fixed`` (RetNet's values, not trained) | ``none``.
    normalize: divide by ``sum_j gamma^(i-j) phi(q_i).phi(k_j)``. output: ``gated`` (RetNet's
    ``W_O swish(X W_G) * GroupNorm(O)``) | ``linear`` (``W_O O``). norm_groups: GroupNorm groups,
    ``head`` (one per head, RetNet) | ``head_size`` (the official code's ``num_groups = head_size``).
    """

    qmc: str = "sobol"
    seed: int = 0
    stabilize: str = "query"
    scale_qk: bool = True
    rotary: bool = True
    decay: str = "learned"
    normalize: bool = False
    output: str = "gated"
    norm_groups: str = "head"


class KernelMixer(LinearAttentionMixer):
    """Linear attention with a kernel feature map, per-head decay and RetNet's gated output.

    Subclasses build the feature map in :meth:`build_features` (a module with
    ``forward(x, is_query)``, ``num_features`` and ``reset_parameters()``).
    """

    uses_rotary = True
    convertible = True
    Options = KernelOptions

    def __init__(self, config: MixerConfig) -> None:
        super().__init__(config)
        o, c, name = self.opts, config, type(self).name or type(self).__name__
        check_choice(name, "qmc", o.qmc, QMC_METHODS)
        check_choice(name, "decay", o.decay, DECAYS)
        check_choice(name, "output", o.output, OUTPUTS)
        check_choice(name, "norm_groups", o.norm_groups, NORM_GROUPS)
        self.uses_rotary = bool(o.rotary)
        self.normalize = bool(o.normalize)
        self.qk_scale = c.head_dim**-0.25 if o.scale_qk else 1.0
        self.features = self.build_features(layer_seed(o.seed, c.layer_idx))
        # the decay parameter a_h (gamma_h = exp(-exp(a_h))) lives on the mixer itself: transformers only
        # runs the model's weight init (and so reset_parameters) on modules holding own tensors
        if o.decay == "learned":
            self.decay_rate = nn.Parameter(init_decay_rate(c.n_heads))
        else:  # "fixed" (RetNet's values, not trained) or "none" (kept unused, for a uniform state dict)
            self.register_buffer("decay_rate", init_decay_rate(c.n_heads), persistent=True)
        self.gated = None
        if o.output == "gated":
            groups = c.n_heads if o.norm_groups == "head" else c.head_dim
            self.gated = GatedGroupNormOutput(c.d_model, c.n_heads, c.head_dim, num_groups=groups)
            self.gated.reset_parameters()

    def build_features(self, seed: int) -> nn.Module:
        raise NotImplementedError

    @property
    def feature_dim(self) -> int:
        return self.features.num_features

    def feature_map(self, x: torch.Tensor, position_ids: torch.Tensor, is_query: bool) -> torch.Tensor:
        return self.features(x, is_query)  # the features apply qk_scale themselves

    def log_decay(self) -> torch.Tensor | None:
        return None if self.opts.decay == "none" else log_decay_from_rate(self.decay_rate)

    def output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.gated is None:
            return self.proj.out(o)
        return self.proj.o_proj(self.gated(o.to(x.dtype), x))

    def reset_parameters(self, init_std: float) -> None:
        """Feature weights ``D`` to the plain quasi-Monte Carlo average (``1/sqrt(m)`` for WDCF, 1 for
        weighted PFF), projections recomputed from the seed, decay to RetNet's values, gate Xavier
        with gain ``2^-2.5`` and GroupNorm to ones/zeros (as RetNet and the official code)."""
        self.features.reset_parameters()
        with torch.no_grad():
            self.decay_rate.copy_(init_decay_rate(self.config.n_heads))
        if self.gated is not None:
            self.gated.reset_parameters()


@dataclass
class DiJiangOptions(KernelOptions):
    """``dijiang`` options: :class:`KernelOptions` plus ``norm_term`` (keep ``-|x|^2/2`` in the exponent,
    Eq. 12 drops it) and ``learn_weight`` (train ``D``; Eq. 12 does)."""

    norm_term: bool = False
    learn_weight: bool = True


@register_mixer("dijiang")
class DiJiangMixer(KernelMixer):
    """DiJiang, paper form (Chen et al. 2024, Eq. 12-13): weighted discrete cosine features
    ``phi(x) = D exp(T C x)``, per-head learned decay, RetNet's gated GroupNorm output."""

    paper = "Chen et al. 2024 (DiJiang, ICML), Eq. 12-13"
    Options = DiJiangOptions

    def build_features(self, seed: int) -> nn.Module:
        o = self.opts
        return WDCFeatures(
            self.config.head_dim,
            self.config.n_heads,
            qmc_method=o.qmc,
            seed=seed,
            norm_term=o.norm_term,
            stabilize=o.stabilize,
            learn_weight=o.learn_weight,
            input_scale=self.qk_scale,
        )


@dataclass
class PFFOptions(KernelOptions):
    """``pff`` options: :class:`KernelOptions` plus ``num_features`` (m; 0 = head size, the paper's
    equal-cost comparison), ``radius`` (``chi``: w_i exact QMC Gaussians; ``normal``: Eq. 9 literally)
    and ``learn_weight`` (weighted PFF, Eq. 10)."""

    num_features: int = 0
    radius: str = "chi"
    learn_weight: bool = False


@register_mixer("pff")
class PFFMixer(KernelMixer):
    """Positive fixed features (Chen et al. 2024, Eq. 9): quasi-Monte Carlo positive random features,
    the middle row of the paper's ablation (Table 2); the rest as ``dijiang``."""

    paper = "Chen et al. 2024 (DiJiang, ICML), Eq. 9"
    Options = PFFOptions

    def build_features(self, seed: int) -> nn.Module:
        o = self.opts
        m = o.num_features or self.config.head_dim
        if m <= 0:
            raise MixerConfigError(f"pff: num_features must be positive (or 0 for head_dim), got {o.num_features}.")
        return PFFeatures(
            self.config.head_dim,
            self.config.n_heads,
            m,
            qmc_method=o.qmc,
            seed=seed,
            radius=o.radius,
            stabilize=o.stabilize,
            learn_weight=o.learn_weight,
            input_scale=self.qk_scale,
        )
