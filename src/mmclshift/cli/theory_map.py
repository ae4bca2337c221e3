"""Evaluate the closed-form theory on a 2-D grid of config keys and map where MMCL beats SL.

Each grid point's values are exactly those of ``mmclshift theory`` with the two keys overridden;
the grid is evaluated in one batch. ``--json`` prints one line per point holding both keys' values
and that point's ``theory --json`` records; ``--out DIR`` writes map.jsonl, summary.json and the
figure theory_map.png/.svg (MMCL - SL OOD accuracy with its zero contour, MMCL and SL OOD accuracy;
hatched where MMCL's prediction is a range because of a tie at the rank cut).

Example:
  mmclshift theory-map configs/data_model_1.yaml --x data.pi_core=0.05:1:50 --y data.p_spu=0.5:0.99:50 --out maps/dm1
"""

from __future__ import annotations

import argparse
import json
import sys

from mmclshift.analysis.theory_map import (
    MAP_FILES,
    check_grid,
    parse_axis,
    summarise,
    theory_map,
    write_map,
)
from mmclshift.cli.common import add_config_args
from mmclshift.experiments import load_config
from mmclshift.runs import refuse_foreign_folder

HELP = "closed-form MMCL vs SL predictions over a 2-D grid of config keys (a map of each claim)"


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)
    parser.add_argument("--x", required=True, metavar="KEY=a:b:n", help="first axis: n values from a to b")
    parser.add_argument("--y", required=True, metavar="KEY=a:b:n", help="second axis")
    parser.add_argument("--json", action="store_true", help="one JSON line per grid point")
    parser.add_argument("--out", metavar="DIR", help="write map.jsonl, summary.json and the figure here")


def run(args: argparse.Namespace) -> int:
    xkey, xs = parse_axis(args.x)
    ykey, ys = parse_axis(args.y)
    check_grid(xkey, xs, ykey, ys)  # before the config is read or any point computed
    if args.out:
        refuse_foreign_folder(args.out, MAP_FILES, "theory-map folder")
    cfg = load_config(args.config, args.overrides)
    rows = theory_map(cfg, xkey, xs, ykey, ys)
    ties = sum(any("range" in r for r in row["records"]) for row in rows)
    if ties:
        print(f"mmclshift theory-map: warning: at {ties} of {len(rows)} points embed_dim cuts a tied "
              "block of singular values; MMCL's prediction there is a range (accuracy null)", file=sys.stderr)
    if args.json:
        for row in rows:
            sys.stdout.write(json.dumps(row) + "\n")
    if args.out:
        res = write_map(rows, xkey, ykey, args.out, title=f"{cfg.name}")
        if not args.json:
            print(json.dumps(res["summary"], indent=2))
            print("figures: " + ", ".join(res["figures"]))
    elif not args.json:
        print(json.dumps({"x": xkey, "y": ykey, **summarise(rows, xkey, ykey)}, indent=2))
    return 0
