"""A semi-synthetic grid's pending runs trained as stacked models (:mod:`mmclshift.train.stacked`).

:func:`train_cells_stacked` takes the grid's runs that are not done yet, partitions them into
stacks (same method, architecture, optimisation, device and threads) and trains each stack of
two or more runs at once. Every run still gets its own run directory with the same files and
records as a one-at-a-time run (config, environment, ``data``/``train``/``eval`` records,
checkpoints, ``done``); its ``done`` summary adds ``stacked_cells``, the size of its stack.

Runs that cannot be stacked (another image or text tower) are left to the one-at-a-time loop;
the reason is printed once per stack and their number returned, so callers can count them.

With ``train.checkpoint_every``, each run of a stack writes ``checkpoints/stack-<method>-step<N>.pt``
(its slice of the stack's state, see :func:`mmclshift.train.stacked.train_stacked`) every N steps;
once all runs hold step N, older files but the last two are deleted. A rerun resumes the stack
from the latest step all its unfinished runs hold (:func:`resume_step`), appending a ``resume``
marker to each run's metrics (the marker single runs write, so
:func:`mmclshift.runs.read_metrics` drops the ``train`` records logged after the checkpoint); a
finished run deletes its stack checkpoints. With ``train.eval_every``, each run logs learning-curve
points (:func:`mmclshift.experiments.semisynthetic_run.log_curve`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmclshift.config import to_dict
from mmclshift.data.digits import load_digits
from mmclshift.errors import UserError
from mmclshift.experiments import semisynthetic_run as semi
from mmclshift.runs import CHECKPOINT_DIR, RunDir, check_run_dir, identity_hash, load_checkpoint
from mmclshift.threads import torch_threads
from mmclshift.train.images import IMAGE_METHODS
from mmclshift.train.stacked import StackedCell, train_stacked, unstackable_reason


@dataclass
class StackReport:
    """What :func:`train_cells_stacked` did: runs trained stacked, runs left to the loop and why."""

    trained: list[str] = field(default_factory=list)  # names of the runs trained stacked
    one_at_a_time: int = 0
    reasons: list[str] = field(default_factory=list)


def stack_key(method: str, cfg: semi.SemiSyntheticExperiment) -> str:
    """Runs with equal keys can share one stack (images and seeds may differ)."""
    keep = {k: to_dict(cfg)[k] for k in ("model", "train", "device", "threads")}
    keep["images"] = (cfg.data.root, cfg.data.n_train)  # equal minibatch sizes
    if method == "mmcl":
        keep["mmcl"] = to_dict(cfg.mmcl)
    return repr((method, sorted(keep.items())))


def _logger(run: RunDir, writer: Any):
    def log(record: dict[str, Any]) -> None:
        run.log_metrics(record)
        if writer is not None:
            writer.add_scalar(f"{record['method']}/loss", record["loss"], record["step"])
            writer.add_scalar(f"{record['method']}/samples_per_s", record["samples_per_s"], record["step"])

    return log


def train_cells_stacked(cells: list[tuple[str, semi.SemiSyntheticExperiment]], out: Path, *,
                        progress: bool = True, position: int | None = None,
                        label: str = "") -> StackReport:
    """Train the single-method runs ``(name, config)`` under ``out`` in stacks; see the module doc.

    ``position`` and ``label`` place and name the progress bar (for stacks trained in several
    processes at once, one bar line each).
    """
    report = StackReport()
    stacks: dict[str, list[tuple[str, semi.SemiSyntheticExperiment]]] = {}
    for name, cfg in cells:
        if len(cfg.methods) != 1:
            report.one_at_a_time += 1
            continue
        stacks.setdefault(stack_key(cfg.methods[0], cfg), []).append((name, cfg))
    for members in stacks.values():
        if len(members) < 2:
            report.one_at_a_time += len(members)
            continue
        cfg0 = members[0][1]
        method = cfg0.methods[0]
        reason = unstackable_reason(semi.new_model(cfg0, method, torch.device("cpu")), method, cfg0.mmcl)
        if reason is not None:
            report.one_at_a_time += len(members)
            report.reasons.append(f"{method}: {reason}")
            print(f"[grid] {len(members)} {method} runs are trained one at a time: cannot stack {reason}",
                  file=sys.stderr, flush=True)
            continue
        _train_stack(members, out, method, progress, position, label)
        report.trained += [name for name, _ in members]
    return report


CHECKPOINT_PREFIX = "stack-"
KEEP_CHECKPOINTS = 2


def _checkpoint_name(method: str, step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{method}-step{step:07d}.pt"


def stack_checkpoints(run_dir: Path, method: str) -> dict[int, Path]:
    """A cell's mid-training stack checkpoints ``{completed steps: file}``."""
    out: dict[int, Path] = {}
    pattern = f"{CHECKPOINT_PREFIX}{method}-step*.pt"
    for f in (run_dir / CHECKPOINT_DIR).glob(pattern):
        digits = f.name[len(f"{CHECKPOINT_PREFIX}{method}-step"):-3]
        if digits.isdigit():
            out[int(digits)] = f
    return out


