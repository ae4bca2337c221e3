"""Running sweeps: job directories named by identity hash, resume, status, launchers.

Each job runs in ``<out>/<kind>-<identity hash>``; a job whose directory has a ``done`` marker is
skipped, so rerunning a sweep trains only what is missing; a job directory holding another
config is refused (``force``: moved aside). A failing job leaves its traceback in ``error.txt``
(its last line, the reason, is what :func:`failure_reasons` reports) and the others go on.
``sweep.json`` in ``<out>`` lists the planned jobs, so :func:`status` can tell done / running /
killed / failed / missing (a pid check on the job's running.json).

The local launcher's fast path (the batched trainer) falling over is a bug, not a job failure:
under ``MMCLSHIFT_DEBUG=1`` (``mmclshift --debug``) it is raised; otherwise its jobs run one at a
time and the fall-back is counted (:class:`BatchStats`) and reported in the sweep's summary.

Launchers (:data:`LAUNCHERS`): ``local`` (in this process; synthetic jobs that can be batched go
through :mod:`mmclshift.train.batched`), ``processes`` (a process pool), ``ray`` (Ray tasks on an
existing cluster or a local one) and ``slurm`` (submitit; ``executor="local"`` runs the same path
on this machine).
"""

from __future__ import annotations

import contextlib
import json
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mmclshift.config import build_config, to_dict
from mmclshift.errors import UserError
from mmclshift.runs import (
    ERROR_FILE,
    RunBusyError,
    RunDir,
    atomic_write_text,
    check_run_dir,
    debug_enabled,
    deferred_durability,
    lock_owner,
    make_run_dir,
    refuse_foreign_folder,
    release_run_lock,
    run_state,
)
from mmclshift.sweeps.spec import Job
from mmclshift.threads import TIER_THREADS, torch_threads

PLAN_FILE = "sweep.json"
MAX_BATCH = 512  # jobs per batched tensor program (bounds memory)


@dataclass
class SweepResult:
    planned: int
    skipped: int
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)  # being run by another live process: left alone
    reasons: dict[str, str] = field(default_factory=dict)  # failed job -> why (error.txt's last line)
    batch: BatchStats | None = None  # the local launcher's batched fast path, where it ran

    def summary(self) -> str:
        text = (f"{self.planned} jobs: {self.skipped} already done, {len(self.done)} trained, "
                f"{len(self.failed)} failed")
        text += f", {len(self.busy)} left to the process running them" if self.busy else ""
        if self.batch is not None and self.batch.fallback:
            text += (f"; the batched trainer failed on {self.batch.fallback} jobs, which ran one at a "
                     f"time ({self.batch.errors[0]}; rerun with --debug for the traceback)")
        return text


# --------------------------------------------------------------------------- one job


def run_job(config: dict[str, Any], out_dir: str) -> str:
    """Run one job from plain config data; returns "done", "busy" (another live process runs it)
    or "failed" (never raises; the traceback is in the job's error.txt)."""
    from mmclshift import experiments

    try:
        cfg = build_config(config, experiments.CONFIG_KINDS)
        experiments.run(cfg, out_dir, progress=False)
        return "done"
    except RunBusyError:
        return "busy"  # another live process took the job after the sweep checked it
    except Exception as exc:  # noqa: BLE001 - a failed job must not stop the sweep
        path = Path(out_dir)
        if not (path / ERROR_FILE).is_file():
            path.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path / ERROR_FILE, "".join(traceback.format_exception(exc)))
        release_run_lock(path)
        return "failed"


# --------------------------------------------------------------------------- batched local


def _theory_key(cfg: Any) -> str:
    d = to_dict(cfg)
    return json.dumps([d["kind"], d["data"], d["mmcl"]["embed_dim"], d["mmcl"]["rho"], d["mmcl"]["loss"],
                       d["sl"]["solver"], d["sl"]["weight_decay"], d["splits"]], sort_keys=True)


@dataclass
class BatchStats:
    """What :func:`run_batched` did: jobs trained batched, jobs that fell back to one at a time."""

    batched: int = 0
    fallback: int = 0
    chunks: int = 0
    errors: list[str] = field(default_factory=list)  # why each fallen-back chunk fell back


