"""imagenet-testbed's effective-robustness baseline (Taori et al. 2020), shipped with the package.

The table (top-1 of 338 models on ImageNet val, ImageNet-V2, -Sketch, -R, -A, ObjectNet and val
restricted to the classes of -R, -A and ObjectNet) and each model's type are copied from the
testbed's repository into ``mmclshift/data_files/imagenet_testbed/`` with its MIT licence (the
folder's README names the commit). :func:`load_testbed` reads it with accuracies as fractions
and columns under this tool's split names (:data:`TESTBED_COLUMNS`).

The baseline line of a shift is fitted as the testbed fits it (``plotting/
paper_appendix_eff_robust.py``): ordinary least squares (``scipy.stats.linregress``) on logit
axes over the models of type STANDARD whose name contains none of ``aws``, ``batch64``,
``subsample`` (85 models; :func:`standard_mask`). ImageNet-V2 and -Sketch use full ImageNet val
as the x axis; ImageNet-R, -A and ObjectNet use val restricted to their classes
(:data:`TESTBED_SHIFTS`). ImageNet-A was collected adversarially against a ResNet-50, which
scores 0% on it: where a line model has OOD accuracy 0 the testbed fits two lines, one through
the models below that model's ID accuracy (the pivot, 91.86% for ImageNet-A) and one through
those above, and reads each model's ER from the line of its side (a model exactly at the pivot
takes the lower line). :func:`fit_testbed` does the same, so ImageNet-A has two pieces.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmclshift.analysis.robustness import (
    EffectiveRobustness,
    LinearFit,
    Transform,
    effective_robustness,
)
from mmclshift.errors import UserError

#: this tool's split name -> the testbed's column
TESTBED_COLUMNS: dict[str, str] = {
    "imagenet": "val",
    "imagenet-v2": "imagenetv2-matched-frequency-format-val",
    "imagenet-sketch": "imagenet-sketch",
    "imagenet-r": "imagenet-r",
    "imagenet-a": "imagenet-a",
    "objectnet": "objectnet-1.0-beta",
    "id_r200": "val-on-imagenet-r-classes",
    "id_a200": "val-on-imagenet-a-classes",
    "id_objectnet": "val-on-objectnet-classes",
}
#: each shift the testbed has a line for -> its ID axis (this tool's split names)
TESTBED_SHIFTS: dict[str, str] = {
    "imagenet-v2": "imagenet",
    "imagenet-sketch": "imagenet",
    "imagenet-r": "id_r200",
    "imagenet-a": "id_a200",
    "objectnet": "id_objectnet",
}
#: split names that mean full ImageNet val (``id`` in the Figure 3 configs)
FULL_VAL = ("imagenet", "id")
#: substrings that keep a STANDARD model out of the line (the testbed's ``use_for_line_fit``)
EXCLUDED_NAMES = ("aws", "batch64", "subsample")
#: the testbed's two CLIP zero-shot rows
CLIP_ROWS = ("vit_b_32_clip_zeroshot", "resnet50_clip_zeroshot")
DATA = "data_files/imagenet_testbed"


def _data_file(name: str):
    return resources.files("mmclshift").joinpath(f"{DATA}/{name}")


@functools.cache
def _load() -> pd.DataFrame:
    with _data_file("robustness_top1s.csv").open("r", encoding="utf-8") as fh:
        top1 = pd.read_csv(fh)
    with _data_file("model_types.csv").open("r", encoding="utf-8") as fh:
        types = pd.read_csv(fh)
    df = top1.merge(types, on="model", how="left", validate="one_to_one")
    out = pd.DataFrame({"model": df["model"], "model_type": df["model_type"]})
    for split, col in TESTBED_COLUMNS.items():
        out[split] = df[col] / 100.0
    return out


def load_testbed() -> pd.DataFrame:
    """The shipped table: ``model``, ``model_type`` and one column per split of
    :data:`TESTBED_COLUMNS` (top-1 as a fraction; NaN where the testbed has no number)."""
    return _load().copy()


def standard_mask(df: pd.DataFrame) -> np.ndarray:
    """The testbed's line models: type STANDARD, no ``aws``/``batch64``/``subsample`` in the name."""
    name = df["model"].str.lower()
    excluded = np.zeros(len(df), dtype=bool)
    for s in EXCLUDED_NAMES:
        excluded |= name.str.contains(s, regex=False).to_numpy()
    return (df["model_type"] == "STANDARD").to_numpy() & ~excluded


