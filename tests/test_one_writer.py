"""One writer per run, and finished runs kept whole or refused.

A run directory is locked (``flock`` on its ``lock`` file) for the whole of its training: a
second writer (train, grid cell, sweep job) is refused at once naming the owner, a lock left by
a dead process is taken over, and sweeps leave locked jobs alone. A finished run whose config
or metrics cannot be read back is damaged: reruns refuse it (``--force`` moves it aside), and
collect / claims / report name it and go on with the rest.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmclshift.analysis.collect import collect
from mmclshift.cli import main
from mmclshift.errors import DataError
from mmclshift.runs import (
    DamagedRunError,
    RunBusyError,
    check_run_dir,
    eval_records,
    lock_owner,
    read_metrics,
    run_state,
)
from mmclshift.sweeps.runner import run_sweep, status
from mmclshift.sweeps.spec import expand

ROOT = Path(__file__).resolve().parents[1]
DM1 = str(ROOT / "configs" / "data_model_1.yaml")
FIG2 = str(ROOT / "configs" / "fig2_smoke.yaml")
TINY = ["n_train=300", "n_test=300", "splits=[id]", "mmcl.optim.steps=5"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


def one_line_error(capsys, args, *needles) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert str(needle) in err, (needle, err)
    return err.strip()


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def train(out: Path, *extra: str) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return main(["train", DM1, *TINY, *extra, "--out", str(out), "--json", "--no-progress"])


@pytest.fixture(scope="module")
def finished_once(tmp_path_factory):
    base = tmp_path_factory.mktemp("finished")
    for seed in (0, 1):
        assert train(base / f"seed{seed}", f"seed={seed}") == 0
    return base


@pytest.fixture
def runs(finished_once, tmp_path):
    """Two finished tiny runs (copies): seed0 and seed1."""
    shutil.copytree(finished_once, tmp_path / "runs")
    return tmp_path / "runs"


HOLDER = """
import json, sys
from pathlib import Path
from mmclshift.runs import RUNNING_FILE, _process_marker, acquire_run_lock, atomic_write_text
path = Path(sys.argv[1])
path.mkdir(parents=True, exist_ok=True)
acquire_run_lock(path)
atomic_write_text(path / RUNNING_FILE, json.dumps(_process_marker()))
print("locked", flush=True)
sys.stdin.read()  # hold the lock until the test closes stdin
"""


@contextlib.contextmanager
def held(path: Path):
    """Another live process holding run ``path``'s lock (as a training process does)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], env=ENV, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


# --------------------------------------------------------------------------- one writer


