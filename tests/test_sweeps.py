"""Sweeps: expansion and validation, resume, batched vs one-at-a-time, launchers."""

import importlib.util
import time

import pytest

from mmclshift.analysis.collect import collect
from mmclshift.cli import main
from mmclshift.config import ConfigError
from mmclshift.runs import read_metrics
from mmclshift.sweeps.runner import run_sweep, status
from mmclshift.sweeps.spec import expand

SMALL = {"n_train": 1500, "n_test": 1500, "splits": ["id", "ood"], "mmcl.optim.steps": 150}


def sweep(grid, base_kind="data_model_1", **extra):
    return {"base": {"kind": base_kind, **extra.pop("base_extra", {})}, "overrides": dict(SMALL),
            "grid": grid, **extra}


def evals(path):
    return [(r["method"], r["split"], r["correct"], r["population"]) for r in read_metrics(path)
            if r["event"] == "eval"]


def test_expand_grid_and_random_axes():
    jobs = expand(sweep({"data.pi_core": [0.5, 1.0], "seed": "range(3)"},
                        random={"n_samples": 2, "sweep_seed": 1, "axes": {"mmcl.rho": {"log_uniform": [0.5, 2]}}}))
    assert len(jobs) == 12 and len({j.name for j in jobs}) == 12
    rhos = {j.config.mmcl.rho for j in jobs}
    assert len(rhos) == 2 and all(0.5 <= r <= 2 for r in rhos)
    again = expand(sweep({"data.pi_core": [0.5, 1.0], "seed": "range(3)"},
                         random={"n_samples": 2, "sweep_seed": 1, "axes": {"mmcl.rho": {"log_uniform": [0.5, 2]}}}))
    assert [j.name for j in again] == [j.name for j in jobs]  # sweep_seed fixes the draws
    assert all(j.name.startswith("data_model_1-") for j in jobs)


@pytest.mark.parametrize("bad, needle", [
    (sweep({"data.pi_cor": [0.5]}), "'data.pi_cor'"),
    (sweep({"data.pi_core": []}), "'data.pi_core' is empty"),
    (sweep({"data.pi_core": ["high"]}), "'data.pi_core'"),
    (sweep({"data.pi_core": [1.5]}), "'data.pi_core'"),
    (sweep({"seed": "range(x)"}), "'seed'"),
    ({**sweep({}), "grids": {}}, "'grids'"),
    (sweep({}, random={"n_samples": 2, "axes": {"mmcl.rho": {"normal": [0, 1]}}}), "'mmcl.rho'"),
])
def test_bad_sweeps_fail_before_any_job(bad, needle, tmp_path):
    with pytest.raises(ConfigError) as info:
        expand(bad)
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert not any(tmp_path.iterdir())


def test_batched_equals_one_at_a_time(tmp_path):
    grid = {"data.pi_core": [0.3, 1.0], "seed": "range(2)", "mmcl.rho": [1.0, 2.0]}
    jobs = expand(sweep(grid)) + expand(sweep({"seed": "range(2)"}, base_kind="data_model_2"))
    a = run_sweep(jobs, tmp_path / "a", progress=False)
    b = run_sweep(jobs, tmp_path / "b", batched=False, progress=False)
    assert len(a.done) == len(b.done) == len(jobs) == 10
    for j in jobs:
        ea, eb = evals(tmp_path / "a" / j.name), evals(tmp_path / "b" / j.name)
        assert len(ea) == len(eb) == 4
        for (m, s, ca, pa), (_, _, cb, pb) in zip(ea, eb, strict=True):
            assert abs(ca - cb) <= 2, (j.name, m, s, ca, cb)  # test points on the boundary may flip
            assert abs(pa - pb) < 1e-3, (j.name, m, s, pa, pb)
    assert any('"method": "batched"' in (tmp_path / "a" / j.name / "metrics.jsonl").read_text() for j in jobs)


def test_killed_sweep_resumes_with_only_missing_jobs(tmp_path):
    jobs = expand(sweep({"data.pi_core": [0.5, 1.0], "seed": "range(2)"}))
    first = run_sweep(jobs, tmp_path / "s", max_jobs=2, progress=False)  # "killed" after 2 jobs
    assert len(first.done) == 2
    st = status(tmp_path / "s")
    assert sorted(st.values()) == ["done", "done", "missing", "missing"]
    second = run_sweep(jobs, tmp_path / "s", progress=False)
    assert second.skipped == 2 and len(second.done) == 2 and set(second.done).isdisjoint(first.done)
    full = run_sweep(jobs, tmp_path / "full", progress=False)
    assert len(full.done) == 4

    def table(path):
        t = collect([path]).table
        t["job"] = t["run"].map(lambda r: r.rsplit("/", 1)[-1])
        return t.drop(columns=["run"]).sort_values(["job", "method", "split"]).reset_index(drop=True)

    assert table(tmp_path / "s").equals(table(tmp_path / "full"))