def testbed_id_split(ood: str, id_split: str) -> str:
    """The testbed's ID axis for ``ood`` if ``id_split`` names it (``id`` counts as ``imagenet``);
    otherwise a one-line :class:`UserError` saying which ID split the testbed's line needs."""
    want = TESTBED_SHIFTS.get(ood)
    if want is None:
        raise UserError(f"--baseline testbed: the testbed has no line for test set {ood!r} "
                        f"(it has {', '.join(TESTBED_SHIFTS)})")
    if id_split == want or (want == "imagenet" and id_split in FULL_VAL):
        return want
    hint = "ImageNet val" if want == "imagenet" else f"ImageNet val on {ood}'s classes"
    raise UserError(f"--baseline testbed: the testbed's line for {ood!r} has {want!r} ({hint}) "
                    f"as its ID axis, not {id_split!r}; give --ood {ood}:{want}")


@dataclass
class Piece:
    """One line of a shift's baseline, used for ID accuracies in ``(lo, hi]``."""

    fit: LinearFit
    lo: float
    hi: float
    models: list[str]  # the testbed models it is fitted to
    ood: str
    er: EffectiveRobustness  # fit, band (and ER of the points passed to fit_testbed)


@dataclass
class TestbedFit:
    """The testbed's baseline for one shift: one piece, or two split at ``pivot`` (ImageNet-A)."""

    ood: str
    id_split: str
    pieces: list[Piece]
    pivot: float | None
    points: pd.DataFrame  # testbed models with both accuracies: model, model_type, id, ood, line

    def piece_index(self, id_acc: Sequence[float] | np.ndarray) -> np.ndarray:
        x = np.asarray(id_acc, dtype=np.float64)
        if self.pivot is None:
            return np.zeros(len(x), dtype=int)
        return (x > self.pivot).astype(int)

    def predict(self, id_acc: Sequence[float] | np.ndarray) -> np.ndarray:
        """The line's OOD accuracy at ``id_acc`` (the piece of each point's side of the pivot)."""
        x = np.asarray(id_acc, dtype=np.float64)
        which = self.piece_index(x)
        out = np.empty(len(x))
        for i, p in enumerate(self.pieces):
            out[which == i] = p.fit.predict(x[which == i])
        return out


def piece_line(p: Piece) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                  tuple[float, float]]:
    """A piece as :class:`Panel` draws it: x, line, band, and the ID range of its models."""
    x = load_testbed().set_index("model").loc[p.models]
    ids = x[TESTBED_SHIFTS[p.ood]]
    return (p.er.band_x, p.fit.predict(p.er.band_x), p.er.band_lo, p.er.band_hi,
            (float(ids.min()), float(ids.max())))


def fit_testbed(ood: str, *, kind: Transform = "logit", n_boot: int = 0, seed: int = 0,
                extra_id: Sequence[float] = (), band_points: int = 100) -> TestbedFit:
    """Fit the testbed's line for shift ``ood`` (see the module docstring).

    ``n_boot`` > 0 also gives each piece a percentile bootstrap band over its models (the
    testbed's 95% band, seeded), evaluated over the piece's ID range widened to the ``extra_id``
    accuracies on its side (e.g. the user's runs to be drawn on it).
    """
    id_split = TESTBED_SHIFTS.get(ood)
    if id_split is None:
        raise UserError(f"the testbed has no line for test set {ood!r} "
                        f"(it has {', '.join(TESTBED_SHIFTS)})")
    pts = fit_points(ood)
    pts["line"] = standard_mask(pts)
    base = pts[pts["line"]]
    zero = base[base["ood"] == 0]
    pivot = float(zero["id"].iloc[0]) if len(zero) else None
    if pivot is None:
        sides = [base]
        bounds = [(-np.inf, np.inf)]
    else:
        sides = [base[base["id"] < pivot], base[base["id"] > pivot]]
        bounds = [(-np.inf, pivot), (pivot, np.inf)]
    extra = np.asarray(extra_id, dtype=np.float64)
    pieces = []
    for side, (lo, hi) in zip(sides, bounds, strict=True):
        # the extra ID accuracies only widen the range the band is evaluated over: they are
        # passed as non-baseline points (OOD placeholder 0.5, unused) and take no part in the fit
        near = extra[(extra > lo) & (extra <= hi)] if len(extra) else extra
        x = np.concatenate([side["id"].to_numpy(), near])
        y = np.concatenate([side["ood"].to_numpy(), np.full(len(near), 0.5)])
        mask = np.r_[np.ones(len(side), dtype=bool), np.zeros(len(near), dtype=bool)]
        er = effective_robustness(x, y, mask, kind=kind, n_boot=n_boot, seed=seed,
                                  band_points=band_points, labels=list(side["model"]) +
                                  [f"point {i}" for i in range(len(near))])
        pieces.append(Piece(er.fit, lo, hi, list(side["model"]), ood, er))
    return TestbedFit(ood, id_split, pieces, pivot, pts)


