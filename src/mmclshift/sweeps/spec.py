"""Sweep files: a base config plus grid and/or random axes, expanded into validated jobs.

::

    base: ../configs/data_model_1.yaml     # a config file (relative to the sweep file) or a mapping
    overrides: {n_train: 5000}             # optional fixed changes to the base
    grid:                                  # the Cartesian product of these axes
      data.pi_core: [0.0, 0.5, 1.0]
      seed: range(5)                       # range(N) or range(A, B)
    random:                                # optional: n_samples draws crossed with the grid
      n_samples: 4
      sweep_seed: 0                        # seeds the hyperparameter sampling only
      axes:
        mmcl.rho: {log_uniform: [0.1, 10]}
        mmcl.optim.lr: {uniform: [0.01, 0.1]}
        mmcl.embed_dim: {choice: [1, 2]}

Seeds: ``seed`` (in the configs) is the master seed; ``data_seed`` fixes the training and test
draws and ``init_seed`` the model initialisation and minibatch order (both default to ``seed``);
``sweep_seed`` fixes only which random hyperparameters are drawn. Every expanded job is validated
with the experiment's own schema before any job starts.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmclshift.config import (
    SEED_RANGE,
    ConfigError,
    apply_overrides,
    build_config,
    limit,
    limit_error,
    read_yaml,
    set_by_path,
)
from mmclshift.runs import run_dir_name

SWEEP_KEYS = {"base", "overrides", "grid", "random"}
RANDOM_KEYS = {"n_samples", "sweep_seed", "axes"}
_RANGE = re.compile(r"^\s*range\(\s*(-?\d+)\s*(?:,\s*(-?\d+)\s*)?\)\s*$")


@dataclass(frozen=True)
class Job:
    """One expanded job: its validated config and its directory name (kind + identity hash)."""

    config: Any
    name: str


def _axis_values(key: str, values: Any, source: str) -> Sequence[Any]:
    """The values of a grid axis: a list, or ``range(...)`` kept lazy (its length is checked
    against the job limit before any job is built)."""
    if isinstance(values, str):
        m = _RANGE.match(values)
        if not m:
            raise ConfigError(f"{source}: grid axis '{key}': expected a list or range(N); got {values!r}")
        lo, hi = (0, int(m.group(1))) if m.group(2) is None else (int(m.group(1)), int(m.group(2)))
        values = range(lo, hi)
        if not values:
            raise ConfigError(f"{source}: grid axis '{key}' is empty")
        return values
    if not isinstance(values, list):
        raise ConfigError(f"{source}: grid axis '{key}': expected a list of values; got {values!r}")
    if not values:
        raise ConfigError(f"{source}: grid axis '{key}' is empty")
    return values


def _sample(key: str, spec: Any, rng: np.random.Generator, source: str) -> Any:
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise ConfigError(f"{source}: random axis '{key}': expected one of "
                          "{uniform: [lo, hi]}, {log_uniform: [lo, hi]}, {int_uniform: [lo, hi]}, {choice: [...]}")
    (dist, arg), = spec.items()
    if dist == "choice":
        if not isinstance(arg, list) or not arg:
            raise ConfigError(f"{source}: random axis '{key}': choice needs a non-empty list")
        return arg[int(rng.integers(len(arg)))]
    if not (isinstance(arg, list) and len(arg) == 2 and all(isinstance(v, int | float) for v in arg)
            and arg[0] <= arg[1]):
        raise ConfigError(f"{source}: random axis '{key}': {dist} needs [lo, hi] with lo <= hi")
    lo, hi = arg
    if dist == "uniform":
        return float(rng.uniform(lo, hi))
    if dist == "log_uniform":
        if lo <= 0:
            raise ConfigError(f"{source}: random axis '{key}': log_uniform needs lo > 0")
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    if dist == "int_uniform":
        return int(rng.integers(int(lo), int(hi) + 1))
    raise ConfigError(f"{source}: random axis '{key}': unknown distribution {dist!r}")


def _check_job_count(axes: Mapping[str, Sequence[Any]], samples: int, source: str) -> None:
    """Refuse, before any job is built, a sweep expanding to more jobs than the limit."""
    count = math.prod(len(v) for v in axes.values()) * samples
    if count > limit("sweep_jobs"):
        sizes = " x ".join([*(f"{len(v):,}" for v in axes.values()), *([f"{samples:,}"] if samples > 1 else [])])
        raise limit_error("sweep_jobs", f"{source}: the sweep expands to {count:,} jobs ({sizes})")


def expand(sweep: Mapping[str, Any], *, source: str = "<sweep>", base_dir: Path | None = None,
           registry: Mapping[str, type] | None = None) -> list[Job]:
    """Expand a sweep mapping into validated jobs (duplicates removed, order kept)."""
    if registry is None:
        from mmclshift.experiments import CONFIG_KINDS as registry  # noqa: N811
    unknown = sorted(set(sweep) - SWEEP_KEYS)
    if unknown:
        raise ConfigError(f"{source}: unknown sweep key '{unknown[0]}' (known: {', '.join(sorted(SWEEP_KEYS))})")
    if "base" not in sweep:
        raise ConfigError(f"{source}: missing sweep key 'base'")
    base = sweep["base"]
    if isinstance(base, str):
        path = Path(base)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        base = read_yaml(path)
    if not isinstance(base, Mapping):
        raise ConfigError(f"{source}: sweep key 'base': expected a config path or mapping")
    base = dict(base)
    for key, value in (sweep.get("overrides") or {}).items():
        set_by_path(base, key.split("."), value)
    grid = sweep.get("grid") or {}
    if not isinstance(grid, Mapping):
        raise ConfigError(f"{source}: sweep key 'grid': expected a mapping of axes")
    axes = {k: _axis_values(k, v, source) for k, v in grid.items()}

    samples: list[dict[str, Any]] = [{}]
    rnd = sweep.get("random")
    if rnd is not None:
        if not isinstance(rnd, Mapping):
            raise ConfigError(f"{source}: sweep key 'random': expected a mapping")
        bad = sorted(set(rnd) - RANDOM_KEYS)
        if bad:
            raise ConfigError(f"{source}: unknown sweep key 'random.{bad[0]}'")
        n = rnd.get("n_samples", 1)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError(f"{source}: sweep key 'random.n_samples': must be a positive integer")
        seed = rnd.get("sweep_seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool) or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
            raise ConfigError(f"{source}: sweep key 'random.sweep_seed': a seed must be an integer "
                              f"in [0, 2^63 - 1]; got {seed!r}")
        _check_job_count(axes, n, source)
        rng = np.random.default_rng(seed)
        raxes = rnd.get("axes") or {}
        if not raxes:
            raise ConfigError(f"{source}: sweep key 'random.axes' is empty")
        samples = [{k: _sample(k, spec, rng, source) for k, spec in raxes.items()} for _ in range(n)]
    _check_job_count(axes, len(samples), source)

    jobs, seen = [], set()
    keys = list(axes)
    for combo in itertools.product(*(axes[k] for k in keys)):
        for sample in samples:
            changes = {**dict(zip(keys, combo, strict=True)), **sample}
            data = apply_overrides(base, [])
            for k, v in changes.items():
                set_by_path(data, k.split("."), v)
            cfg = build_config(data, registry, source=source)
            name = run_dir_name(cfg, cfg.kind)
            if name not in seen:
                seen.add(name)
                jobs.append(Job(cfg, name))
    return jobs


def load_sweep(path: str | Path) -> list[Job]:
    path = Path(path)
    return expand(read_yaml(path), source=str(path), base_dir=path.parent)
