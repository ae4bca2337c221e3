"""Run the Figure 2 grid of a semi-synthetic config: MMCL over pi_core x pi_spu (and seeds) vs SL.

Each run gets its own directory under --out; runs already done are skipped, so an interrupted
grid resumes where it stopped. A cell directory holding another config (say, other train.steps)
is refused before anything trains, unless --force, which moves it aside and retrains it. Prints MMCL's and SL's accuracy on the chosen test split
(Figure 2: ood; Figure 5: id, from the same run directories).

Example:
  mmclshift grid configs/fig2_smoke.yaml --out runs/fig2-smoke
  mmclshift grid configs/fig2_mnist.yaml data.root=data/mnist --out runs/fig2 --split id
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mmclshift.cli.common import add_config_args, add_force_arg, print_json_lines
from mmclshift.errors import UserError
from mmclshift.runs import refuse_foreign_folder, run_dir_name

HELP = "run a semi-synthetic pi_core x pi_spu grid (Figure 2) and print the MMCL-vs-SL table"


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)
    parser.add_argument("--out", default=None, help="folder of the grid's run directories "
                        "(default: runs/<name>-grid-<identity hash>)")
    parser.add_argument("--split", default="ood", help="test split to tabulate (ood, ood_reversed, id)")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_force_arg(parser)


def run(args: argparse.Namespace) -> int:
    from mmclshift.analysis.figure2 import grid_figure2
    from mmclshift.experiments import load_config, semisynthetic

    cfg = load_config(args.config, args.overrides)
    if not isinstance(cfg, semisynthetic.SemiSyntheticExperiment):
        raise UserError(f"{args.config}: grid needs a config of kind 'semisynthetic'; got {cfg.kind!r}")
    out = Path(args.out) if args.out else Path("runs") / run_dir_name(cfg, f"{cfg.name}-grid")
    refuse_foreign_folder(out, [], "grid folder", pattern=r"(sl-seed|mmcl-core)")  # cell names
    result = semisynthetic.run_grid(cfg, out, progress=not args.no_progress and not args.json,
                                    split=args.split, force=args.force)
    fig, text = grid_figure2(cfg, result["runs"], args.split)
    if args.json:
        print_json_lines(fig.rows)
    else:
        print(text)
        print(f"\n[{len(fig.rows)} cells in {result['seconds']:.1f}s; runs trained: {result['stacked']} "
              f"stacked, {result['one_at_a_time']} one at a time; run directories under {out}]")
    return 0
