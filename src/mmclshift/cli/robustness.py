"""Effective robustness of collected runs, or of accuracies in a table: OOD accuracy above a
baseline line on logit axes (by default), one line per experiment kind and OOD set, averaged over
OOD sets. The line is fitted to the runs of the baseline method (``--baseline sl``), or is
imagenet-testbed's line of standard ImageNet models, shipped with the tool (``--baseline
testbed``; ImageNet-A's line has two pieces, split where ResNet-50 scores 0%).

Example:
  mmclshift robustness runs/sweep --id id --ood ood --ood ood_reversed --baseline sl
  mmclshift robustness runs/real --id id --ood imagenet-v2 --ood imagenet-r:id_r200 \\
      --ood objectnet:id_objectnet --format csv
  mmclshift robustness runs/real --baseline testbed --plot er.png
  mmclshift robustness --table accuracies.csv --baseline testbed --format json
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
from mmclshift.analysis.robustness import (
    TABLE_KIND,
    TABLE_SPLITS,
    check_counts,
    clopper_pearson,
    effective_robustness,
    read_accuracy_table,
    shift_pairs,
)
from mmclshift.analysis.testbed import (
    FULL_VAL,
    TESTBED_SHIFTS,
    Panel,
    fit_testbed,
    piece_line,
    plot_panels,
    testbed_id_split,
)
from mmclshift.errors import UserError

HELP = "effective robustness of runs or an accuracy table against a baseline line"
FORMATS = ("markdown", "csv", "json")
TESTBED = "testbed"
#: bootstrap resamples of the line's band when a plot is drawn (the testbed's 1000)
PLOT_BOOT = 1000


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="*", help="run directories or folders containing them")
    parser.add_argument("--table", default=None, metavar="FILE.csv",
                        help="accuracies you already have: a 'model' column, an optional "
                        "'method' column and split columns (" + ", ".join(TABLE_SPLITS) + ") "
                        "holding fractions in [0, 1]")
    parser.add_argument("--id", default="id", help="ID test set (x axis) of OOD sets given "
                        "without their own")
    parser.add_argument("--ood", action="append", default=None, metavar="SPLIT[:ID_SPLIT]",
                        help="OOD test set, optionally with its own ID axis (imagenet-r:id_r200, "
                        "objectnet:id_objectnet); repeat for several; ER is averaged over them. "
                        "Default: 'ood' for runs against a method's line; with --table or "
                        "--baseline testbed, every shifted ImageNet present, each on its own ID "
                        "axis")
    parser.add_argument("--baseline", default="sl", help="method whose runs define the line, or "
                        "'testbed': imagenet-testbed's line of standard ImageNet models")
    parser.add_argument("--kind", default=None,
                        help="only runs of this experiment kind (default: one line per kind)")
    parser.add_argument("--transform", choices=["logit", "probit", "none"], default="logit")
    parser.add_argument("--saturated", choices=["exclude", "clip"], default="exclude",
                        help="baseline points at accuracy 0 or 1: leave out of the fit (default) "
                        "or clip to [1e-4, 1 - 1e-4]")
    parser.add_argument("--format", choices=FORMATS, default="markdown",
                        help="markdown table (rounded), or csv / json at full precision")
    parser.add_argument("--plot", default=None, metavar="FILE.png",
                        help="also draw each shift: ID vs OOD on the transform's axes, the "
                        "testbed's models faded, your runs highlighted, y = x, the line and its "
                        "bootstrap band")


def _pairs(args: argparse.Namespace, splits: set[str]) -> tuple[list[tuple[str, str]], bool]:
    """(OOD split, its ID split) per --ood, or the default pairs; and whether --ood was given."""
    if args.ood is None:
        if args.table is None and args.baseline != TESTBED:
            return [("ood", args.id)], False
        found = {o: i for i, o in shift_pairs(splits)}
        return [(o, found[o]) for o in TESTBED_SHIFTS if o in found], False
    out = []
    for spec in args.ood:
        ood, _, id_split = spec.partition(":")
        if not ood:
            raise UserError(f"--ood {spec!r}: expected SPLIT or SPLIT:ID_SPLIT")
        out.append((ood, id_split or args.id))
    return out, True


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


def _method_line(pts: pd.DataFrame, where: str, id_split: str, ood: str,
                 args: argparse.Namespace, notes: list[str]) -> tuple[np.ndarray, list[dict], list]:
    """(predicted OOD, fit records, plot lines) of the line fitted to the baseline method's runs."""
    n_base = int((pts["method"] == args.baseline).sum())
    labels = [f"{Path(r).name} ({m})" for r, m in zip(pts["run"], pts["method"], strict=True)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            er = effective_robustness(
                pts["accuracy_id"].astype(float), pts["accuracy_ood"].astype(float),
                (pts["method"] == args.baseline).to_numpy(), kind=args.transform,
                n_boot=PLOT_BOOT if args.plot else 0, saturated=args.saturated, labels=labels)
        except UserError as exc:
            raise UserError(f"{where}{id_split} -> {ood}: {exc}") from None
    notes.extend(f"{where}{id_split} -> {ood}: {w.message}" for w in caught)
    fit = {"id": id_split, "ood": ood, "transform": args.transform, "baseline": args.baseline,
           "piece": "all", "pivot": None, "slope": er.fit.slope, "intercept": er.fit.intercept,
           "r": er.fit.rvalue, "baseline_runs": n_base}
    base_x = pts["accuracy_id"][pts["method"] == args.baseline].astype(float)
    line = (er.band_x, er.fit.predict(er.band_x), er.band_lo, er.band_hi,
            (float(base_x.min()), float(base_x.max())))
    return er.predicted, [fit], [line]


def _testbed_line(pts: pd.DataFrame, id_split: str, ood: str, args: argparse.Namespace
                  ) -> tuple[np.ndarray, list[dict], list]:
    """(predicted OOD, fit records, plot lines) of imagenet-testbed's line for ``ood``."""
    tb = fit_testbed(ood, kind=args.transform, n_boot=PLOT_BOOT if args.plot else 0,
                     extra_id=pts["accuracy_id"].astype(float).to_numpy())
    fits, lines = [], []
    for i, p in enumerate(tb.pieces):
        piece = "all" if tb.pivot is None else ("at or below pivot" if i == 0 else "above pivot")
        fits.append({"id": id_split, "ood": ood, "transform": args.transform,
                     "baseline": TESTBED, "piece": piece, "pivot": tb.pivot, "slope": p.fit.slope,
                     "intercept": p.fit.intercept, "r": p.fit.rvalue,
                     "baseline_runs": len(p.models)})
        lines.append(piece_line(p))
    return tb.predict(pts["accuracy_id"].astype(float)), fits, lines


def _kind_rows(table: pd.DataFrame, kind: Any, pairs: list[tuple[str, str]], explicit: bool,
               args: argparse.Namespace, notes: list[str]
               ) -> tuple[list[dict], list[dict], list[Panel]]:
    rows, fits, panels = [], [], []
    where = f"kind {kind!r}: " if kind is not None else ""
    testbed = args.baseline == TESTBED
    for ood, id_split in pairs:
        if testbed:
            try:
                testbed_id_split(ood, id_split)
            except UserError as exc:
                if explicit:
                    raise
                notes.append(f"{where}{exc}")
                continue
        pts = er_points(table, id_split, ood)
        if pts.empty:
            notes.append(f"{where}no completed run has both test sets {id_split!r} and {ood!r}")
            continue
        if not testbed:
            n_base = int((pts["method"] == args.baseline).sum())
            if n_base < 2:
                notes.append(f"{where}the fit needs at least 2 runs of baseline method "
                             f"{args.baseline!r} with {id_split!r} and {ood!r}; found {n_base}"
                             " (or use --baseline testbed: imagenet-testbed's line)")
                continue
        _check_finite(pts, "id", id_split)
        _check_finite(pts, "ood", ood)
        # a table's rows have no counts: one note for them all, not one per test set
        ci_notes = notes if kind != TABLE_KIND else []
        id_lo, id_hi = _intervals(pts, "id", id_split, ci_notes)
        ood_lo, ood_hi = _intervals(pts, "ood", ood, ci_notes)
        if testbed:
            predicted, pair_fits, lines = _testbed_line(pts, id_split, ood, args)
        else:
            predicted, pair_fits, lines = _method_line(pts, where, id_split, ood, args, notes)
        fits += [{"kind": kind, **f} for f in pair_fits]
        pair_rows = []
        for i, (_, p) in enumerate(pts.iterrows()):
            pair_rows.append({"kind": kind, "run": p["run"], "method": p["method"], "id": id_split,
                              "ood": ood, "id_acc": float(p["accuracy_id"]), "id_ci_lo": id_lo[i],
                              "id_ci_hi": id_hi[i], "ood_acc": float(p["accuracy_ood"]),
                              "ood_ci_lo": ood_lo[i], "ood_ci_hi": ood_hi[i],
                              "predicted_ood": float(predicted[i]),
                              "er": float(p["accuracy_ood"]) - float(predicted[i])})
        rows += pair_rows
        label = ("imagenet-testbed line (standard models)" if testbed
                 else f"line of {args.baseline!r} runs")
        panels.append(Panel(id_split, ood, pd.DataFrame(pair_rows), lines, label,
                            None if kind is None or (isinstance(kind, float) and math.isnan(kind))
                            else str(kind)))
    return rows, fits, panels


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


def _points(args: argparse.Namespace) -> pd.DataFrame:
    """The collected runs and the --table rows, in one table of the shape ``collect`` gives."""
    parts = []
    if args.run_dirs:
        col = collect(args.run_dirs)
        parts.append(col.table)
    if args.table is not None:
        required: list[str] = []
        for spec in args.ood or []:
            ood, _, id_split = spec.partition(":")
            required += [ood, id_split or args.id]
        required = [r if r not in FULL_VAL else "imagenet" for r in dict.fromkeys(required)]
        tab = read_accuracy_table(args.table, required)
        if args.ood is None and not any(
                o in set(tab["split"]) for o in TESTBED_SHIFTS):
            raise UserError(f"{args.table}: missing columns: no shifted ImageNet column "
                            f"({', '.join(TESTBED_SHIFTS)})")
        parts.append(tab)
    if not parts:
        raise UserError("give run directories, --table FILE.csv, or both")
    parts = [p for p in parts if not p.empty]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["run", "kind", "method", "split", "accuracy", "correct", "n"])