def run_batched(jobs: Sequence[Job], out: Path, *, theory: bool = True, progress: bool = False,
                threads: int = TIER_THREADS["batched"], stats: BatchStats | None = None) -> dict[str, str]:
    """Train batchable synthetic jobs as batched tensor programs; returns {name: status}.

    Runs with ``threads`` torch threads (0: torch's setting). Jobs with equal data settings and
    data seed share the sampler and the training and test draws. Each chunk's run directories are
    written inside :func:`mmclshift.runs.deferred_durability` (two ``os.sync()`` per chunk instead
    of an fsync per file). A chunk whose batched training raises is raised under
    :func:`debug_enabled`; otherwise it falls back to one job at a time, ``stats.fallback`` counts
    its jobs and ``stats.errors`` says why.
    """
    stats = BatchStats() if stats is None else stats
    with torch_threads(threads):
        return _run_batched(jobs, out, theory, progress, stats)


def _run_batched(jobs: Sequence[Job], out: Path, theory: bool, progress: bool,
                 stats: BatchStats) -> dict[str, str]:
    from mmclshift.train.batched import batch_key

    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        c = job.config
        groups.setdefault((*batch_key(c), c.sl.bias), []).append(job)
    status: dict[str, str] = {}
    theory_cache: dict[str, dict] = {}
    data_cache: dict = {}
    bar = tqdm(total=len(jobs), desc="batched jobs", disable=not progress, unit="job")
    for group in groups.values():
        for start in range(0, len(group), MAX_BATCH):
            chunk = group[start:start + MAX_BATCH]
            stats.chunks += 1
            with deferred_durability():
                try:
                    trained = _train_chunk(chunk, out, data_cache)
                except Exception as exc:  # noqa: BLE001 - a fast-path bug: counted, the jobs still run
                    if debug_enabled():
                        raise
                    stats.fallback += len(chunk)
                    stats.errors.append(repr(exc))
                    for j in chunk:
                        status[j.name] = run_job(to_dict(j.config), str(out / j.name))
                        bar.update(1)
                    continue
                stats.batched += len(chunk)
                for job, job_status in _evaluate_chunk(chunk, trained, theory, theory_cache):
                    status[job.name] = job_status
                    bar.update(1)
    bar.close()
    return status


@dataclass
class _TrainedChunk:
    """One chunk's jobs trained as one batched program: per job its data, run and weights."""

    prepared: list[Any]
    runs: list[RunDir]
    W_img: Any
    W_txt: Any
    W: Any
    b: Any
    num_classes: int
    bias: bool


def _train_chunk(chunk: Sequence[Job], out: Path, data_cache: dict) -> _TrainedChunk:
    """Draw the chunk's data, create its run directories, train MMCL and SL batched."""
    import torch

    from mmclshift.experiments.synthetic import prepare_job
    from mmclshift.models.linear import LinearEncoders
    from mmclshift.train import batched as B

    prepared = [prepare_job(j.config, train_cache=data_cache) for j in chunk]
    runs = [RunDir.create(out / j.name, j.config, seed=j.config.seed, device=j.config.device)
            for j in chunk]
    cfg0 = chunk[0].config
    inits = [LinearEncoders(p.train.x_image.shape[1], p.train.x_text.shape[1],
                            p.cfg.mmcl.embed_dim, init_scale=p.cfg.mmcl.init_scale,
                            generator=p.init_gen, dtype=p.train.x_image.dtype)
             for p in prepared]
    x_img = torch.stack([p.train.x_image for p in prepared])
    x_txt = torch.stack([p.train.x_text for p in prepared])
    dev = x_img.device
    mstats = B.mmcl_statistics(x_img, x_txt)
    rho = torch.tensor([p.cfg.mmcl.rho for p in prepared], dtype=mstats.cross.dtype, device=dev)
    W_img, W_txt = B.train_mmcl_batched(
        mstats, torch.stack([m.W_img.detach() for m in inits]).to(dev),
        torch.stack([m.W_txt.detach() for m in inits]).to(dev), rho,
        cfg0.mmcl.optim.lr, cfg0.mmcl.optim.steps)
    K = prepared[0].model.num_classes
    wd = torch.tensor([p.cfg.sl.weight_decay for p in prepared], device=dev)
    W, b = B.train_sl_batched(x_img, torch.stack([p.train.labels for p in prepared]), K, wd,
                              bias=cfg0.sl.bias)
    return _TrainedChunk(prepared, runs, W_img, W_txt, W, b, K, cfg0.sl.bias)


