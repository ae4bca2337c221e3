"""Run directories: identity, self-describing files, atomic checkpoints and completion markers.

A run directory holds::

    config.yaml     the resolved config (every default filled in)
    env.json        versions, device, seed, git revision, host, start time
    metrics.jsonl   one JSON object per evaluation, appended and flushed as they happen
    checkpoints/    checkpoint files, each written to a temp file and renamed into place
    done            written last; its presence means the run completed

Sweeps and ``collect`` treat a directory without ``done`` as incomplete.

Durability: metrics lines are flushed to the OS as they are written but not fsynced one by one;
:meth:`RunDir.mark_done` fsyncs metrics.jsonl before it writes (and fsyncs) ``done``, so a
``done`` marker that survives a crash vouches for the metrics before it. Inside
:func:`deferred_durability` (a batched sweep's chunk of jobs) no file is fsynced on its own:
``done`` markers are held back, and on leaving the block one ``os.sync()`` makes everything
written durable, the markers are written, and a second ``os.sync()`` makes them durable. A crash
inside the block leaves no marker, so those jobs count as incomplete and rerun.
The environment (versions, host, git revision) is gathered once per process
(:func:`environment_info` caches it; only ``seed``, ``device`` and ``started`` vary per run).

Records in metrics.jsonl are JSON objects with an ``event`` key:

* ``{"event": "eval", "method": "mmcl" | "sl" | <variant>, "split": "id" | <OOD set name>,
  "accuracy": top-1 in [0, 1], "n": test-set size, "correct": number right, "step": int | None,
  "theory": predicted accuracy | None, ...}`` -- one per (method, test set) evaluation; these are
  also what ``mmclshift train --json`` prints and what ``collect`` reads.
* ``{"event": "train", "method": ..., "step": ..., "loss": ..., ...}`` -- training progress.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hashlib
import io
import json
import os
import platform
import random
import socket
import subprocess
import tempfile
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmclshift.config import dump_yaml, to_dict

CONFIG_FILE = "config.yaml"
ENV_FILE = "env.json"
METRICS_FILE = "metrics.jsonl"
DONE_FILE = "done"
ERROR_FILE = "error.txt"
CHECKPOINT_DIR = "checkpoints"


# --------------------------------------------------------------------------- atomic files


def atomic_write_bytes(path: str | Path, data: bytes, *, fsync: bool | None = None) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    ``fsync`` (default: yes, except inside :func:`deferred_durability`) flushes the file to disk
    before the rename.
    """
    if fsync is None:
        fsync = _DEFERRED is None
    path = Path(path)
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
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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


# done markers held back by deferred_durability: [(run, payload)], or None outside the block
_DEFERRED: list[tuple[RunDir, dict[str, Any]]] | None = None


@contextlib.contextmanager
def deferred_durability() -> Iterator[None]:
    """Skip per-file fsyncs inside the block; make it all durable with two ``os.sync()`` at exit.

    ``mark_done`` calls inside the block queue their ``done`` marker; at exit (also on an
    exception, for the runs that finished) everything written is synced, then the markers are
    written and synced. Nested blocks join the outer one.
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
            for run, payload in pending:
                atomic_write_text(run.path / DONE_FILE, json.dumps(payload) + "\n", fsync=False)
            os.sync()


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> None:
    """``torch.save`` through a temp file and an atomic rename."""
    buf = io.BytesIO()
    torch.save(dict(state), buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (tensors and plain containers only)."""
    return torch.load(Path(path), map_location=map_location, weights_only=True)


# --------------------------------------------------------------------------- identity, seeds


def config_hash(config: Any, length: int = 12) -> str:
    """Stable hash of a resolved config (dataclass or plain data)."""
    blob = json.dumps(to_dict(config), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a fresh CPU generator seeded with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@functools.lru_cache(maxsize=8)
def git_revision(cwd: str | Path | None = None) -> str | None:
    """``git rev-parse HEAD`` in ``cwd`` (once per process and folder), or None."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def _static_environment() -> dict[str, Any]:
    """The parts of :func:`environment_info` that cannot change within a process."""
    import mmclshift

    info: dict[str, Any] = {
        "mmclshift": mmclshift.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cpu_count": os.cpu_count(),
        "git_revision": git_revision(Path(__file__).parent),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    for name in ("torchvision", "open_clip", "scipy", "pandas"):
        with contextlib.suppress(Exception):
            mod = __import__(name)
            info[name] = getattr(mod, "__version__", None)
    return info


def environment_info(seed: int | None = None, device: str | None = None) -> dict[str, Any]:
    """What produced a run: versions, hardware, seed, git revision (gathered once per process)."""
    info = dict(_static_environment())
    info.update({
        "device": device or ("cuda" if info["cuda_available"] else "cpu"),
        "torch_threads": torch.get_num_threads(),
        "seed": seed,
        "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    })
    return info


# --------------------------------------------------------------------------- run directory


class RunDir:
    """One run's directory. Create with :meth:`create`; open an existing one with ``RunDir(path)``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, path: str | Path, config: Any, *, seed: int | None = None,
               device: str | None = None) -> RunDir:
        run = cls(path)
        run.path.mkdir(parents=True, exist_ok=True)
        # a rerun starts clean: stale markers and metrics from a crashed attempt go
        for stale in (DONE_FILE, ERROR_FILE, METRICS_FILE):
            with contextlib.suppress(FileNotFoundError):
                (run.path / stale).unlink()
        atomic_write_text(run.path / CONFIG_FILE, dump_yaml(config))
        atomic_write_text(
            run.path / ENV_FILE, json.dumps(environment_info(seed, device), indent=2) + "\n"
        )
        return run

    # files
    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    def log_metrics(self, record: Mapping[str, Any]) -> None:
        """Append one JSON line to metrics.jsonl (flushed to the OS; fsynced by :meth:`mark_done`)."""
        line = json.dumps(_jsonable(record), sort_keys=False) + "\n"
        with open(self.path / METRICS_FILE, "a", encoding="utf-8") as fh:
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
        if _DEFERRED is not None:
            _DEFERRED.append((self, payload))
            return
        fsync_file(self.path / METRICS_FILE)
        atomic_write_text(self.path / DONE_FILE, json.dumps(payload) + "\n")

    def mark_failed(self, exc: BaseException) -> None:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        atomic_write_text(self.path / ERROR_FILE, text)

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


def is_done(path: str | Path) -> bool:
    return (Path(path) / DONE_FILE).is_file()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Parse metrics.jsonl; a truncated last line (a run killed mid-write) is ignored."""
    file = Path(path) / METRICS_FILE
    if not file.is_file():
        return []
    records = []
    lines = file.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{file}:{i + 1}: not a JSON line") from None
    return records


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj
