"""Collect completed runs into one tidy table (one row per run x method x test set).

Only runs with a ``done`` marker are read; the others are counted as failed (``error.txt``) or
incomplete (still running, killed, or half-written) and reported, never read. For each
(method, split) of a run the eval record with the largest ``step`` is kept (the last one when
steps are absent).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from mmclshift.errors import UserError
from mmclshift.runs import CONFIG_FILE, DONE_FILE, ENV_FILE, ERROR_FILE, read_metrics

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

    def summary(self) -> str:
        skipped = len(self.failed) + len(self.incomplete)
        return (f"collected {len(self.runs)} completed run(s); skipped {skipped} "
                f"({len(self.failed)} failed, {len(self.incomplete)} incomplete)")


def find_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Every folder at or below ``paths`` holding a ``config.yaml`` (a run directory)."""
    found: set[Path] = set()
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise UserError(f"{p}: no such run directory")
        if (p / CONFIG_FILE).is_file():
            found.add(p)
        found.update(c.parent for c in p.rglob(CONFIG_FILE))
    return sorted(found)


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


def collect(paths: Sequence[str | Path]) -> Collected:
    """Read every completed run under ``paths`` into a tidy table."""
    runs, failed, incomplete = [], [], []
    rows: list[dict[str, Any]] = []
    configs: dict[Path, dict[str, Any]] = {}
    for run_dir in find_run_dirs(paths):
        if not (run_dir / DONE_FILE).is_file():
            (failed if (run_dir / ERROR_FILE).is_file() else incomplete).append(run_dir)
            continue
        try:
            cfg = yaml.safe_load((run_dir / CONFIG_FILE).read_text()) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"{run_dir / CONFIG_FILE}: unreadable config ({exc})") from None
        configs[run_dir] = flatten(cfg)
        runs.append(run_dir)
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
        env = {}
        if (run_dir / ENV_FILE).is_file():
            env = json.loads((run_dir / ENV_FILE).read_text())
        for r in _last_evals(read_metrics(run_dir)):
            row = {
                "run": str(run_dir), "kind": cfg.get("kind"), "name": cfg.get("name"),
                "seed": cfg.get("seed"), "method": r.get("method"), "split": r.get("split"),
            }
            row.update({k: r.get(k) for k in RECORD_KEYS})
            row.update({k: cfg.get(k) for k in varying})
            row["device"] = env.get("device")
            rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        table = pd.DataFrame(columns=["run", "kind", "name", "seed", "method", "split", *RECORD_KEYS])
    return Collected(table, runs, failed, incomplete, varying)


def group_over_seeds(table: pd.DataFrame, extra_keys: Sequence[str] = ()) -> pd.DataFrame:
    """Mean and standard error of accuracy over seeds for each (kind, method, split, config)."""
    if table.empty:
        return table
    keys = list(dict.fromkeys(k for k in ["kind", "method", "split", *extra_keys] if k in table.columns))
    g = table.groupby(keys, dropna=False)["accuracy"]
    out = g.agg(mean="mean", std="std", seeds="count").reset_index()
    out["se"] = out["std"] / out["seeds"].pow(0.5)
    if "theory" in table.columns:
        theory = table.groupby(keys, dropna=False)["theory"].mean().reset_index(drop=True)
        out["theory"] = theory.values
    return out.drop(columns=["std"])


# --------------------------------------------------------------------------- writers


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


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
    """Write ``prefix``.csv, .md and .tex; return the paths."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    paths = [prefix.with_suffix(".csv"), prefix.with_suffix(".md"), prefix.with_suffix(".tex")]
    table.to_csv(paths[0], index=False)
    paths[1].write_text(to_markdown(table))
    paths[2].write_text(to_latex(table))
    return paths
