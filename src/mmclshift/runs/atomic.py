"""Atomic files: a reader sees the old file or the new one, never half; one-line I/O errors.

Inside :func:`deferred_durability` (a batched sweep's chunk of jobs) no file is fsynced on its own;
actions queued with :func:`defer_until_durable` (``done`` markers) run after one ``os.sync()`` at
the end of the block, and a second ``os.sync()`` makes them durable.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes, *, fsync: bool | None = None) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    ``fsync`` (default: yes, except inside :func:`deferred_durability`) flushes the file to disk
    before the rename.
    """
    if fsync is None:
        fsync = _DEFERRED is None
    path = Path(path)
    with naming_path(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file 0600; give it the usual permissions (0666 minus the umask)
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise with_path(exc, path) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def with_path(exc: OSError, path: str | Path) -> OSError:
    """``exc`` naming ``path`` (a disk-full or permission error on a write names no file)."""
    if exc.filename is not None and not str(exc.filename).endswith(".tmp"):
        return exc
    return type(exc)(exc.errno, exc.strerror or first_line(exc), str(path))


@contextlib.contextmanager
def naming_path(path: str | Path) -> Iterator[None]:
    """Re-raise an ``OSError`` of the block so that its message names ``path``."""
    try:
        yield
    except OSError as exc:
        raise with_path(exc, path) from None


def atomic_write_text(path: str | Path, text: str, *, fsync: bool | None = None) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def fsync_file(path: str | Path) -> None:
    """fsync an existing file (no-op if it does not exist)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def first_line(exc: BaseException, limit: int = 160) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# actions held back by deferred_durability (done markers), or None outside the block
_DEFERRED: list[Callable[[], None]] | None = None


@contextlib.contextmanager
def deferred_durability() -> Iterator[None]:
    """Skip per-file fsyncs inside the block; make it all durable with two ``os.sync()`` at exit.

    ``mark_done`` calls inside the block queue their ``done`` marker
    (:func:`defer_until_durable`); at exit (also on an exception, for the runs that finished)
    everything written is synced, then the queued actions run and their writes are synced.
    Nested blocks join the outer one.
    """
    global _DEFERRED
    if _DEFERRED is not None:
        yield
        return
    _DEFERRED = pending = []
    try:
        yield
    finally:
        _DEFERRED = None
        if pending:
            os.sync()
            for action in pending:
                action()
            os.sync()


def defer_until_durable(action: Callable[[], None]) -> bool:
    """Inside :func:`deferred_durability`: queue ``action`` to run once everything written so far
    is synced, and return True. Outside: do nothing and return False (the caller acts now)."""
    if _DEFERRED is None:
        return False
    _DEFERRED.append(action)
    return True