def _evaluate_chunk(chunk: Sequence[Job], trained: _TrainedChunk, theory: bool,
                    theory_cache: dict[str, dict]) -> Iterator[tuple[Job, str]]:
    """Evaluate and finish each job of a trained chunk; yields (job, "done" | "failed")."""
    from mmclshift.experiments.synthetic import evaluate_job, theory_predictions
    from mmclshift.train import batched as B

    for i, (job, prep, run) in enumerate(zip(chunk, trained.prepared, trained.runs, strict=True)):
        try:
            with run.guard():
                preds = {}
                if theory:
                    key = _theory_key(job.config)
                    if key not in theory_cache:
                        theory_cache[key] = theory_predictions(job.config)
                    preds = theory_cache[key]
                run.log_metrics({"event": "train", "method": "batched", "jobs": len(chunk)})
                evaluate_job(prep, run, B.encoders_from(trained.W_img[i], trained.W_txt[i]),
                             B.classifier_from(trained.W[i], trained.b[i], trained.num_classes,
                                               trained.bias), preds)
            yield job, "done"
        except Exception:  # noqa: BLE001 - guard() wrote error.txt; the others go on
            yield job, "failed"


# --------------------------------------------------------------------------- launchers


def _synthetic_batchable(cfg: Any) -> bool:
    from mmclshift.train.batched import batchable

    return batchable(cfg)


#: experiment kind -> whether a job of that kind can take the local launcher's batched fast path
#: (:func:`run_batched`); jobs of kinds not listed run one at a time
BATCHABLE: dict[str, Callable[[Any], bool]] = {
    "data_model_1": _synthetic_batchable,
    "data_model_2": _synthetic_batchable,
}


def launch_local(jobs: Sequence[Job], out: Path, *, batched: bool = True, progress: bool = True,
                 stats: BatchStats | None = None, **_: Any) -> dict[str, str]:
    status: dict[str, str] = {}
    batch = [j for j in jobs
             if batched and j.config.kind in BATCHABLE and BATCHABLE[j.config.kind](j.config)]
    single = [j for j in jobs if j not in batch]
    if batch:
        status.update(run_batched(batch, out, progress=progress, stats=stats))
    for job in tqdm(single, desc="jobs", disable=not progress or not single, unit="job"):
        status[job.name] = run_job(to_dict(job.config), str(out / job.name))
    return status


def die_with_parent(parent: int) -> None:
    """Worker initializer: end this worker when the launcher that started it is gone.

    On Linux the kernel sends SIGKILL when the parent dies (``PR_SET_PDEATHSIG``); everywhere a
    watchdog thread also polls the parent pid and exits when it changes (reparenting).
    """
    import ctypes
    import os
    import signal
    import threading
    import time

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):  # no libc to load, or no prctl (not Linux): the watchdog below
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=watch, name="mmclshift-parent-watchdog", daemon=True).start()


def launch_processes(jobs: Sequence[Job], out: Path, *, workers: int = 2, **_: Any) -> dict[str, str]:
    """A pool of ``workers`` spawned processes; killing the launcher ends its workers too."""
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                             initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
        futures = {j.name: pool.submit(run_job, to_dict(j.config), str(out / j.name)) for j in jobs}
        return {name: f.result() for name, f in futures.items()}


def launch_ray(jobs: Sequence[Job], out: Path, *, workers: int = 2, address: str | None = None,
               **_: Any) -> dict[str, str]:
    try:
        import ray
    except ImportError:
        raise UserError("the ray launcher needs Ray: pip install 'mmclshift[ray]'") from None
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address:
            kwargs["address"] = address
        else:
            kwargs.update(num_cpus=workers, _node_ip_address="127.0.0.1")
        ray.init(**kwargs)
        started = True
    try:
        remote = ray.remote(num_cpus=1)(run_job)
        refs = {j.name: remote.remote(to_dict(j.config), str(out.resolve() / j.name)) for j in jobs}
        return {name: ray.get(ref) for name, ref in refs.items()}
    finally:
        if started:
            ray.shutdown()


def launch_slurm(jobs: Sequence[Job], out: Path, *, executor: str = "slurm", partition: str | None = None,
                 time_min: int = 60, gpus: int = 0, cpus: int = 2, **_: Any) -> dict[str, str]:
    try:
        import submitit
    except ImportError:
        raise UserError("the slurm launcher needs submitit: pip install 'mmclshift[slurm]'") from None
    ex = submitit.AutoExecutor(folder=str(out / ".submitit"), cluster=None if executor == "slurm" else executor)
    params: dict[str, Any] = {"timeout_min": time_min, "cpus_per_task": cpus}
    if executor == "slurm":
        params.update(slurm_partition=partition, gpus_per_node=gpus)
        params = {k: v for k, v in params.items() if v is not None}
    ex.update_parameters(**params)
    handles = ex.map_array(run_job, [to_dict(j.config) for j in jobs], [str(out.resolve() / j.name) for j in jobs])
    return {j.name: h.result() for j, h in zip(jobs, handles, strict=True)}


