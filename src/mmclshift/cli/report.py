"""Write one self-contained HTML report (figures embedded) of a set of runs.

Example:
  mmclshift report runs/demo -o report.html --figures figures/
  mmclshift report runs/demo -o report.html --default-maps     # + one theory map per data model
  mmclshift report runs/dm1 -o report.html --maps maps/dm1     # + maps from mmclshift theory-map
"""

from __future__ import annotations

import argparse

from mmclshift.analysis.collect import check_runs
from mmclshift.analysis.report import write_report

HELP = "self-contained HTML report: figures vs the paper's claims, tables, theory vs measurement"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", help="run directories or folders containing them")
    parser.add_argument("-o", "--out", default="report.html", help="output HTML file")
    parser.add_argument("--figures", default=None, help="also keep the figures (PNG, SVG) here")
    parser.add_argument("--maps", nargs="+", default=[], metavar="DIR",
                        help="theory-map folders (mmclshift theory-map --out DIR) to show")
    parser.add_argument("--default-maps", action="store_true",
                        help="compute one theory map per data model found among the runs "
                             "(pi_core x p_spu at the defaults; a few seconds to a minute)")
    parser.add_argument("--strict", action="store_true", help="a damaged finished run is an error")


def run(args: argparse.Namespace) -> int:
    if args.strict:
        check_runs(args.run_dirs)
    path = write_report(args.run_dirs, args.out, figures_dir=args.figures, maps=args.maps,
                        default_maps=args.default_maps)
    print(f"report: {path.resolve()}")
    return 0