def _remove_checkpoints(run_dir: Path, method: str, keep: int = 0) -> None:
    """Delete a cell's stack checkpoints but the ``keep`` latest."""
    found = stack_checkpoints(run_dir, method)
    for step in sorted(found)[: max(0, len(found) - keep)]:
        found[step].unlink(missing_ok=True)


def resume_step(members: list[tuple[str, semi.SemiSyntheticExperiment]], out: Path, method: str) -> int:
    """The latest step at which every member run (unfinished, same config) has a stack checkpoint
    (0: none, the stack starts from its first step)."""
    common: set[int] | None = None
    for name, cfg in members:
        if check_run_dir(out / name, cfg) != "partial":
            return 0
        steps = {s for s in stack_checkpoints(out / name, method) if 0 < s < cfg.train.steps}
        common = steps if common is None else common & steps
    return max(common) if common else 0


def _train_stack(members: list[tuple[str, semi.SemiSyntheticExperiment]], out: Path, method: str,
                 progress: bool, position: int | None = None, label: str = "") -> None:
    cfg0 = members[0][1]
    device = torch.device(cfg0.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise semi.ConfigError(f"config key 'device': {cfg0.device} requested but CUDA is not available")
    digits = {cfg.data.root: load_digits(cfg.data.root) for _, cfg in members}  # before any run dir
    start = resume_step(members, out, method)
    states = None
    if start:  # every member's state at that step (a bad file: one line naming it, nothing lost)
        states = [_load_state(out / name, cfg, method, start) for name, cfg in members]
    with torch_threads(cfg0.threads):
        runs: list[RunDir] = []
        writers: list[Any] = []
        try:
            t0 = time.perf_counter()
            prepared, shared = [], {}
            for name, cfg in members:
                run = RunDir.create(out / name, cfg, seed=cfg.seed, device=str(device), resume=bool(start))
                if not start:
                    _remove_checkpoints(run.path, method)  # an abandoned attempt's
                runs.append(run)
                writers.append(semi._tensorboard(run.path))
                data = semi.start_run(cfg, run, digits[cfg.data.root], log=not start)
                if start:  # the train records after the checkpoint are superseded (runs.read_metrics)
                    run.log_metrics({"event": "resume", "method": method, "step": start - 1,
                                     "steps_done": start, "stacked_cells": len(members)})
                for split in data.values():  # runs of one seed share their images: keep one copy
                    key = (cfg.seed, split.name, tuple(split.images.shape))
                    kept = shared.setdefault(key, split.images)
                    if kept is not split.images and torch.equal(kept, split.images):
                        split.images = kept
                prepared.append(data)
            if progress and position is None:
                what = f" from step {start}" if start else ""
                print(f"[grid] training {len(members)} {method} runs as one stacked model{what}", flush=True)
            cells = []
            for (_, cfg), run, writer, data in zip(members, runs, writers, prepared, strict=True):
                train = data["train"]
                images = train.images.to(device) if device.type == "cuda" else train.images
                cells.append(StackedCell(semi.new_model(cfg, method, device), images,
                                         IMAGE_METHODS[method].targets(train), cfg.seed + 1,
                                         _logger(run, writer), name=run.path.name))

            def save(step: int, cell_states: list[dict[str, Any]]) -> None:
                for (_, cfg), run, st in zip(members, runs, cell_states, strict=True):
                    run.save_checkpoint({**st, "method": method, "identity": identity_hash(cfg)},
                                        _checkpoint_name(method, step))
                for run in runs:  # only once every cell holds this step
                    _remove_checkpoints(run.path, method, keep=KEEP_CHECKPOINTS)

            def evaluate(step: int) -> None:
                for (_, cfg), run, data, cell in zip(members, runs, prepared, cells, strict=True):
                    semi.log_curve(cfg, run, data, method, cell.model, step, device)

            stats = train_stacked(cells, method, cfg0.train, mmcl=cfg0.mmcl, device=device,
                                  progress=progress, desc=f"{label}train {method} x{len(cells)}",
                                  position=position, states=states,
                                  save=save if cfg0.train.checkpoint_every else None,
                                  evaluate=evaluate if cfg0.train.eval_every else None)
            for (_, cfg), run, writer, data, cell, st in zip(members, runs, writers, prepared, cells, stats,
                                                              strict=True):
                semi.save_model(cfg, run, method, cell.model)
                semi.finish_run(cfg, run, digits[cfg.data.root], data, {method: cell.model},
                                {method: st["samples_per_s"]}, t0, device, writer,
                                summary={"stacked_cells": len(cells), "resumed_from_step": start})
                _remove_checkpoints(run.path, method)  # finished: its final state is the result
        except BaseException as exc:
            for run in runs:
                if not run.done:
                    run.mark_failed(exc)
            raise
        finally:
            for writer in writers:
                if writer is not None:
                    writer.close()


def _load_state(run_dir: Path, cfg: semi.SemiSyntheticExperiment, method: str, step: int) -> dict[str, Any]:
    path = stack_checkpoints(run_dir, method)[step]
    state = load_checkpoint(path)
    if state.get("identity") != identity_hash(cfg) or state.get("method") != method:
        raise UserError(f"{path}: a checkpoint of another config or method; move it aside to "
                        "train this run from its first step")
    return state


__all__ = ["StackReport", "resume_step", "stack_checkpoints", "train_cells_stacked"]
