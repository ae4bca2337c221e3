"""Run, grid and sweep-job directories are named by the run's identity, not its full config.

A rerun that differs only in keys saying where or how a run executes (threads, device, loader
workers, grid stacking) finds the same directory and reuses the finished run.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from mmclshift.cli import main
from mmclshift.experiments import load_config
from mmclshift.runs import config_hash, identity_hash, run_dir_name
from mmclshift.sweeps.runner import run_sweep
from mmclshift.sweeps.spec import expand

ROOT = Path(__file__).resolve().parents[1]
DM1 = str(ROOT / "configs" / "data_model_1.yaml")
FIG2 = str(ROOT / "configs" / "fig2_smoke.yaml")
TINY = ["n_train=300", "n_test=300", "splits=[id]", "mmcl.optim.steps=5"]
TINY_GRID = ["train.steps=2", "train.batch_size=32", "grid.pi_core=[1.0]", "grid.pi_spu=[1.0]",
             "grid.seeds=[0]", "splits=[id]", "model.cnn_width=4", "model.embed_dim=8"]


def files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def quiet(args: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return main(args)


def test_names_ignore_volatile_keys_but_not_the_rest():
    a = load_config(DM1, TINY)
    b = load_config(DM1, [*TINY, "threads=2", "device=cpu"])
    c = load_config(DM1, [*TINY, "seed=1"])
    assert config_hash(a) != config_hash(load_config(DM1, [*TINY, "threads=2"]))  # the full config differs
    assert run_dir_name(a, "dm1") == run_dir_name(b, "dm1") == f"dm1-{identity_hash(a)[:12]}"
    assert run_dir_name(a, "dm1") != run_dir_name(c, "dm1")


def test_train_rerun_with_other_threads_reuses_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert quiet(["train", DM1, *TINY, "--json", "--no-progress"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    before = files(run)
    assert quiet(["train", DM1, *TINY, "threads=2", "--json", "--no-progress"]) == 0
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [run.name]
    assert files(run) == before  # reused, not retrained or rewritten


def test_grid_rerun_with_other_threads_reuses_its_cells(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["grid", FIG2, *TINY_GRID, "--split", "id", "--no-progress"]) == 0
    first = capsys.readouterr().out
    (grid,) = (tmp_path / "runs").iterdir()
    before = files(grid)
    assert main(["grid", FIG2, *TINY_GRID, "threads=2", "grid.stacked=false", "--split", "id",
                 "--no-progress"]) == 0
    again = capsys.readouterr().out
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [grid.name]
    assert "runs trained: 0 stacked, 0 one at a time" in again
    assert files(grid) == before
    assert first.split("\n[")[0] == again.split("\n[")[0]  # the same table


def test_sweep_rerun_with_other_threads_skips_finished_jobs(tmp_path):
    def jobs(threads: int):
        return expand({"base": {"kind": "data_model_1", "threads": threads},
                       "overrides": {"n_train": 300, "n_test": 300, "splits": ["id"],
                                     "mmcl.optim.steps": 5},
                       "grid": {"seed": "range(2)"}})

    first = run_sweep(jobs(1), tmp_path, progress=False)
    assert len(first.done) == 2
    before = {p.name: files(p) for p in tmp_path.iterdir() if p.is_dir()}
    assert [j.name for j in jobs(2)] == [j.name for j in jobs(1)]
    again = run_sweep(jobs(2), tmp_path, progress=False)
    assert again.skipped == 2 and not again.done and not again.failed
    assert {p.name: files(p) for p in tmp_path.iterdir() if p.is_dir()} == before
