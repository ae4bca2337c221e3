"""Have a grid's Figure 2 statistics stopped moving? Each claim's statistic against training steps.

Runs trained with ``train.eval_every`` log learning-curve points (``curve`` records: accuracy on
a fixed test subset after each N steps, see :func:`mmclshift.experiments.semisynthetic.log_curve`).
For every curve step this module rebuilds the collected table (:func:`mmclshift.analysis.collect.collect`)
with each grid run's accuracies at that step and computes the Figure 2 / 5 statistics from it
with the claims' own definitions (:data:`mmclshift.analysis.claims.CLAIMS`: mean over seeds and
95% Student-t interval), plus the range over pi_spu of MMCL's OOD accuracy at every pi_core.

**Settled.** A statistic has *settled at step s* when its mean at s and at every later curve step
lies inside its interval at the last step. It *has stopped moving* when it settled no later than
the start of the last ``tail`` fraction of training (default: the last quarter): over that stretch
it moved by less than its own uncertainty over seeds. ``drift`` is the last mean minus the mean
at the start of that stretch: how far the statistic travelled while the budget ran out.

The curve points use a test subset (``train.eval_subset``), so the last point can differ from the
claims computed from the final ``eval`` records on the whole test splits by the subset's sampling
noise.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, astuple, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmclshift.analysis.claims import CLAIMS, ClaimError, evaluate_claim
from mmclshift.analysis.collect import collect, flatten, grid_rows
from mmclshift.analysis.stats import t_interval
from mmclshift.errors import UserError
from mmclshift.report_text import format_table
from mmclshift.runs import atomic_write_text, read_metrics, read_run_config, run_identity

#: the claims about the Figure 2 / 5 grid whose statistics are followed over training
GRID_CLAIMS = ("mmcl_beats_sl_ood", "pi_core_dose_response", "pi_spu_minor", "pi_spu_minor_mid_core",
               "mmcl_id_equivalent")
DEFAULT_TAIL = 0.25


@dataclass
class Point:
    step: int
    mean: float
    ci_low: float
    ci_high: float
    n_seeds: int


@dataclass
class StatisticCurve:
    """One statistic over training: its points and whether (and since when) it has settled."""

    name: str
    description: str
    points: list[Point]
    settled_step: int | None = None  # earliest step from which every mean lies in the last interval
    stopped: bool = False  # settled no later than the start of the tail
    tail_start: int = 0  # the curve step where the tail begins
    drift: float = math.nan  # last mean minus the mean at tail_start
    threshold: float | None = None
    direction: str | None = None

    @property
    def last(self) -> Point:
        return self.points[-1]

    def to_json(self) -> dict[str, Any]:
        def num(v: Any) -> Any:
            return None if isinstance(v, float) and not math.isfinite(v) else v
        d = asdict(self)
        d["points"] = [{k: num(v) for k, v in p.items()} for p in d["points"]]
        return {k: num(v) for k, v in d.items()}


@dataclass
class Convergence:
    curves: list[StatisticCurve]
    steps: list[int]
    runs: int
    subset: list[int] = field(default_factory=list)  # test images per split behind the curve points
    errors: list[tuple[str, str]] = field(default_factory=list)
    pi_core: list[float] = field(default_factory=list)  # the grid's axes
    pi_spu: list[float] = field(default_factory=list)
    name: str = ""  # the runs' config name
    setting: dict[str, Any] = field(default_factory=dict)  # :func:`grid_setting` of the runs

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "setting": self.setting, "pi_core": self.pi_core, "pi_spu": self.pi_spu,
                "steps": self.steps, "runs": self.runs, "subset": self.subset,
                "statistics": [c.to_json() for c in self.curves],
                "errors": [{"statistic": n, "reason": r} for n, r in self.errors]}


def _curves(run: str | Path) -> dict[tuple[str, str], dict[int, float]]:
    """{(method, split): {step: accuracy}} of a run, the last record per point (a resumed run logs
    the points after its checkpoint again)."""
    out: dict[tuple[str, str], dict[int, float]] = {}
    for r in read_metrics(run):
        if r.get("event") == "curve":
            out.setdefault((r["method"], r["split"]), {})[int(r["step"])] = float(r["accuracy"])
    return out


def step_tables(paths: Sequence[str | Path]) -> tuple[list[int], dict[int, pd.DataFrame], list[int]]:
    """The collected Figure 2 grid table at every curve step its runs share.

    Returns (steps, {step: table with the runs' curve accuracies at that step}, subset sizes).
    """
    table = grid_rows(collect(paths).table)
    if table.empty:
        raise UserError(f"{', '.join(map(str, paths))}: no finished semi-synthetic grid runs")
    curves = {run: _curves(run) for run in table["run"].unique()}
    keys = list(zip(table["run"], table["method"], table["split"], strict=True))
    have = [curves[r].get((m, s), {}) for r, m, s in keys]
    if not any(have):
        raise UserError(f"{', '.join(map(str, paths))}: the grid's runs hold no learning curves "
                        "(train them with train.eval_every > 0)")
    common = set.intersection(*(set(h) for h in have if h))
    if not common:
        raise UserError("the grid's runs share no learning-curve step (trained with different "
                        "train.eval_every or train.steps)")
    steps = sorted(common)
    tables = {}
    for step in steps:
        t = table.copy()
        t["accuracy"] = [h.get(step, math.nan) for h in have]
        tables[step] = t[t["accuracy"].notna()]
    subset = sorted({int(r["n"]) for run in curves for r in read_metrics(run) if r.get("event") == "curve"})
    return steps, tables, subset


def _range_by_core(table: pd.DataFrame, pc: float) -> list[float]:
    """Per seed: max minus min over pi_spu of MMCL OOD accuracy at ``pi_core = pc``."""
    t = table[(table["method"] == "mmcl") & (table["split"] == "ood") & (table["data.pi_core"] == pc)]
    n_spu = t["data.pi_spu"].nunique()
    out = []
    for _, g in t.groupby("seed"):
        acc = g.groupby("data.pi_spu")["accuracy"].mean()
        if len(acc) == n_spu and n_spu >= 2:
            out.append(float(acc.max() - acc.min()))
    return out


def _settle(curve: StatisticCurve, tail: float) -> StatisticCurve:
    pts = curve.points
    last = pts[-1]
    total = pts[-1].step
    curve.tail_start = min((p.step for p in pts if p.step >= (1 - tail) * total), default=total)
    if math.isfinite(last.ci_low):
        settled = None
        for p in reversed(pts):
            if last.ci_low <= p.mean <= last.ci_high:
                settled = p.step
            else:
                break
        curve.settled_step = settled
        curve.stopped = settled is not None and settled <= curve.tail_start and len(pts) > 1
    start = next(p for p in pts if p.step == curve.tail_start)
    curve.drift = last.mean - start.mean
    return curve


def statistics(table: pd.DataFrame, claims: Sequence[str] = GRID_CLAIMS
               ) -> tuple[dict[str, tuple[Point, str, float | None, str | None]], list[tuple[str, str]]]:
    """The Figure 2 / 5 statistics of one grid table (``accuracy`` at one step):
    ``{name: (point, description, threshold, direction)}`` and ``(name, reason)`` for those the
    table cannot support. Points carry step 0 (the caller knows the step)."""
    out: dict[str, tuple[Point, str, float | None, str | None]] = {}
    errors: list[tuple[str, str]] = []
    for name in claims:
        claim = CLAIMS[name]
        try:
            r = evaluate_claim(claim, table)
        except ClaimError as exc:
            errors.append((name, str(exc)))
            continue
        out[name] = (Point(0, r.statistic, r.ci_low, r.ci_high, r.n_seeds), claim.statistic,
                     claim.threshold, claim.direction)
    g = table[table["method"] == "mmcl"]
    for pc in sorted(g["data.pi_core"].dropna().unique()):
        values = _range_by_core(table, pc)
        if values:
            iv = t_interval(values)
            out[f"pi_spu_range@core{pc:g}"] = (
                Point(0, iv.mean, iv.low, iv.high, iv.n),
                f"max minus min over pi_spu of MMCL OOD accuracy at pi_core = {pc:g}", None, None)
    return out, errors


def convergence(paths: Sequence[str | Path], *, tail: float = DEFAULT_TAIL,
                claims: Sequence[str] = GRID_CLAIMS) -> Convergence:
    """Each Figure 2 / 5 statistic of the grid under ``paths`` at every learning-curve step."""
    if not 0 < tail < 1:
        raise UserError(f"tail must be a fraction in (0, 1); got {tail}")
    steps, tables, subset = step_tables(paths)
    per_step = [statistics(tables[step], claims) for step in steps]
    last, errors = per_step[-1]
    curves = []
    for name, (_, description, threshold, direction) in last.items():
        if all(name in stats for stats, _ in per_step):
            points = [Point(step, *astuple(stats[name][0])[1:]) for step, (stats, _) in zip(steps, per_step, strict=True)]
            curves.append(_settle(StatisticCurve(name, description, points, threshold=threshold,
                                                 direction=direction), tail))
    final = tables[steps[-1]]
    return Convergence(curves, steps, int(final["run"].nunique()), subset, errors,
                       pi_core=sorted(float(v) for v in final["data.pi_core"].dropna().unique()),
                       pi_spu=sorted(float(v) for v in final["data.pi_spu"].dropna().unique()),
                       name=str(final["name"].iloc[0]),
                       setting=grid_setting(final.loc[final["method"] == "mmcl", "run"].iloc[0]))


def _iv(p: Point) -> str:
    if not math.isfinite(p.ci_low):
        return f"{p.mean:+.3f}"
    return f"{p.mean:+.3f} [{p.ci_low:+.3f}, {p.ci_high:+.3f}]"


def summary_rows(conv: Convergence) -> list[dict[str, Any]]:
    rows = []
    for c in conv.curves:
        rows.append({"statistic": c.name, f"at step {c.last.step}": _iv(c.last),
                     "settled since": "-" if c.settled_step is None else str(c.settled_step),
                     "stopped moving": "yes" if c.stopped else "no",
                     f"drift since {c.tail_start}": f"{c.drift:+.3f}"})
    return rows


def format_convergence(conv: Convergence, *, curves: bool = True) -> str:
    """The statistics' means per step (``curves``) and the summary: settled since, stopped, drift."""
    parts = []
    if curves:
        rows = [{"step": s, **{c.name: f"{c.points[i].mean:+.3f}" for c in conv.curves}}
                for i, s in enumerate(conv.steps)]
        parts.append(format_table(rows, ["step", *(c.name for c in conv.curves)],
                                  title=f"Figure 2 statistics over training (mean over seeds; {conv.runs} "
                                        f"runs; curve points on {', '.join(map(str, conv.subset))} test "
                                        "images per split)"))
    rows = summary_rows(conv)
    if rows:
        parts.append(format_table(rows, list(rows[0]), title=(
            "Convergence: settled = every later mean inside the last 95% interval; stopped moving = "
            "settled by the start of the tail")))
    for name, reason in conv.errors:
        parts.append(f"{name}: not computed ({reason})")
    return "\n\n".join(parts)


def distance_lines(conv: Convergence) -> list[str]:
    """One line per statistic that has not stopped moving: how far it moved in the tail."""
    out = []
    for c in conv.curves:
        if not c.stopped:
            out.append(f"{c.name}: {_iv(c.last)} at step {c.last.step} has not stopped moving "
                       f"(moved {c.drift:+.3f} since step {c.tail_start})")
    return out


#: config keys that may differ between a grid and its reference (the budget, the curves, the grid's
#: cell, seed and method, and which test splits are evaluated)
_BUDGET_FREE = ("seed", "name", "methods", "splits", "grid", "data.pi_core", "data.pi_spu", "train.steps",
                "train.eval_every", "train.eval_subset", "train.checkpoint_every", "train.log_every")


def grid_setting(run: str | Path) -> dict[str, Any]:
    """What a grid run's config fixes besides its budget, cell and seed (flattened identity)."""
    flat = flatten(run_identity(read_run_config(run)))
    return {k: v for k, v in flat.items()
            if not any(k == f or k.startswith(f + ".") for f in _BUDGET_FREE)}


#: the measured reference of the demo's grid: its statistics after a longer training (see
#: docs/semisynthetic.md, "How many steps the statistics need")
REFERENCE = Path(__file__).resolve().parents[3] / "results" / "fig2-smoke-budget" / "convergence.json"


def budget_report(table: pd.DataFrame, reference: str | Path = REFERENCE) -> str:
    """How far a grid's final Figure 2 statistics are from those of a longer training.

    ``table``: collected runs (their final ``eval`` records); ``reference``: the JSON
    ``mmclshift convergence --out`` wrote for a longer-trained grid of the same config name. The
    grid's statistics are computed on the reference's pi_core x pi_spu values (its runs on other
    values are left out, so both sides measure the same thing) and each is set beside the
    reference's last value and interval. Returns "" when there is no reference for these runs
    (none, another config name, or another setting: :func:`grid_setting` must match, so only the
    budget, the curves, the cells, seeds and evaluated splits may differ).
    """
    path = Path(reference)
    if not path.is_file():
        return ""
    ref = json.loads(path.read_text(encoding="utf-8"))
    g = grid_rows(table)
    if g.empty or "name" not in g.columns or ref.get("name") not in set(g["name"]):
        return ""
    g = g[g["name"] == ref["name"]]
    mm = g["method"] == "mmcl"
    if ref.get("setting") != grid_setting(g.loc[mm, "run"].iloc[0]):
        return ""  # another data construction, model or optimisation: not this grid's reference
    keep = ~mm | (g["data.pi_core"].isin(ref["pi_core"]) & g["data.pi_spu"].isin(ref["pi_spu"]))
    g = g[keep]
    steps = sorted({int(v) for v in g.loc[g["method"] == "mmcl", "step"].dropna()})
    stats, _ = statistics(g)
    last = ref["steps"][-1]
    lines = [f"Budget: these runs' Figure 2 statistics (train.steps {', '.join(map(str, steps))}; pi_core "
             f"{ref['pi_core']} x pi_spu {ref['pi_spu']}) against a {last}-step training of the same "
             f"grid ({path.name}, {ref['runs']} runs):"]
    for entry in ref["statistics"]:
        name = entry["name"]
        if name not in stats:
            continue
        here = stats[name][0]
        p = entry["points"][-1]
        inside = p["ci_low"] is not None and p["ci_low"] <= here.mean <= p["ci_high"]
        ref_iv = (f"{p['mean']:+.3f}" if p["ci_low"] is None
                  else f"{p['mean']:+.3f} [{p['ci_low']:+.3f}, {p['ci_high']:+.3f}]")
        lines.append(f"  {name}: {here.mean:+.3f} here, {ref_iv} at step {last} "
                     f"({here.mean - p['mean']:+.3f}; {'inside' if inside else 'outside'} its interval"
                     f"{'' if entry.get('stopped') else '; the reference itself was still moving'})")
    return "\n".join(lines) if len(lines) > 1 else ""


def write_convergence(conv: Convergence, path: str | Path) -> Path:
    path = Path(path)
    atomic_write_text(path, json.dumps(conv.to_json(), indent=1, default=_num) + "\n")
    return path


def _num(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(type(v).__name__)


__all__ = ["GRID_CLAIMS", "REFERENCE", "budget_report", "Convergence", "Point", "StatisticCurve", "convergence", "distance_lines",
           "format_convergence", "step_tables", "summary_rows", "write_convergence"]
