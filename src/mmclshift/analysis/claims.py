"""The paper's claims as data: each claim is a statistic computed from the runs, with a threshold
and a verdict.

Every claim in :data:`CLAIMS` computes one value per seed from the collected table (for example
MMCL's OOD accuracy minus SL's at ``pi_core = 1``, seed by seed), then the mean over seeds and
its 95% Student-t interval (:func:`mmclshift.analysis.stats.t_interval`). The verdict compares
the interval with the claim's threshold (:func:`mmclshift.analysis.stats.verdict`): ``holds``
when the whole interval is on the claimed side, ``fails`` when the whole interval is on the other
side, ``inconclusive`` when it straddles the threshold or when fewer than two seeds leave no
interval. An equivalence claim (``within``) holds when the whole interval lies inside
``[-threshold, +threshold]``.

**Groups.** A claim reads only runs that agree on every config key except the seed and the axes
it varies by design (:mod:`mmclshift.analysis.groups`); a folder holding several configs gives one
result per group, each named by the keys that distinguish it (``group``). Runs moved aside by
``--force`` are never read.

**Multiplicity.** The claims of one table (one group) are a family: Holm's correction
(:func:`mmclshift.analysis.stats.holm_verdicts`) turns a verdict whose adjusted p-value is not
below 5% into ``inconclusive``. ``verdict`` is the corrected verdict, ``verdict_unadjusted`` the
interval's own.

**Effective robustness** claims read a line fitted to the SL runs; a baseline that cannot carry
a line (:func:`mmclshift.analysis.er_baseline.baseline_support`) leaves them ``inconclusive``
with the reason, and the line's bootstrap standard deviation widens their interval.

A claim whose runs are missing (no runs at all, or no runs of a method it compares) raises
:class:`ClaimError` with the reason; :func:`evaluate_claims` collects those as one line each and
still computes the others.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmclshift.analysis.collect import GRID_KIND, grid_rows
from mmclshift.analysis.er_baseline import BaselineSupport, line_sd, table_support
from mmclshift.analysis.groups import (
    SEED_KEYS,
    Group,
    claim_groups,
    drop_moved_aside,
    format_label,
    matches,
)
from mmclshift.analysis.robustness import LinearFit
from mmclshift.analysis.stats import (
    CONFIDENCE,
    Direction,
    decision_p_values,
    holm_verdicts,
    t_interval,
    verdict,
    widen,
)
from mmclshift.errors import UserError
from mmclshift.report_text import format_table
from mmclshift.runs import atomic_write_text, read_run_config

CLAIMS_FILE = "claims.json"
CORRECTION = "holm"
#: the documentation section that explains each verdict (linked from the report)
DOC = "docs/analysis.md"


class ClaimError(UserError):
    """A claim that cannot be computed from the given runs (the message says why)."""


@dataclass
class PerSeed:
    """A claim's statistic measured once per seed, and the run directories it read.

    ``line_sd``: the standard deviation a fitted line adds to the statistic (added to the
    seed-to-seed standard error in quadrature); ``inconclusive``: a reason that makes the verdict
    inconclusive whatever the interval (e.g. a baseline that cannot carry a line);
    ``details``: further numbers written to claims.json.
    """

    values: dict[int, float]
    runs: list[str]
    note: str = ""
    line_sd: float = 0.0
    inconclusive: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    caveat: str = ""  # stated with any verdict (e.g. points read off an extrapolated line)


#: the Figure 2 grid's axes: a grid claim reads runs over these
GRID_AXES_ALL = (*SEED_KEYS, "methods", "data.pi_core", "data.pi_spu")
#: config keys of a semi-synthetic SL-only run that are the baseline's strengths (training
#: length, data size): such runs join every group they agree with otherwise
BASELINE_STRENGTHS = ("train.steps", "data.n_train")


def _sl_baseline(row: pd.Series) -> Sequence[str]:
    return BASELINE_STRENGTHS if str(row.get("methods")) == json.dumps(["sl"]) else ()


@dataclass(frozen=True)
class Claim:
    name: str
    paper: str  # the sentence or figure of the paper it tests
    statistic: str  # what is computed, in words
    threshold: float
    direction: Direction  # holds when the statistic is above / below the threshold, or within +-it
    figure: str  # key of the report figure that shows it
    compute: Callable[[pd.DataFrame], PerSeed]
    kinds: tuple[str, ...] = (GRID_KIND,)
    axes: tuple[str, ...] = GRID_AXES_ALL  # config keys the claim varies by design
    wildcard: Callable[[pd.Series], Sequence[str]] | None = _sl_baseline


@dataclass
class ClaimResult:
    claim: str
    paper: str
    statistic: float
    ci_low: float
    ci_high: float
    n_seeds: int
    threshold: float
    verdict: str
    runs: list[str]
    direction: str = "above"
    description: str = ""
    figure: str = ""
    per_seed: dict[int, float] = field(default_factory=dict)
    note: str = ""
    verdict_unadjusted: str = ""
    correction: str = CORRECTION
    p_value: float = math.nan  # the p-value of the verdict's decision (holds or fails)
    p_adjusted: float = math.nan
    group: dict[str, Any] = field(default_factory=dict)
    reason: str = ""  # one sentence: why fails / inconclusive
    se: float = math.nan
    line_sd: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def group_label(self) -> str:
        return format_label(self.group)

    def to_json(self) -> dict[str, Any]:
        def num(v: float) -> float | None:
            return None if v is None or not math.isfinite(v) else float(v)

        return {"claim": self.claim, "paper": self.paper, "statistic": num(self.statistic),
                "ci_low": num(self.ci_low), "ci_high": num(self.ci_high), "n_seeds": self.n_seeds,
                "threshold": self.threshold, "verdict": self.verdict,
                "verdict_unadjusted": self.verdict_unadjusted, "correction": self.correction,
                "p_value": num(self.p_value), "p_adjusted": num(self.p_adjusted),
                "group": {k: _plain(v) for k, v in self.group.items()}, "reason": self.reason,
                "runs": self.runs, "direction": self.direction, "description": self.description,
                "figure": self.figure, "se": num(self.se), "line_sd": num(self.line_sd),
                "per_seed": {str(k): num(v) for k, v in sorted(self.per_seed.items())},
                "note": self.note, "details": self.details}


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    return None if isinstance(v, float) and not math.isfinite(v) else v


# --------------------------------------------------------------------------- table helpers


def _need(table: pd.DataFrame, what: str, **eq: Any) -> pd.DataFrame:
    t = table
    for k, v in eq.items():
        if k not in t.columns:
            raise ClaimError(f"no {what} (the runs record no {k!r})")
        t = t[t[k] == v]
    if t.empty:
        raise ClaimError(f"no {what}")
    return t


def _seed_map(t: pd.DataFrame, value: str = "accuracy") -> dict[int, tuple[float, str]]:
    """{seed: (value, run)}, averaging repeated runs of one seed."""
    out: dict[int, tuple[float, str]] = {}
    for seed, g in t.groupby("seed"):
        out[int(seed)] = (float(g[value].astype(float).mean()), str(g["run"].iloc[0]))
    return out


@dataclass
class _Grid:
    """The Figure 2 grid of one test split: MMCL per (seed, pi_core, pi_spu) and SL per seed."""

    mmcl: dict[tuple[int, float, float], tuple[float, str]]
    sl: dict[int, tuple[float, str]]
    pi_core: list[float]
    pi_spu: list[float]

    def seeds(self, with_sl: bool = True) -> list[int]:
        s = {k[0] for k in self.mmcl}
        return sorted(s & set(self.sl) if with_sl else s)

    def row(self, seed: int, pc: float) -> list[tuple[float, str]]:
        return [self.mmcl[(seed, pc, ps)] for ps in self.pi_spu if (seed, pc, ps) in self.mmcl]


def _grid(table: pd.DataFrame, split: str, need_sl: bool = True) -> _Grid:
    g = grid_rows(table)
    what = f"{GRID_KIND} grid runs"
    mm = _need(g, f"{what} of MMCL on split {split!r}", method="mmcl", split=split)
    if mm["data.pi_core"].isna().all():
        raise ClaimError(f"no {what}: the MMCL runs do not vary pi_core")
    mmcl = {}
    for (seed, pc, ps), r in mm.groupby(["seed", "data.pi_core", "data.pi_spu"], dropna=False):
        mmcl[(int(seed), float(pc), float(ps))] = (float(r["accuracy"].mean()), str(r["run"].iloc[0]))
    sl = _seed_map(_need(g, f"{what} of SL on split {split!r}", method="sl", split=split)) if need_sl else {}
    return _Grid(mmcl, sl, sorted({k[1] for k in mmcl}), sorted({k[2] for k in mmcl}))


def _mid(values: list[float]) -> float:
    inner = [v for v in values if v not in (min(values), max(values))]
    if not inner:
        raise ClaimError(f"needs an intermediate pi_core between {min(values):g} and {max(values):g}; "
                         f"the grid has {', '.join(f'{v:g}' for v in values)}")
    return min(inner, key=lambda v: abs(v - 0.5))


def _mean(pairs: list[tuple[float, str]]) -> float:
    return float(np.mean([p[0] for p in pairs]))


def _runs(*groups: Sequence[tuple[float, str]]) -> list[str]:
    return sorted({r for g in groups for _, r in g})


# --------------------------------------------------------------------------- semi-synthetic claims


def _mmcl_minus_sl(split: str) -> Callable[[pd.DataFrame], PerSeed]:
    def compute(table: pd.DataFrame) -> PerSeed:
        g = _grid(table, split)
        top = max(g.pi_core)
        values, used = {}, []
        for s in g.seeds():
            row = g.row(s, top)
            if row:
                values[s] = _mean(row) - g.sl[s][0]
                used += [*row, g.sl[s]]
        if not values:
            raise ClaimError(f"no seed has both MMCL at pi_core = {top:g} and SL on split {split!r}")
        return PerSeed(values, _runs(used), f"pi_core = {top:g}, mean over pi_spu")
    return compute


def _pi_core_dose_response(table: pd.DataFrame) -> PerSeed:
    """OOD at the largest pi_core minus at the smallest pi_core above 0 (MMCL is at chance at 0
    by construction: comparing with it would be true by construction)."""
    g = _grid(table, "ood", need_sl=False)
    positive = [v for v in g.pi_core if v > 0]
    if len(positive) < 2:
        raise ClaimError("needs at least 2 pi_core values above 0 in the grid "
                         f"(has {', '.join(f'{v:g}' for v in g.pi_core)})")
    lo, hi = min(positive), max(positive)
    values, used = {}, []
    for s in g.seeds(with_sl=False):
        a, b = g.row(s, hi), g.row(s, lo)
        if a and b:
            values[s] = _mean(a) - _mean(b)
            used += [*a, *b]
    return PerSeed(values, _runs(used), f"pi_core {hi:g} vs {lo:g}, mean over pi_spu")


def _pi_core_needed(table: pd.DataFrame) -> PerSeed:
    """Per seed, the smallest pi_core at which MMCL's OOD accuracy (mean over pi_spu) exceeds
    SL's; a seed where MMCL never does counts one grid step beyond the largest pi_core."""
    g = _grid(table, "ood")
    step = (max(g.pi_core) - min(g.pi_core)) / max(len(g.pi_core) - 1, 1)
    beyond = max(g.pi_core) + step
    values, used, never = {}, [], []
    for s in g.seeds():
        rows = {pc: g.row(s, pc) for pc in g.pi_core if g.row(s, pc)}
        if not rows:
            continue
        wins = [pc for pc, row in sorted(rows.items()) if _mean(row) > g.sl[s][0]]
        values[s] = wins[0] if wins else beyond
        if not wins:
            never.append(s)
        used += [*(p for row in rows.values() for p in row), g.sl[s]]
    note = f"grid pi_core {', '.join(f'{v:g}' for v in g.pi_core)}, mean over pi_spu"
    if never:
        note += f"; MMCL never beat SL in seed(s) {', '.join(map(str, never))} (counted as {beyond:g})"
    return PerSeed(values, _runs(used), note)


