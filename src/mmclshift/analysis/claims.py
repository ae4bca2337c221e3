"""The paper's claims as data: each claim is a statistic computed from the runs, with a threshold
and a verdict.

Every claim in :data:`CLAIMS` computes one value per seed from the collected table (for example
MMCL's OOD accuracy minus SL's at ``pi_core = 1``, seed by seed), then the mean over seeds and
its 95% Student-t interval (:func:`mmclshift.analysis.stats.t_interval`). The verdict compares
the interval with the claim's threshold (:func:`mmclshift.analysis.stats.verdict`): ``holds``
when the whole interval is on the claimed side, ``fails`` when the whole interval is on the other
side, ``inconclusive`` when it straddles the threshold or when fewer than two seeds leave no
interval.

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
from mmclshift.analysis.robustness import effective_robustness
from mmclshift.analysis.stats import Direction, t_interval, verdict
from mmclshift.errors import UserError
from mmclshift.runs import atomic_write_text

CLAIMS_FILE = "claims.json"


class ClaimError(UserError):
    """A claim that cannot be computed from the given runs (the message says why)."""


@dataclass
class PerSeed:
    """A claim's statistic measured once per seed, and the run directories it read."""

    values: dict[int, float]
    runs: list[str]
    note: str = ""


@dataclass(frozen=True)
class Claim:
    name: str
    paper: str  # the sentence or figure of the paper it tests
    statistic: str  # what is computed, in words
    threshold: float
    direction: Direction  # the claim holds when the statistic is above / below the threshold
    figure: str  # key of the report figure that shows it
    compute: Callable[[pd.DataFrame], PerSeed]


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

    def to_json(self) -> dict[str, Any]:
        def num(v: float) -> float | None:
            return None if v is None or not math.isfinite(v) else float(v)

        return {"claim": self.claim, "paper": self.paper, "statistic": num(self.statistic),
                "ci_low": num(self.ci_low), "ci_high": num(self.ci_high), "n_seeds": self.n_seeds,
                "threshold": self.threshold, "verdict": self.verdict, "runs": self.runs,
                "direction": self.direction, "description": self.description, "figure": self.figure,
                "per_seed": {str(k): num(v) for k, v in sorted(self.per_seed.items())},
                "note": self.note}


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


def _pi_core_matters(table: pd.DataFrame) -> PerSeed:
    g = _grid(table, "ood", need_sl=False)
    if len(g.pi_core) < 2:
        raise ClaimError("needs at least 2 pi_core values in the grid")
    lo, hi = min(g.pi_core), max(g.pi_core)
    values, used = {}, []
    for s in g.seeds(with_sl=False):
        a, b = g.row(s, hi), g.row(s, lo)
        if a and b:
            values[s] = _mean(a) - _mean(b)
            used += [*a, *b]
    return PerSeed(values, _runs(used), f"pi_core {hi:g} vs {lo:g}, mean over pi_spu")


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


def _er_by_seed(table: pd.DataFrame) -> tuple[_Grid, dict[tuple[int, float, float], float], list[str]]:
    """Effective robustness of every grid MMCL run against the line fitted to all SL runs of the
    semi-synthetic kind (grid SL runs and SL baselines of other strengths), ID vs OOD."""
    t = table[table["kind"] == GRID_KIND] if "kind" in table.columns else table.iloc[0:0]
    ids = t[t["split"] == "id"][["run", "method", "accuracy"]]
    oods = t[t["split"] == "ood"][["run", "method", "accuracy"]]
    pts = ids.merge(oods, on=["run", "method"], suffixes=("_id", "_ood"))
    base = pts["method"] == "sl"
    if base.sum() < 2:
        raise ClaimError(f"the effective-robustness line needs at least 2 SL runs with id and ood "
                         f"accuracy; found {int(base.sum())}")
    try:
        er = effective_robustness(pts["accuracy_id"], pts["accuracy_ood"], base.to_numpy(), n_boot=0)
    except UserError as exc:
        raise ClaimError(f"the SL baseline line cannot be fitted ({exc})") from None
    by_run = dict(zip(pts["run"].astype(str) + "|" + pts["method"], er.er, strict=True))
    g = _grid(table, "ood", need_sl=False)
    ers = {k: float(by_run[f"{run}|mmcl"]) for k, (_, run) in g.mmcl.items() if f"{run}|mmcl" in by_run}
    sl_runs = sorted(pts.loc[base, "run"].astype(str))
    return g, ers, sl_runs


