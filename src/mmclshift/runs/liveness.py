"""One writer per run (its ``flock``'ed lock file) and whether a run's writer is alive."""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmclshift.errors import UserError
from mmclshift.runs.atomic import naming_path, with_path
from mmclshift.runs.layout import ERROR_FILE, LOCK_FILE, RUNNING_FILE, is_done


class RunBusyError(UserError):
    """A run directory that another live process is writing (it holds the run's lock)."""


# run directories whose lock this process holds: resolved path -> open file descriptor
_HELD: dict[str, int] = {}


def _lock_key(path: str | Path) -> str:
    return os.path.realpath(path)


def acquire_run_lock(path: str | Path, *, wait: float = 1.0) -> None:
    """Take run directory ``path``'s lock (``flock`` on its ``lock`` file) for this process.

    Held until :func:`release_run_lock` (``mark_done`` / ``mark_failed``) or until the process
    ends, when the kernel drops it: a lock left by a killed process is simply taken over. Another
    live holder makes this raise :class:`RunBusyError` naming it (after ``wait`` seconds of
    retries, which only outlast a momentary probe by :func:`lock_owner`). Re-entrant within a
    process.
    """
    key = _lock_key(path)
    if key in _HELD:
        return
    file = Path(path) / LOCK_FILE
    with naming_path(file):
        fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise with_path(exc, file) from None
            if time.monotonic() >= deadline:
                os.close(fd)
                raise RunBusyError(busy_message(path, _read_marker(path))) from None
            time.sleep(0.05)
    _HELD[key] = fd


def release_run_lock(path: str | Path) -> None:
    """Drop this process's lock on ``path`` (no-op if it holds none)."""
    fd = _HELD.pop(_lock_key(path), None)
    if fd is not None:
        os.close(fd)


def lock_owner(path: str | Path) -> dict[str, Any] | None:
    """The marker (``running.json``: pid, host, start; ``{}`` if not written yet) of the other
    live process holding ``path``'s lock, or None when no other process holds it."""
    if _lock_key(path) in _HELD:
        return None
    try:
        fd = os.open(Path(path) / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # no lock file: no writer since runs were locked
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return _read_marker(path)
        return None
    finally:
        os.close(fd)
    return None


def _read_marker(path: str | Path) -> dict[str, Any]:
    try:
        marker = json.loads((Path(path) / RUNNING_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def busy_message(path: str | Path, marker: Mapping[str, Any]) -> str:
    who = "another process"
    if marker.get("pid"):
        who = f"process {marker['pid']} on {marker.get('host', '?')}"
        if isinstance(marker.get("started"), int | float):
            when = _dt.datetime.fromtimestamp(marker["started"], _dt.UTC)
            who += f" (since {when.strftime('%Y-%m-%d %H:%M:%S')} UTC)"
    return (f"{path}: run directory is being written by {who}; wait for it to finish, or choose "
            "another output directory")


def refuse_busy(path: str | Path) -> None:
    """:class:`RunBusyError` naming the owner if another live process is writing run ``path``."""
    owner = lock_owner(path)
    if owner is not None:
        raise RunBusyError(busy_message(path, owner))


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), if readable."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return None


def _proc_start(pid: int) -> str | None:
    """The kernel's start time of process ``pid`` (tells a reused pid apart), if readable."""
    stat = _proc_stat(pid)
    return stat[19] if stat else None


def _process_marker() -> dict[str, Any]:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "proc_start": _proc_start(pid),
            "started": time.time()}


def run_state(path: str | Path) -> str:
    """done, failed, running, killed (started, not finished, its process gone) or missing.

    Running: another live process holds the run's lock. Runs without a lock file (written before
    runs were locked) are judged by the pid in running.json; one on another host whose process
    cannot be checked from here counts as running.
    """
    path = Path(path)
    if is_done(path):
        return "done"
    if (path / ERROR_FILE).is_file():
        return "failed"
    if not path.is_dir():
        return "missing"
    if _lock_key(path) in _HELD or lock_owner(path) is not None:
        return "running"
    try:
        marker = json.loads((path / RUNNING_FILE).read_text())
    except (OSError, ValueError):
        return "killed"
    if marker.get("host") != socket.gethostname():
        return "running"
    if (path / LOCK_FILE).exists():
        return "killed"  # a locked run on this host whose lock is free: its writer is gone
    pid = int(marker.get("pid", 0))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "killed"
    except PermissionError:
        return "running"
    stat = _proc_stat(pid)
    if stat is None:  # no /proc: the pid exists, trust it
        return "running"
    start = marker.get("proc_start")
    if stat[0] in ("Z", "X") or (start is not None and stat[19] != start):
        return "killed"  # exited (a zombie not yet reaped) or the pid now names another process
    return "running"
