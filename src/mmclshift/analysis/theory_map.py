"""Maps of the closed-form theory over a 2-D grid of config keys: where each claim holds.

:func:`theory_map` evaluates :func:`mmclshift.experiments.synthetic.theory_records` at every point
of a grid (batched over the grid: one SL solve per distinct training distribution, one orthant
integral for all accuracies), so its values are exactly those of ``mmclshift theory`` at each
point. :func:`plot_theory_map` draws three panels: MMCL's OOD advantage over SL (zero contour
marked), MMCL's OOD accuracy, SL's OOD accuracy; points where MMCL's prediction is a range (a tie at
the rank cut) are hatched. :func:`summarise` states the regions in numbers, and
:func:`report_maps` writes one map per data model for the report (which reads them back with
:func:`load_map` and captions them with :func:`describe`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mmclshift.config import limit, limit_error, replace, to_dict
from mmclshift.errors import UserError

Row = dict[str, Any]
#: what a theory-map folder holds (``--out`` may be a new or empty folder, or one of these)
MAP_FILES = ("map.jsonl", "summary.json", "theory_map.png", "theory_map.svg")


def parse_axis(text: str) -> tuple[str, list[float]]:
    """``KEY=a:b:n`` -> (KEY, n evenly spaced values from a to b)."""
    key, sep, spec = text.partition("=")
    parts = spec.split(":")
    if not sep or not key or len(parts) != 3:
        raise UserError(f"axis {text!r}: expected KEY=start:stop:count, e.g. data.pi_core=0.05:1:20")
    try:
        a, b, n = float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        raise UserError(f"axis {text!r}: start and stop must be numbers and count an integer") from None
    if n < 1:
        raise UserError(f"axis {text!r}: count must be at least 1")
    if not (np.isfinite(a) and np.isfinite(b)):
        raise UserError(f"axis {text!r}: start and stop must be finite numbers")
    if n > limit("map_points"):
        raise limit_error("map_points", f"axis {text!r}: {n:,} values")
    return key, [float(v) for v in np.linspace(a, b, n)]


def check_grid(xkey: str, xs: list[float], ykey: str, ys: list[float]) -> None:
    """Refuse, before any work, a map over one key twice or with more points than the limit."""
    if xkey == ykey:
        raise UserError(f"both axes are {xkey!r}: choose two different config keys")
    points = len(xs) * len(ys)
    if points > limit("map_points"):
        raise limit_error("map_points", f"theory-map: {len(xs):,} x {len(ys):,} = {points:,} grid points")


def _lookup(data: dict, key: str) -> Any:
    cur: Any = data
    for part in key.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise UserError(f"axis key {key!r}: no such config key")
        cur = cur[part]
    return cur


def grid_configs(cfg: Any, xkey: str, xs: list[float], ykey: str, ys: list[float]) -> list[tuple[Any, Any, Any]]:
    """(x, y, config) for every grid point (y outer, x inner); integer keys get integer values."""
    check_grid(xkey, xs, ykey, ys)
    base = to_dict(cfg)
    cast = {}
    for key, values in ((xkey, xs), (ykey, ys)):
        cast[key] = int if isinstance(_lookup(base, key), int) and not isinstance(_lookup(base, key), bool) else float
        if cast[key] is int:
            distinct = sorted({round(v) for v in values})
            if len(distinct) < len(values):
                raise UserError(
                    f"axis {key!r} takes integers: the {len(values)} values asked for round to "
                    f"{len(distinct)} distinct ones ({', '.join(map(str, distinct[:8]))}"
                    f"{', ...' if len(distinct) > 8 else ''}); ask for at most {len(distinct)} values "
                    "or a wider range")
    out = []
    for y in ys:
        for x in xs:
            xv, yv = cast[xkey](round(x) if cast[xkey] is int else x), cast[ykey](round(y) if cast[ykey] is int else y)
            out.append((xv, yv, replace(cfg, **{xkey: xv, ykey: yv})))
    return out


def theory_map(cfg: Any, xkey: str, xs: list[float], ykey: str, ys: list[float]) -> list[Row]:
    """One row per grid point: ``{xkey: x, ykey: y, "records": theory records of that point}``."""
    from mmclshift.experiments.synthetic import CONFIG_KINDS, theory_records

    if getattr(cfg, "kind", None) not in CONFIG_KINDS:
        raise UserError(f"config kind {getattr(cfg, 'kind', None)!r} has no closed-form theory")
    points = grid_configs(cfg, xkey, xs, ykey, ys)
    recs = theory_records([c for _, _, c in points])
    return [{xkey: x, ykey: y, "records": r} for (x, y, _), r in zip(points, recs, strict=True)]


def _acc(row: Row, method: str, split: str) -> float:
    for r in row["records"]:
        if r["method"] == method and r["split"] == split:
            return np.nan if r["accuracy"] is None else float(r["accuracy"])
    return np.nan


def arrays(rows: list[Row], xkey: str, ykey: str, split: str = "ood") -> dict[str, np.ndarray]:
    xs = sorted({r[xkey] for r in rows})
    ys = sorted({r[ykey] for r in rows})
    shape = (len(ys), len(xs))
    out = {k: np.full(shape, np.nan) for k in ("mmcl", "sl")}
    tie = np.zeros(shape, dtype=bool)
    for r in rows:
        i, j = ys.index(r[ykey]), xs.index(r[xkey])
        out["mmcl"][i, j] = _acc(r, "mmcl", split)
        out["sl"][i, j] = _acc(r, "sl", split)
        tie[i, j] = any("range" in rec for rec in r["records"])
    return {"x": np.array(xs), "y": np.array(ys), **out, "advantage": out["mmcl"] - out["sl"], "tie": tie}


def summarise(rows: list[Row], xkey: str, ykey: str, split: str = "ood") -> dict[str, Any]:
    """Where MMCL beats SL on ``split``, by how much, and how much each axis moves MMCL."""
    a = arrays(rows, xkey, ykey, split)
    adv = a["advantage"]
    ok = np.isfinite(adv)
    wins = adv > 0
    return {
        "points": int(adv.size), "ties": int(a["tie"].sum()),
        "mmcl_wins": int((wins & ok).sum()), "sl_wins_or_equal": int((~wins & ok).sum()),
        "advantage_min": float(np.nanmin(adv)) if ok.any() else None,
        "advantage_max": float(np.nanmax(adv)) if ok.any() else None,
        # the largest change of MMCL's accuracy along each axis (others fixed)
        f"mmcl_range_along_{xkey}": float(np.nanmax(np.nanmax(a["mmcl"], 1) - np.nanmin(a["mmcl"], 1))),
        f"mmcl_range_along_{ykey}": float(np.nanmax(np.nanmax(a["mmcl"], 0) - np.nanmin(a["mmcl"], 0))),
    }


def plot_theory_map(rows: list[Row], xkey: str, ykey: str, out_dir: str | Path, *,
                    title: str = "", split: str = "ood") -> list[Path]:
    """PNG + SVG: MMCL - SL, MMCL and SL accuracy on ``split`` over the grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmclshift.analysis.figures import STYLE, _save

    a = arrays(rows, xkey, ykey, split)
    x, y = a["x"], a["y"]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), constrained_layout=True)
        lim = max(0.05, float(np.nanmax(np.abs(a["advantage"]))) if np.isfinite(a["advantage"]).any() else 0.05)
        panels = [("advantage", f"MMCL - SL accuracy ({split})", "RdBu", -lim, lim),
                  ("mmcl", f"MMCL accuracy ({split})", "viridis", 0, 1),
                  ("sl", f"SL accuracy ({split})", "viridis", 0, 1)]
        for ax, (key, label, cmap, lo, hi) in zip(axes, panels, strict=True):
            z = a[key]
            mesh = ax.pcolormesh(x, y, z, cmap=cmap, vmin=lo, vmax=hi, shading="nearest")
            fig.colorbar(mesh, ax=ax)
            if key == "advantage" and len(x) > 1 and len(y) > 1 and np.isfinite(z).any():
                ax.contour(x, y, z, levels=[0.0], colors="k", linewidths=1.2)
            if a["tie"].any():
                ax.contourf(x, y, a["tie"].astype(float), levels=[0.5, 1.5], colors="none", hatches=["//"])
            ax.set_xlabel(xkey)
            ax.set_ylabel(ykey)
            ax.set_title(label)
            ax.grid(False)
        if title:
            fig.suptitle(title)
        return _save(fig, Path(out_dir), "theory_map")


