"""The paper's figures from a collected table (matplotlib, PNG + SVG).

Every function takes the tidy table of :func:`mmclshift.analysis.collect.collect` and returns the
written paths, or ``[]`` when the table holds no data for that figure.

* :func:`figure_2` / :func:`figure_5` -- MMCL's OOD / ID accuracy over the ``pi_core`` x ``pi_spu``
  grid (semi-synthetic runs): a heatmap with each cell's 95% t-interval over seeds, and the
  paper's form (accuracy against ``pi_core``, one line per ``pi_spu``, error bars; SL as a band).
* :func:`figure_3` -- effective-robustness scatter: OOD vs ID accuracy on logit axes, one colour
  per method, the line fitted on the baseline method (SL) with its bootstrap band; drawn only when
  the baseline can carry a line (:func:`mmclshift.analysis.er_baseline.baseline_support`), titled
  by the data it shows.
* :func:`figure_theory` -- predicted vs measured accuracy of synthetic runs, with y = x.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mmclshift.analysis.collect import GRID_AXES, grid_rows, group_over_seeds  # noqa: E402
from mmclshift.analysis.er_baseline import table_support  # noqa: E402
from mmclshift.analysis.robustness import (  # noqa: E402
    REAL_SHIFTS,
    clopper_pearson,
    effective_robustness,
    shift_pairs,
    transform,
)
from mmclshift.errors import UserError  # noqa: E402

STYLE = {"figure.dpi": 110, "font.size": 9, "axes.grid": True, "grid.alpha": 0.3,
         "axes.spines.top": False, "axes.spines.right": False}
#: what each run kind's data is, for figure titles
DATA_NAMES = {"semisynthetic": "semi-synthetic digits (MNIST + colour)",
              "data_model_1": "Data Model 1 (synthetic)", "data_model_2": "Data Model 2 (synthetic)",
              "clip_real": "image-caption data, shifted ImageNets"}
METHOD_COLOURS = {"mmcl": "#1f77b4", "clip": "#1f77b4", "sl": "#d62728",
                  "clip_no_intra": "#2ca02c", "mmcl_no_intra": "#2ca02c", "supcon": "#9467bd"}


def _save(fig: plt.Figure, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    for p in paths:
        fig.savefig(p, bbox_inches="tight")
    plt.close(fig)
    return paths


def _grid_cells(table: pd.DataFrame, split: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(MMCL cells: pi_core, pi_spu, mean, ci_low, ci_high, n_seeds; SL: one row of the same)."""
    g = grid_rows(table)
    empty = pd.DataFrame(), pd.DataFrame()
    if g.empty:
        return empty
    t = g[g["split"] == split]
    mm = t[t["method"] == "mmcl"]
    if mm.empty or mm["data.pi_core"].isna().all():
        return empty
    cells = group_over_seeds(mm, list(GRID_AXES))
    sl = group_over_seeds(t[t["method"] == "sl"])
    return cells, sl


def _sl_text(sl: pd.DataFrame) -> str:
    if sl.empty:
        return ""
    r = sl.iloc[0]
    ci = f" [{max(r['ci_low'], 0.0):.2f}, {min(r['ci_high'], 1.0):.2f}]" if np.isfinite(r["ci_low"]) else ""
    return f"; SL: {r['mean']:.2f}{ci}"


def _heatmap(cells: pd.DataFrame, sl: pd.DataFrame, title: str, out_dir: Path, stem: str) -> list[Path]:
    """MMCL accuracy per cell with its 95% interval over seeds written under the mean."""
    pivot = cells.pivot_table(index="data.pi_core", columns="data.pi_spu", values="mean").sort_index(ascending=False)
    lo = cells.pivot_table(index="data.pi_core", columns="data.pi_spu", values="ci_low", dropna=False)
    hi = cells.pivot_table(index="data.pi_core", columns="data.pi_spu", values="ci_high", dropna=False)
    n = int(cells["n_seeds"].min())
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(1.25 * pivot.shape[1] + 2.8, 0.85 * pivot.shape[0] + 2.0))
        im = ax.imshow(pivot.values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(pivot.shape[1]), [f"{v:g}" for v in pivot.columns])
        ax.set_yticks(range(pivot.shape[0]), [f"{v:g}" for v in pivot.index])
        ax.set_xlabel(r"$\pi_{spu}$ (P(spurious feature in caption))")
        ax.set_ylabel(r"$\pi_{core}$ (P(core feature in caption))")
        ax.grid(False)
        for i, pc in enumerate(pivot.index):
            for j, ps in enumerate(pivot.columns):
                v = pivot.loc[pc, ps]
                if not np.isfinite(v):
                    continue
                text = f"{v:.2f}"
                a, b = lo.get(ps, {}).get(pc, np.nan), hi.get(ps, {}).get(pc, np.nan)
                if np.isfinite(a) and np.isfinite(b):  # an accuracy's interval, inside [0, 1]
                    text += f"\n[{max(a, 0.0):.2f},{min(b, 1.0):.2f}]"
                ax.text(j, i, text, ha="center", va="center", fontsize=9,
                        color="white" if v < 0.6 else "black")
        ax.set_title(f"{title}{_sl_text(sl)}\n(mean over {n} seed(s); 95% t-interval, clipped to [0, 1])",
                     fontsize=10)
        fig.colorbar(im, ax=ax, label="MMCL accuracy")
        return _save(fig, out_dir, stem)


