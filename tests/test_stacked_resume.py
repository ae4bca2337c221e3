"""A stacked grid killed with SIGKILL mid-training resumes from its checkpoints to the same results.

The grid runs in a real subprocess (``mmclshift grid``); once every MMCL cell of the stack holds
its third checkpoint (and the first has been pruned), the process is killed with -9 and the grid
rerun. The rerun's eval and learning-curve records and its training losses must equal, bitwise,
those of the same grid run without interruption, and every MMCL cell must carry a resume marker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmclshift.experiments.semisynthetic_stacked import stack_checkpoints
from mmclshift.runs import DONE_FILE, METRICS_FILE, eval_records, read_metrics

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "fig2_smoke.yaml"
EVERY = 25
ARGS = ["splits=[id,ood]", "train.batch_size=32", "data.n_train=96", "data.n_test=64", "model.cnn_width=4",
        "model.embed_dim=8", "model.feature_dim=16", "model.text_width=8", "grid.pi_core=[1]",
        "grid.pi_spu=[0,1]", "grid.seeds=[0,1]", "train.steps=400", f"train.checkpoint_every={EVERY}",
        "train.eval_every=50", "train.eval_subset=32", "threads=1"]
MMCL = [f"mmcl-core1-spu{s}-seed{seed}" for s in (0, 1) for seed in (0, 1)]
SL = ["sl-seed0", "sl-seed1"]


def _grid(out: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "mmclshift.cli", "grid", str(SMOKE), "--out", str(out),
                                 "--no-progress", *ARGS], stdout=fh, stderr=subprocess.STDOUT, env=env,
                                cwd=ROOT)


def _finish(proc: subprocess.Popen, log: Path) -> None:
    assert proc.wait(timeout=600) == 0, log.read_text()[-2000:]


def _curves(run: Path) -> dict[tuple, tuple]:
    """The last curve record per (method, split, step): a resumed run logs the points after its
    checkpoint again."""
    out = {}
    for r in read_metrics(run):
        if r.get("event") == "curve":
            out[(r["method"], r["split"], r["step"])] = (r["accuracy"], r["correct"], r["n"])
    return out


def _losses(run: Path) -> list[tuple]:
    return [(r["step"], r["loss"]) for r in read_metrics(run) if r.get("event") == "train"]


def _evals(run: Path) -> list[tuple]:
    return [(r["method"], r["split"], r["accuracy"], r["correct"], r["n"], r["step"]) for r in eval_records(run)]


@pytest.mark.slow
def test_sigkill_mid_stack_then_rerun_equals_uninterrupted(tmp_path):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    log = tmp_path / "log.txt"
    _finish(_grid(ref, log), log)

    proc = _grid(cut, log)
    deadline = time.monotonic() + 300
    while True:  # every MMCL cell at step 3 * EVERY, step EVERY pruned: kill it there
        held = [set(stack_checkpoints(cut / name, "mmcl")) for name in MMCL]
        if all(3 * EVERY in h and EVERY not in h for h in held):
            break
        assert proc.poll() is None, f"the grid ended before it was killed:\n{log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, "no third checkpoint in every MMCL cell"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for name in MMCL:
        assert not (cut / name / DONE_FILE).exists()
        assert len(stack_checkpoints(cut / name, "mmcl")) <= 2  # pruned: at most two kept
    assert all((cut / name / DONE_FILE).exists() for name in SL)  # the SL stack trains first

    _finish(_grid(cut, log), log)
    for name in MMCL + SL:
        assert (cut / name / DONE_FILE).exists()
        assert _evals(cut / name) == _evals(ref / name), name  # bitwise: same accuracies and counts
        assert _curves(cut / name) == _curves(ref / name), name
        assert _losses(cut / name) == _losses(ref / name), name
        assert not stack_checkpoints(cut / name, "mmcl")  # finished runs keep no stack checkpoints
    for name in MMCL:
        markers = [r for r in read_metrics(cut / name) if r.get("event") == "resume"]
        assert len(markers) == 1, name
        done = markers[0]["steps_done"]
        assert done >= 3 * EVERY and done % EVERY == 0 and markers[0]["step"] == done - 1
        # the losses logged before the kill past the checkpoint are in the file but superseded
        raw = (cut / name / METRICS_FILE).read_text().count('"event": "train"')
        assert raw >= len(_losses(ref / name))
    assert len(_curves(ref / MMCL[0])) == 2 * (400 // 50)  # id and ood at every 50 steps
