"""Thread policy and lean run bookkeeping: what is durable before what, environment once per process,
shared draws, optional checkpoints, the batched path's fallback counter."""

import json
import os
import platform
import socket
import subprocess

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from mmclshift import runs
from mmclshift.config import ConfigError, build_config, dump_yaml, replace, to_dict
from mmclshift.experiments import CONFIG_KINDS
from mmclshift.experiments import synthetic as S
from mmclshift.runs import RunDir, deferred_durability, is_done, read_metrics
from mmclshift.sweeps.runner import BatchStats, run_batched
from mmclshift.sweeps.spec import expand
from mmclshift.threads import TIER_THREADS, torch_threads


def small_dm1(**changes):
    base = {"n_train": 1000, "n_test": 1000, "splits": ["ood"], "mmcl.optim.steps": 50,
            "sl.optim.steps": 30}
    base.update(changes)
    return replace(S.DataModel1Experiment(), **base)


# --------------------------------------------------------------------------- threads


def test_torch_threads_sets_and_restores():
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    with torch_threads(other) as n:
        assert n == other == torch.get_num_threads()
    assert torch.get_num_threads() == before
    with torch_threads(0) as n:  # 0: leave torch's setting
        assert n == before
    with pytest.raises(RuntimeError), torch_threads(other):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_theory_run_uses_its_thread_policy_and_restores_the_callers(tmp_path, monkeypatch):
    seen = []
    train_sl = S.train_sl

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return train_sl(*args, **kwargs)

    monkeypatch.setattr(S, "train_sl", spy)
    torch.set_num_threads(2)
    try:
        assert small_dm1().threads == TIER_THREADS["theory"] == 1
        S.run_experiment(small_dm1(), tmp_path / "a", progress=False, theory=False)
        S.run_experiment(small_dm1(threads=2), tmp_path / "b", progress=False, theory=False)
        assert seen == [1, 2] and torch.get_num_threads() == 2
        env = [json.loads((tmp_path / d / "env.json").read_text()) for d in ("a", "b")]
        assert [e["torch_threads"] for e in env] == [1, 2]
    finally:
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.mark.parametrize("kind", sorted(CONFIG_KINDS))
def test_every_tier_has_a_checked_threads_key(kind):
    cls = CONFIG_KINDS[kind]
    assert cls().threads >= 0
    with pytest.raises(ConfigError, match="'threads': must be >= 0"):
        build_config({"kind": kind, "threads": -1}, CONFIG_KINDS)


# --------------------------------------------------------------------------- fsync policy


@pytest.fixture
def tmp_durability(tmp_path, monkeypatch):
    """(tmp_path, what is made durable, in order: ("fsync", file name) and ("sync", the folders
    under tmp_path holding a done marker at that moment))."""
    events = []
    real_fsync = os.fsync

    def fsync(fd):
        events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        return real_fsync(fd)

    def sync():  # the real one would sync the whole machine: not needed for the order
        done = sorted(p.parent.name for p in tmp_path.glob("*/done"))
        events.append(("sync", done))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "sync", sync)
    return tmp_path, events


def _is_done_marker(name):  # done is written to a temp file beside it, then renamed
    return name == "done" or name.startswith(".done.")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names fsynced files via /proc")
def test_metrics_are_durable_before_done_and_not_synced_line_by_line(tmp_durability):
    tmp_path, events = tmp_durability
    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    for i in range(20):
        run.log_metrics({"event": "train", "step": i})
    assert not [e for e in events if e[1] == "metrics.jsonl"]  # logging does not wait for the disk
    assert [r["step"] for r in read_metrics(run.path)] == list(range(20))
    run.mark_done({"records": 0})
    names = [name for kind, name in events if kind == "fsync"]
    # a done marker that survives a crash vouches for the metrics: they reached the disk first
    assert "metrics.jsonl" in names and any(_is_done_marker(n) for n in names)
    assert names.index("metrics.jsonl") < min(i for i, n in enumerate(names) if _is_done_marker(n))
    assert is_done(run.path)


