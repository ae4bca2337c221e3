"""Effective robustness (Taori et al. 2020; the paper's Figure 3): OOD accuracy beyond what a
baseline family's ID-OOD trend predicts.

The recipe follows imagenet-testbed:

1. transform accuracies (logit by default, probit, or none);
2. fit a line ``T(ood) = slope * T(id) + intercept`` (``scipy.stats.linregress``) on the baseline
   models only (by default the SL runs). A baseline point with an accuracy of exactly 0 or 1 has
   an infinite logit/probit: by default (``saturated="exclude"``) it is left out of the fit with
   a :class:`SaturationWarning` naming it (clipped to ``[1e-4, 1 - 1e-4]`` it sits 9.2 logits out
   and drags the line); ``saturated="clip"`` clips it instead (the old behaviour), also warned.
   The baseline ID accuracies must span at least :data:`MIN_ID_SPREAD` on the transformed axis;
3. a model's effective robustness is its observed OOD accuracy minus the line's prediction mapped
   back to accuracy: ``ER = ood - T^{-1}(slope * T(id) + intercept)``;
4. per point, Clopper-Pearson (exact binomial) intervals from the image counts; for the line, a
   bootstrap band over the baseline points.

With several OOD test sets the paper averages: :func:`average_effective_robustness` fits a line
per OOD set and averages each model's ER. :func:`fit_multi_id` is the multi-ID variant: one
linear model of ``T(ood)`` on several ID test sets at once (least squares).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

from mmclshift.errors import UserError

Transform = Literal["logit", "probit", "none"]
Saturated = Literal["exclude", "clip"]
EPS = 1e-4
#: Smallest spread (max - min) of the baseline's transformed ID accuracies that a line is fitted
#: to: below it the slope is float noise (ID accuracies equal up to rounding gave slopes of 4e11).
MIN_ID_SPREAD = 1e-6


class SaturationWarning(UserWarning):
    """An accuracy of exactly 0 or 1 met a logit/probit axis; the message says how it was handled."""


#: ImageNet shifts scored with a restricted head: their ID axis is ImageNet val restricted to the
#: same classes (when the run evaluated it)
OWN_ID = {"imagenet-r": "id_r200", "imagenet-a": "id_a200", "objectnet": "id_objectnet"}
#: names of the full ImageNet val split, in order of preference ("id" in the Figure 3 configs)
IMAGENET_ID = ("imagenet", "id")
#: the shifted ImageNets, in the order a figure picks its one pair
REAL_SHIFTS = ("imagenet-v2", "imagenet-sketch", "objectnet", "imagenet-r", "imagenet-a")


def shift_pairs(splits: Sequence[str] | set[str]) -> list[tuple[str, str]]:
    """(ID split, OOD split) pairs for effective robustness among a run kind's ``splits``.

    Synthetic and semi-synthetic runs pair ``id`` with ``ood`` and ``ood_reversed``; each shifted
    ImageNet pairs with its own restricted ID split (:data:`OWN_ID`) when present, else with the
    full ImageNet val split, named ``imagenet`` or ``id`` (:data:`IMAGENET_ID`).
    """
    have = set(splits)
    pairs = [("id", s) for s in ("ood", "ood_reversed") if s in have and "id" in have]
    full_id = next((s for s in IMAGENET_ID if s in have), None)
    for s in sorted(have):
        if s.startswith(("imagenet-", "objectnet")):
            own = OWN_ID.get(s)
            id_split = own if own in have else full_id
            if id_split is not None:
                pairs.append((id_split, s))
    return pairs


def _who(labels: Sequence[str] | None, i: int) -> str:
    return f"point {i}" if labels is None else str(labels[i])


def _as_array(x: Sequence[float] | np.ndarray, name: str,
              labels: Sequence[str] | None = None) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise UserError(f"{name}: expected a 1-D sequence of accuracies")
    bad = np.flatnonzero(~np.isfinite(arr) | (arr < 0) | (arr > 1))
    if len(bad):
        raise UserError(f"{name}: accuracies must be finite numbers in [0, 1]; "
                        f"{_who(labels, int(bad[0]))} has {arr[bad[0]]}")
    return arr


def transform(acc: np.ndarray | float, kind: Transform = "logit", eps: float = EPS) -> np.ndarray:
    """Accuracy -> axis scale. Logit and probit clip to [eps, 1 - eps] first."""
    a = np.asarray(acc, dtype=np.float64)
    if kind == "none":
        return a
    a = np.clip(a, eps, 1 - eps)
    if kind == "logit":
        return np.log(a / (1 - a))
    if kind == "probit":
        return stats.norm.ppf(a)
    raise UserError(f"unknown accuracy transform {kind!r} (logit, probit, none)")


def inverse_transform(t: np.ndarray | float, kind: Transform = "logit") -> np.ndarray:
    t = np.asarray(t, dtype=np.float64)
    if kind == "none":
        return t
    if kind == "logit":
        return 1.0 / (1.0 + np.exp(-t))
    if kind == "probit":
        return stats.norm.cdf(t)
    raise UserError(f"unknown accuracy transform {kind!r} (logit, probit, none)")


def clopper_pearson(correct: np.ndarray | int, n: np.ndarray | int,
                    confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Exact binomial (Clopper-Pearson) interval for ``correct`` successes out of ``n``."""
    k = np.asarray(correct, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    if np.any(n <= 0) or np.any(k < 0) or np.any(k > n):
        raise UserError("clopper_pearson: need 0 <= correct <= n and n > 0")
    alpha = 1 - confidence
    lo = np.where(k > 0, stats.beta.ppf(alpha / 2, k, n - k + 1), 0.0)
    hi = np.where(k < n, stats.beta.ppf(1 - alpha / 2, k + 1, n - k), 1.0)
    return lo, hi


@dataclass
class LinearFit:
    """``T(ood) = slope * T(id) + intercept`` on the transformed axes."""

    slope: float
    intercept: float
    rvalue: float
    transform: Transform

    def predict(self, id_acc: np.ndarray | float) -> np.ndarray:
        """Predicted OOD accuracy (back on the accuracy scale)."""
        return inverse_transform(self.slope * transform(id_acc, self.transform) + self.intercept,
                                 self.transform)


def _saturated(x: np.ndarray, y: np.ndarray, kind: Transform) -> np.ndarray:
    if kind == "none":
        return np.zeros(len(x), dtype=bool)
    return (x == 0) | (x == 1) | (y == 0) | (y == 1)


def fit_line(id_acc: Sequence[float], ood_acc: Sequence[float],
             kind: Transform = "logit", *, saturated: Saturated = "exclude",
             labels: Sequence[str] | None = None) -> LinearFit:
    """Fit ``T(ood) = slope T(id) + intercept`` through baseline points.

    Points at accuracy 0 or 1 are excluded (or clipped, ``saturated="clip"``) with a
    :class:`SaturationWarning`; ``labels`` name the points in warnings and errors.
    """
    x, y = _as_array(id_acc, "id accuracy", labels), _as_array(ood_acc, "ood accuracy", labels)
    if len(x) != len(y):
        raise UserError(f"mismatched lengths: {len(x)} ID accuracies vs {len(y)} OOD accuracies")
    if saturated not in ("exclude", "clip"):
        raise UserError(f"unknown saturated={saturated!r} (exclude, clip)")
    sat = _saturated(x, y, kind)
    if sat.any():
        who = ", ".join(f"{_who(labels, int(i))} (ID {x[i]:g}, OOD {y[i]:g})"
                        for i in np.flatnonzero(sat))
        how = ("left out of the fit" if saturated == "exclude"
               else f"clipped to [{EPS:g}, {1 - EPS:g}] in the fit")
        warnings.warn(f"baseline accuracy of exactly 0 or 1 has no finite {kind}: {who} {how}",
                      SaturationWarning, stacklevel=2)
        if saturated == "exclude":
            x, y = x[~sat], y[~sat]
    if len(x) < 2:
        raise UserError(f"the baseline fit needs at least 2 baseline points, got {len(x)}"
                        + (" after leaving out accuracies of 0 or 1" if sat.any() else ""))
    tx = transform(x, kind)
    spread = float(np.ptp(tx))
    if spread < MIN_ID_SPREAD:
        raise UserError(f"the baseline ID accuracies span {spread:.3g} on the {kind} axis "
                        f"(< {MIN_ID_SPREAD:g}): a line cannot be fitted")
    res = stats.linregress(tx, transform(y, kind))
    return LinearFit(float(res.slope), float(res.intercept), float(res.rvalue), kind)


def bootstrap_fits(id_acc: np.ndarray, ood_acc: np.ndarray, kind: Transform = "logit", *,
                   n_boot: int, seed: int = 0) -> Iterator[LinearFit]:
    """Lines (:func:`fit_line`) refitted to ``n_boot`` resamples with replacement (seeded) of the
    points; a resample that cannot carry a line (one distinct ID accuracy) is skipped."""
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        idx = rng.integers(0, len(id_acc), len(id_acc))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                line = fit_line(id_acc[idx], ood_acc[idx], kind)
            except UserError:
                continue
        yield line


@dataclass
class EffectiveRobustness:
    fit: LinearFit
    predicted: np.ndarray  # line's OOD prediction at each model's ID accuracy
    er: np.ndarray  # observed OOD minus predicted
    id_ci: tuple[np.ndarray, np.ndarray] | None
    ood_ci: tuple[np.ndarray, np.ndarray] | None
    band_x: np.ndarray  # ID accuracies at which the band is evaluated
    band_lo: np.ndarray
    band_hi: np.ndarray


def effective_robustness(
    id_acc: Sequence[float],
    ood_acc: Sequence[float],
    baseline: Sequence[bool],
    *,
    kind: Transform = "logit",
    id_counts: tuple[Sequence[int], Sequence[int]] | None = None,
    ood_counts: tuple[Sequence[int], Sequence[int]] | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    band_points: int = 100,
    saturated: Saturated = "exclude",
    labels: Sequence[str] | None = None,
) -> EffectiveRobustness:
    """Effective robustness of every model against the line fitted on the ``baseline`` ones.

    ``id_counts`` / ``ood_counts`` are ``(correct, n)`` per model, for Clopper-Pearson intervals.
    The bootstrap band resamples the baseline points with replacement ``n_boot`` times (seeded)
    and takes the central ``confidence`` range of the refitted lines' predictions. ``saturated``
    and ``labels``: see :func:`fit_line`; a model at ID accuracy 0 or 1 gets the line's value at
    the clipped ID accuracy (warned).
    """
    x, y = _as_array(id_acc, "id accuracy", labels), _as_array(ood_acc, "ood accuracy", labels)
    base = np.asarray(baseline, dtype=bool)
    if not (len(x) == len(y) == len(base)):
        raise UserError(
            f"mismatched lengths: {len(x)} ID accuracies, {len(y)} OOD accuracies, "
            f"{len(base)} baseline flags")
    base_labels = None if labels is None else [labels[i] for i in np.flatnonzero(base)]
    fit = fit_line(x[base], y[base], kind, saturated=saturated, labels=base_labels)
    edge = np.flatnonzero(~base & ((x == 0) | (x == 1))) if kind != "none" else []
    if len(edge):
        warnings.warn("ID accuracy of exactly 0 or 1: the line is read at the clipped value "
                      f"[{EPS:g}, {1 - EPS:g}] for " + ", ".join(_who(labels, int(i)) for i in edge),
                      SaturationWarning, stacklevel=2)
    predicted = fit.predict(x)
    id_ci = clopper_pearson(*id_counts, confidence=confidence) if id_counts else None
    ood_ci = clopper_pearson(*ood_counts, confidence=confidence) if ood_counts else None

    lo_x, hi_x = max(min(x.min(), 1 - 1e-3), 1e-3), min(max(x.max(), 1e-3), 1 - 1e-3)
    band_x = np.linspace(lo_x, hi_x, band_points)
    bx, by = x[base], y[base]
    if saturated == "exclude":
        keep = ~_saturated(bx, by, kind)
        bx, by = bx[keep], by[keep]
    preds = [line.predict(band_x) for line in bootstrap_fits(bx, by, kind, n_boot=n_boot, seed=seed)]
    if preds:
        arr = np.stack(preds)
        q = (1 - confidence) / 2
        band_lo, band_hi = np.quantile(arr, q, axis=0), np.quantile(arr, 1 - q, axis=0)
    else:
        band_lo = band_hi = fit.predict(band_x)
    return EffectiveRobustness(fit, predicted, y - predicted, id_ci, ood_ci, band_x, band_lo, band_hi)


def average_effective_robustness(
    id_acc: Sequence[float], ood_accs: Mapping[str, Sequence[float]], baseline: Sequence[bool],
    *, kind: Transform = "logit",
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """ER per OOD set (one line per set) and its average over the sets, per model."""
    if not ood_accs:
        raise UserError("average_effective_robustness needs at least one OOD test set")
    per = {name: effective_robustness(id_acc, acc, baseline, kind=kind, n_boot=0).er
           for name, acc in ood_accs.items()}
    return np.mean(np.stack(list(per.values())), axis=0), per


@dataclass
class MultiIdFit:
    """``T(ood) = sum_j coef_j T(id_j) + intercept`` fitted on several ID test sets at once."""

    coef: np.ndarray
    intercept: float
    transform: Transform

    def predict(self, id_accs: np.ndarray) -> np.ndarray:
        t = transform(np.asarray(id_accs, dtype=np.float64), self.transform)
        return inverse_transform(t @ self.coef + self.intercept, self.transform)


def fit_multi_id(id_accs: np.ndarray | Sequence[Sequence[float]], ood_acc: Sequence[float],
                 *, kind: Transform = "logit") -> MultiIdFit:
    """Least-squares fit of transformed OOD accuracy on several transformed ID accuracies.

    ``id_accs`` is (models, ID sets). Needs more baseline models than ID sets.
    """
    X = np.asarray(id_accs, dtype=np.float64)
    y = _as_array(ood_acc, "ood accuracy")
    if X.ndim != 2 or X.shape[0] != len(y):
        raise UserError(f"mismatched shapes: ID accuracies {X.shape} vs {len(y)} OOD accuracies")
    if X.shape[0] < X.shape[1] + 1:
        raise UserError(
            f"the multi-ID fit needs more baseline points ({X.shape[0]}) than ID sets ({X.shape[1]})")
    _as_array(X.ravel(), "id accuracy")
    A = np.column_stack([transform(X, kind), np.ones(len(y))])
    sol, *_ = np.linalg.lstsq(A, transform(y, kind), rcond=None)
    return MultiIdFit(sol[:-1], float(sol[-1]), kind)


#: How far a record's accuracy may differ from its ``correct / n`` (float rounding only).
COUNT_TOLERANCE = 1e-9


def check_counts(acc: Sequence[float], correct: Sequence[float | None], n: Sequence[float | None],
                 labels: Sequence[str]) -> np.ndarray:
    """Rows that carry both counts (a boolean mask); an accuracy that disagrees with its
    ``correct / n`` by more than :data:`COUNT_TOLERANCE`, or impossible counts, are a one-line
    :class:`UserError` naming the row."""
    a = np.asarray(acc, dtype=np.float64)
    k = np.asarray(_floats(correct))
    m = np.asarray(_floats(n))
    has = np.isfinite(k) & np.isfinite(m)
    for i in np.flatnonzero(has):
        if m[i] <= 0 or k[i] < 0 or k[i] > m[i] or k[i] != round(k[i]) or m[i] != round(m[i]):
            raise UserError(f"{labels[i]}: impossible counts correct={k[i]:g}, n={m[i]:g}")
        if abs(a[i] - k[i] / m[i]) > COUNT_TOLERANCE:
            raise UserError(f"{labels[i]}: accuracy {float(a[i])!r} disagrees with correct/n = "
                            f"{int(k[i])}/{int(m[i])} = {float(k[i] / m[i])!r}")
    return has


def _floats(values: Sequence[float | None]) -> list[float]:
    """Values as floats, with None (a record without the key) as NaN."""
    return [float("nan") if v is None else float(v) for v in values]


#: the split columns an accuracy table (``mmclshift robustness --table``) may have
TABLE_SPLITS = ("imagenet", "imagenet-v2", "imagenet-sketch", "imagenet-r", "imagenet-a",
                "objectnet", "id_r200", "id_a200", "id_objectnet")
#: the kind the rows of an accuracy table get in the collected-table shape
TABLE_KIND = "table"


def read_accuracy_table(path: str | Path, required: Sequence[str] = ()) -> pd.DataFrame:
    """Read a CSV of accuracies the user already has, in the shape ``collect`` gives runs.

    Columns: ``model`` (unique names), an optional ``method`` (the name ``--baseline`` picks
    rows by), and split columns of :data:`TABLE_SPLITS` holding top-1 accuracy as a fraction in
    [0, 1]; an empty cell means not evaluated. A value that is not a number, lies outside
    [0, 1] (a percentage, say), an unknown column, a duplicate model, or a missing ``model``
    column or ``required`` split column is a one-line :class:`UserError` naming the file, and the
    row (its line in the file) and column where there is one.

    Returns one row per (model, split with a value): ``run`` (the model), ``kind``
    (:data:`TABLE_KIND`), ``method``, ``split``, ``accuracy``, ``correct`` and ``n`` (None).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--table {path}: no such file")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a readable CSV table ({first})") from None
    df.columns = [str(c).strip() for c in df.columns]
    if "model" not in df.columns:
        raise UserError(f"{path}: no 'model' column (columns: {', '.join(df.columns)})")
    unknown = [c for c in df.columns if c not in ("model", "method", *TABLE_SPLITS)]
    if unknown:
        raise UserError(f"{path}: unknown column {unknown[0]!r} (expected model, method and split "
                        f"columns named {', '.join(TABLE_SPLITS)})")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)} (needed by the test sets "
                        "asked for)")
    splits = [c for c in TABLE_SPLITS if c in df.columns]
    if not splits:
        raise UserError(f"{path}: no split column (expected some of {', '.join(TABLE_SPLITS)})")
    seen: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    for i, rec in enumerate(df.to_dict("records")):
        line = i + 2  # the header is line 1
        model = rec["model"].strip()
        if not model:
            raise UserError(f"{path}: row {line}: empty 'model'")
        if model in seen:
            raise UserError(f"{path}: row {line}: model {model!r} already on row {seen[model]}")
        seen[model] = line
        method = rec.get("method", "").strip() or "-"
        for split in splits:
            cell = rec[split].strip()
            if not cell:
                continue
            try:
                value = float(cell)
            except ValueError:
                raise UserError(f"{path}: row {line} (model {model!r}), column {split!r}: "
                                f"{cell!r} is not a number") from None
            if not np.isfinite(value) or not 0 <= value <= 1:
                hint = " (a percentage? give fractions: divide by 100)" \
                    if np.isfinite(value) and 1 < value <= 100 else ""
                raise UserError(f"{path}: row {line} (model {model!r}), column {split!r}: "
                                f"{cell} is not a fraction in [0, 1]{hint}")
            rows.append({"run": model, "kind": TABLE_KIND, "method": method, "split": split,
                         "accuracy": value, "correct": None, "n": None})
    if not rows:
        raise UserError(f"{path}: no accuracies (every split cell is empty)")
    return pd.DataFrame(rows)
