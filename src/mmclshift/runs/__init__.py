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

The pieces, one job each (every name is importable from ``mmclshift.runs``):
:mod:`~mmclshift.runs.atomic` (atomic writes, deferred durability),
:mod:`~mmclshift.runs.checkpoints` (checkpoint files), :mod:`~mmclshift.runs.identity` (what a
run computes, hashes), :mod:`~mmclshift.runs.environment` (seeds, versions, rank),
:mod:`~mmclshift.runs.layout` (file names, reading a run back), :mod:`~mmclshift.runs.liveness`
(the run lock, whether a writer is alive) and :mod:`~mmclshift.runs.rundir` (:class:`RunDir`,
checking and moving run directories). Importing them imports no torch.

Records in metrics.jsonl are JSON objects with an ``event`` key:

* ``{"event": "eval", "method": "mmcl" | "sl" | <variant>, "split": "id" | <OOD set name>,
  "accuracy": top-1 in [0, 1], "n": test-set size, "correct": number right, "step": int | None,
  "theory": predicted accuracy | None, ...}`` -- one per (method, test set) evaluation; these are
  also what ``mmclshift train --json`` prints and what ``collect`` reads.
* ``{"event": "train", "method": ..., "step": ..., "loss": ..., ...}`` -- training progress.
"""

from __future__ import annotations

from mmclshift.runs.atomic import (
    atomic_write_bytes,
    atomic_write_text,
    defer_until_durable,
    deferred_durability,
    first_line,
    fsync_file,
    naming_path,
    with_path,
)
from mmclshift.runs.checkpoints import (
    load_checkpoint,
    save_checkpoint,
)
from mmclshift.runs.environment import (
    debug_enabled,
    environment_info,
    git_revision,
    is_main_process,
    seed_everything,
)
from mmclshift.runs.identity import (
    VOLATILE_KEYS,
    config_hash,
    identity_diff,
    identity_hash,
    run_dir_name,
    run_identity,
)
from mmclshift.runs.layout import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    DONE_FILE,
    ENV_FILE,
    ERROR_FILE,
    IDENTITY_FILE,
    LOCK_FILE,
    METRICS_FILE,
    RUN_ENTRIES,
    RUNNING_FILE,
    DamagedRunError,
    eval_records,
    is_done,
    read_finished_run,
    read_metrics,
    read_run_config,
    run_damage,
    stored_identity,
)
from mmclshift.runs.liveness import (
    RunBusyError,
    _process_marker,
    acquire_run_lock,
    busy_message,
    lock_owner,
    refuse_busy,
    release_run_lock,
    run_state,
)
from mmclshift.runs.rundir import (
    MOVED_ASIDE,
    RunDir,
    check_output_path,
    check_run_dir,
    is_moved_aside,
    make_run_dir,
    move_aside,
    refuse_foreign_folder,
)

__all__ = [
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "DONE_FILE",
    "DamagedRunError",
    "ENV_FILE",
    "ERROR_FILE",
    "IDENTITY_FILE",
    "LOCK_FILE",
    "METRICS_FILE",
    "RUNNING_FILE",
    "RUN_ENTRIES",
    "RunBusyError",
    "RunDir",
    "VOLATILE_KEYS",
    "_process_marker",
    "acquire_run_lock",
    "atomic_write_bytes",
    "atomic_write_text",
    "busy_message",
    "check_output_path",
    "check_run_dir",
    "config_hash",
    "defer_until_durable",
    "debug_enabled",
    "deferred_durability",
    "environment_info",
    "eval_records",
    "first_line",
    "fsync_file",
    "git_revision",
    "identity_diff",
    "identity_hash",
    "is_done",
    "is_main_process",
    "load_checkpoint",
    "lock_owner",
    "make_run_dir",
    "MOVED_ASIDE",
    "is_moved_aside",
    "move_aside",
    "naming_path",
    "read_finished_run",
    "read_metrics",
    "read_run_config",
    "refuse_busy",
    "refuse_foreign_folder",
    "release_run_lock",
    "run_damage",
    "run_dir_name",
    "run_identity",
    "run_state",
    "save_checkpoint",
    "seed_everything",
    "stored_identity",
    "with_path",
]