def _pi_spu_range(which: str) -> Callable[[pd.DataFrame], PerSeed]:
    def compute(table: pd.DataFrame) -> PerSeed:
        g = _grid(table, "ood", need_sl=False)
        if len(g.pi_spu) < 2:
            raise ClaimError("needs at least 2 pi_spu values in the grid")
        pc = max(g.pi_core) if which == "top" else _mid(g.pi_core)
        values, used = {}, []
        for s in g.seeds(with_sl=False):
            row = g.row(s, pc)
            if len(row) == len(g.pi_spu):
                accs = [a for a, _ in row]
                values[s] = max(accs) - min(accs)
                used += row
        return PerSeed(values, _runs(used), f"pi_core = {pc:g}, pi_spu in {{{', '.join(f'{v:g}' for v in g.pi_spu)}}}")
    return compute


def _intra_class_ablation_semi(table: pd.DataFrame) -> PerSeed:
    """Per seed, MMCL's OOD accuracy minus the intra-class ablation's (same data, same seed, same
    pi_core and pi_spu), at the largest pi_core, mean over the pi_spu values both have."""
    g = _grid(table, "ood", need_sl=False)
    top = max(g.pi_core)
    ab = _need(grid_rows(table), f"{GRID_KIND} runs of mmcl_no_intra on split 'ood'",
               method="mmcl_no_intra", split="ood")
    abl = {(int(s), float(pc), float(ps)): (float(r["accuracy"].mean()), str(r["run"].iloc[0]))
           for (s, pc, ps), r in ab.groupby(["seed", "data.pi_core", "data.pi_spu"], dropna=False)}
    values, used, spus = {}, [], set()
    for s in g.seeds(with_sl=False):
        keys = [(s, top, ps) for ps in g.pi_spu if (s, top, ps) in abl and (s, top, ps) in g.mmcl]
        if keys:
            values[s] = float(np.mean([g.mmcl[k][0] - abl[k][0] for k in keys]))
            used += [g.mmcl[k] for k in keys] + [abl[k] for k in keys]
            spus |= {k[2] for k in keys}
    if not values:
        raise ClaimError(f"no seed has both MMCL and mmcl_no_intra at pi_core = {top:g} and one pi_spu")
    return PerSeed(values, _runs(used), f"pi_core = {top:g}, pi_spu in {{{', '.join(f'{v:g}' for v in sorted(spus))}}}")


