"""Compute every paper claim from a set of runs: statistic, 95% interval over seeds, verdict.

Prints one row per claim and writes OUT/claims.json (OUT defaults to the first RUN_DIRS folder).
A claim reads only runs that agree on every config key but the seed and the axes it varies by
design: a folder holding several configs gives one table per group, named by the keys that
distinguish it (--group KEY=VALUE picks one). Runs moved aside by --force are not read. Verdicts
are Holm-corrected over the claims of one table; the verdict before correction is printed beside.
A claim the runs cannot support is named on one line with the reason; the others are still
computed and written.

Example:
  mmclshift claims runs/demo
  mmclshift claims runs/fig2 runs/theory --out results/
  mmclshift claims runs/ --group n_train=20000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmclshift.analysis.claims import (
    CLAIMS_FILE,
    claims_tables,
    error_line,
    evaluate_claims,
    write_claims,
)
from mmclshift.analysis.collect import collect
from mmclshift.analysis.groups import parse_group_filter

HELP = "compute the paper's claims from runs: statistic, 95% interval, verdict (claims.json)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", help="run directories or folders containing them")
    parser.add_argument("--out", default=None,
                        help=f"folder for {CLAIMS_FILE} (default: the first run folder given)")
    parser.add_argument("--group", action="append", default=[], metavar="KEY=VALUE",
                        help="only the group of runs whose distinguishing config KEY has VALUE "
                             "(repeatable)")


def run(args: argparse.Namespace) -> int:
    wanted = parse_group_filter(args.group)
    col = collect(args.run_dirs)
    print(col.summary(), file=sys.stderr)
    out = Path(args.out if args.out else args.run_dirs[0])
    results, errors = evaluate_claims(col.table, relative_to=out, group=wanted)
    for name, reason in errors:
        print(error_line(name, reason), file=sys.stderr)
    if results:
        print(claims_tables(results))
    path = write_claims(results, out / CLAIMS_FILE)
    print(f"wrote {path} ({len(results)} claim(s) computed, {len(errors)} not computed)", file=sys.stderr)
    return 0 if results else 1
