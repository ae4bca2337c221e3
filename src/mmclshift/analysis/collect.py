"""Collect completed runs into one tidy table (one row per run x method x test set).

Each row carries the run's test accuracy with its exact binomial (Clopper-Pearson) 95% interval
(``ci_low``, ``ci_high``) when the run recorded its counts; :func:`group_over_seeds` aggregates
over seeds (mean, standard error, t-interval, ``n_seeds``).

Only runs with a ``done`` marker are read; the others are counted as failed (``error.txt``) or
incomplete (still running, killed, or half-written) and reported, never read. A finished run
whose config or metrics cannot be read back whole (:func:`mmclshift.runs.read_finished_run`) is
damaged: each is named on stderr (:func:`warn_damaged`) and left out, and the rest are collected;
``strict`` makes any damage an error. For each (method, split) of a run the eval record with the
largest ``step`` is kept (the last one when steps are absent).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mmclshift.analysis.stats import CONFIDENCE, clopper_pearson, t_interval
from mmclshift.errors import UserError
from mmclshift.report_text import format_value
from mmclshift.runs import (
    CONFIG_FILE,
    DONE_FILE,
    ENV_FILE,
    ERROR_FILE,
    DamagedRunError,
    naming_path,
    read_finished_run,
)

RECORD_KEYS = ("accuracy", "n", "correct", "theory", "population", "top5", "step")
# config keys that identify a run rather than describe the experiment
_IDENTITY_KEYS = {"name", "seed", "data_seed", "init_seed", "device"}


@dataclass
class Collected:
    table: pd.DataFrame
    runs: list[Path]
    failed: list[Path] = field(default_factory=list)
    incomplete: list[Path] = field(default_factory=list)
    varying: list[str] = field(default_factory=list)
    #: finished runs that cannot be read back whole: (run directory, what is wrong)
    damaged: list[tuple[Path, str]] = field(default_factory=list)

    def summary(self) -> str:
        skipped = len(self.failed) + len(self.incomplete) + len(self.damaged)
        damaged = f", {len(self.damaged)} damaged" if self.damaged else ""
        return (f"collected {len(self.runs)} completed run(s); skipped {skipped} "
                f"({len(self.failed)} failed, {len(self.incomplete)} incomplete{damaged})")


def find_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Every folder at or below ``paths`` holding a ``config.yaml`` or a ``done`` marker (a run
    directory, possibly a damaged one)."""
    found: set[Path] = set()
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise UserError(f"{p}: no such run directory")
        for marker in (CONFIG_FILE, DONE_FILE):
            if (p / marker).exists():
                found.add(p)
            found.update(c.parent for c in p.rglob(marker))
    return sorted(found)


def warn_damaged(damaged: Sequence[tuple[Path, str]], prog: str = "mmclshift") -> None:
    """Name each damaged run on stderr, one line each (the default for :func:`collect`)."""
    for run, why in damaged:
        print(f"{prog}: warning: damaged run {run} left out: {why}", file=sys.stderr)


def damage_error(damaged: Sequence[tuple[Path, str]]) -> DamagedRunError:
    """One line for ``strict`` callers: how many runs are damaged, the first one named."""
    run, why = damaged[0]
    more = f" (and {len(damaged) - 1} more damaged run(s))" if len(damaged) > 1 else ""
    return DamagedRunError(f"damaged run {run}: {why}{more}; move it aside or rerun it with --force")


def check_runs(paths: Sequence[str | Path]) -> None:
    """Raise :func:`damage_error` if any finished run under ``paths`` is damaged (``--strict``)."""
    damaged = []
    for run_dir in find_run_dirs(paths):
        if (run_dir / DONE_FILE).is_file():
            try:
                read_finished_run(run_dir)
            except DamagedRunError as exc:
                damaged.append((run_dir, str(exc)))
    if damaged:
        raise damage_error(damaged)


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {dotted key: value}; lists become JSON strings (hashable for grouping)."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(d, list):
        out[prefix[:-1]] = json.dumps(d)
    else:
        out[prefix[:-1]] = d
    return out