# --------------------------------------------------------------------------- effective robustness


@dataclass
class _ERData:
    grid: _Grid  # OOD accuracies of the MMCL cells
    id_acc: dict[tuple[int, float, float], float]  # ID accuracy of each MMCL cell
    base_id: np.ndarray
    base_ood: np.ndarray
    base_runs: list[str]
    support: BaselineSupport


def _er_data(table: pd.DataFrame) -> _ERData:
    """The MMCL grid and the SL baseline: every SL run of the group with ID and OOD accuracy
    (the grid's SL runs and the SL baselines of other strengths, every seed)."""
    t = table[table["kind"] == GRID_KIND] if "kind" in table.columns else table.iloc[0:0]
    support, pts = table_support(t)
    if len(pts) < 2:
        raise ClaimError(f"the effective-robustness line needs SL runs with id and ood accuracy; "
                         f"found {len(pts)}")
    if support.fit is None:
        raise ClaimError(f"the SL baseline cannot be fitted ({support.reason})")
    g = _grid(table, "ood", need_sl=False)
    gi = _grid(table, "id", need_sl=False)
    id_acc = {k: v[0] for k, v in gi.mmcl.items()}
    return _ERData(g, id_acc, pts["accuracy_id"].to_numpy(float), pts["accuracy_ood"].to_numpy(float),
                   sorted(pts["run"].astype(str)), support)


