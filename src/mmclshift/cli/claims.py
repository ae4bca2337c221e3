"""Compute every paper claim from a set of runs: statistic, 95% interval over seeds, verdict.

Prints one row per claim and writes OUT/claims.json (OUT defaults to the first RUN_DIRS folder).
A claim reads only runs that agree on every config key but the seed and the axes it varies by
design: a folder holding several configs gives one table per group, named by the keys that
distinguish it (--group KEY=VALUE picks one). Runs moved aside by --force are not read. Verdicts
are Holm-corrected over the claims of one table; the verdict before correction is printed beside.
A claim the runs cannot support is named on one line with the reason; the others are still
computed and written.

With --decide DIR, the claims left inconclusive by the width of their interval get more seeds:
for each config such a claim read, new runs of new seeds under DIR/decide/ (up to --budget seeds
per claim, default 10; resumable: a rerun skips the runs done), then the claims are recomputed.
Claims whose premise is missing (a baseline that cannot carry a line) are not given seeds.

Example:
  mmclshift claims runs/demo
  mmclshift claims --decide runs/demo --budget 6
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
from mmclshift.analysis.decide import DEFAULT_BUDGET, describe_open, plan, run_plan
from mmclshift.analysis.groups import parse_group_filter
from mmclshift.cli.common import int_at_least, refuse_foreign_out
from mmclshift.errors import UserError

HELP = "compute the paper's claims from runs: statistic, 95% interval, verdict (claims.json)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", help="run directories or folders containing them")
    parser.add_argument("--out", default=None,
                        help=f"folder for {CLAIMS_FILE} (default: the first run folder given)")
    parser.add_argument("--decide", action="store_true",
                        help="add seeds to the claims left inconclusive by their interval's width, "
                             "then recompute (one run folder)")
    parser.add_argument("--budget", type=int_at_least(1), default=DEFAULT_BUDGET,
                        help=f"--decide: at most this many seeds per claim (default {DEFAULT_BUDGET})")
    parser.add_argument("--no-progress", action="store_true", help="--decide: hide progress bars")
    parser.add_argument("--strict", action="store_true", help="a damaged finished run is an error")
    parser.add_argument("--group", action="append", default=[], metavar="KEY=VALUE",
                        help="only the group of runs whose distinguishing config KEY has VALUE "
                             "(repeatable)")


def run(args: argparse.Namespace) -> int:
    wanted = parse_group_filter(args.group)
    if args.out:  # before any seed is trained or any run read
        refuse_foreign_out(args.out, [CLAIMS_FILE, "report.html"], "claims folder")
    if args.decide:
        if len(args.run_dirs) != 1:
            raise UserError("--decide takes one run folder (new seeds are written under it)")
        root = Path(args.run_dirs[0])
        results, _ = evaluate_claims(collect([root], strict=args.strict).table, group=wanted)
        plans = plan(results, root, args.budget)
        for p in plans:
            need = "no estimate" if p.n_needed is None else f"about {p.n_needed} needed"
            print(f"decide {p.claim}: {p.n_now} seed(s), {need}; adding seeds "
                  f"{', '.join(map(str, p.new_seeds)) or '(none: budget reached)'} "
                  f"({len(p.jobs)} run(s))", file=sys.stderr)
        n = run_plan(plans, progress=not args.no_progress)
        print(f"decide: {n} run(s) planned under {root / 'decide'} (done ones skipped)", file=sys.stderr)
    col = collect(args.run_dirs, strict=args.strict)
    print(col.summary(), file=sys.stderr)
    out = Path(args.out if args.out else args.run_dirs[0])
    results, errors = evaluate_claims(col.table, relative_to=out, group=wanted)
    for name, reason in errors:
        print(error_line(name, reason), file=sys.stderr)
    if results:
        print(claims_tables(results))
        for line in describe_open(results):
            print(f"open: {line}", file=sys.stderr)
    path = write_claims(results, out / CLAIMS_FILE)
    print(f"wrote {path} ({len(results)} claim(s) computed, {len(errors)} not computed)", file=sys.stderr)
    return 0 if results else 1