def _mmcl_er(table: pd.DataFrame) -> PerSeed:
    g, ers, sl_runs = _er_by_seed(table)
    top = max(g.pi_core)
    values, used = {}, []
    for s in g.seeds(with_sl=False):
        keys = [(s, top, ps) for ps in g.pi_spu if (s, top, ps) in ers]
        if keys:
            values[s] = float(np.mean([ers[k] for k in keys]))
            used += [g.mmcl[k][1] for k in keys]
    return PerSeed(values, sorted(set(used) | set(sl_runs)),
                   f"pi_core = {top:g}, mean over pi_spu; line fitted to {len(sl_runs)} SL runs")


def _rich_captions_help(table: pd.DataFrame) -> PerSeed:
    g, ers, sl_runs = _er_by_seed(table)
    top, mid = max(g.pi_core), _mid(g.pi_core)
    values, used = {}, []
    for s in g.seeds(with_sl=False):
        a = [(s, top, ps) for ps in g.pi_spu if (s, top, ps) in ers]
        b = [(s, mid, ps) for ps in g.pi_spu if (s, mid, ps) in ers]
        if a and b:
            values[s] = float(np.mean([ers[k] for k in a]) - np.mean([ers[k] for k in b]))
            used += [g.mmcl[k][1] for k in a + b]
    return PerSeed(values, sorted(set(used) | set(sl_runs)),
                   f"ER at pi_core {top:g} minus at {mid:g}, mean over pi_spu")


# --------------------------------------------------------------------------- theory-tier claims


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


def _theory_agreement(table: pd.DataFrame) -> PerSeed:
    if "theory" not in table.columns:
        raise ClaimError("no runs with a closed-form prediction (theory)")
    t = table[table["theory"].notna()]
    if t.empty:
        raise ClaimError("no runs with a closed-form prediction (theory)")
    t = t.assign(absdev=(t["accuracy"].astype(float) - t["theory"].astype(float)).abs())
    values = {int(s): float(g["absdev"].mean()) for s, g in t.groupby("seed")}
    return PerSeed(values, sorted(set(t["run"].astype(str))),
                   f"{t['kind'].nunique()} data model(s), {len(t)} (run, method, split) rows")


