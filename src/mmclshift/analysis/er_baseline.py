"""Whether a baseline can carry an effective-robustness line, and the line's uncertainty.

An effective-robustness number is only as good as the line under it. :func:`baseline_support`
refuses a baseline whose line would be noise:

* its ID accuracies must span more than :data:`MIN_SPREAD_NOISE` times their noise -- the larger
  of the median binomial standard error of one ID accuracy (``sqrt(a(1-a)/n)``) and the pooled
  seed-to-seed standard deviation of the ID accuracy among baseline runs of one config (three
  seeds of one SL config span only their own noise);
* the fitted line's correlation must be positive and significant (two-sided p of ``r`` below
  :data:`ALPHA`, ``scipy.stats.linregress`` on the transformed axes, at least 3 points).

:func:`line_sd` bootstraps the line the way imagenet-testbed does (resample the baseline points
with replacement, refit with :func:`mmclshift.analysis.robustness.bootstrap_fits`) and returns the
standard deviation of any statistic of the line -- the line's uncertainty, which the
effective-robustness claims add to their seed-to-seed standard error.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from mmclshift.analysis.robustness import LinearFit, bootstrap_fits, fit_line, transform
from mmclshift.errors import UserError

#: the baseline's ID spread must exceed this many times its noise
MIN_SPREAD_NOISE = 4.0
#: significance level of the line's correlation
ALPHA = 0.05
N_BOOT = 1000


@dataclass
class BaselineSupport:
    ok: bool
    reason: str  # why not (empty when ok)
    n: int
    fit: LinearFit | None
    r: float
    p: float
    id_low: float
    id_high: float
    noise: float

    def describe(self) -> str:
        line = (f"line fitted to {self.n} baseline runs, ID {self.id_low:.3f}-{self.id_high:.3f}"
                + (f", r = {self.r:.2f} (p = {self.p:.2g})" if math.isfinite(self.r) else ""))
        return line if self.ok else f"{line}; {self.reason}"


def _pooled_seed_sd(id_acc: np.ndarray, configs: Sequence[str] | None) -> float:
    if configs is None:
        return 0.0
    ss, df = 0.0, 0
    for c in set(configs):
        x = id_acc[[i for i, k in enumerate(configs) if k == c]]
        if len(x) > 1:
            ss += float(((x - x.mean()) ** 2).sum())
            df += len(x) - 1
    return math.sqrt(ss / df) if df else 0.0


def baseline_support(id_acc: Sequence[float], ood_acc: Sequence[float], *,
                     n_id: Sequence[float | None] | None = None,
                     configs: Sequence[str] | None = None, kind: str = "logit") -> BaselineSupport:
    """Can these baseline points (one per run) support a line? ``configs`` names each run's
    config without its seed (to measure the seed-to-seed noise); ``n_id`` its ID test size."""
    x = np.asarray(id_acc, dtype=np.float64)
    y = np.asarray(ood_acc, dtype=np.float64)
    nan = math.nan
    if len(x) < 3:
        return BaselineSupport(False, f"only {len(x)} baseline run(s): a line needs at least 3",
                               len(x), None, nan, nan, float(x.min(initial=nan)), float(x.max(initial=nan)), nan)
    ses = [math.sqrt(a * (1 - a) / n) for a, n in zip(x, n_id or [None] * len(x), strict=True)
           if isinstance(n, int | float) and n and n > 0 and math.isfinite(n)]
    noise = max(float(np.median(ses)) if ses else 0.0, _pooled_seed_sd(x, configs))
    spread = float(np.ptp(x))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = fit_line(x, y, kind)  # type: ignore[arg-type]
    except UserError as exc:
        return BaselineSupport(False, f"no line ({exc})", len(x), None, nan, nan, float(x.min()),
                               float(x.max()), noise)
    keep = (x > 0) & (x < 1) & (y > 0) & (y < 1)
    n_fit = int(keep.sum())
    r = fit.rvalue
    p = float(stats.linregress(transform(x[keep], kind), transform(y[keep], kind)).pvalue) if n_fit >= 3 else nan  # type: ignore[arg-type]
    base = BaselineSupport(True, "", len(x), fit, r, p, float(x.min()), float(x.max()), noise)
    if spread <= MIN_SPREAD_NOISE * noise:
        base.ok, base.reason = False, (f"its ID accuracies span {spread:.3f}, within "
                                       f"{MIN_SPREAD_NOISE:g} x their noise ({noise:.3f})")
    elif not (math.isfinite(p) and p < ALPHA and r > 0):
        base.ok, base.reason = False, (f"the line's correlation is not significantly positive "
                                       f"(r = {r:.2f}, p = {p:.2g}, {n_fit} points)")
    return base


def line_sd(id_acc: Sequence[float], ood_acc: Sequence[float], statistic: Callable[[LinearFit], float],
            *, kind: str = "logit", n_boot: int = N_BOOT, seed: int = 0) -> float:
    """Standard deviation of ``statistic(line)`` over lines refitted to bootstrap resamples of
    the baseline points (resamples with no line are skipped); ``nan`` with under 2 lines."""
    x = np.asarray(id_acc, dtype=np.float64)
    y = np.asarray(ood_acc, dtype=np.float64)
    values = [float(statistic(line))
              for line in bootstrap_fits(x, y, kind, n_boot=n_boot, seed=seed)]  # type: ignore[arg-type]
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def baseline_points(table: pd.DataFrame, id_split: str = "id", ood_split: str = "ood",
                    baseline: str = "sl") -> pd.DataFrame:
    """One row per baseline run (``run``, ``accuracy_id``, ``accuracy_ood``, ``n_id``), ordered
    by run directory (the bootstrap's order)."""
    from mmclshift.analysis.groups import config_signature

    if table.empty or "method" not in table.columns:
        return pd.DataFrame(columns=["run", "accuracy_id", "accuracy_ood", "n_id", "config"])
    b = table[table["method"] == baseline]
    pts = (b[b["split"] == id_split][["run", "accuracy", "n"]].rename(columns={"n": "n_id"})
           .merge(b[b["split"] == ood_split][["run", "accuracy"]], on="run", suffixes=("_id", "_ood"))
           .rename(columns={"accuracy": "accuracy_ood"})
           .sort_values("run", kind="stable").reset_index(drop=True))
    pts["config"] = [config_signature(table, r) for r in pts["run"]]
    return pts


def table_support(table: pd.DataFrame, id_split: str = "id", ood_split: str = "ood",
                  baseline: str = "sl") -> tuple[BaselineSupport, pd.DataFrame]:
    """:func:`baseline_support` of the ``baseline`` runs in a collected table, and their points."""
    pts = baseline_points(table, id_split, ood_split, baseline)
    return baseline_support(pts["accuracy_id"].astype(float), pts["accuracy_ood"].astype(float),
                            n_id=list(pts["n_id"]), configs=list(pts["config"])), pts


__all__ = ["ALPHA", "MIN_SPREAD_NOISE", "N_BOOT", "BaselineSupport", "baseline_points", "baseline_support",
           "line_sd", "table_support"]
