"""Copy a finished reproduction's results into a small folder to commit or share.

Reads a demo / reproduction folder (``mmclshift demo --out DIR``, ``make reproduce``) and writes to
--out: claims.json, runs.csv (one row per run x method x test set), by_seed.csv (grouped over
seeds), the Figure 2 and 5 images, convergence.json (where the folder has one), provenance.json
(command, commit, measured wall time, machine, training digits, steps) and a README.md with the
claims table. A run that is damaged or unfinished is an error: nothing partial is published.

Example:
  mmclshift publish runs/reproduce --out results/fig2-mnist
  mmclshift publish runs/demo --out results/demo
"""

from __future__ import annotations

import argparse

from mmclshift.analysis.publish import publish

HELP = "copy a finished reproduction's claims, tables, figures and provenance into a folder to commit"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="the demo / reproduction folder (its --out)")
    parser.add_argument("--out", required=True, help="folder to write the results into")


def run(args: argparse.Namespace) -> int:
    for path in publish(args.folder, args.out):
        print(path)
    return 0
