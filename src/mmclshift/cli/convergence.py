"""Follow a grid's Figure 2 statistics over training: have they stopped moving, and since when?

Reads the learning curves (``curve`` records, logged with ``train.eval_every`` > 0) of the finished
semi-synthetic grid runs under RUN_DIRS and prints each Figure 2 / 5 claim's statistic (mean over
seeds, 95% t-interval) at every curve step, the range over pi_spu of MMCL's OOD accuracy at every
pi_core, and per statistic: the step since which every later mean lies inside the last interval
(settled since), whether that is no later than the start of the last TAIL of training (stopped
moving), and how far it moved over that tail (drift). With --out, writes the same as JSON.

Within one run the learning rate decays to 0 (cosine), so every statistic slows down at the end
of any budget: settling within a run says the run has done what its schedule allows, not that a
longer budget would give the same values. --against REF_JSON compares budgets: these runs' final
statistics beside a longer-trained grid's (measured on the reference's pi values).

Example:
  mmclshift convergence runs/fig2-smoke
  mmclshift convergence runs/demo/semisynthetic --tail 0.5 --out runs/demo/convergence.json
  mmclshift convergence runs/demo/semisynthetic --against results/fig2-smoke-budget/convergence.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmclshift.analysis.collect import collect
from mmclshift.analysis.convergence import (
    DEFAULT_TAIL,
    budget_report,
    convergence,
    format_convergence,
    write_convergence,
)
from mmclshift.errors import UserError

HELP = "a grid's Figure 2 statistics against training steps: settled or still moving"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", help="grid run directories or folders containing them")
    parser.add_argument("--tail", type=float, default=DEFAULT_TAIL,
                        help="fraction of training at the end over which a statistic must have "
                             f"settled to count as stopped (default {DEFAULT_TAIL})")
    parser.add_argument("--out", default=None, help="also write the curves and verdicts to this JSON file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--against", default=None, metavar="REF_JSON",
                        help="instead: set these runs' final statistics beside those of a longer "
                             "training of the same grid (a JSON this command wrote with --out)")


def run(args: argparse.Namespace) -> int:
    if args.against:
        if not Path(args.against).is_file():
            raise UserError(f"{args.against}: no such reference file")
        text = budget_report(collect(args.run_dirs).table, args.against)
        if not text:
            raise UserError(f"{args.against}: a reference for another grid (config name or setting) than these runs")
        print(text)
        return 0
    conv = convergence(args.run_dirs, tail=args.tail)
    if args.json:
        print(json.dumps(conv.to_json(), indent=1))
    else:
        print(format_convergence(conv))
    if args.out:
        print(f"wrote {write_convergence(conv, args.out)}")
    return 0
