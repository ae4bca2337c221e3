"""Effective robustness of collected runs: OOD accuracy above the line fitted (on logit axes by
default) to the baseline method's runs, one line per experiment kind and OOD set, averaged over
OOD sets.

Example:
  mmclshift robustness runs/sweep --id id --ood ood --ood ood_reversed --baseline sl
  mmclshift robustness runs/real --id id --ood imagenet-v2 --ood imagenet-r:id_r200 \\
      --ood objectnet:id_objectnet --format csv
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmclshift.analysis.collect import collect, to_markdown
from mmclshift.analysis.figures import er_points
from mmclshift.analysis.robustness import check_counts, clopper_pearson, effective_robustness
from mmclshift.errors import UserError

HELP = "effective robustness of runs against a baseline method's ID-OOD line"
FORMATS = ("markdown", "csv", "json")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", help="run directories or folders containing them")
    parser.add_argument("--id", default="id", help="ID test set (x axis) of OOD sets given "
                        "without their own")
    parser.add_argument("--ood", action="append", default=None, metavar="SPLIT[:ID_SPLIT]",
                        help="OOD test set, optionally with its own ID axis (imagenet-r:id_r200, "
                        "objectnet:id_objectnet); repeat for several; ER is averaged over them")
    parser.add_argument("--baseline", default="sl", help="method whose runs define the line")
    parser.add_argument("--kind", default=None,
                        help="only runs of this experiment kind (default: one line per kind)")
    parser.add_argument("--transform", choices=["logit", "probit", "none"], default="logit")
    parser.add_argument("--saturated", choices=["exclude", "clip"], default="exclude",
                        help="baseline points at accuracy 0 or 1: leave out of the fit (default) "
                        "or clip to [1e-4, 1 - 1e-4]")
    parser.add_argument("--format", choices=FORMATS, default="markdown",
                        help="markdown table (rounded), or csv / json at full precision")


def _pairs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(OOD split, its ID split) per --ood."""
    out = []
    for spec in args.ood or ["ood"]:
        ood, _, id_split = spec.partition(":")
        if not ood:
            raise UserError(f"--ood {spec!r}: expected SPLIT or SPLIT:ID_SPLIT")
        out.append((ood, id_split or args.id))
    return out


def _check_finite(pts: pd.DataFrame, side: str, split: str) -> None:
    for _, p in pts.iterrows():
        v = p[f"accuracy_{side}"]
        if v is None or not isinstance(v, int | float) or not math.isfinite(v) or not 0 <= v <= 1:
            raise UserError(f"{p['run']}: method {p['method']!r}, test set {split!r}: accuracy "
                            f"{v!r} is not a number in [0, 1]")


def _intervals(pts: pd.DataFrame, side: str, split: str, notes: list[str]
               ) -> tuple[np.ndarray, np.ndarray]:
    labels = [f"{r} (method {m!r}, test set {split!r})" for r, m in zip(pts["run"], pts["method"],
                                                                           strict=True)]
    has = check_counts(pts[f"accuracy_{side}"], list(pts[f"correct_{side}"]), list(pts[f"n_{side}"]),
                       labels)
    lo = np.full(len(pts), np.nan)
    hi = np.full(len(pts), np.nan)
    if has.any():
        k = pts[f"correct_{side}"].to_numpy(dtype=float)[has]
        n = pts[f"n_{side}"].to_numpy(dtype=float)[has]
        lo[has], hi[has] = clopper_pearson(k, n)
    lacking = [str(r) for r in pts["run"][~has]]
    if lacking:
        notes.append(f"test set {split!r}: {len(lacking)} of {len(pts)} records have no "
                     f"correct/n, so no interval ({', '.join(lacking)})")
    return lo, hi


def _kind_rows(table: pd.DataFrame, kind: Any, pairs: list[tuple[str, str]],
               args: argparse.Namespace, notes: list[str]) -> tuple[list[dict], list[dict]]:
    rows, fits = [], []
    where = f"kind {kind!r}: " if kind is not None else ""
    for ood, id_split in pairs:
        pts = er_points(table, id_split, ood)
        if pts.empty:
            notes.append(f"{where}no completed run has both test sets {id_split!r} and {ood!r}")
            continue
        n_base = int((pts["method"] == args.baseline).sum())
        if n_base < 2:
            notes.append(f"{where}the fit needs at least 2 runs of baseline method "
                         f"{args.baseline!r} with {id_split!r} and {ood!r}; found {n_base}")
            continue
        _check_finite(pts, "id", id_split)
        _check_finite(pts, "ood", ood)
        id_lo, id_hi = _intervals(pts, "id", id_split, notes)
        ood_lo, ood_hi = _intervals(pts, "ood", ood, notes)
        labels = [f"{Path(r).name} ({m})" for r, m in zip(pts["run"], pts["method"], strict=True)]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                er = effective_robustness(
                    pts["accuracy_id"].astype(float), pts["accuracy_ood"].astype(float),
                    (pts["method"] == args.baseline).to_numpy(), kind=args.transform, n_boot=0,
                    saturated=args.saturated, labels=labels)
            except UserError as exc:
                raise UserError(f"{where}{id_split} -> {ood}: {exc}") from None
        notes.extend(f"{where}{id_split} -> {ood}: {w.message}" for w in caught)
        fits.append({"kind": kind, "id": id_split, "ood": ood, "transform": args.transform,
                     "slope": er.fit.slope, "intercept": er.fit.intercept, "r": er.fit.rvalue,
                     "baseline_runs": n_base})
        for i, (_, p) in enumerate(pts.iterrows()):
            rows.append({"kind": kind, "run": p["run"], "method": p["method"], "id": id_split,
                         "ood": ood, "id_acc": float(p["accuracy_id"]), "id_ci_lo": id_lo[i],
                         "id_ci_hi": id_hi[i], "ood_acc": float(p["accuracy_ood"]),
                         "ood_ci_lo": ood_lo[i], "ood_ci_hi": ood_hi[i],
                         "predicted_ood": float(er.predicted[i]), "er": float(er.er[i])})
    return rows, fits


