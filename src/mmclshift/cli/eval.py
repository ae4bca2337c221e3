"""Zero-shot evaluation of an existing checkpoint: a real-data run directory of mmclshift, one of
its checkpoint files, or an OpenCLIP checkpoint (a state dict or OpenCLIP's training checkpoint)
with --model naming its OpenCLIP architecture.

Test sets: the run's own (a run directory or its checkpoint), --data FILE (an experiment config's
eval section, or a file holding just that section), or --smoke (the built-in fixtures). Writes a
run directory that collect, robustness and report read, with CLIP_benchmark-style records in
<out>/clip_benchmark/.

Example:
  mmclshift eval runs/fig3a --out runs/fig3a-eval
  mmclshift eval runs/fig3a/checkpoints/clip/last.pt --data configs/fig3a_mscoco.yaml
  mmclshift eval RN50-cc3m.pt --model RN50 --data configs/fig3a_mscoco.yaml --out runs/rn50-cc3m
  mmclshift eval my_rn50.pt --model RN50 --smoke
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mmclshift.cli.common import add_force_arg, int_at_least, print_json_lines
from mmclshift.evaluate.checkpoints import (
    build_config,
    evaluate_target,
    read_eval_section,
    resolve_target,
    smoke_eval,
)
from mmclshift.report_text import format_table
from mmclshift.runs import config_hash

HELP = "zero-shot evaluation of a run directory, a checkpoint, or an OpenCLIP checkpoint"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", help="run directory, mmclshift checkpoint (.pt), or OpenCLIP "
                        "checkpoint file (with --model)")
    parser.add_argument("--model", default=None, metavar="ARCH",
                        help="OpenCLIP architecture of an OpenCLIP checkpoint (RN50, ViT-B-32, ...)")
    parser.add_argument("--image-size", type=int_at_least(1), default=None,
                        help="OpenCLIP checkpoint: the image size it was trained at, if not the "
                        "architecture's")
    parser.add_argument("--pretrained", default=None, metavar="LABEL",
                        help="the 'pretrained' field of the CLIP_benchmark records (default: the "
                        "file name)")
    parser.add_argument("--config", default=None,
                        help="the experiment config an mmclshift checkpoint outside its run "
                        "directory was trained with")
    parser.add_argument("--data", default=None, metavar="FILE",
                        help="test sets: a config with an eval section (or just the section)")
    parser.add_argument("--smoke", action="store_true",
                        help="score on the built-in fixtures (a 3-class ImageNet test set)")
    parser.add_argument("--templates", default=None,
                        help="prompt templates: openai (80), simple (7) or a file (default: the "
                        "test sets' config)")
    parser.add_argument("--out", default=None, help="run directory to write (default: "
                        "runs/eval-<target name>-<config hash>)")
    parser.add_argument("--workers", type=int_at_least(0), default=2, help="image-decoding processes")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_force_arg(parser)


def run(args: argparse.Namespace) -> int:
    from mmclshift.config import replace
    from mmclshift.errors import UserError
    from mmclshift.experiments.real import EvalConfig

    if args.data and args.smoke:
        raise UserError("give --data or --smoke, not both")
    target = resolve_target(args.target, model=args.model, image_size=args.image_size,
                            config=args.config)
    name = Path(args.target.rstrip("/")).name.replace(".", "_") or "target"
    if args.data:
        eval_cfg = read_eval_section(args.data)
    elif target.cfg is not None and not args.smoke:
        eval_cfg = target.cfg.eval
    else:
        eval_cfg = None  # --smoke (built below, under the run directory) or nothing
    if eval_cfg is None and not args.smoke:
        raise UserError("no test sets: give --data FILE (a config with an eval section) or --smoke")
    probe = build_config(target, eval_cfg or EvalConfig(), name=f"eval-{name}",
                         pretrained=args.pretrained, workers=args.workers, device=args.device)
    out = Path(args.out) if args.out else Path("runs") / f"eval-{name}-{config_hash(probe)}"
    if args.smoke:
        eval_cfg = smoke_eval(out)
    if args.templates:
        eval_cfg = replace(eval_cfg, templates=args.templates)
    cfg = replace(probe, eval=eval_cfg)
    records = evaluate_target(target, cfg, out, force=args.force, smoke=args.smoke,
                              progress=not args.no_progress and not args.json)
    if args.json:
        print_json_lines(records)
    else:
        print(format_table(records, ["method", "split", "accuracy", "top5",
                                     "mean_per_class_recall", "n"],
                           title=f"{args.target} -> {out}"))
    return 0

