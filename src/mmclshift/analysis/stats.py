"""Uncertainty over seeds and per run.

* :func:`t_interval` -- mean, standard error and the two-sided Student-t interval of a statistic
  measured once per seed (``n - 1`` degrees of freedom). With one seed there is no spread, so
  the standard error and the interval are ``nan`` (never a zero-width interval).
* Per run, a test accuracy's interval is the exact binomial (Clopper-Pearson) interval of its
  counts: :func:`mmclshift.analysis.robustness.clopper_pearson`, re-exported here.
* :func:`verdict` -- ``holds`` / ``fails`` / ``inconclusive`` for an interval against a threshold.
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
Direction = Literal["above", "below"]
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


def verdict(low: float, high: float, threshold: float, direction: Direction) -> str:
    """The verdict of a claim "statistic is ``direction`` ``threshold``" from its interval.

    ``holds`` when the whole interval is on the claimed side, ``fails`` when the whole interval is
    on the other side, ``inconclusive`` otherwise -- including an interval that touches or
    straddles the threshold, and an interval that could not be computed (``nan``).
    """
    if direction not in ("above", "below"):
        raise UserError(f"verdict: direction must be 'above' or 'below'; got {direction!r}")
    if not (math.isfinite(low) and math.isfinite(high)):
        return "inconclusive"
    if low > high:
        raise UserError(f"verdict: interval low {low} is above high {high}")
    if direction == "above":
        return "holds" if low > threshold else "fails" if high < threshold else "inconclusive"
    return "holds" if high < threshold else "fails" if low > threshold else "inconclusive"


__all__ = ["CONFIDENCE", "VERDICTS", "Interval", "clopper_pearson", "t_interval", "verdict"]
