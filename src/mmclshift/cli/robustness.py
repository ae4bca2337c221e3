"""Effective robustness of collected runs: OOD accuracy above the line fitted (on logit axes by
default) to the baseline method's runs, averaged over OOD test sets.

Example:
  mmclshift robustness runs/sweep --id id --ood ood --ood ood_reversed --baseline sl
  mmclshift robustness runs/real --id imagenet --ood imagenet-v2 --ood imagenet-sketch
"""

from __future__ import annotations

import argparse

import pandas as pd

from mmclshift.analysis.collect import collect, to_markdown
from mmclshift.analysis.figures import er_points
from mmclshift.analysis.robustness import effective_robustness
from mmclshift.errors import UserError

HELP = "effective robustness of runs against a baseline method's ID-OOD line"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", help="run directories or folders containing them")
    parser.add_argument("--id", default="id", help="ID test set (x axis)")
    parser.add_argument("--ood", action="append", default=None,
                        help="OOD test set (repeat for several; ER is averaged over them)")
    parser.add_argument("--baseline", default="sl", help="method whose runs define the line")
    parser.add_argument("--kind", default=None,
                        help="only runs of this experiment kind (a line across kinds rarely makes sense)")
    parser.add_argument("--transform", choices=["logit", "probit", "none"], default="logit")


def run(args: argparse.Namespace) -> int:
    col = collect(args.run_dirs)
    table = col.table if args.kind is None else col.table[col.table["kind"] == args.kind]
    oods = args.ood or ["ood"]
    merged = None
    for ood in oods:
        pts = er_points(table, args.id, ood)
        if pts.empty:
            raise UserError(f"no completed run has both test sets {args.id!r} and {ood!r}")
        if (pts["method"] == args.baseline).sum() < 2:
            raise UserError(f"the fit needs at least 2 runs of baseline method {args.baseline!r} "
                            f"with {args.id!r} and {ood!r}; found {(pts['method'] == args.baseline).sum()}")
        er = effective_robustness(pts["accuracy_id"], pts["accuracy_ood"],
                                  (pts["method"] == args.baseline).to_numpy(), kind=args.transform,
                                  id_counts=(pts["correct_id"], pts["n_id"]),
                                  ood_counts=(pts["correct_ood"], pts["n_ood"]), n_boot=0)
        part = pd.DataFrame({"run": pts["run"], "method": pts["method"], "id_acc": pts["accuracy_id"],
                             f"{ood}_acc": pts["accuracy_ood"],
                             f"{ood}_ci": [f"[{a:.3f}, {b:.3f}]" for a, b in zip(*er.ood_ci, strict=True)],
                             f"er_{ood}": er.er})
        merged = part if merged is None else merged.merge(
            part.drop(columns=["id_acc"]), on=["run", "method"])
        print(f"{ood}: logit-line slope {er.fit.slope:.3f}, intercept {er.fit.intercept:.3f}, "
              f"r = {er.fit.rvalue:.3f}")
    merged["er_mean"] = merged[[f"er_{o}" for o in oods]].mean(axis=1)
    print(to_markdown(merged))
    return 0
