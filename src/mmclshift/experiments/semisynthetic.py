"""The semi-synthetic tier: MNIST digits + a spurious colour, captions of controlled richness.

Config kind ``semisynthetic`` (paper Section 6, Figures 1, 2, 4, 5). A run builds the training
images and captions (:mod:`mmclshift.data.semisynthetic`), trains MMCL (two towers, CLIP loss
or the paper's linear loss) and SL (the same image encoder + a linear head, cross-entropy on
digit labels) with matched optimisation, and evaluates both on:

* ``id`` -- test digits built like the training data (Figure 5),
* ``ood`` -- test digits with the colour independent of the label (Figure 2),
* ``ood_reversed`` -- test digits always shown in another class's colour.

One run (config, training, evaluation) is :mod:`mmclshift.experiments.semisynthetic_run`, whose
names this module also exports; :func:`run_grid` runs the Figure 2 grid over ``pi_core`` x ``pi_spu`` (and seeds), one run
directory per cell, skipping cells already done, and formats the MMCL-vs-SL OOD table.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from mmclshift.config import ConfigError, replace
from mmclshift.experiments.semisynthetic_run import (
    CONFIG_KINDS,
    FIGURE2_AXIS,
    MAX_CAPTION_LEN,
    METHODS,
    TEST_SPLITS,
    TWO_TOWER,
    VOCAB,
    GridConfig,
    SemiSyntheticExperiment,
    curve_subset,
    demo_config,
    finish_run,
    log_curve,
    new_model,
    run_experiment,
    save_model,
    start_run,
)
from mmclshift.experiments.semisynthetic_stacked import train_cells_stacked
from mmclshift.report_text import format_table
from mmclshift.runs import check_run_dir, eval_records

# --------------------------------------------------------------------------- Figure 2 grid


def _fmt_pi(v: float) -> str:
    return f"{v:g}"


def grid_cells(cfg: SemiSyntheticExperiment) -> list[tuple[str, SemiSyntheticExperiment]]:
    """(run-directory name, config) for every run of the grid: SL once per seed, MMCL per cell."""
    cells = []
    for seed in cfg.grid.seeds:
        cells.append((f"sl-seed{seed}", replace(cfg, seed=seed, methods=["sl"])))
        for pc in cfg.grid.pi_core:
            for ps in cfg.grid.pi_spu:
                name = f"mmcl-core{_fmt_pi(pc)}-spu{_fmt_pi(ps)}-seed{seed}"
                cells.append((name, replace(cfg, seed=seed, methods=["mmcl"],
                                            **{"data.pi_core": pc, "data.pi_spu": ps})))
    return cells


def run_grid(cfg: SemiSyntheticExperiment, out_dir: str | Path, *, progress: bool = True,
             split: str = "ood", force: bool = False) -> dict[str, Any]:
    """Figure 2: MMCL's accuracy on ``split`` over ``grid.pi_core`` x ``grid.pi_spu`` vs SL's.

    Every run gets its own directory under ``out_dir``, skipped when it holds the cell's config
    finished. A cell directory holding another config is refused (one line naming the keys)
    before any cell trains; ``force`` moves such directories aside and retrains them.
    SL does not read captions, so it is trained once per seed on the same images the MMCL
    cells use. With ``grid.stacked``, the runs not done yet are first trained as stacked models
    where they stack (:mod:`mmclshift.experiments.semisynthetic_stacked`); the rest one at a time.
    Returns ``{"rows": [...], "table": str, "seconds": float, "stacked": int, "one_at_a_time": int}``
    (the last two: runs trained here each way); rows hold per-cell means over seeds.
    """
    if split not in cfg.splits:
        raise ConfigError(f"config key 'splits': the grid reports split {split!r}, which is not evaluated")
    out = Path(out_dir)
    t0 = time.perf_counter()
    results: dict[str, list[dict[str, Any]]] = {}
    cells = grid_cells(cfg)
    states = {name: check_run_dir(out / name, cell_cfg) if not force else None
              for name, cell_cfg in cells}  # refuses a changed cell before anything trains
    stacked = single = 0
    if cfg.grid.stacked:
        pending = [(name, cell_cfg) for name, cell_cfg in cells
                   if (states[name] or check_run_dir(out / name, cell_cfg, force=True)) != "done"]
        done = train_cells_stacked(pending, out, progress=progress).trained
        states.update(dict.fromkeys(done, "done"))
        stacked = len(done)
    for i, (name, cell_cfg) in enumerate(cells):
        run_dir = out / name
        state = states[name] or check_run_dir(run_dir, cell_cfg, force=True)
        if state != "done":
            if progress:
                print(f"[grid {i + 1}/{len(cells)}] {name}", flush=True)
            run_experiment(cell_cfg, run_dir, progress=progress)
            single += 1
        results[name] = eval_records(run_dir)

    def acc(name: str, method: str, which: str) -> float | None:
        for r in results[name]:
            if r["method"] == method and r["split"] == which:
                return r["accuracy"]
        return None

    rows = []
    for pc in cfg.grid.pi_core:
        for ps in cfg.grid.pi_spu:
            mm, sl, mm_id = [], [], []
            for seed in cfg.grid.seeds:
                mm.append(acc(f"mmcl-core{_fmt_pi(pc)}-spu{_fmt_pi(ps)}-seed{seed}", "mmcl", split))
                sl.append(acc(f"sl-seed{seed}", "sl", split))
                if "id" in cfg.splits:
                    mm_id.append(acc(f"mmcl-core{_fmt_pi(pc)}-spu{_fmt_pi(ps)}-seed{seed}", "mmcl", "id"))
            row = {"pi_core": pc, "pi_spu": ps, f"mmcl_{split}": _mean(mm), f"sl_{split}": _mean(sl),
                   f"mmcl_{split}_se": _se(mm), "seeds": len(cfg.grid.seeds)}
            row["mmcl-sl"] = row[f"mmcl_{split}"] - row[f"sl_{split}"]
            if mm_id:
                row["mmcl_id"] = _mean(mm_id)
            rows.append(row)
    cols = ["pi_core", "pi_spu", f"mmcl_{split}", f"sl_{split}", "mmcl-sl"]
    if "id" in cfg.splits:
        cols.append("mmcl_id")
    sl_id = [acc(f"sl-seed{s}", "sl", "id") for s in cfg.grid.seeds] if "id" in cfg.splits else []
    title = (f"Figure 2 ({cfg.name}): {split} accuracy of zero-shot MMCL vs SL; spurious "
             f"strength {cfg.data.spurious_strength:g}, {len(cfg.grid.seeds)} seed(s)")
    table = format_table(rows, cols, title=title)
    pivot = format_pivot(rows, cfg.grid.pi_core, cfg.grid.pi_spu, f"mmcl_{split}")
    sl_split = [acc(f"sl-seed{s}", "sl", split) for s in cfg.grid.seeds]
    footer = f"SL {split}: {_mean(sl_split):.4f}"
    if sl_id and split != "id":
        footer += f"   SL id: {_mean(sl_id):.4f}"
    elapsed = time.perf_counter() - t0
    return {"rows": rows, "table": f"{table}\n\nMMCL {split} accuracy (rows pi_core, columns pi_spu)\n"
            f"{pivot}\n{footer}", "seconds": elapsed, "stacked": stacked, "one_at_a_time": single}


def format_pivot(rows: list[dict[str, Any]], pi_core: list[float], pi_spu: list[float], key: str) -> str:
    lookup = {(r["pi_core"], r["pi_spu"]): r[key] for r in rows}
    header = ["pi_core \\ pi_spu"] + [_fmt_pi(p) for p in pi_spu]
    lines = [header]
    for pc in pi_core:
        lines.append([_fmt_pi(pc)] + [f"{lookup[(pc, ps)]:.4f}" for ps in pi_spu])
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in lines)


def _mean(values: list[float | None]) -> float:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else float("nan")


def _se(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    if len(vals) < 2:
        return None
    m = sum(vals) / len(vals)
    return math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1) / len(vals))


__all__ = ["CONFIG_KINDS", "FIGURE2_AXIS", "MAX_CAPTION_LEN", "METHODS", "TEST_SPLITS", "TWO_TOWER", "VOCAB",
           "GridConfig", "SemiSyntheticExperiment", "curve_subset", "demo_config", "finish_run", "grid_cells",
           "log_curve", "new_model", "run_experiment", "run_grid", "save_model", "start_run"]