def test_failed_job_keeps_traceback_and_others_run(tmp_path):
    # device does not name a job (same identity); the failing job differs in its seed too
    jobs = expand(sweep({"seed": [0]})) + expand(sweep({"seed": [1], "device": ["cuda:7"]}))
    result = run_sweep(jobs, tmp_path / "s", progress=False)
    assert len(result.done) == 1 and len(result.failed) == 1
    bad = tmp_path / "s" / result.failed[0]
    reason = (bad / "error.txt").read_text().strip().splitlines()[-1]
    assert "CUDA" in reason and result.reasons == {bad.name: reason}  # the reason is reported
    # the cuda chunk cannot batch: counted and said in the summary, its job run on its own
    assert result.batch.fallback == 1 and "batched trainer failed on 1 jobs" in result.summary()
    assert sorted(status(tmp_path / "s").values()) == ["done", "failed"]


def test_sweep_status_shows_why_a_job_failed(tmp_path, capsys):
    f = tmp_path / "sweep.yaml"
    f.write_text("base: {kind: data_model_1, n_train: 500, n_test: 500, splits: [ood], device: 'cuda:7'}\n"
                 "grid:\n  seed: [0]\n")
    assert main(["sweep", "run", str(f), "--out", str(tmp_path / "o")]) == 1
    ran = capsys.readouterr().out
    assert main(["sweep", "status", str(tmp_path / "o")]) == 0
    shown = capsys.readouterr().out
    failed = [line for line in shown.splitlines() if line.startswith("failed ")]
    assert len(failed) == 1 and "CUDA" in failed[0] and "failed: 1" in shown
    assert "CUDA" in ran and "batched trainer failed on 1 jobs" in ran


def test_sweep_cli(tmp_path, capsys):
    f = tmp_path / "sweep.yaml"
    f.write_text("base: {kind: data_model_1, n_train: 1000, n_test: 500, splits: [ood]}\n"
                 "grid:\n  seed: range(2)\n")
    assert main(["sweep", "run", str(f), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    assert "2 jobs" in capsys.readouterr().out
    assert main(["sweep", "run", str(f), "--out", str(tmp_path / "o")]) == 0
    assert main(["sweep", "status", str(tmp_path / "o")]) == 0
    assert "done: 2" in capsys.readouterr().out
    f.write_text("base: {kind: data_model_1}\ngrid:\n  data.nope: [1]\n")
    assert main(["sweep", "run", str(f), "--out", str(tmp_path / "o2")]) == 2
    assert "'data.nope'" in capsys.readouterr().err and not (tmp_path / "o2").exists()


def test_processes_launcher(tmp_path):
    jobs = expand(sweep({"seed": "range(2)"}))
    result = run_sweep(jobs, tmp_path / "p", launcher="processes", workers=2)
    assert len(result.done) == 2
    for j in jobs:  # same numbers as in-process training
        ref = run_sweep([j], tmp_path / "ref", batched=False, progress=False)
        assert ref.done == [j.name]
        assert evals(tmp_path / "p" / j.name) == evals(tmp_path / "ref" / j.name)


@pytest.mark.skipif(importlib.util.find_spec("submitit") is None, reason="submitit not installed (extra 'slurm')")
def test_submitit_local_executor_runs_4_jobs(tmp_path):
    jobs = expand(sweep({"seed": "range(4)"}))
    result = run_sweep(jobs, tmp_path / "s", launcher="slurm", executor="local", time_min=10)
    assert len(result.done) == 4 and sorted(set(status(tmp_path / "s").values())) == ["done"]


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray not installed (extra 'ray')")
def test_ray_local_cluster_runs_4_jobs(tmp_path):
    t0 = time.perf_counter()
    jobs = expand(sweep({"seed": "range(4)"}))
    result = run_sweep(jobs, tmp_path / "r", launcher="ray", workers=2)
    assert len(result.done) == 4 and sorted(set(status(tmp_path / "r").values())) == ["done"]
    assert time.perf_counter() - t0 < 600