def run(args: argparse.Namespace) -> int:
    if args.table is not None and not args.run_dirs and args.id == "id":
        args.id = "imagenet"  # a table's name for full ImageNet val
    table = _points(args)
    if args.table is not None and args.run_dirs and args.id in FULL_VAL:
        # the table's full val joins the runs' ID split (``id`` in the Figure 3 configs)
        is_val = (table["kind"] == TABLE_KIND) & (table["split"] == "imagenet")
        table.loc[is_val, "split"] = args.id
    if args.kind is not None:
        table = table[table["kind"] == args.kind]
    pairs, explicit = _pairs(args, set(table["split"]) if "split" in table.columns else set())
    notes: list[str] = []
    rows, fits, panels = [], [], []
    for kind, t in table.groupby("kind", sort=False, dropna=False):
        r, f, p = _kind_rows(t, kind, pairs, explicit, args, notes)
        rows += r
        fits += f
        panels += p
    if not rows:
        where = " ".join([*args.run_dirs, *([args.table] if args.table else [])])
        if notes:
            raise UserError(notes[0])
        if "split" in table.columns and len(table):
            found = ", ".join(sorted(map(str, set(table["split"]))))
            raise UserError(f"no run under {where} has both an ID and an OOD test set to compare "
                            f"(test sets found: {found}); see --id and --ood")
        raise UserError(f"no completed run under {where}")
    wide = _wide(pd.DataFrame(rows), pairs, notes)
    if (table["kind"] == TABLE_KIND).any():
        notes.insert(0, "table rows carry no image counts: no Clopper-Pearson intervals")
    if args.plot:
        plot_panels(panels, args.plot, transform_kind=args.transform)
        notes.append(f"plot written to {args.plot}")
    if args.format == "json":
        print(json.dumps({"fits": [{k: _json_value(v) for k, v in f.items()} for f in fits],
                          "rows": [{k: _json_value(v) for k, v in r.items()}
                                   for r in wide.to_dict("records")],
                          "notes": notes}, indent=2))
        return 0
    fit_lines = [_fit_line(f, full=True) for f in fits]
    if args.format == "csv":
        print(wide.to_csv(index=False), end="")
        for line in fit_lines + [f"note: {n}" for n in notes]:
            print(line, file=sys.stderr)
        return 0
    for f in fits:
        print(_fit_line(f, full=False))
    print(to_markdown(wide.dropna(axis=1, how="all")))
    for n in notes:
        print(f"note: {n}")
    return 0


def _fit_line(f: dict[str, Any], *, full: bool) -> str:
    num = repr if full else (lambda v: f"{v:.3f}")
    piece = "" if f["piece"] == "all" else f" [{f['id']} {f['piece']} {num(f['pivot'])}]"
    what = (f"{f['baseline_runs']} testbed standard models" if f["baseline"] == TESTBED
            else f"{f['baseline_runs']} runs of {f['baseline']!r}")
    return (f"{f['kind']}: {f['id']} -> {f['ood']}{piece}: {f['transform']}-line slope "
            f"{num(f['slope'])}, intercept {num(f['intercept'])}, r = {num(f['r'])} ({what})")