def wait_for_lock(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (lock_owner(path) or {}).get("pid"):  # locked, and its running.json written
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the first writer never took the lock"
        time.sleep(0.02)


def test_two_train_processes_into_one_out(tmp_path):
    """The second is refused at once naming the first; the first finishes as if alone."""
    args = [sys.executable, "-m", "mmclshift", "train", DM1, "n_train=300", "n_test=300",
            "splits=[id]", "mmcl.optim.steps=1000", "--json", "--no-progress"]
    out = tmp_path / "run"
    first = subprocess.Popen([*args, "--out", str(out)], env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    wait_for_lock(out, first)
    first.send_signal(signal.SIGSTOP)  # hold it mid-training while the second one tries
    try:
        assert lock_owner(out)["pid"] == first.pid
        t0 = time.monotonic()
        second = subprocess.run([*args, "--out", str(out)], env=ENV, capture_output=True,
                                text=True, timeout=120)
        waited = time.monotonic() - t0
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2 and second.stdout == ""
    assert len(second.stderr.strip().splitlines()) == 1, second.stderr
    assert f"process {first.pid}" in second.stderr and "being written" in second.stderr
    assert waited < 60  # refused at once (the time is the interpreter's start-up)
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    alone = tmp_path / "alone"
    subprocess.run([*args, "--out", str(alone)], env=ENV, capture_output=True, check=True, timeout=300)
    assert [json.loads(x) for x in stdout.splitlines()] == eval_records(alone) == eval_records(out)
    assert not (out / "metrics.jsonl.1").exists()  # nobody moved the first writer's metrics


def test_locked_run_is_refused_even_with_force(tmp_path, capsys):
    out = tmp_path / "run"
    with held(out) as owner:
        before = snapshot(out)
        one_line_error(capsys, ["train", DM1, *TINY, "--out", str(out)], f"process {owner.pid}",
                       "being written")
        one_line_error(capsys, ["train", DM1, *TINY, "seed=3", "--out", str(out), "--force"],
                       f"process {owner.pid}")
        assert snapshot(out) == before and run_state(out) == "running"
    assert run_state(out) == "killed"  # the owner is gone: its lock went with it


def test_lock_of_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "run"
    with held(out):
        pass  # the holder exits without finishing the run
    assert lock_owner(out) is None and run_state(out) == "killed"
    assert train(out) == 0 and run_state(out) == "done"


def test_locked_grid_cell_is_refused(tmp_path, capsys):
    grid = ["train.steps=2", "grid.pi_core=[1.0]", "grid.pi_spu=[1.0]", "grid.seeds=[0]", "splits=[id]"]
    with held(tmp_path / "g" / "sl-seed0") as owner:
        one_line_error(capsys, ["grid", FIG2, *grid, "--out", str(tmp_path / "g"), "--split", "id"],
                       "sl-seed0", f"process {owner.pid}")
        assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["sl-seed0"]


def test_sweep_leaves_locked_jobs_to_their_owner(tmp_path):
    jobs = expand({"base": {"kind": "data_model_1"}, "grid": {"seed": [0, 1]}, "overrides": {
        "n_train": 300, "n_test": 300, "splits": ["id"], "mmcl.optim.steps": 5}})
    busy = tmp_path / "s" / jobs[0].name
    with held(busy):
        result = run_sweep(jobs, tmp_path / "s", progress=False)
        assert result.busy == [jobs[0].name] and result.done == [jobs[1].name] and not result.failed
        assert status(tmp_path / "s") == {jobs[0].name: "running", jobs[1].name: "done"}
        assert sorted(p.name for p in busy.iterdir()) == ["lock", "running.json"]  # untouched
        with pytest.raises(RunBusyError, match="being written"):
            check_run_dir(busy, jobs[0].config, force=True)


# --------------------------------------------------------------------------- damaged finished runs


def _delete(run: Path, name: str) -> None:
    (run / name).unlink()


def _empty(run: Path, name: str) -> None:
    (run / name).write_text("")


def _directory(run: Path, name: str) -> None:
    (run / name).unlink()
    (run / name).mkdir()


def _torn(run: Path, name: str) -> None:
    data = (run / name).read_bytes()
    (run / name).write_bytes(data[: len(data) - 20])  # the last eval line cut mid-write


def _garbage(run: Path, name: str) -> None:
    (run / name).write_text("kind: [unclosed\n")


DAMAGE = {
    "config deleted": (_delete, "config.yaml", "config.yaml: missing"),
    "config unreadable": (_garbage, "config.yaml", "invalid YAML"),
    "config not UTF-8": (lambda r, n: (r / n).write_bytes(b"kind: \xff\xfe\n"), "config.yaml", "not UTF-8"),
    "metrics deleted": (_delete, "metrics.jsonl", "metrics.jsonl: missing"),
    "metrics empty": (_empty, "metrics.jsonl", "metrics.jsonl: empty"),
    "metrics a directory": (_directory, "metrics.jsonl", "metrics.jsonl: not a file"),
    "torn last eval line": (_torn, "metrics.jsonl", "not a JSON line"),
    "env.json garbage": (_garbage, "env.json", "env.json"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_finished_run_is_refused_on_rerun(runs, case, capsys):
    damage, name, needle = DAMAGE[case]
    run = runs / "seed0"
    damage(run, name)
    before = snapshot(run)
    one_line_error(capsys, ["train", DM1, *TINY, "--out", str(run)], str(run), "damaged", needle,
                   "--force")
    assert snapshot(run) == before and (run / "done").is_file()


@pytest.mark.parametrize("case", list(DAMAGE))
def test_collect_names_the_damaged_run_and_lists_the_good_one(runs, case, capsys):
    damage, name, needle = DAMAGE[case]
    damage(runs / "seed0", name)
    assert main(["collect", str(runs)]) == 0
    captured = capsys.readouterr()
    warnings = [x for x in captured.err.splitlines() if "damaged run" in x]
    assert len(warnings) == 1 and str(runs / "seed0") in warnings[0] and needle in warnings[0]
    assert "collected 1 completed run(s); skipped 1 (0 failed, 0 incomplete, 1 damaged)" in captured.err
    assert "Traceback" not in captured.err
    col = collect([runs], warn=None)
    assert col.runs == [runs / "seed1"] and set(col.table["run"]) == {str(runs / "seed1")}
    assert col.damaged[0][0] == runs / "seed0"
    one_line_error(capsys, ["collect", str(runs), "--strict"], str(runs / "seed0"), needle)


def test_force_moves_a_damaged_run_aside_and_retrains(runs, capsys):
    run = runs / "seed0"
    (run / "config.yaml").unlink()
    before = snapshot(run)
    assert train(run, "--force") == 0
    aside = [p for p in runs.iterdir() if p.name.startswith("seed0.replaced-")]
    assert len(aside) == 1 and snapshot(aside[0]) == before
    assert len(eval_records(run)) == 2 and not (run / "metrics.jsonl.1").exists()


def test_torn_line_is_damage_only_in_a_finished_run(runs):
    run = runs / "seed0"
    _torn(run, "metrics.jsonl")
    with pytest.raises(DataError, match="not a JSON line"):
        read_metrics(run)
    (run / "done").unlink()  # the same file in a killed run: the torn line is ignored
    assert [r["event"] for r in read_metrics(run)][-1] == "eval"


def test_claims_and_report_name_damaged_runs(runs, capsys, tmp_path):
    (runs / "seed0" / "metrics.jsonl").unlink()
    main(["claims", str(runs), "--out", str(tmp_path / "claims")])
    err = capsys.readouterr().err
    assert [x for x in err.splitlines() if "damaged run" in x and str(runs / "seed0") in x]
    assert "Traceback" not in err
    one_line_error(capsys, ["claims", str(runs), "--strict"], str(runs / "seed0"))
    one_line_error(capsys, ["report", str(runs), "--strict", "-o", str(tmp_path / "r.html")],
                   str(runs / "seed0"))
    assert not (tmp_path / "r.html").exists()


def test_damaged_sweep_job_is_refused_before_any_job(tmp_path):
    jobs = expand({"base": {"kind": "data_model_1"}, "grid": {"seed": [0, 1]}, "overrides": {
        "n_train": 300, "n_test": 300, "splits": ["id"], "mmcl.optim.steps": 5}})
    run_sweep(jobs[:1], tmp_path / "s", progress=False)
    (tmp_path / "s" / jobs[0].name / "config.yaml").unlink()
    with pytest.raises(DamagedRunError, match="config.yaml: missing"):
        run_sweep(jobs, tmp_path / "s", progress=False)
    assert not (tmp_path / "s" / jobs[1].name).exists()