def test_deferred_durability_writes_markers_between_two_syncs(tmp_durability):
    tmp_path, events = tmp_durability
    paths = [tmp_path / f"r{i}" for i in range(3)]
    with deferred_durability():
        for p in paths:
            run = RunDir(p)
            p.mkdir()
            runs.atomic_write_text(p / "config.yaml", "a: 1\n")
            run.log_metrics({"event": "eval"})
            run.save_checkpoint({"w": torch.ones(2)}, "m.pt")
            run.mark_done()
            assert not is_done(p)  # held back until the data before it is durable
        with deferred_durability():  # nested blocks join the outer one
            pass
        assert not any(is_done(p) for p in paths)
    assert not [e for e in events if e[0] == "fsync"]  # no file waits for the disk on its own
    syncs = [done for kind, done in events if kind == "sync"]
    # the data is synced before any marker exists, and the markers are synced after the last
    assert syncs[0] == [] and syncs[-1] == ["r0", "r1", "r2"]
    assert all(is_done(p) for p in paths)
    assert "finished" in json.loads((paths[0] / "done").read_text())


def test_deferred_durability_marks_only_finished_runs_after_a_crash(tmp_durability):
    tmp_path, events = tmp_durability
    with pytest.raises(KeyboardInterrupt), deferred_durability():
        RunDir(tmp_path / "a").path.mkdir()
        RunDir(tmp_path / "a").mark_done()
        RunDir(tmp_path / "b").path.mkdir()
        raise KeyboardInterrupt
    assert is_done(tmp_path / "a") and not is_done(tmp_path / "b")
    syncs = [done for kind, done in events if kind == "sync"]
    assert syncs[0] == [] and syncs[-1] == ["a"]


def test_environment_is_gathered_once_per_process(tmp_path, monkeypatch):
    calls = []
    real_run = subprocess.run

    def spy(*args, **kwargs):
        calls.append(args[0])
        return real_run(*args, **kwargs)

    monkeypatch.setattr(subprocess, "run", spy)
    envs = []
    for i in range(3):
        RunDir.create(tmp_path / f"r{i}", small_dm1(seed=i), seed=i, device="cpu")
        envs.append(json.loads((tmp_path / f"r{i}" / "env.json").read_text()))
    assert len([c for c in calls if c[:1] == ["git"]]) <= 1  # not once per run
    # what it says is true: checked against the sources themselves
    src = os.path.dirname(runs.__file__)
    head = real_run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True)
    assert envs[0]["git_revision"] == (head.stdout.strip() if head.returncode == 0 else None)
    assert envs[0]["torch"] == torch.__version__ and envs[0]["device"] == "cpu"
    assert envs[0]["python"] == platform.python_version() and envs[0]["host"] == socket.gethostname()
    assert [e["seed"] for e in envs] == [0, 1, 2]
    assert {k: v for k, v in envs[0].items() if k not in ("seed", "started")} == \
        {k: v for k, v in envs[2].items() if k not in ("seed", "started")}


_ASCII = st.characters(min_codepoint=32, max_codepoint=126)


def _trees(keys, text=st.text(max_size=30)):
    leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(keys, inner, max_size=4), max_leaves=20)


@settings(max_examples=40, deadline=None)
@given(_trees(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), st.text(_ASCII, max_size=30)))
def test_dump_yaml_writes_what_safe_dump_writes_for_config_trees(data):
    # (printable text, identifier keys: what configs hold; libyaml wraps escaped strings and
    # spells odd keys differently from the pure-Python emitter, with the same meaning)
    assert dump_yaml({"x": data}) == yaml.safe_dump({"x": data}, sort_keys=False)


@settings(max_examples=40, deadline=None)
@given(_trees(st.text(max_size=8)))
def test_dump_yaml_round_trips_any_plain_data(data):
    assert yaml.safe_load(dump_yaml({"x": data})) == {"x": data}