def _last_evals(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    best: dict[tuple[str, str], tuple[float, int, dict[str, Any]]] = {}
    for i, r in enumerate(records):
        if r.get("event") != "eval":
            continue
        key = (str(r.get("method")), str(r.get("split")))
        step = r.get("step")
        order = (float(step) if isinstance(step, int | float) else -math.inf, i)
        if key not in best or order >= best[key][:2]:
            best[key] = (*order, r)
    return [v[2] for v in best.values()]


def collect(paths: Sequence[str | Path], *, strict: bool = False,
            warn: Callable[[Sequence[tuple[Path, str]]], None] | None = warn_damaged) -> Collected:
    """Read every completed run under ``paths`` into a tidy table.

    Damaged finished runs are left out, listed in ``Collected.damaged`` and passed to ``warn``
    (default: one stderr line each); ``strict``: any damage raises :class:`DamagedRunError`.
    """
    runs, failed, incomplete, damaged = [], [], [], []
    rows: list[dict[str, Any]] = []
    configs: dict[Path, dict[str, Any]] = {}
    records: dict[Path, list[dict[str, Any]]] = {}
    envs: dict[Path, dict[str, Any]] = {}
    for run_dir in find_run_dirs(paths):
        if not (run_dir / DONE_FILE).is_file():
            (failed if (run_dir / ERROR_FILE).is_file() else incomplete).append(run_dir)
            continue
        try:
            cfg, records[run_dir] = read_finished_run(run_dir)
        except DamagedRunError as exc:
            damaged.append((run_dir, str(exc)))
            continue
        env = json.loads((run_dir / ENV_FILE).read_text()) if (run_dir / ENV_FILE).is_file() else {}
        envs[run_dir] = env if isinstance(env, dict) else {}
        configs[run_dir] = flatten(cfg)
        runs.append(run_dir)
    if damaged and strict:
        raise damage_error(damaged)
    if damaged and warn is not None:
        warn(damaged)
    # config keys whose value differs between runs of the same kind
    all_keys = sorted({k for c in configs.values() for k in c})
    by_kind: dict[Any, list[dict[str, Any]]] = {}
    for c in configs.values():
        by_kind.setdefault(c.get("kind"), []).append(c)
    varying = [k for k in all_keys if k not in _IDENTITY_KEYS and k != "kind" and any(
        len({json.dumps(c.get(k), sort_keys=True, default=str) for c in group}) > 1
        for group in by_kind.values())]
    for run_dir in runs:
        cfg = configs[run_dir]
        env = envs[run_dir]
        for r in _last_evals(records[run_dir]):
            row = {
                "run": str(run_dir), "kind": cfg.get("kind"), "name": cfg.get("name"),
                "seed": cfg.get("seed"), "method": r.get("method"), "split": r.get("split"),
            }
            row.update({k: r.get(k) for k in RECORD_KEYS})
            row["ci_low"], row["ci_high"] = binomial_ci(r.get("correct"), r.get("n"))
            row.update({k: cfg.get(k) for k in varying})
            row["device"] = env.get("device")
            rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        table = pd.DataFrame(columns=["run", "kind", "name", "seed", "method", "split", *RECORD_KEYS,
                                      "ci_low", "ci_high"])
    return Collected(table, runs, failed, incomplete, varying, damaged)


def binomial_ci(correct: Any, n: Any) -> tuple[float | None, float | None]:
    """Clopper-Pearson interval of ``correct`` out of ``n``; ``None`` without usable counts."""
    if not (isinstance(correct, int | float) and isinstance(n, int | float)) or not 0 <= correct <= n or n <= 0:
        return None, None
    lo, hi = clopper_pearson(int(correct), int(n), confidence=CONFIDENCE)
    return float(lo), float(hi)


GROUP_COLUMNS = ("mean", "se", "ci_low", "ci_high", "n_seeds")


def group_over_seeds(table: pd.DataFrame, extra_keys: Sequence[str] = ()) -> pd.DataFrame:
    """Accuracy over seeds for each (kind, method, split, config): mean, standard error, the 95%
    t-interval over seeds (``ci_low``, ``ci_high``; empty for a single seed) and ``n_seeds``."""
    if table.empty:
        return pd.DataFrame(columns=["kind", "method", "split", *GROUP_COLUMNS])
    keys = list(dict.fromkeys(k for k in ["kind", "method", "split", *extra_keys] if k in table.columns))
    rows = []
    for key, g in table.groupby(keys, dropna=False, sort=True):
        iv = t_interval(g["accuracy"].astype(float).to_numpy())
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        row.update({"mean": iv.mean, "se": iv.se, "ci_low": iv.low, "ci_high": iv.high, "n_seeds": iv.n})
        if "theory" in g.columns and g["theory"].notna().any():
            row["theory"] = float(g["theory"].astype(float).mean())
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- writers


def _fmt(v: Any) -> str:
    return format_value(v)


def to_markdown(table: pd.DataFrame) -> str:
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(_fmt(row[c]).replace("|", "\\|") for c in cols) + " |")
    return "\n".join(lines) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#",
        "$": r"\$", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(s: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in s)


