"""Train the models an experiment config describes and evaluate them on its ID and OOD test sets.

Writes a run directory (config.yaml, identity.json, env.json, metrics.jsonl, checkpoints/, done).
Rerunning the same config into the same directory resumes it (or, if it finished, prints its
results without training); a different config there is refused unless --force, which moves the
old run aside (``<out>.replaced-<time>``). Overrides may come before or after the flags.

Example:
  mmclshift train configs/data_model_1.yaml seed=3 --out runs/dm1-seed3
  mmclshift train configs/data_model_2.yaml data.pi_core=0.5 --json
  mmclshift train configs/fig3a_mscoco.yaml --smoke train.steps=4
  mmclshift train configs/data_model_1.yaml --seeds 0 1 2 --out runs/dm1   # runs/dm1/seed0, ...
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mmclshift import experiments
from mmclshift.cli.common import add_config_args, add_force_arg, print_json_lines, seed_arg
from mmclshift.config import apply_overrides, build_config, replace, to_dict
from mmclshift.errors import UserError
from mmclshift.report_text import format_table
from mmclshift.runs import check_run_dir, refuse_foreign_folder, run_dir_name

HELP = "train MMCL and SL for a config; evaluate on ID and OOD test sets"


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)
    parser.add_argument("--out", default=None,
                        help="run directory (default: runs/<name>-<identity hash>)")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--seeds", type=seed_arg, nargs="+", default=None,
                        help="run once per seed, into OUT/seed<N> (seed overrides the config's)")
    parser.add_argument("--smoke", action="store_true",
                        help="run on small built-in fixtures (kinds with a smoke path, e.g. clip_real);"
                        " your key=value overrides still win over the config's smoke settings")
    add_force_arg(parser)


def smoke(cfg: Any, out: Path, overrides: list[str], *, build: bool) -> Any:
    """``cfg`` rewritten by its kind's smoke path, then the user's overrides on top."""
    if cfg.kind not in experiments.SMOKE:
        raise UserError(f"config kind {cfg.kind!r} has no --smoke path")
    small = experiments.SMOKE[cfg.kind](cfg, out, build=build)
    data = apply_overrides(to_dict(small), overrides)
    return build_config(data, experiments.CONFIG_KINDS, source="--smoke config with your overrides")


def run(args: argparse.Namespace) -> int:
    cfg = experiments.load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / run_dir_name(cfg, cfg.name)
    if args.smoke:
        small = smoke(cfg, out, args.overrides, build=False)
        # refuse (or move aside) another config's run before the fixtures are written into it
        check_run_dir(out, small, force=args.force)
        cfg = smoke(cfg, out, args.overrides, build=True)
    if args.seeds is not None:  # OUT holds one run per seed: refuse a user's folder of other files
        refuse_foreign_folder(out, [], "folder of seed runs", pattern=r"seed\d+$")
    runs = [(cfg, out)] if args.seeds is None else [
        (replace(cfg, seed=s), out / f"seed{s}") for s in dict.fromkeys(args.seeds)]
    for run_cfg, run_out in runs:
        records = experiments.run(run_cfg, run_out, force=args.force,
                                  progress=not args.no_progress and not args.json)
        if args.json:
            print_json_lines(records)
        else:
            cols = ["method", "split", "accuracy", "n", "theory"]
            title = f"{run_cfg.name} -> {run_out}" if args.seeds is None else \
                f"{run_cfg.name} (seed {run_cfg.seed}) -> {run_out}"
            print(format_table(records, cols, title=title))
    return 0
