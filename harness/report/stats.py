"""The statistics behind the report's verdicts: per-item results, paired tests, rank agreement.

* **Per-item results** (:mod:`harness.evaluation.items`): every document's score, kept with each
  result row; :func:`score` is the metric over them.
* **A difference between two models** (:func:`paired_difference`) is judged on the items both
  scored: a paired bootstrap over items (``scipy.stats.bootstrap``, ``paired=True``) of the
  difference between their seed-averaged per-item scores gives the item-sampling standard error;
  the spread across seeds adds ``sd_A^2 / k_A + sd_B^2 / k_B`` (``k`` seeds of each). A model with
  one seed takes the median spread of the models that have several (said so in the result). The
  two-sided p-value is the normal one of ``difference / combined standard error``.
* **Rank agreement** with the paper (:func:`ranking_agreement`): Kendall's tau with its p-value
  (``scipy.stats.kendalltau``); :func:`describe_tau` words it by the p-value: "no evidence" of
  agreement when ``p > ALPHA``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from harness.evaluation.items import Items, concat_items, decode_items, encode_items

#: significance level of every verdict in the report
ALPHA = 0.05
#: bootstrap resamples of a paired difference
N_RESAMPLES = 2000


def score(items: Items) -> float:
    """The metric over the items: the mean for 0/1 scores, bits per byte for (log-likelihood, bytes)."""
    if items.ratio:
        return float(-items.values[:, 0].sum() / (items.values[:, 1].sum() * math.log(2)))
    return float(items.values.mean())


# -- paired differences -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Difference:
    """``A - B`` on their shared items, with its standard errors and two-sided p-value."""

    diff: float
    se_items: float
    se_seeds: float
    n_items: int
    seeds: tuple[int, int]
    #: how the seed spread was had: "measured", "assumed" (a one-seed model took the pooled spread) or "none"
    seed_spread: str

    @property
    def se(self) -> float:
        return math.hypot(self.se_items, self.se_seeds)

    @property
    def p(self) -> float:
        if self.se <= 0:
            return 0.0 if self.diff else 1.0
        return float(2 * sps.norm.sf(abs(self.diff) / self.se))

    @property
    def significant(self) -> bool:
        return self.p <= ALPHA

    def text(self, digits: int = 3) -> str:
        """``+0.012 ± 0.020 (p = 0.55)``."""
        return f"{self.diff:+.{digits}f} ± {self.se:.{digits}f} ({format_p(self.p)})"


def format_p(p: float) -> str:
    """A p-value for prose: ``p = 0.13`` (two significant digits), ``p < 0.001`` below that."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def _seed_mean(runs: Sequence[Items]) -> np.ndarray:
    return np.mean([r.values for r in runs], axis=0)


def paired_difference(
    a: Sequence[Items],
    b: Sequence[Items],
    sd: tuple[float | None, float | None] = (None, None),
    pooled_sd: float | None = None,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> Difference | None:
    """``A - B`` from their per-item results, one :class:`Items` per seed of each model.

    ``sd``: each model's spread across seeds (None or NaN for a one-seed model, which then takes
    ``pooled_sd``). The item part is a paired bootstrap over the shared items of the seed-averaged
    per-item scores; for bits per byte (ratio items) the statistic is the difference of the two
    ratios. None when the two do not share their items."""
    if not a or not b or any(r.key != a[0].key for r in [*a, *b]) or a[0].ratio != b[0].ratio:
        return None
    ma, mb = _seed_mean(a), _seed_mean(b)
    diff = score(Items("", ma)) - score(Items("", mb))
    n = ma.shape[0]
    if n < 2:
        se_items = 0.0
    else:
        rng = np.random.default_rng(seed)
        if ma.ndim == 2:

            def stat(x: np.ndarray, y: np.ndarray, w: np.ndarray, axis: int = -1) -> np.ndarray:
                return -(x.sum(axis) - y.sum(axis)) / (w.sum(axis) * math.log(2))

            data: tuple[np.ndarray, ...] = (ma[:, 0], mb[:, 0], ma[:, 1])
        else:

            def stat(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:  # type: ignore[misc]
                return (x - y).mean(axis)

            data = (ma, mb)
        if np.array_equal(ma, mb):
            se_items = 0.0
        else:
            res = sps.bootstrap(
                data, stat, paired=True, vectorized=True, n_resamples=n_resamples, method="percentile", rng=rng
            )
            se_items = float(res.standard_error)
    seed_var, how = 0.0, "measured"
    counts = (len(a), len(b))
    for runs, s in zip(counts, sd):
        s = None if s is None or (isinstance(s, float) and math.isnan(s)) else s
        if runs > 1 and s is not None:
            seed_var += s**2 / runs
        elif pooled_sd is not None and not math.isnan(pooled_sd):
            seed_var += pooled_sd**2 / runs
            how = "assumed"
        else:
            how = "none" if how == "measured" else how
    return Difference(diff, se_items, math.sqrt(seed_var), int(n), counts, how)


# -- rank agreement -----------------------------------------------------------------------------------
def ranking_agreement(ours: pd.Series, paper: pd.Series) -> dict[str, Any]:
    """Kendall's tau between two scores over their common methods (higher = better in both)."""
    common = [m for m in ours.index if m in paper.index and pd.notna(ours[m]) and pd.notna(paper[m])]
    if len(common) < 3:
        return {"n": len(common), "tau": None, "p": None, "common": common}
    res = sps.kendalltau([ours[m] for m in common], [paper[m] for m in common])
    tau, p = float(res.statistic), float(res.pvalue)
    if math.isnan(tau):  # one of the two is constant
        return {"n": len(common), "tau": None, "p": None, "common": common, "constant": True}
    return {"n": len(common), "tau": tau, "p": p, "common": common}


def describe_tau(agree: dict[str, Any], what: str) -> str:
    """One sentence on a :func:`ranking_agreement`, worded by its p-value (not by tau alone)."""
    if agree["tau"] is None:
        if agree.get("constant"):
            return f"Ranking by {what}: every method scores the same on one side; no ranking to compare."
        return f"Too few methods in common ({agree['n']}) to compare rankings by {what}."
    tau, p = agree["tau"], agree["p"]
    head = f"Ranking by {what}: Kendall's tau = {tau:.2f} ({format_p(p)}, {agree['n']} methods)"
    if p > ALPHA:
        return f"{head}: no evidence that our ranking agrees with the paper's (p > {ALPHA})."
    verdict = "agrees with" if tau > 0 else "reverses"
    return f"{head}: our ranking {verdict} the paper's (p <= {ALPHA})."


def mean_with_se(values: Sequence[float], ses: Sequence[float]) -> tuple[float, float]:
    """The mean of independent estimates and its standard error (``sqrt(sum se^2) / k``)."""
    k = len(values)
    if not k:
        return math.nan, math.nan
    return float(np.mean(values)), float(math.sqrt(sum(s**2 for s in ses)) / k)


__all__ = [
    "ALPHA",
    "Difference",
    "Items",
    "concat_items",
    "decode_items",
    "describe_tau",
    "encode_items",
    "format_p",
    "mean_with_se",
    "paired_difference",
    "ranking_agreement",
    "score",
]