def testbed_table(models: Sequence[str] | None = None) -> pd.DataFrame:
    """Rows of the shipped table (all, or the named ``models``) in the shape ``robustness --table``
    reads: ``model`` and the split columns, as fractions."""
    df = load_testbed()
    if models is not None:
        unknown = [m for m in models if m not in set(df["model"])]
        if unknown:
            raise UserError(f"the testbed has no model {unknown[0]!r}")
        df = df.set_index("model").loc[list(models)].reset_index()
    return df[["model", *TESTBED_COLUMNS]]


# --------------------------------------------------------------------------- the field's plot

#: colours of the testbed's model types (faded points)
TYPE_COLOURS = {"STANDARD": "#4c72b0", "MORE_DATA": "#55a868", "ROBUST_INTV": "#dd8452",
                "LP_ADV": "#8172b3", "LOW_ACCURACY_CNN": "#999999"}
#: marker of the user's runs by method family
FAMILY_MARKERS = {"clip": "*", "sl": "s"}
USER_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2"]
SL_NAMES = ("sl", "ce", "supcon")


@functools.cache
def _config_methods(run: str) -> dict[str, str]:
    """method name -> ``mmcl``/``sl`` from a run directory's config.yaml ({} if none)."""
    from mmclshift.runs import DamagedRunError, read_run_config

    try:
        cfg = read_run_config(run)
    except DamagedRunError:
        return {}
    out = {}
    for m in cfg.get("methods") or []:
        if isinstance(m, dict) and "name" in m and "kind" in m:
            out[str(m["name"])] = str(m["kind"])
    return out


def method_family(run: str, method: str) -> str:
    """``clip`` or ``sl``: the method's kind in the run's config (``sl`` -> SL, else CLIP); without
    one (a table row), SL when the name is or starts with sl/ce/supcon."""
    kind = _config_methods(str(run)).get(str(method))
    if kind is not None:
        return "sl" if kind == "sl" else "clip"
    name = str(method).lower()
    return "sl" if name.startswith(SL_NAMES) else "clip"


@dataclass
class Panel:
    """One shift of the plot: the user's points and the baseline's line(s) with bands."""

    id_split: str
    ood: str
    points: pd.DataFrame  # run, method, id_acc, ood_acc, *_ci_lo/_ci_hi (NaN: none), er
    #: per line piece: x, fit, band lo, band hi, and the ID range of the points it is fitted to
    #: (drawn solid there, dashed where it is extrapolated)
    lines: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[float, float]]]
    baseline: str  # legend label of the line
    kind: str | None = None


def _on_testbed_axes(panel: Panel) -> bool:
    want = TESTBED_SHIFTS.get(panel.ood)
    return want is not None and (panel.id_split == want
                                 or (want == "imagenet" and panel.id_split in FULL_VAL))


def _point_key(run: str, method: str) -> str:
    """A plotted point's legend entry: its method, or for a table row without one its model name."""
    return str(run) if method == "-" else str(method)


def _draw_testbed(ax: Any, panel: Panel, tx: Callable[[Any], np.ndarray]) -> tuple[list, list]:
    """The testbed's models as faded points by type; their (ID, OOD) accuracies for the limits."""
    if not _on_testbed_axes(panel):
        return [], []
    tb = fit_points(panel.ood)
    group = tb["model_type"].where(tb["model_type"].isin(list(TYPE_COLOURS)), "OTHER")
    for mtype in [*TYPE_COLOURS, "OTHER"]:
        g = tb[group == mtype]
        if g.empty:
            continue
        ax.scatter(tx(g["id"]), tx(g["ood"]), s=9, alpha=0.3, linewidths=0,
                   color=TYPE_COLOURS.get(mtype, "#333333"), zorder=2,
                   label=f"testbed: {mtype.lower().replace('_', ' ')}")
    ok = tb["ood"] > 0
    return list(tb["id"]), list(tb["ood"][ok])


def _draw_lines(ax: Any, panel: Panel, tx: Callable[[Any], np.ndarray]) -> None:
    """The baseline line(s) with the bootstrap band, dotted where extrapolated."""
    for i, (bx, fit, lo, hi, (x0, x1)) in enumerate(panel.lines):
        ax.fill_between(tx(bx), tx(lo), tx(hi), color="tab:red", alpha=0.25, lw=0,
                        zorder=3, label="95% bootstrap band" if i == 0 else None)
        inside = (bx >= x0) & (bx <= x1)
        ax.plot(tx(bx[inside]), tx(fit[inside]), color="tab:red", lw=1.4, zorder=4,
                label=panel.baseline if i == 0 else None)
        for part in (bx < x0, bx > x1):
            if part.sum() > 1:
                ax.plot(tx(bx[part]), tx(fit[part]), color="tab:red", lw=1.1, ls=":",
                        zorder=4, label="line extrapolated" if i == 0 else None)


