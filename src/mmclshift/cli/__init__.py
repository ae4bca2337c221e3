"""The ``mmclshift`` command: a thin layer that parses arguments and calls one library function.

Each subcommand lives in its own module exposing ``HELP``, ``configure(parser)`` and
``run(args) -> int``; :data:`COMMANDS` is the explicit registry (one line per command). A
command's module is imported only when that command runs, so ``mmclshift --help``, ``--version``
and ``mmclshift theory`` start without importing torch: the overview reads each command's
``HELP`` string from its source.

Bad input (a :class:`~mmclshift.errors.UserError`, a bad option, a file that cannot be read or
written, a training loss that is no longer finite, a size that does not fit in memory) ends the command with one line on stderr and
exit status 2; ``--debug`` (or the environment variable ``MMCLSHIFT_DEBUG=1``) shows the full
traceback instead. Path arguments have ``~`` expanded and may not be empty. A reader that closes
the pipe early (``mmclshift theory CFG --json | head -1``) ends the command quietly (status 141,
as a command killed by SIGPIPE).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import importlib
import importlib.util
import os
import sys
import typing
import warnings
from collections.abc import Iterator, Sequence
from types import ModuleType

from mmclshift import __version__
from mmclshift.errors import UserError

# torch's own forward-mode AD decompositions call the deprecated torch.jit.script on first use
# (the warning fires then, not at import); that is torch's business, not the user's: silence
# exactly that warning from that module, no other
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                        category=FutureWarning, module=r"torch\.jit\._script")

#: command name -> the module that implements it (imported when the command runs)
COMMANDS: dict[str, str] = {
    "theory": "mmclshift.cli.theory",
    "train": "mmclshift.cli.train",
    "demo": "mmclshift.cli.demo",
    "grid": "mmclshift.cli.grid",
    "collect": "mmclshift.cli.collect",
    "eval": "mmclshift.cli.eval",
    "robustness": "mmclshift.cli.robustness",
    "report": "mmclshift.cli.report",
    "claims": "mmclshift.cli.claims",
    "sweep": "mmclshift.cli.sweep",
    "theory-map": "mmclshift.cli.theory_map",
    "convergence": "mmclshift.cli.convergence",
    "publish": "mmclshift.cli.publish",
}


def load_command(name: str) -> ModuleType:
    """The module implementing command ``name`` (imported now, with whatever it needs)."""
    return importlib.import_module(COMMANDS[name])


@functools.cache
def command_help(name: str) -> str:
    """Command ``name``'s one-line ``HELP``, read from its source without importing it.

    Falls back to importing the module when ``HELP`` is not a plain string literal there.
    """
    spec = importlib.util.find_spec(COMMANDS[name])
    if spec is not None and spec.origin is not None:
        with open(spec.origin, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=spec.origin)
        for node in tree.body:
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                    and isinstance(node.value.value, str)
                    and any(isinstance(t, ast.Name) and t.id == "HELP" for t in node.targets)):
                return node.value.value
    return str(load_command(name).HELP)


class OneLineParser(argparse.ArgumentParser):
    """An argument error is one line on stderr (exit 2), like every other bad input."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


#: argument names that hold paths: ``~`` expanded, an empty value refused
PATH_ARGS = ("config", "out", "sweep", "run_dirs", "figures", "maps", "target", "data", "table",
             "plot", "folder")


def normalise_paths(args: argparse.Namespace) -> None:
    for name in PATH_ARGS:
        value = getattr(args, name, None)
        if isinstance(value, str):
            setattr(args, name, _user_path(name, value))
        elif isinstance(value, list):
            setattr(args, name, [_user_path(name, v) if isinstance(v, str) else v for v in value])


def _user_path(name: str, value: str) -> str:
    if not value.strip():
        what = name if name in ("config", "sweep", "run_dirs", "target", "folder") else f"--{name}"
        raise UserError(f"{what}: empty path (name a file or folder)")
    return os.path.expanduser(value)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The full parser; given ``argv``, only the command it names is imported and configured."""
    parser = OneLineParser(
        prog="mmclshift",
        description="Measure, explain and predict the robustness of multimodal contrastive "
        "learning (MMCL) vs supervised learning (SL) under distribution shift.",
    )
    parser.add_argument("--version", action="version", version=f"mmclshift {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also: MMCLSHIFT_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = None if argv is None else _command_in(argv)
    for name in COMMANDS:
        if chosen is not None and name != chosen:  # listed in the overview, never imported
            sub.add_parser(name, help=_literal(command_help(name)))
            continue
        module = load_command(name)
        doc = (module.__doc__ or module.HELP).strip()
        p = sub.add_parser(
            name, help=_literal(module.HELP), description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.configure(p)
        p.set_defaults(_run=module.run)
    return parser


def _literal(text: str) -> str:
    """``text`` as argparse help shows it verbatim (argparse %-formats help: "95%" must be "95%%")."""
    return text.replace("%", "%%")


def _command_in(argv: Sequence[str]) -> str:
    """The command ``argv`` names: its first word that is not an option (top-level options take
    no value); ``""`` when there is none (``--help``, ``--version``) or it is unknown."""
    word = next((a for a in argv if not a.startswith("-")), "")
    return word if word in COMMANDS else ""


def debug_enabled(args: argparse.Namespace | None = None) -> bool:
    """``--debug`` given, or ``MMCLSHIFT_DEBUG`` set: show tracebacks."""
    from mmclshift.runs.environment import debug_enabled as env_debug  # only when it is asked

    return bool(getattr(args, "debug", False)) or env_debug()


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
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parse_args(parser, argv)
    with _debug_environment(args.debug):
        return _run_command(args)


@contextlib.contextmanager
def _debug_environment(debug: bool) -> Iterator[None]:
    """``--debug``: set ``MMCLSHIFT_DEBUG=1`` for the command (the library and any worker process
    read it), and put the previous value back after it."""
    before = os.environ.get("MMCLSHIFT_DEBUG")
    if debug:
        os.environ["MMCLSHIFT_DEBUG"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MMCLSHIFT_DEBUG", None)
        else:
            os.environ["MMCLSHIFT_DEBUG"] = before


def _run_command(args: argparse.Namespace) -> int:
    """Run the parsed command; bad input becomes one line on stderr and status 2."""
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