def _er_claim(contrast: Callable[[_Grid], list[tuple[float, float]]], what: str) -> Callable[[pd.DataFrame], PerSeed]:
    """An effective-robustness claim: per seed, the mean ER over the cells of ``contrast``'s
    pi_core values (weights +1 / -1), the line's bootstrap SD, the baseline's support."""

    def compute(table: pd.DataFrame) -> PerSeed:
        d = _er_data(table)
        weights = contrast(d.grid)

        def per_seed(fit: LinearFit) -> dict[int, float]:
            out = {}
            for s in d.grid.seeds(with_sl=False):
                total, ok = 0.0, True
                for pc, w in weights:
                    keys = [(s, pc, ps) for ps in d.grid.pi_spu if (s, pc, ps) in d.id_acc and (s, pc, ps) in d.grid.mmcl]
                    if not keys:
                        ok = False
                        break
                    total += w * float(np.mean([d.grid.mmcl[k][0] - float(fit.predict(d.id_acc[k])) for k in keys]))
                if ok:
                    out[s] = total
            return out

        assert d.support.fit is not None
        values = per_seed(d.support.fit)
        if not values:
            raise ClaimError("no seed has the MMCL cells the statistic needs")
        sd = line_sd(d.base_id, d.base_ood, lambda f: float(np.mean(list(per_seed(f).values()))))
        cells = [k for k in d.id_acc if k[1] in {pc for pc, _ in weights} and k[0] in values]
        outside = [k for k in cells if not d.support.id_low <= d.id_acc[k] <= d.support.id_high]
        used = sorted({d.grid.mmcl[k][1] for k in cells} | set(d.base_runs))
        note = f"{what}; {d.support.describe()}; line's bootstrap SD {sd:.3f}"
        if outside:
            note += (f"; {len(outside)} of {len(cells)} MMCL points lie outside the baseline's ID "
                     "range (extrapolated)")
        details = {"baseline_runs": len(d.base_runs), "baseline_id_range": [d.support.id_low, d.support.id_high],
                   "baseline_r": d.support.r, "baseline_p": d.support.p, "baseline_valid": d.support.ok,
                   "extrapolated_points": len(outside), "points": len(cells)}
        why = "" if d.support.ok else f"the SL baseline cannot carry a line: {d.support.reason}"
        caveat = (f"{len(outside)} of {len(cells)} MMCL points lie beyond the SL baseline's ID range "
                  f"({d.support.id_low:.3f}-{d.support.id_high:.3f}): the line is extrapolated there"
                  if outside else "")
        return PerSeed(values, used, note, line_sd=sd, inconclusive=why, details=details, caveat=caveat)

    return compute


def _top(g: _Grid) -> list[tuple[float, float]]:
    return [(max(g.pi_core), 1.0)]


def _top_minus_mid(g: _Grid) -> list[tuple[float, float]]:
    return [(max(g.pi_core), 1.0), (_mid(g.pi_core), -1.0)]


# --------------------------------------------------------------------------- theory-tier claims

THEORY_KINDS = ("data_model_1", "data_model_2")
THEORY_AXES = (*SEED_KEYS, "methods")


def _synthetic_gap(kind: str) -> Callable[[pd.DataFrame], PerSeed]:
    def compute(table: pd.DataFrame) -> PerSeed:
        mm = _seed_map(_need(table, f"{kind} runs of MMCL on split 'ood'", kind=kind, method="mmcl", split="ood"))
        sl = _seed_map(_need(table, f"{kind} runs of SL on split 'ood'", kind=kind, method="sl", split="ood"))
        seeds = sorted(set(mm) & set(sl))
        if not seeds:
            raise ClaimError(f"no seed of {kind} has both an MMCL and an SL run")
        return PerSeed({s: mm[s][0] - sl[s][0] for s in seeds},
                       _runs([mm[s] for s in seeds], [sl[s] for s in seeds]))
    return compute


