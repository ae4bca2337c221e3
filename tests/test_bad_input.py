"""Careless and unlucky use: every bad input is one line (exit 2) and no finished work is lost.

One test per case of the table in docs/cli.md ("Bad input and finished runs"). Runs here are
tiny (a few hundred samples, a few steps) so the whole file stays cheap.
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

import numpy as np
import pytest

from mmclshift import experiments
from mmclshift.cli import build_parser, main, parse_args
from mmclshift.config import ConfigError
from mmclshift.errors import DataError, UserError
from mmclshift.runs import (
    RUNNING_FILE,
    RunDir,
    check_run_dir,
    eval_records,
    read_metrics,
    release_run_lock,
    run_state,
)

ROOT = Path(__file__).resolve().parents[1]
DM1 = str(ROOT / "configs" / "data_model_1.yaml")
TINY = ["n_train=300", "n_test=300", "splits=[id]", "mmcl.optim.steps=5"]
READ_ONLY = Path("/sys/mmclshift-test")  # mkdir and open fail there even for root


def one_line_error(capsys, args, *needles) -> str:
    """Run the CLI; it must exit 2 with exactly one error line, holding every needle, and no
    traceback (a progress summary printed before the error may precede it)."""
    assert main(args) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert str(needle) in errors[0], (needle, err)
    return errors[0]


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_once(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", DM1, *TINY, "--out", str(out), "--json", "--no-progress"]) == 0
    return out


@pytest.fixture
def finished(finished_once, tmp_path):
    """A copy of a finished tiny Data Model 1 run and the bytes of its files."""
    out = tmp_path / "run"
    shutil.copytree(finished_once, out)
    return out, snapshot(out)


# --------------------------------------------------------------------------- work lost or mislabelled


def test_rerun_same_config_skips_and_keeps_the_run(finished, capsys):
    out, before = finished
    # device only says where a run executes, save_checkpoints only what is kept beside the
    # results: same identity, so the finished run is reused
    assert main(["train", DM1, *TINY, "device=cuda", "save_checkpoints=false", "--out", str(out),
                 "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines == eval_records(out) and len(lines) == 2
    assert snapshot(out) == before


def test_rerun_other_config_is_refused_naming_keys_and_keeps_the_run(finished, capsys):
    out, before = finished
    one_line_error(capsys, ["train", DM1, *TINY, "seed=7", "mmcl.optim.lr=0.01", "--out", str(out)],
                   str(out), "seed: 0 -> 7", "mmcl.optim.lr", "--force")
    assert snapshot(out) == before


def test_force_moves_the_old_run_aside(finished, capsys):
    out, before = finished
    assert main(["train", DM1, *TINY, "seed=7", "--out", str(out), "--json", "--force"]) == 0
    aside = [p for p in out.parent.iterdir() if p.name.startswith("run.replaced-")]
    assert len(aside) == 1 and snapshot(aside[0]) == before
    assert (out / "done").is_file() and "seed: 7" in (out / "config.yaml").read_text()


def test_failing_rerun_leaves_a_finished_run_untouched(finished, capsys):
    out, before = finished
    # a rerun that fails on bad input after the identity check: nothing of the old run changes
    one_line_error(capsys, ["train", DM1, *TINY, "seed=7", "data.pi_core=2", "--out", str(out)],
                   "'data.pi_core'")
    assert snapshot(out) == before


def test_restart_keeps_the_previous_attempt_history(tmp_path):
    from mmclshift.experiments.synthetic import run_experiment

    cfg = experiments.load_config(DM1, TINY)
    run = RunDir.create(tmp_path / "r", cfg, seed=0)
    run.log_metrics({"event": "train", "method": "mmcl", "step": 1, "loss": 1.0})  # then killed
    run_experiment(cfg, tmp_path / "r", progress=False)
    kept = (tmp_path / "r" / "metrics.jsonl.1").read_text()
    assert json.loads(kept) == {"event": "train", "method": "mmcl", "step": 1, "loss": 1.0}
    assert len(eval_records(tmp_path / "r")) == 2


def test_resume_marker_drops_superseded_train_records(tmp_path):
    cfg = experiments.load_config(DM1, TINY)
    run = RunDir.create(tmp_path / "r", cfg, seed=0, resume=True)
    for step in (1, 2, 3):
        run.log_metrics({"event": "train", "method": "m", "step": step, "loss": 10.0 + step})
    with open(tmp_path / "r" / "metrics.jsonl", "a") as fh:
        fh.write('{"event": "train", "method": "m", "st')  # killed mid-write
    run = RunDir.create(tmp_path / "r", cfg, seed=0, resume=True)  # resume from a step-2 checkpoint
    run.log_metrics({"event": "resume", "method": "m", "step": 2})
    run.log_metrics({"event": "train", "method": "m", "step": 3, "loss": 13.0})
    raw = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert len(raw) == 5 and all(json.loads(line) for line in raw)  # the torn line is gone
    steps = [(r["event"], r["step"]) for r in read_metrics(tmp_path / "r")]
    assert steps == [("train", 1), ("train", 2), ("resume", 2), ("train", 3)]


def test_changed_grid_cell_is_refused_then_forced(tmp_path):
    from mmclshift.experiments.semisynthetic import run_grid

    base = ["splits=[ood]", "train.steps=3", "train.batch_size=32", "data.n_train=200",
            "data.n_test=100", "grid.pi_core=[1.0]", "grid.pi_spu=[0.0]", "grid.seeds=[0]"]
    cfg = experiments.load_config(ROOT / "configs" / "fig2_smoke.yaml", base)
    run_grid(cfg, tmp_path / "g", progress=False)
    cells = sorted(p.name for p in (tmp_path / "g").iterdir())
    before = snapshot(tmp_path / "g")
    longer = experiments.load_config(ROOT / "configs" / "fig2_smoke.yaml", [*base, "train.steps=4"])
    with pytest.raises(UserError, match=r"train\.steps: 3 -> 4") as info:
        run_grid(longer, tmp_path / "g", progress=False)
    assert "\n" not in str(info.value) and snapshot(tmp_path / "g") == before
    run_grid(longer, tmp_path / "g", progress=False, force=True)
    names = sorted(p.name for p in (tmp_path / "g").iterdir())
    assert [n for n in names if ".replaced-" not in n] == cells
    assert len([n for n in names if ".replaced-" in n]) == len(cells)
    for cell in cells:
        assert "steps: 4" in (tmp_path / "g" / cell / "config.yaml").read_text()


def test_changed_sweep_job_is_refused_then_forced(tmp_path):
    from mmclshift.sweeps.runner import run_sweep
    from mmclshift.sweeps.spec import expand

    jobs = expand({"base": {"kind": "data_model_1"}, "overrides": {
        "n_train": 300, "n_test": 300, "splits": ["id"], "mmcl.optim.steps": 5}, "grid": {"seed": [0]}})
    other = experiments.load_config(DM1, [*TINY, "seed=5"])
    RunDir.create(tmp_path / "s" / jobs[0].name, other, seed=5)  # a job dir holding another config
    with pytest.raises(UserError, match="seed: 5 -> 0"):
        run_sweep(jobs, tmp_path / "s")
    assert not (tmp_path / "s" / "sweep.json").exists()
    result = run_sweep(jobs, tmp_path / "s", force=True)
    assert result.done == [jobs[0].name]
    assert any(".replaced-" in p.name for p in (tmp_path / "s").iterdir())


@pytest.mark.parametrize("override, key", [
    ("name=../../x", "'name'"), ("name=a/b", "'name'"), ("name=..", "'name'"),
])
def test_hostile_run_names_write_nothing(tmp_path, capsys, monkeypatch, override, key):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    one_line_error(capsys, ["train", DM1, *TINY, override], key)
    assert snapshot(tmp_path) == {}


def test_run_state_tells_killed_from_running(tmp_path):
    cfg = experiments.load_config(DM1, TINY)
    run = RunDir.create(tmp_path / "r", cfg, seed=0)
    assert run_state(tmp_path / "r") == "running"  # this process holds the run's lock
    release_run_lock(tmp_path / "r")  # as when the writer dies: the kernel drops its lock
    assert run_state(tmp_path / "r") == "killed"
    # a run written before runs were locked (no lock file) is judged by its pid
    (tmp_path / "r" / "lock").unlink()
    assert run_state(tmp_path / "r") == "running"  # the pid in running.json: this process
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    marker = json.loads((tmp_path / "r" / RUNNING_FILE).read_text())
    marker["pid"], marker["proc_start"] = dead.pid, None
    (tmp_path / "r" / RUNNING_FILE).write_text(json.dumps(marker))
    assert run_state(tmp_path / "r") == "killed"
    run.mark_done()
    assert run_state(tmp_path / "r") == "done" and not (tmp_path / "r" / RUNNING_FILE).exists()
    assert run_state(tmp_path / "nothing") == "missing"


SLOW_SWEEP = """\
base: {kind: data_model_1}
overrides: {n_train: 4000, n_test: 100, splits: [id], mmcl.optim.steps: 1000000}
grid: {seed: [0, 1]}
"""


@pytest.mark.slow
def test_killing_the_processes_launcher_ends_its_workers(tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(SLOW_SWEEP)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    parent = subprocess.Popen([sys.executable, "-m", "mmclshift", "sweep", "run", str(sweep),
                               "--out", str(out), "--launcher", "processes", "--workers", "2"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    deadline = time.monotonic() + 240
    while len(workers) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
        for marker in out.glob(f"*/{RUNNING_FILE}"):
            try:
                workers.add(json.loads(marker.read_text())["pid"])
            except (OSError, ValueError):
                pass
    try:
        assert len(workers) == 2 and parent.pid not in workers
        from mmclshift.sweeps.runner import status

        assert set(status(out).values()) == {"running"}
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        alive = set(workers)
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = {pid for pid in alive if _alive(pid)}
        assert not alive, f"workers still running 10 s after the launcher died: {alive}"
        assert set(status(out).values()) == {"killed"}
    finally:
        for pid in workers | {parent.pid}:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie has finished running
        return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"


# --------------------------------------------------------------------------- one line, not a traceback


@pytest.mark.parametrize("command", ["train", "grid", "sweep"])
def test_out_is_an_existing_file(tmp_path, capsys, command):
    f = tmp_path / "a-file"
    f.write_text("x")
    sweep = tmp_path / "s.yaml"
    sweep.write_text("base: {kind: data_model_1}\ngrid: {seed: [0]}\n")
    args = {"train": ["train", DM1, *TINY, "--out", str(f)],
            "grid": ["grid", str(ROOT / "configs" / "fig2_smoke.yaml"), "--out", str(f)],
            "sweep": ["sweep", "run", str(sweep), "--out", str(f)]}[command]
    one_line_error(capsys, args, str(f), "is a file")
    assert f.read_text() == "x"


def test_read_only_output_directory(tmp_path, capsys, finished):
    out, _ = finished
    sweep = tmp_path / "s.yaml"
    sweep.write_text("base: {kind: data_model_1}\ngrid: {seed: [0]}\n")
    for args in (["train", DM1, *TINY, "--out", str(READ_ONLY / "run")],
                 ["sweep", "run", str(sweep), "--out", str(READ_ONLY / "sweep")],
                 ["collect", str(out), "-o", str(READ_ONLY / "table")],
                 ["report", str(out), "-o", str(READ_ONLY / "report.html")]):
        one_line_error(capsys, args, str(READ_ONLY))


def test_non_finite_float_is_one_line(capsys):
    one_line_error(capsys, ["theory", DM1, "data.core_mean=.inf"], "'data.core_mean'", "finite")


def test_exponent_form_number_is_accepted(capsys):
    assert main(["theory", DM1, "data.pi_core=5e-1", "--json"]) == 0
    a = capsys.readouterr().out
    assert main(["theory", DM1, "data.pi_core=0.5", "--json"]) == 0
    assert a == capsys.readouterr().out


def test_overrides_after_flags(capsys):
    args = parse_args(build_parser(), ["train", DM1, "--smoke", "train.steps=40", "--json", "seed=2"])
    assert args.overrides == ["train.steps=40", "seed=2"] and args.smoke and args.json
    assert main(["theory", DM1, "--json", "data.pi_spu=0.5"]) == 0
    a = capsys.readouterr().out
    assert main(["theory", DM1, "data.pi_spu=0.5", "--json"]) == 0
    assert a == capsys.readouterr().out
    with pytest.raises(SystemExit):
        parse_args(build_parser(), ["train", DM1, "--json", "--bogus"])


def test_idx_file_with_zero_images(tmp_path, capsys):
    from mmclshift.data.digits import IDX_FILES, load_mnist_idx, write_idx
    from mmclshift.data.semisynthetic import ink_threshold

    for key, stem in IDX_FILES.items():
        shape = (0, 28, 28) if key.endswith("images") else (0,)
        write_idx(tmp_path / stem, np.zeros(shape, np.uint8))
    with pytest.raises(DataError, match="0 images"):
        load_mnist_idx(tmp_path)
    with pytest.raises(DataError, match="0 images"):
        ink_threshold(np.zeros((0, 28, 28), np.uint8))
    one_line_error(capsys, ["grid", str(ROOT / "configs" / "fig2_smoke.yaml"), f"data.root={tmp_path}",
                            "--out", str(tmp_path / "g")], "0 images")


def test_garbage_line_in_metrics(finished, capsys):
    out, _ = finished
    lines = (out / "metrics.jsonl").read_text().splitlines()
    lines.insert(1, "this is not json")
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"metrics\.jsonl:2: not a JSON line"):
        read_metrics(out)
    # a finished run with a garbage line is damaged: named, left out; --strict makes it an error
    assert main(["collect", str(out)]) == 0
    err = capsys.readouterr().err
    assert "damaged run" in err and "metrics.jsonl:2" in err and "Traceback" not in err
    one_line_error(capsys, ["collect", str(out), "--strict"], "metrics.jsonl:2")


def test_debug_flag_and_variable_show_the_traceback(monkeypatch, capsys):
    with pytest.raises(ConfigError):
        main(["--debug", "theory", "missing.yaml"])
    monkeypatch.setenv("MMCLSHIFT_DEBUG", "1")
    with pytest.raises(ConfigError):
        main(["theory", "missing.yaml"])
    monkeypatch.setenv("MMCLSHIFT_DEBUG", "0")
    one_line_error(capsys, ["theory", "missing.yaml"], "missing.yaml")


def test_check_run_dir_writes_nothing(tmp_path):
    cfg = experiments.load_config(DM1, TINY)
    assert check_run_dir(tmp_path / "new", cfg) == "new" and not (tmp_path / "new").exists()
