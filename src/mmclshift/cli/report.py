"""Write one self-contained HTML report (figures embedded) of a set of runs.

Example:
  mmclshift report runs/demo -o report.html --figures figures/
"""

from __future__ import annotations

import argparse

from mmclshift.analysis.report import write_report

HELP = "self-contained HTML report: figures vs the paper's claims, tables, theory vs measurement"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", help="run directories or folders containing them")
    parser.add_argument("-o", "--out", default="report.html", help="output HTML file")
    parser.add_argument("--figures", default=None, help="also keep the figures (PNG, SVG) here")


def run(args: argparse.Namespace) -> int:
    path = write_report(args.run_dirs, args.out, figures_dir=args.figures)
    print(f"report: {path.resolve()}")
    return 0
