"""Train the models an experiment config describes and evaluate them on its ID and OOD test sets.

Writes a run directory (config.yaml, env.json, metrics.jsonl, checkpoints/, done).

Example:
  mmclshift train configs/data_model_1.yaml seed=3 --out runs/dm1-seed3
  mmclshift train configs/data_model_2.yaml data.pi_core=0.5 --json
  mmclshift train configs/data_model_1.yaml --seeds 0 1 2 --out runs/dm1   # runs/dm1/seed0, ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mmclshift import experiments
from mmclshift.cli.common import add_config_args, print_json_lines
from mmclshift.config import load_config, replace
from mmclshift.errors import UserError
from mmclshift.report_text import format_table
from mmclshift.runs import config_hash

HELP = "train MMCL and SL for a config; evaluate on ID and OOD test sets"


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)
    parser.add_argument("--out", default=None,
                        help="run directory (default: runs/<name>-<config hash>)")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="run once per seed, into OUT/seed<N> (seed overrides the config's)")
    parser.add_argument("--smoke", action="store_true",
                        help="run on small built-in fixtures (kinds with a smoke path, e.g. clip_real)")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / f"{cfg.name}-{config_hash(cfg)}"
    if getattr(args, "smoke", False):
        if cfg.kind not in experiments.SMOKE:
            raise UserError(f"config kind {cfg.kind!r} has no --smoke path")
        cfg = experiments.SMOKE[cfg.kind](cfg, out)
    runs = [(cfg, out)] if args.seeds is None else [
        (replace(cfg, seed=s), out / f"seed{s}") for s in dict.fromkeys(args.seeds)]
    for run_cfg, run_out in runs:
        records = experiments.run(run_cfg, str(run_out), progress=not args.no_progress and not args.json)
        if args.json:
            print_json_lines(records)
        else:
            cols = ["method", "split", "accuracy", "n", "theory"]
            print(format_table(records, cols, title=f"{run_cfg.name} (seed {run_cfg.seed}) -> {run_out}"))
    return 0
