"""Seeds until decided: more seeds for the claims left inconclusive by the width of their interval.

A claim is *open* when its verdict is ``inconclusive`` because its interval is too wide (it
straddles the threshold, or one seed gave none, or Holm's correction took its verdict away) --
not when its premise is missing (an effective-robustness baseline that cannot carry a line: more
seeds of the same runs do not make a line). :func:`seeds_needed` estimates, at the claim's current
mean and seed-to-seed spread, how many seeds would make the 95% interval clear the threshold at
the level Holm's correction needs at worst (Bonferroni over the claim's table): the smallest n with
``t_{1 - a/2, n - 1} sqrt(sd^2 / n + line_sd^2) < distance`` (``a = 0.05 / family``; ``distance``
from the mean to the threshold, or to the nearer end of an equivalence margin). It is an estimate:
the mean and spread move as seeds are added.

:func:`plan` lists, per open claim, the new seeds (up to a budget of seeds per claim, 10 by
default) and for each config the claim read (config without its seed) one new run per new seed;
:func:`run_plan` trains them under ``DIR/decide/`` (beside the runs, so ``claims DIR`` reads them;
one sweep folder per original folder, resumable: a rerun skips the runs already done).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy import stats

from mmclshift.analysis.claims import ClaimResult, groups_of
from mmclshift.config import build_config
from mmclshift.errors import UserError
from mmclshift.runs import read_run_config

DEFAULT_BUDGET = 10
DECIDE_DIR = "decide"
_CAP = 10_000


def is_open(r: ClaimResult) -> bool:
    """Inconclusive for the width of its interval (not for a missing premise)."""
    if r.verdict != "inconclusive":
        return False
    if r.n_seeds < 2:
        return True
    return math.isfinite(r.p_value)


def seeds_needed(r: ClaimResult, family: int = 1, confidence: float = 0.95) -> int | None:
    """Seeds that would decide the claim at its current mean and spread (None: no number of
    seeds would, e.g. the line's uncertainty alone is too wide, or there is no spread yet)."""
    x = np.array([r.per_seed[s] for s in sorted(r.per_seed)], dtype=float)
    if len(x) < 2:
        return None
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    thr = abs(r.threshold) if r.direction == "within" else r.threshold
    distance = abs(thr - abs(mean)) if r.direction == "within" else abs(mean - thr)
    if distance == 0:
        return None
    a = (1 - confidence) / max(family, 1)
    line = r.line_sd if math.isfinite(r.line_sd) else 0.0
    for n in range(2, _CAP):
        if float(stats.t.ppf(1 - a / 2, n - 1)) * math.sqrt(sd**2 / n + line**2) < distance:
            return n
    return None


def open_claims(results: Sequence[ClaimResult]) -> list[tuple[ClaimResult, int | None]]:
    """Every open claim and the seeds that would decide it (family: the claim's table)."""
    out = []
    for _, rs in groups_of(results):
        out += [(r, seeds_needed(r, len(rs))) for r in rs if is_open(r)]
    return out


def describe_open(results: Sequence[ClaimResult]) -> list[str]:
    """One line per open claim: how many seeds would decide it."""
    lines = []
    for r, n in open_claims(results):
        where = f" [{r.group_label}]" if r.group else ""
        if n is None:
            lines.append(f"{r.claim}{where}: inconclusive with {r.n_seeds} seed(s); no number of seeds "
                         "decides it at its current mean and spread" if r.n_seeds > 1 else
                         f"{r.claim}{where}: inconclusive with {r.n_seeds} seed; a second seed gives a spread")
        else:
            lines.append(f"{r.claim}{where}: inconclusive with {r.n_seeds} seeds; about {n} seeds would decide "
                         "it (at its current mean and spread)")
    return lines


@dataclass
class Plan:
    claim: str
    n_now: int
    n_needed: int | None
    new_seeds: list[int]
    jobs: list[tuple[Path, str, Any]] = field(default_factory=list)  # (sweep folder, run name, config)


def _seedless(name: str, seed: int) -> str:
    return re.sub(rf"seed{seed}$", "", name).rstrip("-_") or "run"


def plan(results: Sequence[ClaimResult], root: Path, budget: int = DEFAULT_BUDGET) -> list[Plan]:
    """New seeds and runs for each open claim, up to ``budget`` seeds per claim. ``results``
    carry the run paths as collected (:func:`evaluate_claims` without ``relative_to``)."""
    from mmclshift.experiments import CONFIG_KINDS

    if budget < 2:
        raise UserError(f"--budget {budget}: needs at least 2 seeds per claim")
    plans = []
    for r, n in open_claims(results):
        target = min(budget, n if n is not None else (3 if r.n_seeds < 2 else budget))
        configs: dict[str, tuple[Path, str, dict[str, Any]]] = {}
        seeds: set[int] = set()
        for run in r.runs:
            path = Path(run)  # as collected (evaluate_claims without relative_to)
            data = read_run_config(path)
            seed = int(data.get("seed", 0))
            seeds.add(seed)
            if data.get("data_seed") is not None or data.get("init_seed") is not None:
                continue  # a run pinned to other seeds than its own is not replicated
            rest = {k: v for k, v in data.items() if k != "seed"}
            key = yaml.safe_dump(rest, sort_keys=True)
            parent = path.parent.resolve()
            rel = parent.relative_to(root.resolve()) if parent.is_relative_to(root.resolve()) else Path(parent.name)
            if rel.parts[:1] == (DECIDE_DIR,):  # a run added earlier: its folder already is under decide/
                rel = Path(*rel.parts[1:])
            configs.setdefault(key, (root / DECIDE_DIR / rel, _seedless(path.name, seed), rest))
        add = max(0, target - r.n_seeds)
        start = max(seeds) + 1 if seeds else 0
        new = list(range(start, start + add))
        p = Plan(r.claim, r.n_seeds, n, new)
        for folder, stem, rest in configs.values():
            for s in new:
                cfg = build_config({**rest, "seed": s}, CONFIG_KINDS, source=f"{stem} (seed {s})")
                p.jobs.append((folder, f"{stem}-seed{s}", cfg))
        plans.append(p)
    return plans


def run_plan(plans: Sequence[Plan], *, progress: bool = False) -> int:
    """Train every planned run not yet done (shared runs once); returns the number of jobs."""
    from mmclshift.sweeps.runner import run_sweep
    from mmclshift.sweeps.spec import Job

    by_folder: dict[Path, dict[str, Any]] = {}
    for p in plans:
        for folder, name, cfg in p.jobs:
            by_folder.setdefault(folder, {})[name] = cfg
    total = 0
    for folder, jobs in by_folder.items():
        result = run_sweep([Job(cfg, name) for name, cfg in sorted(jobs.items())], folder, launcher="local",
                           progress=progress)
        total += len(jobs)
        if result.failed:
            raise UserError(f"{len(result.failed)} run(s) failed under {folder} (first: "
                            f"{folder / result.failed[0] / 'error.txt'}); rerun to retry them")
    return total


__all__ = ["DECIDE_DIR", "DEFAULT_BUDGET", "Plan", "describe_open", "is_open", "open_claims", "plan",
           "run_plan", "seeds_needed"]