def _lines(cells: pd.DataFrame, sl: pd.DataFrame, title: str, ylabel: str, out_dir: Path, stem: str) -> list[Path]:
    """The paper's form of Figure 2: MMCL accuracy against pi_core, one line per pi_spu, with
    95% error bars over seeds; SL as a horizontal band (its 95% interval)."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(4.6, 3.6))
        if not sl.empty:
            r = sl.iloc[0]
            if np.isfinite(r["ci_low"]):
                ax.axhspan(max(r["ci_low"], 0.0), min(r["ci_high"], 1.0), color=METHOD_COLOURS["sl"], alpha=0.18, lw=0)
            ax.axhline(r["mean"], color=METHOD_COLOURS["sl"], lw=1.2, label=f"SL ({int(r['n_seeds'])} seeds)")
        spus = sorted(cells["data.pi_spu"].unique())
        cmap = plt.get_cmap("viridis")
        for k, ps in enumerate(spus):
            c = cells[cells["data.pi_spu"] == ps].sort_values("data.pi_core")
            lo = (c["mean"] - c["ci_low"].clip(lower=0.0)).fillna(0).clip(lower=0)
            hi = (c["ci_high"].clip(upper=1.0) - c["mean"]).fillna(0).clip(lower=0)
            ax.errorbar(c["data.pi_core"], c["mean"], yerr=[lo, hi], marker="o", ms=3.5, capsize=2.5,
                        lw=1.2, color=cmap(k / max(len(spus) - 1, 1) * 0.9),
                        label=rf"MMCL, $\pi_{{spu}}$={ps:g}")
        ax.set_xlabel(r"$\pi_{core}$ (P(core feature in caption))")
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 1)
        ax.set_title(f"{title}\n(mean over {int(cells['n_seeds'].min())} seed(s); bars: 95% t-interval)",
                     fontsize=8)
        ax.legend(fontsize=6.5, loc="best")
        return _save(fig, out_dir, stem)


def figure_2(table: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    cells, sl = _grid_cells(table, "ood")
    if cells.empty:
        return []
    return (_heatmap(cells, sl, "Fig. 2: MMCL OOD accuracy", Path(out_dir), "figure2_ood_grid")
            + _lines(cells, sl, "Fig. 2: OOD accuracy vs caption richness", "OOD accuracy",
                     Path(out_dir), "figure2_ood_lines"))


def figure_5(table: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    cells, sl = _grid_cells(table, "id")
    if cells.empty:
        return []
    return (_heatmap(cells, sl, "Fig. 5: MMCL ID accuracy", Path(out_dir), "figure5_id_grid")
            + _lines(cells, sl, "Fig. 5: ID accuracy vs caption richness", "ID accuracy",
                     Path(out_dir), "figure5_id_lines"))


def er_points(table: pd.DataFrame, id_split: str, ood_split: str) -> pd.DataFrame:
    """One row per (run, method) with ID and OOD accuracy and counts."""
    if table.empty:
        return pd.DataFrame()
    keys = ["run", "method"]
    a = table[table["split"] == id_split][keys + ["accuracy", "correct", "n"]]
    b = table[table["split"] == ood_split][keys + ["accuracy", "correct", "n"]]
    return a.merge(b, on=keys, suffixes=("_id", "_ood"))


def _has_counts(g: pd.DataFrame) -> bool:
    cols = ["correct_id", "n_id", "correct_ood", "n_ood"]
    return all(c in g.columns for c in cols) and bool(g[cols].notna().all().all())


def figure_3(table: pd.DataFrame, out_dir: str | Path, *, id_split: str = "id",
             ood_split: str = "ood", baseline: str = "sl", stem: str = "figure3_effective_robustness",
             title: str = "Effective robustness") -> list[Path]:
    pts = er_points(table, id_split, ood_split)
    if pts.empty or (pts["method"] == baseline).sum() < 2:
        return []
    if not table_support(table, id_split, ood_split, baseline)[0].ok:
        return []  # a line that is noise: no panel (the claims and the ER section say why)
    base = (pts["method"] == baseline).to_numpy()
    try:
        er = effective_robustness(pts["accuracy_id"], pts["accuracy_ood"], base, n_boot=500)
    except UserError:  # e.g. every baseline run has the same ID accuracy: no line to draw
        return []
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.0, 4.4))
        tx = lambda v: transform(v, "logit")  # noqa: E731
        ax.fill_between(tx(er.band_x), tx(er.band_lo), tx(er.band_hi), color="grey", alpha=0.25,
                        label=f"{baseline} fit, 95% bootstrap band")
        ax.plot(tx(er.band_x), tx(er.fit.predict(er.band_x)), color="grey")
        for method, g in pts.groupby("method"):
            x, y = tx(g["accuracy_id"]), tx(g["accuracy_ood"])
            if _has_counts(g):  # Clopper-Pearson 95% interval of each point, both axes
                xl, xh = (tx(v) for v in clopper_pearson(g["correct_id"].astype(int), g["n_id"].astype(int)))
                yl, yh = (tx(v) for v in clopper_pearson(g["correct_ood"].astype(int), g["n_ood"].astype(int)))
                ax.errorbar(x, y, xerr=[x - xl, xh - x], yerr=[y - yl, yh - y], fmt="none", lw=0.6,
                            color=METHOD_COLOURS.get(str(method)), alpha=0.5, zorder=2)
            ax.scatter(x, y, s=22, color=METHOD_COLOURS.get(str(method)), label=str(method), zorder=3)
        # ticks at least ~0.7 logit apart (labels never run together), inside the drawn range
        ticks = np.array([0.01, 0.05, 0.1, 0.2, 0.5, 0.8, 0.9, 0.95, 0.99])
        for lim, set_ticks in ((ax.get_xlim(), ax.set_xticks), (ax.get_ylim(), ax.set_yticks)):
            keep = ticks[(tx(ticks) >= lim[0]) & (tx(ticks) <= lim[1])]
            set_ticks(tx(keep), [f"{t:g}" for t in keep])
        ax.set_xlabel(f"ID accuracy ({id_split}, logit scale)")
        ax.set_ylabel(f"OOD accuracy ({ood_split}, logit scale)")
        ax.set_title(f"{title}\n(bars: 95% Clopper-Pearson per run)", fontsize=8)
        ax.legend(fontsize=7)
        return _save(fig, Path(out_dir), stem)


def figure_theory(table: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    if table.empty or "theory" not in table.columns:
        return []
    t = table[table["theory"].notna()]
    if t.empty:
        return []
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(4.2, 4.0))
        ax.plot([0, 1], [0, 1], color="grey", lw=1, label="y = x")
        for method, g in t.groupby("method"):
            se = np.sqrt(g["accuracy"] * (1 - g["accuracy"]) / g["n"].astype(float))
            ax.errorbar(g["theory"], g["accuracy"], yerr=2 * se, fmt="o", ms=4,
                        color=METHOD_COLOURS.get(str(method)), label=f"{method} (+-2 SE)")
        ax.set_xlabel("predicted accuracy (closed form)")
        ax.set_ylabel("measured test accuracy")
        ax.set_title("Theory vs trained models")
        ax.legend(fontsize=7)
        return _save(fig, Path(out_dir), "theory_vs_measured")


def all_figures(table: pd.DataFrame, out_dir: str | Path) -> dict[str, list[Path]]:
    """Every figure the table has data for: {figure name: paths}."""
    out = {"figure2": figure_2(table, out_dir), "figure5": figure_5(table, out_dir),
           "theory": figure_theory(table, out_dir)}
    if not table.empty:
        # effective robustness compares models of one experiment kind at a time
        for kind, t in table.groupby("kind"):
            splits = set(t["split"])
            if {"id", "ood"} <= splits:
                data = DATA_NAMES.get(str(kind), str(kind))
                out[f"figure3:{kind}"] = figure_3(t, out_dir, stem=f"figure3_{kind}",
                                                  title=f"Effective robustness: {data}, ood vs id")
            real = dict((o, i) for i, o in shift_pairs(splits) if o in REAL_SHIFTS)
            first = next((o for o in REAL_SHIFTS if o in real), None)
            if first is not None:
                out[f"figure3_real:{kind}"] = figure_3(
                    t, out_dir, id_split=real[first], ood_split=first, stem=f"figure3_real_{kind}",
                    title=f"Effective robustness: {DATA_NAMES.get(str(kind), str(kind))}, {first} vs {real[first]}")
    return {k: v for k, v in out.items() if v}


__all__ = ["DATA_NAMES", "all_figures", "er_points", "figure_2", "figure_3", "figure_5", "figure_theory"]
