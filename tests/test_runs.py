"""Run directories: files, atomic checkpoints, completion marker, reproducibility."""

import json

import pytest
import torch

from mmclshift.config import replace
from mmclshift.errors import DataError
from mmclshift.experiments.synthetic import DataModel1Experiment, run_experiment
from mmclshift.runs import (
    RunDir,
    atomic_write_text,
    config_hash,
    is_done,
    load_checkpoint,
    read_metrics,
    save_checkpoint,
)


class _Evil:
    """An arbitrary object: weights_only loading must refuse to unpickle it."""


def small_dm1(**changes):
    base = {"n_train": 2000, "n_test": 2000, "splits": ["id", "ood"], "mmcl.optim.steps": 100}
    base.update(changes)
    return replace(DataModel1Experiment(), **base)


def test_run_directory_files(tmp_run):
    records = run_experiment(small_dm1(), tmp_run, progress=False)
    for name in ("config.yaml", "env.json", "metrics.jsonl", "done", "checkpoints/mmcl.pt", "checkpoints/sl.pt"):
        assert (tmp_run / name).is_file(), name
    env = json.loads((tmp_run / "env.json").read_text())
    assert env["seed"] == 0 and env["torch"] == torch.__version__ and env["device"] == "cpu"
    evals = [r for r in read_metrics(tmp_run) if r["event"] == "eval"]
    assert evals == records and len(records) == 4
    assert {(r["method"], r["split"]) for r in records} == {(m, s) for m in ("mmcl", "sl") for s in ("id", "ood")}
    state = load_checkpoint(tmp_run / "checkpoints" / "mmcl.pt")["state_dict"]
    assert state["W_img"].shape == (1, 64)


def test_same_seed_same_numbers_different_seed_different_samples(tmp_path):
    a = run_experiment(small_dm1(), tmp_path / "a", progress=False)
    b = run_experiment(small_dm1(), tmp_path / "b", progress=False)
    c = run_experiment(small_dm1(seed=1), tmp_path / "c", progress=False)
    assert a == b
    assert [r["correct"] for r in a] != [r["correct"] for r in c]
    wa = load_checkpoint(tmp_path / "a" / "checkpoints" / "mmcl.pt")["state_dict"]["W_img"]
    wb = load_checkpoint(tmp_path / "b" / "checkpoints" / "mmcl.pt")["state_dict"]["W_img"]
    assert torch.equal(wa, wb)


def test_data_and_init_seeds_are_separate(tmp_path):
    a = run_experiment(small_dm1(init_seed=5), tmp_path / "a", progress=False)
    b = run_experiment(small_dm1(init_seed=6), tmp_path / "b", progress=False)
    # same data: SL (deterministic given data) is identical; MMCL init differs
    assert [r for r in a if r["method"] == "sl"] == [r for r in b if r["method"] == "sl"]
    wa = load_checkpoint(tmp_path / "a" / "checkpoints" / "mmcl.pt")["state_dict"]["W_img"]
    wb = load_checkpoint(tmp_path / "b" / "checkpoints" / "mmcl.pt")["state_dict"]["W_img"]
    assert not torch.equal(wa, wb)


def test_atomic_checkpoint_and_weights_only(tmp_path):
    path = tmp_path / "ck" / "x.pt"
    save_checkpoint({"w": torch.arange(3.0)}, path)
    assert torch.equal(load_checkpoint(path)["w"], torch.arange(3.0))
    assert [p.name for p in path.parent.iterdir()] == ["x.pt"]  # no temp files left behind

    torch.save({"obj": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(DataError, match="evil.pt: checkpoint refused by weights_only.*Unsupported global"):
        load_checkpoint(tmp_path / "evil.pt")


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")
    import os

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_failed_run_keeps_traceback_and_no_done(tmp_run):
    run = RunDir.create(tmp_run, small_dm1(), seed=0)
    with pytest.raises(RuntimeError), run.guard():
        run.log_metrics({"event": "eval", "accuracy": 0.5})
        raise RuntimeError("boom")
    assert not is_done(tmp_run)
    assert "RuntimeError: boom" in (tmp_run / "error.txt").read_text()
    assert read_metrics(tmp_run) == [{"event": "eval", "accuracy": 0.5}]


def test_truncated_last_metrics_line_is_ignored(tmp_run):
    run = RunDir.create(tmp_run, small_dm1(), seed=0)
    run.log_metrics({"a": 1})
    with open(tmp_run / "metrics.jsonl", "a") as fh:
        fh.write('{"a": 2, "b"')
    assert read_metrics(tmp_run) == [{"a": 1}]


def test_config_hash_changes_with_config():
    assert config_hash(small_dm1()) == config_hash(small_dm1())
    assert config_hash(small_dm1()) != config_hash(small_dm1(seed=1))


def test_infonce_option_trains_and_learns_temperature(tmp_run):
    cfg = small_dm1(**{"mmcl.loss": "infonce", "mmcl.embed_dim": 4, "mmcl.optim.batch_size": 256, "mmcl.optim.steps": 60,
                       "mmcl.optim.lr": 0.01})
    records = run_experiment(cfg, tmp_run, progress=False)
    assert all(r["theory"] is None for r in records if r["method"] == "mmcl")
    state = load_checkpoint(tmp_run / "checkpoints" / "mmcl.pt")["state_dict"]
    assert not torch.isclose(state["logit_scale"], torch.log(torch.tensor(1 / 0.07)))
    assert {(r["method"], r["split"]) for r in records} == {
        (m, s) for m in ("mmcl", "sl") for s in cfg.splits}
    for r in records:  # every record counts the whole test set and its accuracy is what it counted
        assert r["n"] == cfg.n_test and r["accuracy"] == pytest.approx(r["correct"] / r["n"])
