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
directory per cell, skipping cells already done (the table: :mod:`mmclshift.analysis.figure2`).
"""

from __future__ import annotations

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
from mmclshift.runs import check_run_dir

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
    """Train the Figure 2 grid: MMCL's accuracy on ``split`` over ``grid.pi_core`` x ``grid.pi_spu`` vs SL's.

    Every run gets its own directory under ``out_dir``, skipped when it holds the cell's config
    finished. A cell directory holding another config is refused (one line naming the keys)
    before any cell trains; ``force`` moves such directories aside and retrains them.
    SL does not read captions, so it is trained once per seed on the same images the MMCL
    cells use. With ``grid.stacked``, the runs not done yet are first trained as stacked models
    where they stack (:mod:`mmclshift.experiments.semisynthetic_stacked`); the rest one at a time.
    Returns ``{"runs": [run directory, ...], "seconds": float, "stacked": int, "one_at_a_time": int}``
    (the last two: runs trained here each way); the table over seeds is
    :func:`mmclshift.analysis.figure2.figure2` of the collected runs.
    """
    if split not in cfg.splits:
        raise ConfigError(f"config key 'splits': the grid reports split {split!r}, which is not evaluated")
    out = Path(out_dir)
    t0 = time.perf_counter()
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
    return {"runs": [out / name for name, _ in cells], "seconds": time.perf_counter() - t0,
            "stacked": stacked, "one_at_a_time": single}


__all__ = ["CONFIG_KINDS", "FIGURE2_AXIS", "MAX_CAPTION_LEN", "METHODS", "TEST_SPLITS", "TWO_TOWER", "VOCAB",
           "GridConfig", "SemiSyntheticExperiment", "curve_subset", "demo_config", "finish_run", "grid_cells",
           "log_curve", "new_model", "run_experiment", "run_grid", "save_model", "start_run"]