def _wide(long: pd.DataFrame, pairs: list[tuple[str, str]], notes: list[str]) -> pd.DataFrame:
    """One row per (kind, run, method): each ID split's accuracy and interval, each OOD set's
    accuracy, interval and ER, the mean ER over the OOD sets the run has, and what it lacks."""
    out = []
    oods = [o for o, _ in pairs]
    for (kind, run, method), g in long.groupby(["kind", "run", "method"], sort=False, dropna=False):
        row: dict[str, Any] = {"kind": kind, "run": run, "method": method}
        for _, r in g.iterrows():
            row.update({f"{r['id']}_acc": r["id_acc"], f"{r['id']}_ci_lo": r["id_ci_lo"],
                        f"{r['id']}_ci_hi": r["id_ci_hi"], f"{r['ood']}_acc": r["ood_acc"],
                        f"{r['ood']}_ci_lo": r["ood_ci_lo"], f"{r['ood']}_ci_hi": r["ood_ci_hi"],
                        f"er_{r['ood']}": r["er"]})
        have = [o for o in oods if f"er_{o}" in row]
        row["er_mean"] = float(np.mean([row[f"er_{o}"] for o in have]))
        row["ood_sets"] = len(have)
        missing = [o for o in oods if o not in have]
        row["missing"] = ", ".join(missing)
        if missing:
            notes.append(f"{run} ({method}): no ER for {', '.join(missing)} (a test set is "
                         f"missing); er_mean is over {', '.join(have)}")
        out.append(row)
    wide = pd.DataFrame(out)
    ids = list(dict.fromkeys(i for _, i in pairs))
    cols = ["kind", "run", "method"]
    cols += [f"{i}_{s}" for i in ids for s in ("acc", "ci_lo", "ci_hi")]
    cols += [f"{o}_{s}" for o in oods for s in ("acc", "ci_lo", "ci_hi")] + [f"er_{o}" for o in oods]
    cols += ["er_mean", "ood_sets", "missing"]
    return wide.reindex(columns=list(dict.fromkeys(cols)))


def _json_value(v: Any) -> Any:
    if isinstance(v, float | np.floating):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


def run(args: argparse.Namespace) -> int:
    col = collect(args.run_dirs)
    table = col.table if args.kind is None else col.table[col.table["kind"] == args.kind]
    pairs = _pairs(args)
    notes: list[str] = []
    rows, fits = [], []
    for kind, t in table.groupby("kind", sort=False, dropna=False):
        r, f = _kind_rows(t, kind, pairs, args, notes)
        rows += r
        fits += f
    if not rows:
        raise UserError(notes[0] if notes else f"no completed run under {' '.join(args.run_dirs)}")
    wide = _wide(pd.DataFrame(rows), pairs, notes)
    if args.format == "json":
        print(json.dumps({"fits": [{k: _json_value(v) for k, v in f.items()} for f in fits],
                          "rows": [{k: _json_value(v) for k, v in r.items()}
                                   for r in wide.to_dict("records")],
                          "notes": notes}, indent=2))
        return 0
    fit_lines = [f"{f['kind']}: {f['id']} -> {f['ood']}: {f['transform']}-line slope "
                 f"{f['slope']!r}, intercept {f['intercept']!r}, r = {f['r']!r} "
                 f"({f['baseline_runs']} baseline runs)" for f in fits]
    if args.format == "csv":
        print(wide.to_csv(index=False), end="")
        for line in fit_lines + [f"note: {n}" for n in notes]:
            print(line, file=sys.stderr)
        return 0
    for f in fits:
        print(f"{f['kind']}: {f['id']} -> {f['ood']}: {f['transform']}-line slope {f['slope']:.3f}, "
              f"intercept {f['intercept']:.3f}, r = {f['r']:.3f}")
    print(to_markdown(wide))
    for n in notes:
        print(f"note: {n}")
    return 0