def _draw_runs(ax: Any, pts: pd.DataFrame, tx: Callable[[Any], np.ndarray],
               colour: dict[str, str]) -> None:
    """The user's runs: CLIP and SL in distinct markers, Clopper-Pearson bars where counts exist,
    one legend entry per method (or model)."""
    for (method, run), g in pts.groupby(["method", "run"], sort=False):
        fam = method_family(str(run), str(method))
        x, y = tx(g["id_acc"]), tx(g["ood_acc"])
        xl, xh = tx(g["id_ci_lo"]), tx(g["id_ci_hi"])
        yl, yh = tx(g["ood_ci_lo"]), tx(g["ood_ci_hi"])
        if np.isfinite(xl).all() and np.isfinite(yl).all():
            ax.errorbar(x, y, xerr=[x - xl, xh - x], yerr=[y - yl, yh - y], fmt="none",
                        lw=0.8, capsize=2, color=colour[_point_key(run, method)], zorder=5)
        ax.scatter(x, y, s=110 if fam == "clip" else 45, marker=FAMILY_MARKERS[fam],
                   color=colour[_point_key(run, method)], edgecolors="black", linewidths=0.5,
                   zorder=6)
    shown: dict[str, str] = {}
    for run, method in zip(pts["run"], pts["method"], strict=True):
        shown.setdefault(_point_key(run, method), method_family(str(run), str(method)))
    for k, fam in shown.items():
        ax.scatter([], [], s=80 if fam == "clip" else 40, marker=FAMILY_MARKERS[fam],
                   color=colour[k], edgecolors="black", linewidths=0.5,
                   label=f"{k} ({'CLIP' if fam == 'clip' else 'SL'})")


def _set_axes(ax: Any, panel: Panel, values: list, tx: Callable[[Any], np.ndarray],
              transform_kind: Transform) -> None:
    """Square limits around ``values`` (accuracies), y = x, percent ticks, labels and title."""
    finite = [v for v in values if 0 < v < 1]
    lo_acc = max(min(finite) * 0.8, 1e-3) if finite else 0.01
    hi_acc = min(1 - (1 - max(finite)) * 0.7, 0.999) if finite else 0.99
    lim = (float(tx(lo_acc)), float(tx(hi_acc)))
    ax.plot(lim, lim, ls="--", color="black", lw=1, zorder=1, label="y = x")
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)
    ticks = np.array([t for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9,
                                  0.95, 0.98, 0.99) if lo_acc <= t <= hi_acc])
    ax.set_xticks(tx(ticks), [f"{100 * t:g}" for t in ticks])
    ax.set_yticks(tx(ticks), [f"{100 * t:g}" for t in ticks])
    ax.set_xlabel(f"{panel.id_split} top-1, % ({transform_kind} axis)")
    ax.set_ylabel(f"{panel.ood} top-1, % ({transform_kind} axis)")
    kind = f" [{panel.kind}]" if panel.kind not in (None, "") else ""
    ax.set_title(f"{panel.ood} vs {panel.id_split}{kind}")


