"""The ``mmclshift`` command: a thin layer that parses arguments and calls one library function.

Each subcommand lives in its own module exposing ``HELP``, ``configure(parser)`` and
``run(args) -> int``; :data:`COMMANDS` is the explicit registry.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from mmclshift import __version__
from mmclshift.cli import collect, demo, grid, report, robustness, sweep, theory, theory_map, train
from mmclshift.errors import UserError

COMMANDS: dict[str, ModuleType] = {
    "theory": theory,
    "train": train,
    "demo": demo,
    "grid": grid,
    "collect": collect,
    "robustness": robustness,
    "report": report,
    "sweep": sweep,
    "theory-map": theory_map,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmclshift",
        description="Measure, explain and predict the robustness of multimodal contrastive "
        "learning (MMCL) vs supervised learning (SL) under distribution shift.",
    )
    parser.add_argument("--version", action="version", version=f"mmclshift {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        doc = (module.__doc__ or module.HELP).strip()
        p = sub.add_parser(
            name, help=module.HELP, description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.configure(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        print(f"mmclshift {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mmclshift {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
