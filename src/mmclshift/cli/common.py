"""Argument helpers shared by subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping
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


def print_json_lines(records: Iterable[Mapping[str, Any]], stream=None) -> None:
    stream = stream or sys.stdout
    for rec in records:
        stream.write(json.dumps(dict(rec)) + "\n")
    stream.flush()