def test_dump_yaml_of_every_default_config():
    for cls in CONFIG_KINDS.values():
        assert dump_yaml(cls()) == yaml.safe_dump(to_dict(cls()), sort_keys=False)


# --------------------------------------------------------------------------- synthetic jobs


def test_checkpoints_are_optional_and_change_no_result(tmp_path):
    a = S.run_experiment(small_dm1(), tmp_path / "a", progress=False, theory=False)
    b = S.run_experiment(small_dm1(save_checkpoints=False), tmp_path / "b", progress=False, theory=False)
    assert (tmp_path / "a" / "checkpoints" / "sl.pt").is_file()
    assert not (tmp_path / "b" / "checkpoints").exists()
    assert a == b


def test_shared_draws_equal_fresh_draws():
    cache: dict = {}
    cfgs = [small_dm1(**{"mmcl.rho": rho}) for rho in (1.0, 2.0)] + [small_dm1(seed=1)]
    jobs = [S.prepare_job(c, train_cache=cache) for c in cfgs]
    assert jobs[0].sampler is jobs[1].sampler is jobs[2].sampler  # same geometry
    assert jobs[0].train is jobs[1].train and jobs[2].train is not jobs[0].train
    assert jobs[0].test_draw("ood") is jobs[1].test_draw("ood")
    for job, cfg in zip(jobs, cfgs, strict=True):
        fresh = S.prepare_job(cfg)  # no cache: drawn from its own seeds
        for a, b in ((job.train, fresh.train), (job.test_draw("ood"), fresh.test_draw("ood"))):
            assert torch.equal(a.x_image, b.x_image) and torch.equal(a.labels, b.labels)
    assert not torch.equal(jobs[0].test_draw("ood").x_image, jobs[2].test_draw("ood").x_image)


def test_batched_fallback_counts_and_raises_under_debug(tmp_path, monkeypatch):
    from mmclshift.train import batched as B

    def broken(*args, **kwargs):
        raise FloatingPointError("injected")

    monkeypatch.setattr(B, "train_sl_batched", broken)
    jobs = expand({"base": {"kind": "data_model_1", "n_train": 500, "n_test": 500, "splits": ["ood"],
                            "mmcl": {"optim": {"steps": 20}}, "sl": {"optim": {"steps": 10}}},
                   "grid": {"seed": "range(2)"}})
    monkeypatch.setenv("MMCLSHIFT_DEBUG", "1")
    with pytest.raises(FloatingPointError, match="injected"):
        run_batched(jobs, tmp_path / "debug", theory=False)
    monkeypatch.delenv("MMCLSHIFT_DEBUG")
    stats = BatchStats()
    status = run_batched(jobs, tmp_path, theory=False, stats=stats)
    assert status == {j.name: "done" for j in jobs}
    assert (stats.batched, stats.fallback, stats.chunks) == (0, 2, 1) and "injected" in stats.errors[0]
    assert all(is_done(tmp_path / j.name) for j in jobs)


def test_batched_chunk_has_done_markers_and_uses_one_thread(tmp_path, monkeypatch):
    from mmclshift.train import batched as B

    seen = []
    real = B.train_mmcl_batched

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(B, "train_mmcl_batched", spy)
    jobs = expand({"base": {"kind": "data_model_1", "n_train": 500, "n_test": 500, "splits": ["ood"],
                            "mmcl": {"optim": {"steps": 20}}},
                   "grid": {"seed": "range(3)"}})
    stats = BatchStats()
    torch.set_num_threads(2)
    try:
        run_batched(jobs, tmp_path, theory=False, stats=stats)
    finally:
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    assert seen == [TIER_THREADS["batched"]] and (stats.batched, stats.fallback) == (3, 0)
    assert all(is_done(tmp_path / j.name) for j in jobs)