def write_map(rows: list[Row], xkey: str, ykey: str, out_dir: str | Path, *, title: str = "") -> dict[str, Any]:
    """map.jsonl (one line per point), summary.json and the figure under ``out_dir``."""
    from mmclshift.runs import atomic_write_text, make_run_dir, refuse_foreign_folder

    out = Path(out_dir)
    refuse_foreign_folder(out, MAP_FILES, "theory-map folder")
    make_run_dir(out, "theory-map folder")
    atomic_write_text(out / "map.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    summary = {"x": xkey, "y": ykey, **summarise(rows, xkey, ykey)}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    figs = plot_theory_map(rows, xkey, ykey, out, title=title)
    return {"summary": summary, "figures": [str(p) for p in figs]}


#: the report's maps: one per data model, over caption richness and the spurious correlation
REPORT_MAPS = {
    "data_model_1": ("data.pi_core", (0.05, 1.0, 20), "data.p_spu", (0.5, 0.99, 20)),
    "data_model_2": ("data.pi_core", (0.05, 1.0, 12), "data.p_spu", (0.5, 0.99, 12)),
}


def report_maps(out_dir: str | Path, kinds: list[str] | None = None) -> list[Path]:
    """One map per data model (``kinds``; default all) at its default config, over the axes of
    :data:`REPORT_MAPS`, written under ``out_dir/<kind>``; returns the map directories."""
    from mmclshift.experiments.synthetic import CONFIG_KINDS

    dirs = []
    for kind, (xkey, xa, ykey, ya) in REPORT_MAPS.items():
        if kinds is not None and kind not in kinds:
            continue
        cfg = CONFIG_KINDS[kind]()
        xs = [float(v) for v in np.linspace(*xa[:2], xa[2])]
        ys = [float(v) for v in np.linspace(*ya[:2], ya[2])]
        rows = theory_map(cfg, xkey, xs, ykey, ys)
        write_map(rows, xkey, ykey, Path(out_dir) / kind, title=f"{kind} (defaults elsewhere)")
        dirs.append(Path(out_dir) / kind)
    return dirs


def load_map(map_dir: str | Path) -> dict[str, Any]:
    """A map written by :func:`write_map`: ``{"dir", "summary", "png"}``; a one-line error naming
    the folder when it is not one."""
    d = Path(map_dir)
    summary_path, png = d / "summary.json", d / "theory_map.png"
    if not summary_path.is_file() or not png.is_file():
        raise UserError(f"{d}: not a theory map folder (expected summary.json and theory_map.png, "
                        "as written by mmclshift theory-map --out)")
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{summary_path}: unreadable ({exc})") from None
    if not isinstance(summary, dict) or "x" not in summary or "y" not in summary:
        raise UserError(f"{summary_path}: not a theory map summary (keys x and y missing)")
    return {"dir": d, "summary": summary, "png": png}


def describe(summary: dict[str, Any]) -> str:
    """The map's summary in one sentence of numbers (the report's caption)."""
    x, y = summary["x"], summary["y"]
    n = summary.get("points", 0)
    parts = [f"MMCL beats SL OOD at {summary.get('mmcl_wins', 0)} of {n} grid points"]
    lo, hi = summary.get("advantage_min"), summary.get("advantage_max")
    if lo is not None and hi is not None:
        parts[0] += f" (MMCL - SL from {lo:+.3f} to {hi:+.3f})"
    rx, ry = summary.get(f"mmcl_range_along_{x}"), summary.get(f"mmcl_range_along_{y}")
    if rx is not None:
        parts.append(f"MMCL's OOD accuracy moves by up to {rx:.3f} along {x} ({y} fixed)")
    if ry is not None:
        parts.append(f"by up to {ry:.3f} along {y} ({x} fixed)")
    ties = summary.get("ties", 0)
    parts.append(f"{ties} point(s) where the rank cut ties (hatched; the prediction is a range)"
                 if ties else "no rank-cut ties")
    return "; ".join(parts) + "."
