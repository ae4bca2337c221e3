"""Train the models an experiment config describes and evaluate them on its ID and OOD test sets.

Writes a run directory (config.yaml, identity.json, env.json, metrics.jsonl, checkpoints/, done).
Rerunning the same config into the same directory resumes it (or, if it finished, prints its
results without training); a different config there is refused unless --force, which moves the
old run aside (``<out>.replaced-<time>``). Overrides may come before or after the flags.

Example:
  mmclshift train configs/data_model_1.yaml seed=3 --out runs/dm1-seed3
  mmclshift train configs/data_model_2.yaml data.pi_core=0.5 --json
  mmclshift train configs/fig3a_mscoco.yaml --smoke train.steps=4
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mmclshift import experiments
from mmclshift.cli.common import add_config_args, add_force_arg, print_json_lines
from mmclshift.config import apply_overrides, build_config, to_dict
from mmclshift.errors import UserError
from mmclshift.report_text import format_table
from mmclshift.runs import check_run_dir, config_hash

HELP = "train MMCL and SL for a config; evaluate on ID and OOD test sets"


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)
    parser.add_argument("--out", default=None,
                        help="run directory (default: runs/<name>-<config hash>)")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
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
    out = Path(args.out) if args.out else Path("runs") / f"{cfg.name}-{config_hash(cfg)}"
    if args.smoke:
        small = smoke(cfg, out, args.overrides, build=False)
        # refuse (or move aside) another config's run before the fixtures are written into it
        check_run_dir(out, small, force=args.force)
        cfg = smoke(cfg, out, args.overrides, build=True)
    records = experiments.run(cfg, out, force=args.force,
                              progress=not args.no_progress and not args.json)
    if args.json:
        print_json_lines(records)
    else:
        cols = ["method", "split", "accuracy", "n", "theory"]
        print(format_table(records, cols, title=f"{cfg.name} -> {out}"))
    return 0
