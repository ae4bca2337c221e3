"""Uncertainty over seeds and per run.

* :func:`t_interval` -- mean, standard error and the two-sided Student-t interval of a statistic
  measured once per seed (``n - 1`` degrees of freedom). With one seed there is no spread, so
  the standard error and the interval are ``nan`` (never a zero-width interval).
* Per run, a test accuracy's interval is the exact binomial (Clopper-Pearson) interval of its
  counts: :func:`mmclshift.analysis.robustness.clopper_pearson`, re-exported here.
* :func:`verdict` -- ``holds`` / ``fails`` / ``inconclusive`` for an interval against a threshold
  (``above`` / ``below`` it), or against the equivalence margin ``[-threshold, +threshold]``
  (``within``: two one-sided tests, the whole interval inside the margin).
* :func:`decision_p_values` -- the p-values of those two decisions ("holds", "fails") from the per-seed
  values, on the scale where ``p < 1 - confidence`` is the interval's verdict: each one-sided
  Student-t p-value doubled (an interval at 95% is two one-sided tests at 2.5%).
* :func:`holm` -- Holm's step-down adjustment of a family of p-values; :func:`holm_verdicts`
  applies it to claim verdicts (a claim keeps ``holds`` / ``fails`` only when its adjusted
  p-value is below ``1 - confidence``, otherwise it becomes ``inconclusive``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

from mmclshift.analysis.robustness import clopper_pearson
from mmclshift.errors import UserError

CONFIDENCE = 0.95
Direction = Literal["above", "below", "within"]
VERDICTS = ("holds", "fails", "inconclusive")


@dataclass(frozen=True)
class Interval:
    """A statistic over seeds: its mean, standard error and ``confidence`` t-interval."""

    mean: float
    se: float
    low: float
    high: float
    n: int
    confidence: float = CONFIDENCE


def t_interval(values: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE) -> Interval:
    """Mean and Student-t interval of per-seed values (``nan`` spread for a single value)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise UserError("t_interval: no values (no seeds) to summarise")
    if not np.all(np.isfinite(x)):
        raise UserError("t_interval: values must be finite numbers")
    if not 0 < confidence < 1:
        raise UserError(f"t_interval: confidence must be in (0, 1); got {confidence}")
    mean = float(x.mean())
    if x.size < 2:
        return Interval(mean, math.nan, math.nan, math.nan, 1, confidence)
    se = float(x.std(ddof=1) / math.sqrt(x.size))
    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1)) * se
    return Interval(mean, se, mean - half, mean + half, int(x.size), confidence)


def widen(iv: Interval, extra_se: float) -> Interval:
    """The interval with ``extra_se`` (an independent error, e.g. a fitted line's) added to the
    standard error in quadrature; same degrees of freedom."""
    if iv.n < 2 or not math.isfinite(extra_se) or extra_se <= 0:
        return iv
    se = math.hypot(iv.se, extra_se)
    half = float(stats.t.ppf(0.5 + iv.confidence / 2, iv.n - 1)) * se
    return Interval(iv.mean, se, iv.mean - half, iv.mean + half, iv.n, iv.confidence)


def verdict(low: float, high: float, threshold: float, direction: Direction) -> str:
    """The verdict of a claim "statistic is ``direction`` ``threshold``" from its interval.

    ``holds`` when the whole interval is on the claimed side, ``fails`` when the whole interval is
    on the other side, ``inconclusive`` otherwise -- including an interval that touches or
    straddles the threshold, and an interval that could not be computed (``nan``).
    With ``direction="within"`` the claimed side is the margin ``(-threshold, +threshold)``: holds
    when the interval lies inside it, fails when it lies wholly beyond one end.
    """
    if direction not in ("above", "below", "within"):
        raise UserError(f"verdict: direction must be 'above', 'below' or 'within'; got {direction!r}")
    if not (math.isfinite(low) and math.isfinite(high)):
        return "inconclusive"
    if low > high:
        raise UserError(f"verdict: interval low {low} is above high {high}")
    if direction == "above":
        return "holds" if low > threshold else "fails" if high < threshold else "inconclusive"
    if direction == "below":
        return "holds" if high < threshold else "fails" if low > threshold else "inconclusive"
    margin = abs(threshold)
    if -margin < low and high < margin:
        return "holds"
    return "fails" if low > margin or high < -margin else "inconclusive"


def _one_sided(mean: float, se: float, df: int, value: float, upper: bool) -> float:
    """P-value of H0 "mu <= value" (``upper``: evidence that mu > value) or of "mu >= value"."""
    diff = mean - value
    if se == 0 or not math.isfinite(se):
        if se == 0 and diff != 0:
            return 0.0 if (diff > 0) == upper else 1.0
        return 1.0
    t = diff / se
    return float(stats.t.sf(t, df) if upper else stats.t.cdf(t, df))


def decision_p_values(iv: Interval, threshold: float, direction: Direction) -> tuple[float, float]:
    """(p of "holds", p of "fails") for an interval's mean and standard error, each a doubled
    one-sided Student-t p-value (``iv.n - 1`` degrees of freedom).

    ``p_holds < 1 - confidence`` exactly when the ``confidence`` t-interval gives ``holds`` (and
    likewise for ``fails``). For ``within`` (equivalence), "holds" is the larger of the two
    one-sided tests against the margin's ends (TOST) and "fails" the smaller of the tests that
    the mean lies beyond one end. Without a standard error (one seed) both are ``nan``.
    """
    if iv.n < 2 or not math.isfinite(iv.se):
        return math.nan, math.nan
    mean, se, df = iv.mean, iv.se, iv.n - 1

    def p(value: float, upper: bool) -> float:
        return min(1.0, 2 * _one_sided(mean, se, df, value, upper))

    if direction == "above":
        return p(threshold, True), p(threshold, False)
    if direction == "below":
        return p(threshold, False), p(threshold, True)
    if direction != "within":
        raise UserError(f"decision_p_values: unknown direction {direction!r}")
    m = abs(threshold)
    return max(p(-m, True), p(m, False)), min(p(m, True), p(-m, False))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (``nan`` counts as 1, and stays ``nan``).

    Sorted ascending, ``p_(i)`` becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))`` (1-based).
    """
    p = np.array([1.0 if not math.isfinite(v) else float(v) for v in p_values])
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return [math.nan if not math.isfinite(v) else float(a) for v, a in zip(p_values, adjusted, strict=True)]


def holm_verdicts(verdicts: Sequence[str], p_values: Sequence[float],
                  confidence: float = CONFIDENCE) -> tuple[list[str], list[float]]:
    """Verdicts after Holm's correction over the family, and the adjusted p-values.

    ``p_values`` are each claim's p of its own decision (``holds`` or ``fails``); a claim keeps
    its verdict when the adjusted value is below ``1 - confidence`` and is ``inconclusive``
    otherwise. Inconclusive claims stay inconclusive (and count in the family).
    """
    adjusted = holm(p_values)
    alpha = 1 - confidence
    out = [v if v != "inconclusive" and math.isfinite(a) and a < alpha else "inconclusive"
           for v, a in zip(verdicts, adjusted, strict=True)]
    return out, adjusted


__all__ = ["CONFIDENCE", "VERDICTS", "Interval", "clopper_pearson", "holm", "holm_verdicts", "t_interval",
           "decision_p_values", "verdict", "widen"]
