"""The ``mmclshift`` command: a thin layer that parses arguments and calls one library function.

Each subcommand lives in its own module exposing ``HELP``, ``configure(parser)`` and
``run(args) -> int``; :data:`COMMANDS` is the explicit registry.

Bad input (a :class:`~mmclshift.errors.UserError`, a bad option, a file that cannot be read or
written, a training loss that is no longer finite, a size that does not fit in memory) ends the command with one line on stderr and
exit status 2; ``--debug`` (or the environment variable ``MMCLSHIFT_DEBUG=1``) shows the full
traceback instead. Path arguments have ``~`` expanded and may not be empty. A reader that closes
the pipe early (``mmclshift theory CFG --json | head -1``) ends the command quietly (status 141,
as a command killed by SIGPIPE).
"""

from __future__ import annotations

import argparse
import os
import sys
import typing
import warnings
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
from mmclshift.cli import eval as eval_cmd
from mmclshift.errors import UserError

# torch's own forward-mode AD decompositions call the deprecated torch.jit.script on first use
# (the warning fires then, not at import); that is torch's business, not the user's: silence
# exactly that warning from that module, no other
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                        category=FutureWarning, module=r"torch\.jit\._script")

COMMANDS: dict[str, ModuleType] = {
    "theory": theory,
    "train": train,
    "demo": demo,
    "grid": grid,
    "collect": collect,
    "eval": eval_cmd,
    "robustness": robustness,
    "report": report,
    "claims": claims,
    "sweep": sweep,
    "theory-map": theory_map,
    "convergence": convergence,
}


class OneLineParser(argparse.ArgumentParser):
    """An argument error is one line on stderr (exit 2), like every other bad input."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


#: argument names that hold paths: ``~`` expanded, an empty value refused
PATH_ARGS = ("config", "out", "sweep", "run_dirs", "figures", "maps", "target", "data", "table",
             "plot")


def normalise_paths(args: argparse.Namespace) -> None:
    for name in PATH_ARGS:
        value = getattr(args, name, None)
        if isinstance(value, str):
            setattr(args, name, _user_path(name, value))
        elif isinstance(value, list):
            setattr(args, name, [_user_path(name, v) if isinstance(v, str) else v for v in value])


def _user_path(name: str, value: str) -> str:
    if not value.strip():
        what = name if name in ("config", "sweep", "run_dirs", "target") else f"--{name}"
        raise UserError(f"{what}: empty path (name a file or folder)")
    return os.path.expanduser(value)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
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
            # argparse %-formats help strings: a literal % (as in "95% interval") is escaped
            name, help=module.HELP.replace("%", "%%"), description=doc,
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
    prog = f"mmclshift {args.command}"
    try:
        normalise_paths(args)
        status = int(args._run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return status
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        _silence_stdout()
        return 141
    except UserError as exc:
        if debug_enabled(args):
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:  # a diverged loss (NaN / inf): the trainer says where
        if debug_enabled(args):
            raise
        print(f"{prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:  # a size too large for this machine
        line = _allocation_failure(exc)
        if line is None or debug_enabled(args):
            raise
        print(f"{prog}: error: {line}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file that cannot be read or written: its path and why
        if debug_enabled(args):
            raise
        print(f"{prog}: error: {_os_error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def _allocation_failure(exc: BaseException) -> str | None:
    """One line for a failed memory allocation (Python's, or torch's on CPU or GPU), else None."""
    text = " ".join(str(exc).split())
    if isinstance(exc, MemoryError):
        detail = f" ({text})" if text else ""
    elif "can't allocate memory" in text or "out of memory" in text.lower():
        tried = text.find("you tried to allocate")
        detail = f" ({text[tried:].split('.')[0]})" if tried >= 0 else ""
    else:
        return None
    return (f"out of memory{detail}; a size in the config or on the command line is too large for "
            "this machine")


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