def to_latex(table: pd.DataFrame) -> str:
    cols = list(table.columns)
    lines = [r"\begin{tabular}{" + "l" * len(cols) + "}", r"\toprule",
             " & ".join(_tex(c) for c in cols) + r" \\", r"\midrule"]
    for _, row in table.iterrows():
        lines.append(" & ".join(_tex(_fmt(row[c])) for c in cols) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_tables(table: pd.DataFrame, prefix: str | Path) -> list[Path]:
    """Write ``prefix``.csv, .md and .tex; return the paths.

    The suffixes are appended to the whole prefix (``k9.3`` -> ``k9.3.csv``), never substituted
    for a dotted tail of it.
    """
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    paths = [prefix.parent / f"{prefix.name}{ext}" for ext in (".csv", ".md", ".tex")]
    with naming_path(paths[0]):
        table.to_csv(paths[0], index=False)
    for path, text in ((paths[1], to_markdown(table)), (paths[2], to_latex(table))):
        with naming_path(path):
            path.write_text(text)
    return paths


# --------------------------------------------------------------------------- the Figure 2 grid

GRID_KIND = "semisynthetic"  # the kind whose runs form the Figure 2 / 5 grid
GRID_AXES = ("data.pi_core", "data.pi_spu")
# config keys that differ between the runs of one grid by construction
_GRID_FREE = {*GRID_AXES, "methods", "seed", "data_seed", "init_seed"}
# columns of the collected table that are not config keys
ROW_KEYS = {"run", "kind", "name", "seed", "method", "split", *RECORD_KEYS, "ci_low", "ci_high", "device"}


def grid_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of the Figure 2 grid: semi-synthetic MMCL runs over ``pi_core`` x ``pi_spu`` and the
    SL runs trained like them.

    Other semi-synthetic runs collected alongside (for example SL baselines of other training
    lengths or data sizes, for the effective-robustness line) differ from the grid's MMCL runs in
    some config key besides the grid axes, method and seed; they are left out. When MMCL runs of
    several settings are present, the most common setting is the grid.
    """
    if table.empty or "kind" not in table.columns:
        return table.iloc[0:0]
    t = table[table["kind"] == GRID_KIND]
    if t.empty:
        return t
    t = t.copy()
    for axis in GRID_AXES:
        if axis not in t.columns:  # the axis did not vary: every run has the config default
            t[axis] = math.nan
    mm = t[t["method"] == "mmcl"]
    if mm.empty:
        return t.iloc[0:0]
    keys = [c for c in t.columns if c not in ROW_KEYS and c not in _GRID_FREE]
    if not keys:
        return t
    sig = pd.Series([json.dumps(list(r), default=str) for r in t[keys].itertuples(index=False)],
                    index=t.index)
    common = sig[mm.index].value_counts().index[0]
    return t[sig == common]
