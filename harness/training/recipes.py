"""Conversion recipes: the training that follows Algorithm 1's weight copy, as stages of objectives
(:mod:`harness.training.objectives`), compared at equal compute.

* ``paper`` — the LM fine-tune of every weight (DiJiang Sec. 4, Algorithm 1);
* ``distill`` — LM loss plus KL to the frozen teacher's next-token distribution;
* ``transfer`` — attention transfer of the new mixer parameters (LoLCATs, Zhang et al. 2024,
  Sec. 3.1), then the LM fine-tune.

**Equal compute.** A budget is given in tokens of the ``paper`` recipe. Costs are counted in forward
passes of the whole model per token (a training step costs 3: forward and a backward twice as
dear, Kaplan et al. 2020, Sec. 2.1): ``lm`` costs 3, ``distill`` 3 + 1 (the teacher's forward),
``transfer`` 1 (the teacher's forward) + 3 rho, with rho the share of the model's parameters in its
token mixers (the student's forward/backward only runs the mixers). Each recipe then gets the token
counts that spend the same compute as ``paper`` on the budget.
"""

from __future__ import annotations

from dataclasses import dataclass

#: forward-pass equivalents per token of a training step (forward 1 + backward 2)
TRAIN_COST = 3.0
#: the share of a ``transfer`` recipe's compute spent on its first stage
TRANSFER_SHARE = 0.25


class RecipeError(ValueError):
    """An unknown recipe or an impossible budget."""


@dataclass(frozen=True)
class Stage:
    """One training run of a recipe: its objective and token count."""

    objective: str
    tokens: int


RECIPES: tuple[str, ...] = ("paper", "distill", "transfer")


def objective_cost(objective: str, mixer_share: float) -> float:
    """Forward-pass equivalents per token of ``objective`` (see the module docstring)."""
    costs = {"lm": TRAIN_COST, "distill": TRAIN_COST + 1.0, "transfer": 1.0 + TRAIN_COST * mixer_share}
    return costs[objective]


def recipe_stages(recipe: str, budget_tokens: int, mixer_share: float, min_tokens: int = 1) -> list[Stage]:
    """The stages of ``recipe`` spending the compute of ``budget_tokens`` tokens of the ``paper``
    recipe; ``mixer_share`` is rho, the share of parameters in the token mixers. Every stage gets at
    least ``min_tokens`` (one optimizer step)."""
    if recipe not in RECIPES:
        raise RecipeError(f"unknown recipe {recipe!r}; choose one of {list(RECIPES)}.")
    if not 0 < mixer_share <= 1:
        raise RecipeError(f"mixer_share must be in (0, 1], got {mixer_share}.")
    compute = budget_tokens * objective_cost("lm", mixer_share)
    if recipe == "paper":
        shares = [("lm", 1.0)]
    elif recipe == "distill":
        shares = [("distill", 1.0)]
    else:
        shares = [("transfer", TRANSFER_SHARE), ("lm", 1.0 - TRANSFER_SHARE)]
    return [Stage(obj, max(min_tokens, round(compute * s / objective_cost(obj, mixer_share)))) for obj, s in shares]


def mixer_share(model: object) -> float:
    """rho: the share of ``model``'s parameters inside its token mixers (``.mixer.`` modules)."""
    params = list(model.named_parameters())  # type: ignore[attr-defined]
    total = sum(p.numel() for _, p in params)
    return sum(p.numel() for n, p in params if ".mixer." in n) / total