def _theory_worst_row(table: pd.DataFrame) -> PerSeed:
    """Per seed, the largest |trained - theory| over the (data model, method, split) rows, in
    units of the row's standard error: the test set's binomial error at the predicted accuracy
    plus the estimation error (the seed-to-seed SD of the trained rule's exact population
    accuracy). The finite-n bias (population accuracy minus theory) is measured and stated."""
    if "theory" not in table.columns:
        raise ClaimError("no runs with a closed-form prediction (theory)")
    t = table[table["theory"].notna() & table["n"].notna()].copy()
    if t.empty:
        raise ClaimError("no runs with a closed-form prediction (theory)")
    t["theory"] = t["theory"].astype(float)
    t["accuracy"] = t["accuracy"].astype(float)
    pop = t["population"].astype(float) if "population" in t.columns else pd.Series(np.nan, index=t.index)
    t["population"] = pop
    keys = ["kind", "method", "split"]
    est = t.groupby(keys)["population"].transform(lambda x: x.std(ddof=1) if x.notna().sum() > 1 else 0.0).fillna(0.0)
    mc = (t["theory"] * (1 - t["theory"])).clip(lower=1e-12) / t["n"].astype(float)
    t["z"] = (t["accuracy"] - t["theory"]).abs() / np.sqrt(mc + est**2)
    values = {int(s): float(g["z"].max()) for s, g in t.groupby("seed")}
    worst = t.loc[t["z"].idxmax()]
    bias = []
    for (kind, method, split), g in t[t["population"].notna()].groupby(keys):
        iv = t_interval((g["population"] - g["theory"]).to_numpy())
        bias.append({"kind": kind, "method": method, "split": split, "bias": iv.mean,
                     "ci_low": _plain(iv.low), "ci_high": _plain(iv.high), "n_seeds": iv.n})
    note = (f"{t['kind'].nunique()} data model(s), {len(t)} (run, method, split) rows; worst: "
            f"{worst['kind']} {worst['method']} {worst['split']} seed {int(worst['seed'])}, "
            f"{float(worst['z']):.1f} SE")
    sl_bias = [b for b in bias if b["method"] == "sl"]
    if sl_bias:
        b = max(sl_bias, key=lambda b: abs(b["bias"]))
        ci = (f" [{b['ci_low']:+.3f}, {b['ci_high']:+.3f}]" if b["ci_low"] is not None else "")
        note += (f"; finite-n SL bias (trained rule's population accuracy minus theory), largest: "
                 f"{b['kind']} {b['split']} {b['bias']:+.3f}{ci} over {b['n_seeds']} seed(s)")
    return PerSeed(values, sorted(set(t["run"].astype(str))), note, details={"population_minus_theory": bias})


def _per_run_ablation(kind: str, compute: Callable[[Any], dict[str, Any]],
                      table: pd.DataFrame) -> tuple[dict[int, float], list[str], dict[str, Any]]:
    """Per seed, ``with - without`` of ``compute(run config)`` over the ``kind`` runs (each run's
    config rebuilt from its config.yaml), and the last run's other numbers."""

    from mmclshift.config import build_config
    from mmclshift.experiments.synthetic import CONFIG_KINDS

    t = _need(table, f"{kind} runs", kind=kind)
    values: dict[int, list[float]] = {}
    extra: dict[str, Any] = {}
    runs = sorted(set(t["run"].astype(str)))
    for run in runs:
        path = Path(run) / "config.yaml"
        cfg = build_config(read_run_config(run), CONFIG_KINDS, source=str(path))
        try:
            acc = compute(cfg)
        except UserError as exc:
            raise ClaimError(f"{run}: {exc}") from None
        values.setdefault(int(cfg.seed), []).append(acc["with"] - acc["without"])
        extra = {k: v for k, v in acc.items() if k not in ("with", "without")}
    return {s: float(np.mean(v)) for s, v in values.items()}, runs, extra


def _intra_class_ablation_theory(table: pd.DataFrame) -> PerSeed:
    """Per Data Model 1 run: OOD population accuracy of the linear loss fitted in closed form on the
    run's training draw, minus the same fit without same-class negative pairs
    (:func:`mmclshift.experiments.ablations.intra_class_accuracies`)."""
    from mmclshift.experiments.ablations import intra_class_accuracies

    values, runs, th = _per_run_ablation("data_model_1", intra_class_accuracies, table)
    note = (f"closed-form fits on each run's training draw, exact population OOD accuracy; the "
            f"population minimisers: {th['theory_with']:.4f} with vs {th['theory_without']:.4f} without "
            f"same-class negatives ({th['theory_with'] - th['theory_without']:+.4f})")
    return PerSeed(values, runs, note, details=th)


