"""What a run directory holds (its file names) and reading a run back whole."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmclshift.config import ConfigError, load_yaml_text
from mmclshift.errors import DataError
from mmclshift.runs.atomic import first_line
from mmclshift.runs.identity import run_identity

CONFIG_FILE = "config.yaml"


ENV_FILE = "env.json"


METRICS_FILE = "metrics.jsonl"


DONE_FILE = "done"


ERROR_FILE = "error.txt"


CHECKPOINT_DIR = "checkpoints"


IDENTITY_FILE = "identity.json"


RUNNING_FILE = "running.json"


LOCK_FILE = "lock"


#: what a run directory may hold besides earlier metrics (``metrics.jsonl.<n>``): a folder
#: holding none of these is not a run, and a run is never started in it unless it is empty
RUN_ENTRIES = frozenset({CONFIG_FILE, ENV_FILE, METRICS_FILE, DONE_FILE, ERROR_FILE, CHECKPOINT_DIR,
                         IDENTITY_FILE, RUNNING_FILE, LOCK_FILE, "fixtures", "tb"})


class DamagedRunError(DataError):
    """A finished run (``done``) whose config or metrics cannot be read back."""


def is_done(path: str | Path) -> bool:
    return (Path(path) / DONE_FILE).is_file()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Parse metrics.jsonl; a truncated last line (a run killed mid-write) is ignored, except in
    a finished run (``done``), where it is damage.

    ``train`` records superseded by a later ``resume`` marker are dropped (see the module
    docstring); any other line that is not a JSON object raises :class:`DataError` naming the
    file and line.
    """
    file = Path(path) / METRICS_FILE
    if not file.is_file():
        return []
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{file}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{file}: unreadable ({exc.strerror or exc})") from None
    records: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1 and not is_done(path):
                break  # killed mid-write; in a finished run the same is damage
            raise DataError(f"{file}:{i + 1}: not a JSON line") from None
        if not isinstance(rec, dict):
            raise DataError(f"{file}:{i + 1}: not a JSON object")
        if rec.get("event") == "resume":
            records = [r for r in records if not _superseded(r, rec)]
        records.append(rec)
    return records


def _superseded(record: Mapping[str, Any], resume: Mapping[str, Any]) -> bool:
    step = record.get("step")
    return (record.get("event") == "train" and record.get("method") == resume.get("method")
            and isinstance(step, int | float) and step > resume.get("step", 0))


def eval_records(path: str | Path) -> list[dict[str, Any]]:
    """The eval records of a run, the last one per (method, split), in first-seen order."""
    last: dict[tuple[Any, Any], dict[str, Any]] = {}
    for rec in read_metrics(path):
        if rec.get("event") == "eval":
            key = (rec.get("method"), rec.get("split"))
            last.pop(key, None)
            last[key] = rec
    return list(last.values())


def stored_identity(path: str | Path) -> dict[str, Any] | None:
    """The identity of the config stored in run directory ``path`` (None: no config.yaml)."""
    file = Path(path) / CONFIG_FILE
    if not file.exists():
        return None
    return run_identity(read_run_config(path))


def read_run_config(path: str | Path) -> dict[str, Any]:
    """The config stored in run directory ``path``; :class:`DamagedRunError` if unreadable."""
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        raise DamagedRunError(f"{file}: {'not a file' if file.exists() else 'missing'}")
    try:
        data = load_yaml_text(file.read_bytes(), str(file))
    except ConfigError as exc:
        raise DamagedRunError(str(exc)) from None
    except OSError as exc:
        raise DamagedRunError(f"{file}: unreadable ({exc.strerror or exc})") from None
    if not isinstance(data, dict):
        raise DamagedRunError(f"{file}: not a mapping of config keys")
    return data


def read_finished_run(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(config, metrics records) of finished run ``path``, read and checked whole.

    A finished run whose config.yaml or metrics.jsonl is missing, empty, not a file or not
    readable, whose metrics have a torn or garbage line, or whose env.json is not JSON, raises :class:`DamagedRunError` naming the file and what is wrong.
    """
    path = Path(path)
    cfg = read_run_config(path)
    file = path / METRICS_FILE
    if not file.is_file():
        raise DamagedRunError(f"{file}: {'not a file' if file.exists() else 'missing'}")
    try:
        records = read_metrics(path)
    except DataError as exc:
        raise DamagedRunError(str(exc)) from None
    if not records:  # a finished run logged something: at least its training or its results
        raise DamagedRunError(f"{file}: empty")
    env = path / ENV_FILE
    if env.exists():
        try:
            json.loads(env.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DamagedRunError(f"{env}: unreadable ({first_line(exc)})") from None
    return cfg, records


def run_damage(path: str | Path) -> str | None:
    """Why finished run ``path`` is damaged (see :func:`read_finished_run`); None if it is whole
    or not finished."""
    if not is_done(path):
        return None
    try:
        read_finished_run(path)
    except DamagedRunError as exc:
        return str(exc)
    return None