def plot_panels(panels: Sequence[Panel], out: str | Path, *, transform_kind: Transform = "logit",
                title: str | None = None) -> Path:
    """Draw each shift as the field does: ID vs OOD accuracy on logit axes, the testbed's models
    as faded points by type (when the shift has testbed axes), the user's runs highlighted
    (CLIP and SL in distinct markers, Clopper-Pearson intervals where counts exist), y = x, and
    the baseline line with its bootstrap band. Writes a PNG to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmclshift.analysis.robustness import transform
    from mmclshift.runs import make_run_dir

    if not panels:
        raise UserError("nothing to plot: no shift has a fitted line")
    out = Path(out)

    def tx(v: Any) -> np.ndarray:
        return transform(np.asarray(v, dtype=np.float64), transform_kind)

    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    keys = list(dict.fromkeys(_point_key(r, m) for p in panels
                              for r, m in zip(p.points["run"], p.points["method"], strict=True)))
    colour = {k: USER_COLOURS[i % len(USER_COLOURS)] for i, k in enumerate(keys)}
    with plt.rc_context({"figure.dpi": 110, "font.size": 8, "axes.grid": True,
                         "grid.alpha": 0.3}):
        fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 4.1 * rows), squeeze=False)
        for ax, panel in zip(axes.ravel(), panels, strict=False):
            tb_x, tb_y = _draw_testbed(ax, panel, tx)
            _draw_lines(ax, panel, tx)
            _draw_runs(ax, panel.points, tx, colour)
            _set_axes(ax, panel, [*panel.points["id_acc"], *panel.points["ood_acc"], *tb_x, *tb_y],
                      tx, transform_kind)
        for ax in axes.ravel()[len(panels):]:
            ax.set_visible(False)
        legend: dict[str, Any] = {}
        for ax in axes.ravel()[:len(panels)]:
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                legend.setdefault(lab, h)
        fig.legend(list(legend.values()), list(legend), loc="center left", fontsize=7,
                   bbox_to_anchor=(1.0, 0.5), frameon=False)
        fig.suptitle(title or "Effective robustness: OOD vs ID accuracy (logit axes; bars: "
                     "95% Clopper-Pearson per run)", fontsize=9)
        fig.tight_layout()
        make_run_dir(out.parent, "plot folder")
        fig.savefig(out, bbox_inches="tight")
        plt.close(fig)
    return out


def fit_points(ood: str) -> pd.DataFrame:
    """The testbed's models with both accuracies of ``ood``'s axes (model, model_type, id, ood)."""
    id_split = TESTBED_SHIFTS[ood]
    df = load_testbed()
    keep = df[id_split].notna() & df[ood].notna()
    return pd.DataFrame({"model": df["model"], "model_type": df["model_type"],
                         "id": df[id_split], "ood": df[ood]})[keep].reset_index(drop=True)


# --------------------------------------------------------------------------- the report's section


def testbed_report(table: pd.DataFrame, out_png: str | Path, *, n_boot: int = 1000
                   ) -> tuple[Path, pd.DataFrame, list[str]] | None:
    """Every collected run on the testbed's lines: (the plot, one row per run, method and shift
    with its ER against the testbed line, notes), or None when no run has a shift with its
    testbed ID axis. ``table`` is :func:`~mmclshift.analysis.collect.collect`'s table."""
    from mmclshift.analysis.figures import er_points
    from mmclshift.analysis.robustness import clopper_pearson, shift_pairs

    if table.empty or "split" not in table.columns:
        return None
    panels, rows, notes = [], [], []
    found = {o: i for i, o in shift_pairs(set(table["split"]))}
    for ood in TESTBED_SHIFTS:
        if ood not in found:
            continue
        id_split = found[ood]
        try:
            testbed_id_split(ood, id_split)
        except UserError as exc:
            notes.append(str(exc).removeprefix("--baseline testbed: "))
            continue
        pts = er_points(table, id_split, ood)
        pts = pts[pts[["accuracy_id", "accuracy_ood"]].notna().all(axis=1)]
        if pts.empty:
            continue
        fit = fit_testbed(ood, n_boot=n_boot, extra_id=pts["accuracy_id"].astype(float))
        pred = fit.predict(pts["accuracy_id"].astype(float))
        ci = {}
        for side in ("id", "ood"):
            k, n = pts[f"correct_{side}"], pts[f"n_{side}"]
            has = (k.notna() & n.notna()).to_numpy()
            lo, hi = np.full(len(pts), np.nan), np.full(len(pts), np.nan)
            if has.any():
                lo[has], hi[has] = clopper_pearson(k[has].astype(float), n[has].astype(float))
            ci[side] = (lo, hi)
        prow = pd.DataFrame({
            "run": pts["run"].to_numpy(), "method": pts["method"].to_numpy(), "id": id_split,
            "ood": ood, "id_acc": pts["accuracy_id"].astype(float).to_numpy(),
            "id_ci_lo": ci["id"][0], "id_ci_hi": ci["id"][1],
            "ood_acc": pts["accuracy_ood"].astype(float).to_numpy(),
            "ood_ci_lo": ci["ood"][0], "ood_ci_hi": ci["ood"][1], "predicted_ood": pred,
            "er": pts["accuracy_ood"].astype(float).to_numpy() - pred})
        rows.append(prow)
        panels.append(Panel(id_split, ood, prow,
                            [piece_line(p) for p in fit.pieces],
                            "imagenet-testbed line (standard models)"))
    if not panels:
        return None
    png = plot_panels(panels, out_png, title="Runs on imagenet-testbed's lines (logit axes; "
                      "bars: 95% Clopper-Pearson per run; band: 95% bootstrap)")
    return png, pd.concat(rows, ignore_index=True), notes
