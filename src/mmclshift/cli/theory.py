"""Print the paper's closed-form predictions (ID and OOD accuracy of MMCL and SL) for a config.

Where the rank-p embedding cuts a tied block of singular values of C^Tr, MMCL's minimiser is not
unique: the record then carries the range of the accuracy over all minimisers and a warning, and
its accuracy is null. Warnings (ties, parameters outside the paper's assumptions) go to stderr,
one line each.

Example:
  mmclshift theory configs/data_model_1.yaml data.pi_core=0.5
  mmclshift theory configs/data_model_2.yaml --json
"""

from __future__ import annotations

import argparse
import sys

from mmclshift import experiments
from mmclshift.cli.common import add_config_args, print_json_lines
from mmclshift.report_text import format_table

HELP = "closed-form ID/OOD accuracy predictions for a synthetic data-model config"


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")


def print_warnings(records: list[dict], cfg: object, prefix: str = "mmclshift theory") -> None:
    """Each distinct warning of the records and of the config's assumptions, once, on stderr."""
    from mmclshift.experiments.synthetic import CONFIG_KINDS, assumption_warnings

    seen: list[str] = []
    if getattr(cfg, "kind", None) in CONFIG_KINDS:
        seen.extend(assumption_warnings(cfg))  # type: ignore[arg-type]
    for rec in records:
        if rec.get("warning") and rec["warning"] not in seen:
            seen.append(rec["warning"])
    for line in seen:
        print(f"{prefix}: warning: {line}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    cfg = experiments.load_config(args.config, args.overrides)
    records = experiments.predict_theory(cfg)
    print_warnings(records, cfg)
    if args.json:
        print_json_lines(records)
    else:
        rows = [{**r, "range": "" if "range" not in r else f"{r['range'][0]:.4f} .. {r['range'][1]:.4f}"}
                for r in records]
        print(format_table(rows, ["method", "split", "accuracy", "range"], title=f"theory: {cfg.name}"))
        names, C = experiments.cross_covariance(cfg)
        rows = [{"": a, **{b: float(C[i, j]) for j, b in enumerate(names)}} for i, a in enumerate(names)]
        print()
        print(format_table(rows, ["", *names], title="C^Tr = Cov(image features, caption features) (Lemma 3.2)"))
    return 0
