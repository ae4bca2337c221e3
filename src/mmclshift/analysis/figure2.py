"""The Figure 2 table: MMCL's accuracy over ``pi_core`` x ``pi_spu`` (means over seeds) vs SL's.

Built from a collected table (:func:`mmclshift.analysis.collect.collect`) through
:func:`~mmclshift.analysis.collect.grid_rows` and
:func:`~mmclshift.analysis.collect.group_over_seeds`, so ``mmclshift grid``, the demo and the
report aggregate the grid the same way. :func:`figure2` gives the rows (one per cell);
:meth:`Figure2.text` the printed table, the MMCL pivot (rows ``pi_core``, columns ``pi_spu``)
and the SL footer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mmclshift.analysis.collect import GRID_AXES, collect, grid_rows, group_over_seeds
from mmclshift.report_text import format_table


def _fmt_pi(v: float) -> str:
    return f"{v:g}"


@dataclass
class Figure2:
    split: str
    #: one per cell: pi_core, pi_spu, mmcl_<split>, sl_<split>, mmcl_<split>_se, seeds, mmcl-sl
    #: (and mmcl_id when the runs were evaluated on 'id')
    rows: list[dict[str, Any]]
    pi_core: list[float]
    pi_spu: list[float]
    #: SL's mean accuracy over seeds per evaluated split
    sl: dict[str, float] = field(default_factory=dict)

    @property
    def n_seeds(self) -> int:
        return max((r["seeds"] for r in self.rows), default=0)

    def text(self, name: str, spurious_strength: float) -> str:
        """Title, the per-cell table, the MMCL pivot and the SL footer."""
        split = self.split
        cols = ["pi_core", "pi_spu", f"mmcl_{split}", f"sl_{split}", "mmcl-sl"]
        if any("mmcl_id" in r for r in self.rows) and split != "id":
            cols.append("mmcl_id")
        title = (f"Figure 2 ({name}): {split} accuracy of zero-shot MMCL vs SL; spurious "
                 f"strength {spurious_strength:g}, {self.n_seeds} seed(s)")
        table = format_table(self.rows, cols, title=title)
        pivot = format_pivot(self.rows, self.pi_core, self.pi_spu, f"mmcl_{split}")
        footer = f"SL {split}: {self.sl.get(split, math.nan):.4f}"
        if "id" in self.sl and split != "id":
            footer += f"   SL id: {self.sl['id']:.4f}"
        return f"{table}\n\nMMCL {split} accuracy (rows pi_core, columns pi_spu)\n{pivot}\n{footer}"


def _axis(values: pd.Series, given: Sequence[float] | None) -> pd.Series:
    """The axis column; an axis that did not vary between runs is the one value ``given``."""
    if values.isna().all() and given is not None and len(given) == 1:
        return values.fillna(float(given[0]))
    return values.astype(float)


def figure2(table: pd.DataFrame, split: str = "ood", *, pi_core: Sequence[float] | None = None,
            pi_spu: Sequence[float] | None = None) -> Figure2:
    """The Figure 2 rows of the grid runs in ``table``, in the order of ``pi_core`` x ``pi_spu``
    (default: every value present, ascending); a cell without runs holds ``nan``."""
    g = grid_rows(table)
    mm = g[g["method"] == "mmcl"].copy() if not g.empty else g
    sl = g[g["method"] == "sl"] if not g.empty else g
    for axis, given in zip(GRID_AXES, (pi_core, pi_spu), strict=True):
        if not mm.empty:
            mm[axis] = _axis(mm[axis], given)
    cells = group_over_seeds(mm, list(GRID_AXES)) if not mm.empty else pd.DataFrame(
        columns=["split", *GRID_AXES, "mean", "se", "n_seeds"])
    sl_means = {str(r["split"]): float(r["mean"]) for _, r in group_over_seeds(sl).iterrows()} if not sl.empty else {}
    pcs = list(pi_core) if pi_core is not None else sorted({float(v) for v in cells["data.pi_core"]})
    pss = list(pi_spu) if pi_spu is not None else sorted({float(v) for v in cells["data.pi_spu"]})
    lookup = {(str(r["split"]), float(r["data.pi_core"]), float(r["data.pi_spu"])): r for _, r in cells.iterrows()}
    has_id = any(k[0] == "id" for k in lookup)
    rows = []
    for pc in pcs:
        for ps in pss:
            cell = lookup.get((split, float(pc), float(ps)))
            se = float(cell["se"]) if cell is not None else math.nan
            row: dict[str, Any] = {
                "pi_core": pc, "pi_spu": ps,
                f"mmcl_{split}": float(cell["mean"]) if cell is not None else math.nan,
                f"sl_{split}": sl_means.get(split, math.nan),
                f"mmcl_{split}_se": se if math.isfinite(se) else None,
                "seeds": int(cell["n_seeds"]) if cell is not None else 0,
            }
            row["mmcl-sl"] = row[f"mmcl_{split}"] - row[f"sl_{split}"]
            if has_id:
                id_cell = lookup.get(("id", float(pc), float(ps)))
                row["mmcl_id"] = float(id_cell["mean"]) if id_cell is not None else math.nan
            rows.append(row)
    return Figure2(split, rows, pcs, pss, sl_means)


def grid_figure2(cfg: Any, runs: Sequence[str | Path], split: str = "ood") -> tuple[Figure2, str]:
    """The Figure 2 rows and printed text of a grid config's run directories ``runs`` (what
    :func:`mmclshift.experiments.semisynthetic.run_grid` returns), in the config's axis order."""
    fig = figure2(collect(runs, strict=True).table, split, pi_core=cfg.grid.pi_core, pi_spu=cfg.grid.pi_spu)
    return fig, fig.text(cfg.name, cfg.data.spurious_strength)


def format_pivot(rows: list[dict[str, Any]], pi_core: Sequence[float], pi_spu: Sequence[float], key: str) -> str:
    """``key`` of ``rows`` as a fixed-width grid: rows ``pi_core``, columns ``pi_spu``."""
    lookup = {(r["pi_core"], r["pi_spu"]): r[key] for r in rows}
    header = ["pi_core \\ pi_spu"] + [_fmt_pi(p) for p in pi_spu]
    lines = [header]
    for pc in pi_core:
        lines.append([_fmt_pi(pc)] + [f"{lookup[(pc, ps)]:.4f}" for ps in pi_spu])
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in lines)


__all__ = ["Figure2", "figure2", "format_pivot", "grid_figure2"]
