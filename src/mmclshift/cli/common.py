"""Argument helpers shared by subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment YAML file (see configs/)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value",
        help="override any config key, nested keys by dots (e.g. data.pi_core=0.5 seed=3)",
    )


def add_force_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--force", action="store_true",
        help="a run directory holding another config is moved aside (<dir>.replaced-<time>) "
        "and the run redone; without it such a directory is refused",
    )


def int_at_least(lo: int):
    """argparse type: an integer >= ``lo`` (a bad value is one line naming the option)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}; got {value}")
        return value

    parse.__name__ = f"integer >= {lo}"
    return parse


def seed_arg(text: str) -> int:
    """argparse type: a seed in the range every config's ``seed`` accepts."""
    from mmclshift.config import SEED_RANGE

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
        raise argparse.ArgumentTypeError(f"a seed must be in [0, 2^63 - 1]; got {value}")
    return value


def refuse_foreign_out(out: str | Path, known: Iterable[str], what: str) -> None:
    """An ``--out`` folder that exists, is not empty and holds neither the ``known`` entries nor
    any run directory is refused in one line (:func:`mmclshift.runs.refuse_foreign_folder`)."""
    from mmclshift.runs import CONFIG_FILE, DONE_FILE, refuse_foreign_folder

    path = Path(out)
    if path.is_dir() and any(next(path.rglob(m), None) is not None for m in (CONFIG_FILE, DONE_FILE)):
        return  # a folder of runs
    refuse_foreign_folder(path, known, what)


def print_json_lines(records: Iterable[Mapping[str, Any]], stream=None) -> None:
    stream = stream or sys.stdout
    for rec in records:
        stream.write(json.dumps(dict(rec)) + "\n")
    stream.flush()