def _sharing_annotation_ablation(table: pd.DataFrame) -> PerSeed:
    """Per Data Model 2 run: OOD population accuracy of the linear loss fitted in closed form on the
    run's draw with the shared details annotated minus not annotated (same images, classes and
    prompts; :func:`mmclshift.experiments.ablations.sharing_annotation_accuracies`), and the
    no-shortcut control (p_spu = 1/K) stated beside it."""
    from mmclshift.experiments.ablations import sharing_annotation_accuracies

    values, runs, th = _per_run_ablation("data_model_2", sharing_annotation_accuracies, table)
    theory = th["theory_with"] - th["theory_without"]
    control = th["control_with"] - th["control_without"]
    note = (f"closed-form fits on each run's draw, shared details annotated (pi_shared 1) vs not (0); "
            f"population: {th['theory_with']:.4f} vs {th['theory_without']:.4f} ({theory:+.4f}); "
            f"no-shortcut control (p_spu = 1/K): {th['control_with']:.4f} vs {th['control_without']:.4f} "
            f"({control:+.4f})")
    caveat = ""
    if control >= theory:
        caveat = (f"without a spurious shortcut (p_spu = 1/K) the same annotation gains {control:+.3f} "
                  f"OOD: the gain is one of accuracy, not specific to robustness against the shortcut")
    return PerSeed(values, runs, note, details=th, caveat=caveat)


THEORY_SE = 4.0  # a row further than this many standard errors from the theory is a mismatch

CLAIMS: dict[str, Claim] = {c.name: c for c in [
    Claim("mmcl_beats_sl_ood",
          "Figure 2: with rich captions (large pi_core) MMCL is more robust than SL out of distribution.",
          "MMCL OOD accuracy minus SL OOD accuracy at the largest pi_core (mean over pi_spu)",
          0.0, "above", "figure2", _mmcl_minus_sl("ood")),
    Claim("pi_core_dose_response",
          "Figure 2: a large pi_core is crucial for MMCL's robustness (more annotation, more robustness).",
          "MMCL OOD accuracy at the largest pi_core minus at the smallest pi_core above 0 (mean over "
          "pi_spu; pi_core = 0 is at chance by construction and left out)",
          0.05, "above", "figure2", _pi_core_dose_response),
    Claim("pi_core_needed",
          "Figure 2: MMCL needs a large pi_core to beat SL out of distribution.",
          "the smallest pi_core at which MMCL's OOD accuracy (mean over pi_spu) exceeds SL's, per "
          "seed (holds when it is above 0.3: annotating a quarter of the captions is not enough)",
          0.3, "above", "figure2", _pi_core_needed),
    Claim("pi_spu_minor",
          "Figure 2: pi_spu has little effect (at pi_core = 1).",
          "max minus min over pi_spu of MMCL OOD accuracy at the largest pi_core",
          0.10, "below", "figure2", _pi_spu_range("top")),
    Claim("pi_spu_minor_mid_core",
          "Figure 2: pi_spu has little effect (at an intermediate pi_core).",
          "max minus min over pi_spu of MMCL OOD accuracy at the pi_core nearest 0.5",
          0.10, "below", "figure2", _pi_spu_range("mid")),
    Claim("mmcl_id_equivalent",
          "Figure 5: in distribution, MMCL with rich captions is about as accurate as SL.",
          "MMCL ID accuracy minus SL ID accuracy at the largest pi_core (mean over pi_spu); "
          "equivalence: the whole interval inside [-0.05, +0.05]",
          0.05, "within", "figure5", _mmcl_minus_sl("id")),
    Claim("mmcl_effective_robustness",
          "Figure 3a: MMCL lies above the ID-OOD line of SL models (effective robustness > 0).",
          "effective robustness (ood vs id, logit line fitted to SL runs of several strengths, every "
          "seed) of MMCL at the largest pi_core (mean over pi_spu); interval includes the line's "
          "bootstrap uncertainty",
          0.0, "above", f"figure3:{GRID_KIND}", _er_claim(_top, "ER at the largest pi_core")),
    Claim("rich_captions_help",
          "Figure 3b / Section 5: richer captions give more effective robustness.",
          "effective robustness of MMCL at the largest pi_core minus at the intermediate one "
          "(interval includes the line's bootstrap uncertainty)",
          0.0, "above", f"figure3:{GRID_KIND}", _er_claim(_top_minus_mid, "ER at the largest minus the intermediate pi_core")),
    Claim("intra_class_ablation_semisynthetic",
          "Figure 3c: intra-class contrasting makes MMCL more robust (removing same-class negatives "
          "lowers robustness).",
          "MMCL OOD accuracy (CLIP loss) minus the same model trained without same-class in-batch "
          "negatives, same data and seeds, at the largest pi_core (mean over the pi_spu values run)",
          0.0, "above", "figure2", _intra_class_ablation_semi),
    Claim("dm1_mmcl_beats_sl_ood",
          "Theorems 4.3-4.5 (Data Model 1): MMCL is more robust than SL out of distribution.",
          "MMCL zero-shot OOD accuracy minus SL OOD accuracy, Data Model 1 (not an ablation of "
          "intra-class contrasting)",
          0.0, "above", "theory", _synthetic_gap("data_model_1"),
          kinds=("data_model_1",), axes=THEORY_AXES, wildcard=None),
    Claim("dm2_mmcl_beats_sl_ood",
          "Theorems 4.7-4.8 (Data Model 2): MMCL is more robust than SL out of distribution.",
          "MMCL zero-shot OOD accuracy minus SL OOD accuracy, Data Model 2 (not an ablation of "
          "inter-class feature sharing)",
          0.0, "above", "theory", _synthetic_gap("data_model_2"),
          kinds=("data_model_2",), axes=THEORY_AXES, wildcard=None),
    Claim("intra_class_ablation_theory",
          "Theorems 4.3-4.5 (Data Model 1): intra-class contrasting makes MMCL robust; the ablation "
          "of Figure 3c in the theory tier.",
          "OOD accuracy of the linear MMCL loss minus the same loss without same-class negative pairs "
          "(closed-form fits on each seed's training draw of Data Model 1, exact population accuracy)",
          0.0, "above", "theory", _intra_class_ablation_theory,
          kinds=("data_model_1",), axes=THEORY_AXES, wildcard=None),
    Claim("sharing_annotation_ablation",
          "Theorems 4.7-4.8 (Data Model 2): annotating details that classes share helps MMCL's "
          "robustness (inter-class feature sharing).",
          "OOD accuracy of the linear loss with the shared details written into captions minus "
          "without (pi_shared 1 vs 0, every class's geometry fixed; closed-form fits on each seed's "
          "draw of Data Model 2); the no-shortcut control p_spu = 1/K in the note",
          0.0, "above", "theory", _sharing_annotation_ablation,
          kinds=("data_model_2",), axes=THEORY_AXES, wildcard=None),
    Claim("theory_worst_row_se",
          "Lemma 3.2, Theorems 4.3-4.8: the closed-form accuracies match trained linear models.",
          "the largest |trained - theory| over the rows of a seed, in standard errors (test-set "
          "binomial error plus the seed-to-seed SD of the trained rule's population accuracy)",
          THEORY_SE, "below", "theory", _theory_worst_row,
          kinds=THEORY_KINDS, axes=THEORY_AXES, wildcard=None),
]}


