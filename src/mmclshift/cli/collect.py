"""Collect completed runs into one tidy table (CSV, Markdown, LaTeX).

A finished run whose config or metrics cannot be read back (deleted, emptied, torn) is named on
stderr and left out; the others are collected. --strict makes that an error.

Example:
  mmclshift collect runs/demo -o results/demo
  mmclshift collect runs/sweep1 runs/sweep2 --by-seed
"""

from __future__ import annotations

import argparse
import sys

from mmclshift.analysis.collect import collect, group_over_seeds, to_markdown, write_tables

HELP = "collect completed run directories into tables (one row per run x method x test set)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", help="run directories or folders containing them")
    parser.add_argument("-o", "--out", default=None,
                        help="write OUT.csv, OUT.md, OUT.tex (and OUT_by_seed.* with --by-seed)")
    parser.add_argument("--by-seed", action="store_true",
                        help="also group over seeds (mean, standard error)")
    parser.add_argument("--strict", action="store_true",
                        help="a damaged finished run is an error (default: named on stderr, left out)")


def run(args: argparse.Namespace) -> int:
    col = collect(args.run_dirs, strict=args.strict)
    print(col.summary(), file=sys.stderr)
    cols = [c for c in ["kind", "name", "seed", "method", "split", "accuracy", "n", "theory",
                        *col.varying] if c in col.table.columns]
    print(to_markdown(col.table[cols]))
    grouped = group_over_seeds(col.table, [k for k in col.varying if k in col.table.columns])
    if args.by_seed:
        print(to_markdown(grouped))
    if args.out:
        paths = write_tables(col.table, args.out)
        if args.by_seed:
            paths += write_tables(grouped, f"{args.out}_by_seed")
        print("wrote " + ", ".join(map(str, paths)), file=sys.stderr)
    return 0
