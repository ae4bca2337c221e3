"""The ``mmclshift`` command: a thin layer that parses arguments and calls one library function.

Each subcommand lives in its own module exposing ``HELP``, ``configure(parser)`` and
``run(args) -> int``; :data:`COMMANDS` is the explicit registry.

Bad input (a :class:`~mmclshift.errors.UserError`, or a file that cannot be read or written)
ends the command with one line on stderr and exit status 2; ``--debug`` (or the environment
variable ``MMCLSHIFT_DEBUG=1``) shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from mmclshift import __version__
from mmclshift.cli import (
    claims,
    collect,
    convergence,
    demo,
    grid,
    report,
    robustness,
    sweep,
    theory,
    theory_map,
    train,
)
from mmclshift.errors import UserError

COMMANDS: dict[str, ModuleType] = {
    "theory": theory,
    "train": train,
    "demo": demo,
    "grid": grid,
    "collect": collect,
    "robustness": robustness,
    "report": report,
    "claims": claims,
    "sweep": sweep,
    "theory-map": theory_map,
    "convergence": convergence,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmclshift",
        description="Measure, explain and predict the robustness of multimodal contrastive "
        "learning (MMCL) vs supervised learning (SL) under distribution shift.",
    )
    parser.add_argument("--version", action="version", version=f"mmclshift {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also: MMCLSHIFT_DEBUG=1)")
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


def debug_enabled(args: argparse.Namespace | None = None) -> bool:
    flag = os.environ.get("MMCLSHIFT_DEBUG", "").strip().lower()
    return bool(getattr(args, "debug", False)) or flag not in ("", "0", "false", "no")


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parse_args`` that also takes ``key=value`` overrides after flags (``CFG --smoke k=v``)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _os_error_line(exc: OSError) -> str:
    where = exc.filename if exc.filename is not None else ""
    what = exc.strerror or str(exc)
    return f"{where}: {what}" if where else what


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        if debug_enabled(args):
            raise
        print(f"mmclshift {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file that cannot be read or written: its path and why
        if debug_enabled(args):
            raise
        print(f"mmclshift {args.command}: error: {_os_error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mmclshift {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
