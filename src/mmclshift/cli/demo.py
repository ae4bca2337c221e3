"""Run the main job on the embedded default data and print the results.

The theory tier: for Data Model 1 and Data Model 2 at their default configs, train linear MMCL
and SL, and print ID and OOD accuracy beside the theory's prediction.

Example:
  mmclshift demo --out runs/demo
"""

from __future__ import annotations

import argparse

from mmclshift.demo import run_demo

HELP = "run the paper's experiments end to end on the embedded default data"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="folder for the demo's run directories")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    run_demo(args.out, progress=not args.no_progress)
    return 0
