"""The paper's figures from a collected table (matplotlib, PNG + SVG).

Every function takes the tidy table of :func:`mmclshift.analysis.collect.collect` and returns the
written paths, or ``[]`` when the table holds no data for that figure.

* :func:`figure_2` / :func:`figure_5` -- MMCL's OOD / ID accuracy over the ``pi_core`` x ``pi_spu``
  grid (semi-synthetic runs), with SL's accuracy as the reference in the title.
* :func:`figure_3` -- effective-robustness scatter: OOD vs ID accuracy on logit axes, one colour
  per method, the line fitted on the baseline method (SL) with its bootstrap band.
* :func:`figure_theory` -- predicted vs measured accuracy of synthetic runs, with y = x.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mmclshift.analysis.robustness import effective_robustness, transform  # noqa: E402
from mmclshift.errors import UserError  # noqa: E402

STYLE = {"figure.dpi": 110, "font.size": 9, "axes.grid": True, "grid.alpha": 0.3,
         "axes.spines.top": False, "axes.spines.right": False}
GRID_KIND = "semisynthetic"  # the kind whose runs form the Figure 2 / 5 grid
METHOD_COLOURS = {"mmcl": "#1f77b4", "clip": "#1f77b4", "sl": "#d62728",
                  "clip_no_intra": "#2ca02c", "supcon": "#9467bd"}


def _save(fig: plt.Figure, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    for p in paths:
        fig.savefig(p, bbox_inches="tight")
    plt.close(fig)
    return paths


def _grid_table(table: pd.DataFrame, split: str) -> tuple[pd.DataFrame, float | None]:
    if table.empty or "data.pi_core" not in table.columns or "data.pi_spu" not in table.columns:
        return pd.DataFrame(), None
    if "kind" in table.columns:
        table = table[table["kind"] == GRID_KIND]
    t = table[(table["split"] == split)]
    mm = t[t["method"] == "mmcl"]
    if mm.empty or mm["data.pi_core"].isna().all():
        return pd.DataFrame(), None
    pivot = mm.pivot_table(index="data.pi_core", columns="data.pi_spu", values="accuracy", aggfunc="mean")
    sl = t[t["method"] == "sl"]["accuracy"]
    return pivot.sort_index(ascending=False), (float(sl.mean()) if len(sl) else None)


def _heatmap(pivot: pd.DataFrame, sl: float | None, title: str, out_dir: Path, stem: str) -> list[Path]:
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(4.2, 3.4))
        im = ax.imshow(pivot.values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(pivot.shape[1]), [f"{v:g}" for v in pivot.columns])
        ax.set_yticks(range(pivot.shape[0]), [f"{v:g}" for v in pivot.index])
        ax.set_xlabel(r"$\pi_{spu}$ (P(spurious feature in caption))")
        ax.set_ylabel(r"$\pi_{core}$ (P(core feature in caption))")
        ax.grid(False)
        for i in range(pivot.shape[0]):
            for j in range(pivot.shape[1]):
                v = pivot.values[i, j]
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center",
                            color="white" if v < 0.6 else "black", fontsize=8)
        ref = f"; SL: {sl:.2f}" if sl is not None else ""
        ax.set_title(f"{title}{ref}")
        fig.colorbar(im, ax=ax, label="MMCL accuracy")
        return _save(fig, out_dir, stem)


def figure_2(table: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    pivot, sl = _grid_table(table, "ood")
    if pivot.empty:
        return []
    return _heatmap(pivot, sl, "Fig. 2: MMCL OOD accuracy", Path(out_dir), "figure2_ood_grid")


def figure_5(table: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    pivot, sl = _grid_table(table, "id")
    if pivot.empty:
        return []
    return _heatmap(pivot, sl, "Fig. 5: MMCL ID accuracy", Path(out_dir), "figure5_id_grid")


def er_points(table: pd.DataFrame, id_split: str, ood_split: str) -> pd.DataFrame:
    """One row per (run, method) with ID and OOD accuracy and counts."""
    if table.empty:
        return pd.DataFrame()
    keys = ["run", "method"]
    a = table[table["split"] == id_split][keys + ["accuracy", "correct", "n"]]
    b = table[table["split"] == ood_split][keys + ["accuracy", "correct", "n"]]
    return a.merge(b, on=keys, suffixes=("_id", "_ood"))


def figure_3(table: pd.DataFrame, out_dir: str | Path, *, id_split: str = "id",
             ood_split: str = "ood", baseline: str = "sl", stem: str = "figure3_effective_robustness",
             title: str = "Effective robustness") -> list[Path]:
    pts = er_points(table, id_split, ood_split)
    if pts.empty or (pts["method"] == baseline).sum() < 2:
        return []
    base = (pts["method"] == baseline).to_numpy()
    try:
        er = effective_robustness(pts["accuracy_id"], pts["accuracy_ood"], base, n_boot=500)
    except UserError:  # e.g. every baseline run has the same ID accuracy: no line to draw
        return []
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(4.6, 3.8))
        tx = lambda v: transform(v, "logit")  # noqa: E731
        ax.fill_between(tx(er.band_x), tx(er.band_lo), tx(er.band_hi), color="grey", alpha=0.25,
                        label=f"{baseline} fit, 95% bootstrap band")
        ax.plot(tx(er.band_x), tx(er.fit.predict(er.band_x)), color="grey")
        for method, g in pts.groupby("method"):
            ax.scatter(tx(g["accuracy_id"]), tx(g["accuracy_ood"]), s=22,
                       color=METHOD_COLOURS.get(str(method)), label=str(method), zorder=3)
        ticks = np.array([0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99])
        ax.set_xticks(tx(ticks), [f"{t:g}" for t in ticks])
        ax.set_yticks(tx(ticks), [f"{t:g}" for t in ticks])
        ax.set_xlabel(f"ID accuracy ({id_split}, logit scale)")
        ax.set_ylabel(f"OOD accuracy ({ood_split}, logit scale)")
        ax.set_title(title)
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
                out[f"figure3:{kind}"] = figure_3(t, out_dir, stem=f"figure3_{kind}",
                                                  title=f"Effective robustness ({kind}, ood)")
            real_ood = [s for s in ("imagenet-v2", "imagenet-sketch", "objectnet") if s in splits]
            if "imagenet" in splits and real_ood:
                out[f"figure3_real:{kind}"] = figure_3(
                    t, out_dir, id_split="imagenet", ood_split=real_ood[0], stem=f"figure3_real_{kind}",
                    title=f"Effective robustness ({kind}, {real_ood[0]})")
    return {k: v for k, v in out.items() if v}


__all__ = ["all_figures", "er_points", "figure_2", "figure_3", "figure_5", "figure_theory"]
