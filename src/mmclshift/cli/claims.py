"""Compute every paper claim from a set of runs: statistic, 95% interval over seeds, verdict.

Prints one row per claim and writes OUT/claims.json (OUT defaults to the first RUN_DIRS folder).
A claim the runs cannot support is named on one line with the reason; the others are still
computed and written.

Example:
  mmclshift claims runs/demo
  mmclshift claims runs/fig2 runs/theory --out results/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmclshift.analysis.claims import (
    CLAIMS_FILE,
    claims_rows,
    error_line,
    evaluate_claims,
    write_claims,
)
from mmclshift.analysis.collect import collect
from mmclshift.report_text import format_table

HELP = "compute the paper's claims from runs: statistic, 95% interval, verdict (claims.json)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", help="run directories or folders containing them")
    parser.add_argument("--out", default=None,
                        help=f"folder for {CLAIMS_FILE} (default: the first run folder given)")
    parser.add_argument("--strict", action="store_true", help="a damaged finished run is an error")


def run(args: argparse.Namespace) -> int:
    col = collect(args.run_dirs, strict=args.strict)
    print(col.summary(), file=sys.stderr)
    out = Path(args.out if args.out else args.run_dirs[0])
    results, errors = evaluate_claims(col.table, relative_to=out)
    for name, reason in errors:
        print(error_line(name, reason), file=sys.stderr)
    if results:
        print(format_table(claims_rows(results),
                           ["claim", "statistic", "95% CI", "holds if", "n_seeds", "verdict"],
                           title="Claims (statistic: mean over seeds; 95% t-interval over seeds)"))
    path = write_claims(results, out / CLAIMS_FILE)
    print(f"wrote {path} ({len(results)} claim(s) computed, {len(errors)} not computed)", file=sys.stderr)
    return 0 if results else 1
