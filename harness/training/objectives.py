"""Training objectives, the building blocks of the conversion recipes.

A converted model (paper Algorithm 1: the teacher's weights, a new token mixer) can be trained with

* ``lm`` — next-token cross-entropy on every weight: the paper's fine-tune (DiJiang Sec. 4, Alg. 1);
* ``distill`` — ``(1 - alpha) * CE + alpha * T^2 * KL(teacher_T || student_T)`` over next-token
  distributions at temperature ``T`` (Hinton et al. 2015, Eq. 2's soft targets), the teacher frozen;
* ``transfer`` — attention transfer (LoLCATs, Zhang et al. 2024, Sec. 3.1, Eq. 4): only the new
  mixer's own parameters train (feature maps, decays, gates: what the teacher does not have), on the
  mean over layers of the MSE between the student mixer's output and the frozen teacher attention's
  output, both computed from the teacher's hidden states at that layer. Everything else is frozen.

The recipes of :mod:`harness.training.recipes` chain them (``transfer`` then ``lm``). An objective is built
once per run by :func:`make_objective` and called on each batch of token ids.

Every loss is computed here in float32 from the model's outputs (logits, or a mixer's output),
upcast first, not taken from the model's own ``loss``: under bf16/fp16 mixed precision the logits
are low precision, and FSDP's ``MixedPrecisionPolicy(output_dtype=bf16)`` casts everything the
wrapped model returns, its ``loss`` included, to bf16 (a logged and optimised loss with 8
significant bits). Computed from the upcast logits, the loss has float32 precision on every engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

OBJECTIVES: tuple[str, ...] = ("lm", "distill", "transfer")


class ObjectiveError(ValueError):
    """An objective that cannot run with this configuration."""


@dataclass
class ObjectiveOptions:
    """``alpha``: weight of the distillation term; ``temperature``: of both distributions."""

    alpha: float = 0.5
    temperature: float = 2.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0 or self.temperature <= 0:
            raise ObjectiveError(f"distill needs 0 <= alpha <= 1 and temperature > 0, got {self}.")


def new_parameter_names(student: nn.Module, teacher: nn.Module) -> list[str]:
    """Names of the student's mixer parameters that the teacher does not have (what ``transfer``
    trains): e.g. DiJiang's DCT weights and decays, a gate; not the copied Q/K/V/O projections."""
    have = {name for name, _ in teacher.named_parameters()}
    return [n for n, _ in student.named_parameters() if ".mixer." in n and n not in have]


def freeze_all_but(model: nn.Module, names: list[str]) -> None:
    """``requires_grad`` only for ``names`` (the optimizer is built after this, over those alone)."""
    keep = set(names)
    for name, p in model.named_parameters():
        p.requires_grad_(name in keep)


def lm_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (nats) of ``logits`` (B, T, V) on token ids ``ids`` (B, T), -100
    ignored, computed in float32 whatever the logits' dtype (the paper's fine-tuning loss, DiJiang
    Sec. 4: position t predicts token t + 1)."""
    return F.cross_entropy(
        logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten().to(logits.device), ignore_index=-100
    )


class Objective:
    """The loss of one batch; subclasses hold what they need (a frozen teacher)."""

    name = "lm"

    def loss(self, model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        """The LM loss of ``model`` on ``ids``, float32 (:func:`lm_loss` of its logits)."""
        return lm_loss(model(input_ids=ids).logits, ids)


class Distill(Objective):
    """LM loss mixed with soft-target KL to a frozen teacher (see the module docstring)."""

    name = "distill"

    def __init__(self, teacher: nn.Module, options: ObjectiveOptions) -> None:
        self.teacher, self.opt = teacher, options

    def loss(self, model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        """``(1 - alpha) * CE + alpha * T^2 * KL``, float32: both terms from the upcast logits."""
        s_logits = model(input_ids=ids).logits.float()
        with torch.no_grad():
            t_logits = self.teacher(input_ids=ids).logits.float()
        T = self.opt.temperature
        s_logp = F.log_softmax(s_logits / T, -1)
        t_logp = F.log_softmax(t_logits / T, -1)
        kl = F.kl_div(s_logp.flatten(0, 1), t_logp.flatten(0, 1), log_target=True, reduction="batchmean")
        return (1 - self.opt.alpha) * lm_loss(s_logits, ids) + self.opt.alpha * T * T * kl


class AttentionTransfer(Objective):
    """Layer-wise MSE between student mixers and the frozen teacher's attention (LoLCATs Eq. 4)."""

    name = "transfer"

    def __init__(self, teacher: nn.Module) -> None:
        self.teacher = teacher
        self._seen: list[tuple[torch.Tensor, dict[str, Any], torch.Tensor]] = []
        self._hooks = [
            layer.mixer.register_forward_hook(self._record, with_kwargs=True) for layer in teacher.model.layers
        ]

    def close(self) -> None:
        """Remove the recording hooks from the teacher."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def _record(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        x = args[0] if args else kwargs["x"]
        ctx = {k: kwargs.get(k) for k in ("position_ids", "attention_mask")}
        self._seen.append((x.detach(), ctx, output[0].detach()))

    def layer_targets(self, ids: torch.Tensor) -> list[tuple[torch.Tensor, dict[str, Any], torch.Tensor]]:
        """(mixer input, its position ids/mask, teacher attention output) of every layer for ``ids``."""
        self._seen = []
        with torch.no_grad():
            self.teacher(input_ids=ids)
        seen, self._seen = self._seen, []
        return seen

    def loss(self, model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        """Mean over layers of the float32 MSE between the student's mixer output and the teacher's."""
        targets = self.layer_targets(ids)
        layers = getattr(model, "module", model).model.layers  # unwrapped from DDP
        if len(targets) != len(layers):
            raise ObjectiveError(f"teacher has {len(targets)} layers, the student {len(layers)}.")
        losses = [
            F.mse_loss(layer.mixer(x, **ctx)[0].float(), y.float()) for layer, (x, ctx, y) in zip(layers, targets)
        ]
        return torch.stack(losses).mean()


def make_objective(
    name: str, model: nn.Module, teacher: nn.Module | None, options: dict[str, Any] | None = None
) -> Objective:
    """The objective ``name`` for ``model``; ``transfer`` also freezes all but the new mixer
    parameters of ``model`` (call it before building the optimizer)."""
    if name not in OBJECTIVES:
        raise ObjectiveError(f"unknown objective {name!r}; choose one of {list(OBJECTIVES)}.")
    if name == "lm":
        if options:
            raise ObjectiveError(f"objective 'lm' takes no options, got {sorted(options)}.")
        return Objective()
    if teacher is None:
        raise ObjectiveError(f"objective {name!r} needs a teacher checkpoint (set `teacher`).")
    teacher.eval().requires_grad_(False)
    if name == "distill":
        return Distill(teacher, ObjectiveOptions(**(options or {})))
    if options:
        raise ObjectiveError(f"objective 'transfer' takes no options, got {sorted(options)}.")
    names = new_parameter_names(model, teacher)
    if not names:
        raise ObjectiveError(
            "transfer trains the student's new mixer parameters, and this method has none (its mixer "
            "is a function of the teacher's Q/K/V/O alone); use the 'paper' recipe for it."
        )
    freeze_all_but(model, names)
    return AttentionTransfer(teacher)