CLAIMS: dict[str, Claim] = {c.name: c for c in [
    Claim("mmcl_beats_sl_ood",
          "Figure 2: with rich captions (large pi_core) MMCL is more robust than SL out of distribution.",
          "MMCL OOD accuracy minus SL OOD accuracy at the largest pi_core (mean over pi_spu)",
          0.0, "above", "figure2", _mmcl_minus_sl("ood")),
    Claim("pi_core_matters",
          "Figure 2: a large pi_core is crucial for MMCL's robustness.",
          "MMCL OOD accuracy at the largest pi_core minus at the smallest (mean over pi_spu)",
          0.05, "above", "figure2", _pi_core_matters),
    Claim("pi_spu_minor",
          "Figure 2: pi_spu has little effect (at pi_core = 1).",
          "max minus min over pi_spu of MMCL OOD accuracy at the largest pi_core",
          0.10, "below", "figure2", _pi_spu_range("top")),
    Claim("pi_spu_minor_mid_core",
          "Figure 2: pi_spu has little effect (at an intermediate pi_core).",
          "max minus min over pi_spu of MMCL OOD accuracy at the pi_core nearest 0.5",
          0.10, "below", "figure2", _pi_spu_range("mid")),
    Claim("mmcl_id_on_par",
          "Figure 5: in distribution, MMCL with rich captions is about as accurate as SL.",
          "MMCL ID accuracy minus SL ID accuracy at the largest pi_core (mean over pi_spu)",
          -0.05, "above", "figure5", _mmcl_minus_sl("id")),
    Claim("mmcl_effective_robustness",
          "Figure 3a: MMCL lies above the ID-OOD line of SL models (effective robustness > 0).",
          "effective robustness (ood vs id, logit line fitted to the SL runs) of MMCL at the "
          "largest pi_core (mean over pi_spu)",
          0.0, "above", "figure3", _mmcl_er),
    Claim("rich_captions_help",
          "Figure 3b / Section 5: richer captions give more effective robustness.",
          "effective robustness of MMCL at the largest pi_core minus at the intermediate one",
          0.0, "above", "figure3", _rich_captions_help),
    Claim("intra_class_contrasting_helps",
          "Theorems 4.3-4.5 (Data Model 1): intra-class contrasting makes MMCL more robust than SL.",
          "MMCL zero-shot OOD accuracy minus SL OOD accuracy, Data Model 1",
          0.0, "above", "theory", _synthetic_gap("data_model_1")),
    Claim("inter_class_sharing_helps",
          "Theorems 4.7-4.8 (Data Model 2): inter-class feature sharing makes MMCL more robust than SL.",
          "MMCL zero-shot OOD accuracy minus SL OOD accuracy, Data Model 2",
          0.0, "above", "theory", _synthetic_gap("data_model_2")),
    Claim("theory_matches_trained",
          "Lemma 3.2, Theorems 4.3-4.8: the closed-form accuracies match trained linear models.",
          "mean absolute difference between trained test accuracy and the closed-form prediction",
          0.02, "below", "theory", _theory_agreement),
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


def evaluate_claim(claim: Claim, table: pd.DataFrame, *, relative_to: Path | None = None) -> ClaimResult:
    """Compute one claim; raises :class:`ClaimError` when its runs are missing."""
    per = claim.compute(table)
    if not per.values:
        raise ClaimError("no seed has all the runs the statistic needs")
    seeds = sorted(per.values)
    iv = t_interval([per.values[s] for s in seeds])
    return ClaimResult(
        claim=claim.name, paper=claim.paper, statistic=iv.mean, ci_low=iv.low, ci_high=iv.high,
        n_seeds=iv.n, threshold=claim.threshold,
        verdict=verdict(iv.low, iv.high, claim.threshold, claim.direction),
        runs=_relative(per.runs, relative_to), direction=claim.direction,
        description=claim.statistic, figure=claim.figure,
        per_seed={s: per.values[s] for s in seeds}, note=per.note)


def evaluate_claims(table: pd.DataFrame, claims: Sequence[Claim] | None = None, *,
                    relative_to: Path | None = None) -> tuple[list[ClaimResult], list[tuple[str, str]]]:
    """Every claim that can be computed, and ``(claim, reason)`` for each that cannot."""
    results, errors = [], []
    for claim in CLAIMS.values() if claims is None else claims:
        try:
            results.append(evaluate_claim(claim, table, relative_to=relative_to))
        except ClaimError as exc:
            errors.append((claim.name, str(exc)))
    return results, errors


def error_line(name: str, reason: str) -> str:
    return f"claim {name} could not be computed: {reason}"


def write_claims(results: Sequence[ClaimResult], path: str | Path) -> Path:
    """Write the results as a JSON list (one object per claim) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps([r.to_json() for r in results], indent=2) + "\n")
    return path


def format_interval(r: ClaimResult) -> str:
    if not (math.isfinite(r.ci_low) and math.isfinite(r.ci_high)):
        return "- (one seed)"
    return f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}]"


def claims_rows(results: Sequence[ClaimResult]) -> list[dict[str, Any]]:
    """Rows for a table: claim, statistic, 95% interval, threshold, n_seeds, verdict."""
    sign = {"above": ">", "below": "<"}
    return [{"claim": r.claim, "statistic": f"{r.statistic:+.3f}", "95% CI": format_interval(r),
             "holds if": f"{sign[r.direction]} {r.threshold:g}", "n_seeds": r.n_seeds,
             "verdict": r.verdict} for r in results]


__all__ = ["CLAIMS", "CLAIMS_FILE", "Claim", "ClaimError", "ClaimResult", "PerSeed", "claims_rows",
           "error_line", "evaluate_claim", "evaluate_claims", "format_interval", "write_claims"]
