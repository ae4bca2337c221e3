"""A run directory: created for one config, checked against it, written, finished or failed."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import sys
import traceback
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mmclshift.config import dump_yaml
from mmclshift.errors import UserError
from mmclshift.runs.atomic import (
    atomic_write_bytes,
    atomic_write_text,
    defer_until_durable,
    fsync_file,
    naming_path,
)
from mmclshift.runs.checkpoints import load_checkpoint, save_checkpoint
from mmclshift.runs.environment import environment_info
from mmclshift.runs.identity import VOLATILE_KEYS, identity_diff, identity_hash, run_identity
from mmclshift.runs.layout import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    DONE_FILE,
    ENV_FILE,
    ERROR_FILE,
    IDENTITY_FILE,
    METRICS_FILE,
    RUN_ENTRIES,
    RUNNING_FILE,
    DamagedRunError,
    is_done,
    read_finished_run,
    read_metrics,
    stored_identity,
)
from mmclshift.runs.liveness import (
    _process_marker,
    acquire_run_lock,
    refuse_busy,
    release_run_lock,
)


class RunDir:
    """One run's directory. Create with :meth:`create`; open an existing one with ``RunDir(path)``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, path: str | Path, config: Any, *, seed: int | None = None,
               device: str | None = None, force: bool = False, resume: bool = False) -> RunDir:
        """Start (or continue) the run of ``config`` in ``path``.

        Checked before anything is written (see :func:`check_run_dir`): a directory holding
        another config is refused unless ``force`` (then moved aside); one holding this config
        finished is moved aside too (a deliberate retrain never overwrites a finished run).
        ``resume``: the runner continues from its checkpoints, so metrics.jsonl is appended to;
        otherwise a previous attempt's metrics.jsonl is kept as ``metrics.jsonl.<n>``.
        """
        run = cls(path)
        if check_run_dir(run.path, config, force=force) == "done":
            move_aside(run.path)
        make_run_dir(run.path)
        acquire_run_lock(run.path)  # held until mark_done / mark_failed (or this process ends)
        with contextlib.suppress(FileNotFoundError):
            (run.path / ERROR_FILE).unlink()  # a previous failure's traceback; this is a new try
        metrics = run.path / METRICS_FILE
        if metrics.is_file():
            if resume:
                _drop_partial_last_line(metrics)
            else:
                os.replace(metrics, _free_name(metrics))
        atomic_write_text(run.path / CONFIG_FILE, dump_yaml(config))
        atomic_write_text(run.path / IDENTITY_FILE, json.dumps(
            {"hash": identity_hash(config), "ignored_keys": list(VOLATILE_KEYS)}, indent=1) + "\n")
        atomic_write_text(
            run.path / ENV_FILE, json.dumps(environment_info(seed, device), indent=2) + "\n"
        )
        atomic_write_text(run.path / RUNNING_FILE, json.dumps(_process_marker()) + "\n")
        return run

    # files
    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    def log_metrics(self, record: Mapping[str, Any]) -> None:
        """Append one JSON line to metrics.jsonl (flushed to the OS; fsynced by :meth:`mark_done`)."""
        line = json.dumps(_jsonable(record), sort_keys=False) + "\n"
        with naming_path(self.path / METRICS_FILE), \
                open(self.path / METRICS_FILE, "a", encoding="utf-8") as fh:
            fh.write(line)

    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)

    def save_checkpoint(self, state: Mapping[str, Any], name: str = "last.pt") -> Path:
        path = self.checkpoint_dir / name
        save_checkpoint(state, path)
        return path

    def load_checkpoint(self, name: str = "last.pt") -> dict[str, Any]:
        return load_checkpoint(self.checkpoint_dir / name)

    def mark_done(self, summary: Mapping[str, Any] | None = None) -> None:
        """Write ``done`` after making metrics.jsonl durable (see :func:`deferred_durability`)."""
        payload = {"finished": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
        payload.update(_jsonable(summary or {}))
        text = json.dumps(payload) + "\n"

        def finish() -> None:  # inside deferred_durability, after the sync of everything before
            atomic_write_text(self.path / DONE_FILE, text, fsync=False)
            self._clear_running()

        if defer_until_durable(finish):
            return
        fsync_file(self.path / METRICS_FILE)
        atomic_write_text(self.path / DONE_FILE, text)
        self._clear_running()

    def mark_failed(self, exc: BaseException) -> None:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        try:
            atomic_write_text(self.path / ERROR_FILE, text)
        finally:
            self._clear_running()

    def _clear_running(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.path / RUNNING_FILE).unlink()
        release_run_lock(self.path)

    @property
    def done(self) -> bool:
        return is_done(self.path)

    @contextlib.contextmanager
    def guard(self) -> Iterator[RunDir]:
        """Record a traceback in ``error.txt`` if the body raises (and re-raise)."""
        try:
            yield self
        except BaseException as exc:
            self.mark_failed(exc)
            raise


def check_output_path(path: str | Path, what: str = "output directory", *,
                      writable: bool = False) -> Path:
    """Refuse an output directory that is a file (or under one), or (``writable``) one that
    cannot be written, in one line."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise UserError(f"{path}: {what} is not a directory ({p} is a file)")
            if writable and not os.access(p, os.W_OK | os.X_OK):
                raise UserError(f"{path}: {what} is not writable ({p}: permission denied)")
            break
    return path


def make_run_dir(path: str | Path, what: str = "run directory") -> Path:
    """``mkdir -p`` that fails in one line (a file in the way, no permission)."""
    path = check_output_path(path, what, writable=True)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{path}: cannot create the {what} ({exc.strerror or exc})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{path}: {what} is not writable (permission denied)")
    return path


def check_run_dir(path: str | Path, config: Any, *, force: bool = False) -> str:
    """What ``path`` holds for ``config``: "new", "partial" or "done"; see the module docstring.

    Another config's run is refused with a :class:`UserError` naming the differing keys, or,
    with ``force``, renamed aside (then "new"); so is a damaged finished run (config or metrics
    unreadable: :func:`read_finished_run`). A run another live process is writing is refused
    (:class:`RunBusyError`, also with ``force``), and so is an existing folder that is neither
    empty nor a run. Nothing is written otherwise.
    """
    path = check_output_path(path, "run directory")
    refuse_busy(path)
    if is_done(path):
        try:
            old = run_identity(read_finished_run(path)[0])
        except DamagedRunError as exc:
            if force:
                move_aside(path)
                return "new"
            raise DamagedRunError(f"{path}: finished run is damaged ({exc}); rerun with --force to "
                                  "move it aside, or choose another output directory") from None
    else:
        try:
            old = stored_identity(path)
        except DamagedRunError as exc:
            if force:
                move_aside(path)
                return "new"
            raise DamagedRunError(f"{path}: unreadable run config ({exc}); rerun with --force to "
                                  "move the run aside, or choose another output directory") from None
    if old is None:
        refuse_foreign_folder(path, RUN_ENTRIES, "run directory")
        return "new"
    new = run_identity(config)
    if old == new:
        return "done" if is_done(path) else "partial"
    if force:
        move_aside(path)
        return "new"
    diff = identity_diff(old, new)
    shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
    raise UserError(f"{path}: holds a run of another config ({shown}); rerun with --force to "
                    "move it aside, or choose another output directory")


#: the name :func:`move_aside` gives a superseded run directory: ``<name>.replaced-<UTC time>.<n>``
MOVED_ASIDE = re.compile(r"\.replaced-\d{8}T\d{6}Z(\.\d+)?$")


def is_moved_aside(path: str | Path) -> bool:
    """Whether ``path`` is (inside) a run directory that :func:`move_aside` set aside."""
    return any(MOVED_ASIDE.search(p) for p in Path(path).parts)


def move_aside(path: str | Path) -> Path:
    """Rename run directory ``path`` to ``<name>.replaced-<UTC time>`` beside it; return that."""
    path = Path(path)
    release_run_lock(path)  # a lock this process holds stays with the old directory's file
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    target = _free_name(path.with_name(f"{path.name}.replaced-{stamp}"))
    try:
        os.rename(path, target)
    except OSError as exc:
        raise UserError(f"{path}: cannot move the old run aside to {target.name} "
                        f"({exc.strerror or exc})") from None
    return target


def _free_name(path: Path) -> Path:
    """``path.1``, ``path.2``, ... : the first that does not exist."""
    for n in range(1, 10_000):
        cand = path.with_name(f"{path.name}.{n}")
        if not cand.exists():
            return cand
    raise UserError(f"{path}: too many earlier copies beside it")


def _drop_partial_last_line(file: Path) -> None:
    """A run killed mid-write leaves a last line without its newline: drop it before appending."""
    data = file.read_bytes()
    if data and not data.endswith(b"\n"):
        atomic_write_bytes(file, data[: data.rfind(b"\n") + 1])


def refuse_foreign_folder(path: str | Path, known: Iterable[str], what: str, *,
                          pattern: str | None = None) -> None:
    """Refuse an existing folder that is not empty and holds none of the ``known`` entries (nor
    any whose name matches the regular expression ``pattern``): a user's folder is never
    written into, nor later moved aside by ``--force``."""
    path = Path(path)
    try:
        entries = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    except OSError as exc:
        raise UserError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    known = set(known)
    ours = re.compile(pattern) if pattern else None
    if not entries or any(e in known or e.split(".replaced-")[0] in known
                          or e.startswith(f"{METRICS_FILE}.") or (ours and ours.match(e))
                          for e in entries):
        return
    shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
    raise UserError(f"{path}: exists and is not a {what} (holds {shown}); choose a new or empty "
                    "folder")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    torch = sys.modules.get("torch")  # a tensor exists only if torch was imported
    if torch is not None and isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj
