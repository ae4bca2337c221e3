"""Print the paper's closed-form predictions (ID and OOD accuracy of MMCL and SL) for a config.

Example:
  mmclshift theory configs/data_model_1.yaml data.pi_core=0.5
  mmclshift theory configs/data_model_2.yaml --json
"""

from __future__ import annotations

import argparse

from mmclshift import experiments
from mmclshift.cli.common import add_config_args, print_json_lines
from mmclshift.report_text import format_table

HELP = "closed-form ID/OOD accuracy predictions for a synthetic data-model config"


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")


def run(args: argparse.Namespace) -> int:
    cfg = experiments.load_config(args.config, args.overrides)
    records = experiments.predict(cfg)
    if args.json:
        print_json_lines(records)
    else:
        print(format_table(records, ["method", "split", "accuracy"], title=f"theory: {cfg.name}"))
        names, C = experiments.cross_covariance(cfg)
        rows = [{"": a, **{b: float(C[i, j]) for j, b in enumerate(names)}} for i, a in enumerate(names)]
        print()
        print(format_table(rows, ["", *names], title="C^Tr = Cov(image features, caption features) (Lemma 3.2)"))
    return 0