# --------------------------------------------------------------------------- evaluation


def _relative(runs: list[str], base: Path | None) -> list[str]:
    if base is None:
        return runs
    out = []
    for r in runs:
        try:
            out.append(os.path.relpath(Path(r).resolve(), base.resolve()))
        except ValueError:  # another drive (Windows)
            out.append(r)
    return out


def _why(direction: str, threshold: float, low: float, high: float, v: str) -> str:
    if v == "holds":
        return ""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "one seed gives no interval: more seeds are needed"
    iv = f"the 95% interval [{low:+.3f}, {high:+.3f}]"
    if direction == "within":
        side = f"the margin [{-threshold:+g}, {threshold:+g}]"
        return f"{iv} lies outside {side}" if v == "fails" else f"{iv} is not inside {side}"
    claimed = "above" if direction == "above" else "below"
    other = "below" if direction == "above" else "above"
    if v == "fails":
        return f"{iv} lies wholly {other} the threshold {threshold:g}"
    return f"{iv} straddles the threshold {threshold:g} (the claim needs it wholly {claimed})"


def evaluate_claim(claim: Claim, table: pd.DataFrame, *, relative_to: Path | None = None) -> ClaimResult:
    """Compute one claim on one group's rows (no multiplicity correction: ``verdict`` equals
    ``verdict_unadjusted``); raises :class:`ClaimError` when its runs are missing."""
    per = claim.compute(table)
    if not per.values:
        raise ClaimError("no seed has all the runs the statistic needs")
    seeds = sorted(per.values)
    iv = widen(t_interval([per.values[s] for s in seeds]), per.line_sd)
    v = verdict(iv.low, iv.high, claim.threshold, claim.direction)
    p_holds, p_fails = decision_p_values(iv, claim.threshold, claim.direction)
    p = p_holds if v == "holds" else p_fails if v == "fails" else min(p_holds, p_fails)
    reason = _why(claim.direction, claim.threshold, iv.low, iv.high, v)
    if per.caveat:
        reason = f"{reason}; {per.caveat}" if reason else per.caveat
    if per.inconclusive:
        v, p, reason = "inconclusive", math.nan, per.inconclusive
    return ClaimResult(
        claim=claim.name, paper=claim.paper, statistic=iv.mean, ci_low=iv.low, ci_high=iv.high,
        n_seeds=iv.n, threshold=claim.threshold, verdict=v, verdict_unadjusted=v,
        runs=_relative(per.runs, relative_to), direction=claim.direction,
        description=claim.statistic, figure=claim.figure,
        per_seed={s: per.values[s] for s in seeds}, note=per.note, p_value=p, p_adjusted=p,
        reason=reason, se=iv.se, line_sd=per.line_sd, details=per.details)


