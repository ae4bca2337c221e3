"""Run directories: identity, self-describing files, atomic checkpoints and completion markers.

A run directory holds::

    config.yaml     the resolved config (every default filled in)
    env.json        versions, device, seed, git revision, host, start time
    metrics.jsonl   one JSON object per evaluation, appended and flushed as they happen
    checkpoints/    checkpoint files, each written to a temp file and renamed into place
    identity.json   the hash of the config's identity (the resolved config without the keys in
                    :data:`VOLATILE_KEYS`) and the keys left out of it
    running.json    pid and host of the process running it (removed when it finishes or fails)
    lock            ``flock``'ed by the process writing the run, for the whole of its training
    error.txt       the traceback of a failed attempt
    done            written last; its presence means the run completed

Sweeps and ``collect`` treat a directory without ``done`` as incomplete.

**One writer.** :meth:`RunDir.create` takes the run's lock (:func:`acquire_run_lock`) before it
changes anything and keeps it until ``done`` or ``error.txt`` is written (or the process ends,
when the kernel drops it, so a killed writer's run is simply taken over). :func:`check_run_dir`
refuses a run another live process holds (:class:`RunBusyError`, naming it), ``force`` or not;
:func:`run_state` calls it ``running``.

**Damage.** A finished run must read back whole (:func:`read_finished_run`): a ``done`` whose
config.yaml or metrics.jsonl is missing, empty, not a file, unreadable or torn is a
:class:`DamagedRunError`, never a new run: :func:`check_run_dir` refuses it (``force``: moves it
aside), and ``collect`` names it and leaves it out.

Durability: metrics lines are flushed to the OS as they are written but not fsynced one by one;
:meth:`RunDir.mark_done` fsyncs metrics.jsonl before it writes (and fsyncs) ``done``, so a
``done`` marker that survives a crash vouches for the metrics before it. Inside
:func:`deferred_durability` (a batched sweep's chunk of jobs) no file is fsynced on its own:
``done`` markers are held back, and on leaving the block one ``os.sync()`` makes everything
written durable, the markers are written, and a second ``os.sync()`` makes them durable. A crash
inside the block leaves no marker, so those jobs count as incomplete and rerun.
The environment (versions, host, git revision) is gathered once per process
(:func:`environment_info` caches it; only ``seed``, ``device`` and ``started`` vary per run).

**Identity.** A run directory belongs to one config: :func:`check_run_dir` (called by
:meth:`RunDir.create`, ``experiments.run``, grids and sweeps before anything is written) finds
the same config finished ("done": skip it), the same config unfinished ("partial": resume or
restart it), nothing ("new"), or another config: refused with a one-line error naming the keys
that differ, unless ``force``, which renames the old directory to ``<name>.replaced-<time>``
beside it (never deletes it). Keys that only say where or how visibly a run executes
(:data:`VOLATILE_KEYS`: device, threads, progress, resume, loader workers, grid stacking, whether
checkpoints are kept) do not count.

**History.** A resumed run appends to metrics.jsonl. It first writes ``{"event": "resume",
"method": m, "step": s}``; :func:`read_metrics` drops the ``train`` records of method ``m`` with
step > s written before that marker (they were logged after the last checkpoint and are logged
again), so the history reads as that of an uninterrupted run. A run restarted from scratch (no
checkpoints) keeps its previous history as ``metrics.jsonl.1``, ``.2``, ...

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
import errno
import fcntl
import functools
import hashlib
import io
import json
import os
import pickle
import platform
import random
import re
import socket
import subprocess
import tempfile
import time
import traceback
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmclshift.config import ConfigError, dump_yaml, load_yaml_text, to_dict
from mmclshift.errors import DataError, UserError

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


class RunBusyError(UserError):
    """A run directory that another live process is writing (it holds the run's lock)."""


class DamagedRunError(DataError):
    """A finished run (``done``) whose config or metrics cannot be read back."""

#: config keys that change only where or how visibly a run executes, not what it computes
VOLATILE_KEYS = ("device", "threads", "progress", "train.device", "train.resume", "data.workers",
                 "data.prefetch", "grid.stacked", "save_checkpoints")


# --------------------------------------------------------------------------- atomic files


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
        raise _with_path(exc, path) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _with_path(exc: OSError, path: str | Path) -> OSError:
    """``exc`` naming ``path`` (a disk-full or permission error on a write names no file)."""
    if exc.filename is not None and not str(exc.filename).endswith(".tmp"):
        return exc
    return type(exc)(exc.errno, exc.strerror or _first_line(exc), str(path))


@contextlib.contextmanager
def naming_path(path: str | Path) -> Iterator[None]:
    """Re-raise an ``OSError`` of the block so that its message names ``path``."""
    try:
        yield
    except OSError as exc:
        raise _with_path(exc, path) from None


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
                run._clear_running()
            os.sync()


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> None:
    """``torch.save`` through a temp file and an atomic rename."""
    buf = io.BytesIO()
    torch.save(dict(state), buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (tensors and plain containers only).

    A missing, truncated or corrupt file, or one that holds anything but tensors and plain
    containers (a pickled object), raises :class:`DataError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        why = [ln.split("error:", 1)[-1].strip() for ln in str(exc).splitlines()
               if "WeightsUnpickler error" in ln]
        raise DataError(f"{path}: checkpoint refused by weights_only loading: it holds more than "
                        f"tensors and plain containers ({why[0] if why else 'a pickled object'})"
                        ) from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: truncated or corrupt checkpoint ({_first_line(exc)})") from None
    if not isinstance(state, dict):
        raise DataError(f"{path}: not a checkpoint (holds a {type(state).__name__}, not a mapping)")
    return state


def _first_line(exc: BaseException, limit: int = 160) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- identity, seeds


def config_hash(config: Any, length: int = 12) -> str:
    """Stable hash of a resolved config (dataclass or plain data)."""
    blob = json.dumps(to_dict(config), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def run_identity(config: Any) -> dict[str, Any]:
    """The part of a resolved config that decides what a run computes (no :data:`VOLATILE_KEYS`)."""
    data = json.loads(json.dumps(to_dict(config), default=str))
    if not isinstance(data, dict):
        return {}
    for key in VOLATILE_KEYS:
        *parents, last = key.split(".")
        node: Any = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return data


def identity_hash(config: Any, length: int = 16) -> str:
    """Hash of :func:`run_identity`: equal for configs that compute the same run."""
    blob = json.dumps(run_identity(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def run_dir_name(config: Any, prefix: str) -> str:
    """``<prefix>-<identity hash>``: the directory name of a run (or grid, or sweep job).

    Named by :func:`identity_hash`, so a rerun that differs only in :data:`VOLATILE_KEYS`
    (threads, device, loader workers, ...) finds, and reuses, the same directory.
    """
    return f"{prefix}-{identity_hash(config, 12)}"


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
        if _DEFERRED is not None:
            _DEFERRED.append((self, payload))
            return
        fsync_file(self.path / METRICS_FILE)
        atomic_write_text(self.path / DONE_FILE, json.dumps(payload) + "\n")
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


# --------------------------------------------------------------------------- identity checks


def is_main_process() -> bool:
    """False in the non-zero ranks of a ``torchrun`` / SLURM job (rank 0 owns the run dir)."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) or 0) == 0


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict) and d:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def identity_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for every dotted key whose value differs."""
    a, b = _flatten(dict(old)), _flatten(dict(new))
    missing = object()
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb:
            show = [("(absent)" if v is missing else json.dumps(v, default=str)) for v in (va, vb)]
            out.append(f"{key}: {show[0]} -> {show[1]}")
    return out


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
            raise DamagedRunError(f"{env}: unreadable ({_first_line(exc)})") from None
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


# --------------------------------------------------------------------------- one writer per run

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
                raise _with_path(exc, file) from None
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


# --------------------------------------------------------------------------- liveness


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