LAUNCHERS: dict[str, Callable[..., dict[str, str]]] = {
    "local": launch_local,
    "processes": launch_processes,
    "ray": launch_ray,
    "slurm": launch_slurm,
}


# --------------------------------------------------------------------------- sweep


def run_sweep(jobs: Sequence[Job], out_dir: str | Path, *, launcher: str = "local",
              max_jobs: int | None = None, force: bool = False, **options: Any) -> SweepResult:
    """Run the jobs not yet done (at most ``max_jobs`` of them) with a launcher.

    Each job is a run: a job directory holding another config (or a damaged finished run) is
    refused in one line before any job starts, or (``force``) moved aside and the job rerun. A
    job another live process is running (it holds the job's lock) is left to it and counted in
    ``busy``. ``out_dir`` must be new, empty, or a sweep directory.
    """
    if launcher not in LAUNCHERS:
        raise UserError(f"unknown launcher {launcher!r} (one of {', '.join(LAUNCHERS)})")
    if max_jobs is not None and max_jobs < 1:
        raise UserError(f"--max-jobs must be at least 1; got {max_jobs}")
    refuse_foreign_folder(out_dir, {PLAN_FILE, *(j.name for j in jobs)}, "sweep directory")
    out = make_run_dir(out_dir, "sweep directory")
    busy = [j.name for j in jobs if lock_owner(out / j.name) is not None]  # another live process
    free = [j for j in jobs if j.name not in busy]
    if not force:  # every refusal before anything is written or trained
        for j in free:
            check_run_dir(out / j.name, j.config)
    plan = {"jobs": [j.name for j in jobs], "configs": {j.name: to_dict(j.config) for j in jobs}}
    atomic_write_text(out / PLAN_FILE, json.dumps(plan, indent=1) + "\n")
    todo = [j for j in free if check_run_dir(out / j.name, j.config, force=force) != "done"]
    skipped = len(free) - len(todo)
    if max_jobs is not None:
        todo = todo[:max_jobs]
    for j in todo:  # a rerun clears a previous failure's marker
        with contextlib.suppress(FileNotFoundError):
            (out / j.name / ERROR_FILE).unlink()
    batch = BatchStats() if launcher == "local" else None
    status = LAUNCHERS[launcher](todo, out, stats=batch, **options) if todo else {}
    busy += [n for n, s in status.items() if s == "busy"]
    failed = sorted(n for n, s in status.items() if s not in ("done", "busy"))
    return SweepResult(len(jobs), skipped, sorted(n for n, s in status.items() if s == "done"),
                       failed, sorted(busy), failure_reasons(out, failed), batch)


STATES = ("done", "running", "killed", "failed", "missing")


def status(out_dir: str | Path) -> dict[str, str]:
    """{job name: done | running | killed | failed | missing} for the sweep planned in ``out_dir``.

    ``running`` needs the job's process alive (its pid, recorded in the job's running.json, is
    checked on this host); a job started but not finished whose process is gone is ``killed``.
    """
    out = Path(out_dir)
    plan_file = out / PLAN_FILE
    if not plan_file.is_file():
        raise UserError(f"{out}: no {PLAN_FILE} (not a sweep directory)")
    try:
        names = json.loads(plan_file.read_text())["jobs"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{plan_file}: unreadable sweep plan") from None
    return {name: run_state(out / name) for name in names}


def failure_reasons(out_dir: str | Path, names: Sequence[str]) -> dict[str, str]:
    """{job name: why it failed} for the failed jobs among ``names``: the last line of the job's
    error.txt (the exception and its message), or why that cannot be read."""
    reasons = {}
    for name in names:
        file = Path(out_dir) / name / ERROR_FILE
        try:
            lines = [ln.strip() for ln in file.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except OSError as exc:
            reasons[name] = f"no readable {ERROR_FILE} ({exc.strerror or exc})"
            continue
        except UnicodeDecodeError:
            reasons[name] = f"{ERROR_FILE} is not UTF-8 text"
            continue
        reasons[name] = lines[-1] if lines else f"empty {ERROR_FILE}"
    return reasons