def apply_holm(results: Sequence[ClaimResult], confidence: float = CONFIDENCE) -> None:
    """Holm's correction over each table (the results sharing a group), in place."""
    families: dict[str, list[ClaimResult]] = {}
    for r in results:
        families.setdefault(json.dumps(r.group, sort_keys=True, default=str), []).append(r)
    for family in families.values():
        adjusted_verdicts, adjusted = holm_verdicts([r.verdict_unadjusted for r in family],
                                                    [r.p_value for r in family], confidence)
        for r, v, a in zip(family, adjusted_verdicts, adjusted, strict=True):
            r.verdict, r.p_adjusted, r.correction = v, a, CORRECTION
            if v != r.verdict_unadjusted:
                holm_why = (f"{r.verdict_unadjusted} before correction, but Holm's correction over the "
                            f"{len(family)} claims of its table gives adjusted p = {a:.3g} (not below "
                            f"{1 - confidence:g})")
                r.reason = f"{holm_why}; {r.reason}" if r.reason else holm_why


def evaluate_claims(table: pd.DataFrame, claims: Sequence[Claim] | None = None, *,
                    relative_to: Path | None = None, group: dict[str, str] | None = None,
                    ) -> tuple[list[ClaimResult], list[tuple[str, str]]]:
    """Every claim that can be computed, per group, and ``(claim, reason)`` for each that cannot.

    ``group`` ({key: value}) keeps only the groups whose label has those values. Verdicts are
    Holm-corrected within each group's table.
    """
    table, _ = drop_moved_aside(table)
    results, errors = [], []
    for claim in CLAIMS.values() if claims is None else claims:
        for grp in claim_groups(table, claim.kinds, claim.axes, claim.wildcard):
            if group and not matches(grp.label, group):
                continue
            try:
                r = evaluate_claim(claim, grp.table, relative_to=relative_to)
            except ClaimError as exc:
                label = f" [group {format_label(grp.label)}]" if grp.label else ""
                errors.append((claim.name + label, str(exc)))
                continue
            r.group = dict(grp.label)
            results.append(r)
    if group and not results:
        raise UserError(f"--group {', '.join(f'{k}={v}' for k, v in group.items())}: no group of runs "
                        "has that value (the groups are named by the config keys that distinguish them)")
    apply_holm(results)
    return results, errors


def groups_of(results: Sequence[ClaimResult]) -> list[tuple[str, list[ClaimResult]]]:
    """The results split into tables, one per group: [(label, results)], in first-seen order."""
    out: dict[str, list[ClaimResult]] = {}
    for r in results:
        out.setdefault(r.group_label, []).append(r)
    return list(out.items())


def error_line(name: str, reason: str) -> str:
    return f"claim {name} could not be computed: {reason}"


def write_claims(results: Sequence[ClaimResult], path: str | Path) -> Path:
    """Write the results as a JSON list (one object per claim and group) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps([r.to_json() for r in results], indent=2) + "\n")
    return path


def format_interval(r: ClaimResult) -> str:
    if not (math.isfinite(r.ci_low) and math.isfinite(r.ci_high)):
        return "- (one seed)"
    return f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}]"


def criterion_text(direction: str, threshold: float) -> str:
    """When a claim holds, in the tables' words: ``> 0``, ``< 0.1``, ``in +-0.05``."""
    if direction == "within":
        return f"in +-{threshold:g}"
    return f"{'>' if direction == 'above' else '<'} {threshold:g}"


def holds_if(r: ClaimResult) -> str:
    return criterion_text(r.direction, r.threshold)


CLAIM_COLUMNS = ["claim", "statistic", "95% CI", "holds if", "n_seeds", "unadjusted", "verdict"]


def claims_rows(results: Sequence[ClaimResult]) -> list[dict[str, Any]]:
    """Rows for a table: claim, statistic, 95% interval, threshold, n_seeds, the verdict before
    and after Holm's correction."""
    return [{"claim": r.claim, "statistic": f"{r.statistic:+.3f}", "95% CI": format_interval(r),
             "holds if": holds_if(r), "n_seeds": r.n_seeds, "unadjusted": r.verdict_unadjusted,
             "verdict": r.verdict} for r in results]


def claims_tables(results: Sequence[ClaimResult]) -> str:
    """Every group's claims table, titled by its group, as printed by the CLI and the demo."""
    parts = []
    for label, rs in groups_of(results):
        title = ("Claims (statistic: mean over seeds; 95% t-interval over seeds; verdict after "
                 f"Holm's correction over the {len(rs)} claims of this table)")
        if label != "all runs" or len(groups_of(results)) > 1:
            title += f" -- group: {label}"
        parts.append(format_table(claims_rows(rs), CLAIM_COLUMNS, title=title))
    return "\n\n".join(parts)


__all__ = ["CLAIMS", "CLAIMS_FILE", "CLAIM_COLUMNS", "CORRECTION", "Claim", "ClaimError", "ClaimResult",
           "Group", "PerSeed", "apply_holm", "claims_rows", "claims_tables", "error_line", "evaluate_claim",
           "evaluate_claims", "format_interval", "groups_of", "holds_if", "write_claims"]
