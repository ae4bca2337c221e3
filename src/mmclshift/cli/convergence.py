"""Follow a grid's Figure 2 statistics over training: have they stopped moving, and since when?

Reads the learning curves (``curve`` records, logged with ``train.eval_every`` > 0) of the finished
semi-synthetic grid runs under RUN_DIRS and prints each Figure 2 / 5 claim's statistic (mean over
seeds, 95% t-interval) at every curve step, the range over pi_spu of MMCL's OOD accuracy at every
pi_core, and per statistic: the step since which every later mean lies inside the last interval
(settled since), whether that is no later than the start of the last TAIL of training (stopped
moving), and how far it moved over that tail (drift). With --out, writes the same as JSON.

Example:
  mmclshift convergence runs/fig2-smoke
  mmclshift convergence runs/demo/semisynthetic --tail 0.5 --out runs/demo/convergence.json
"""

from __future__ import annotations

import argparse
import json

from mmclshift.analysis.convergence import (
    DEFAULT_TAIL,
    convergence,
    format_convergence,
    write_convergence,
)

HELP = "a grid's Figure 2 statistics against training steps: settled or still moving"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", help="grid run directories or folders containing them")
    parser.add_argument("--tail", type=float, default=DEFAULT_TAIL,
                        help="fraction of training at the end over which a statistic must have "
                             f"settled to count as stopped (default {DEFAULT_TAIL})")
    parser.add_argument("--out", default=None, help="also write the curves and verdicts to this JSON file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def run(args: argparse.Namespace) -> int:
    conv = convergence(args.run_dirs, tail=args.tail)
    if args.json:
        print(json.dumps(conv.to_json(), indent=1))
    else:
        print(format_convergence(conv))
    if args.out:
        print(f"wrote {write_convergence(conv, args.out)}")
    return 0
