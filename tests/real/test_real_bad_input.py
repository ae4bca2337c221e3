"""The real-data tier under careless use: resume history, foreign and broken checkpoints,
inputs checked before the first step, smoke overrides, hostile method names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmclshift import experiments
from mmclshift.config import ConfigError, to_dict
from mmclshift.errors import UserError
from mmclshift.experiments.real import config_from_dict, run_experiment
from mmclshift.runs import read_metrics

from .test_real_train import _cfg as train_cfg

ROOT = Path(__file__).resolve().parents[2]
CLIP = [{"name": "clip", "kind": "mmcl", "loss": "clip"}]


def _cfg(fx, *, steps=4, **train):
    """test_real_train's config: one CLIP method, 4 steps of batch 4, a checkpoint every 2."""
    cfg = train_cfg(fx, "coco", methods=CLIP, steps=steps, batch=4, resume="latest",
                    checkpoint_every=2, **train)
    cfg.eval.sets = []
    return cfg


def _train_losses(path):
    return [(r["step"], r["loss"]) for r in read_metrics(path) if r["event"] == "train"]


def test_kill_and_resume_keeps_the_loss_history(fx, tmp_path):
    """Killed after step 3 (last checkpoint at step 2): step 3 is logged twice in the file, the
    history read back equals the uninterrupted run's, bit for bit, and so do the weights."""
    cfg = _cfg(fx)
    run_experiment(cfg, str(tmp_path / "full"), progress=False)
    run_experiment(cfg, str(tmp_path / "killed"), progress=False, stop_after=3)
    assert [s for s, _ in _train_losses(tmp_path / "killed")] == [1, 2, 3]
    experiments.run(cfg, tmp_path / "killed", progress=False)
    raw = [json.loads(x) for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in raw if r["event"] == "train"] == [1, 2, 3, 3, 4]
    assert [r for r in raw if r["event"] == "resume"] == [{"event": "resume", "method": "clip", "step": 2}]
    assert _train_losses(tmp_path / "killed") == _train_losses(tmp_path / "full")
    a = torch.load(tmp_path / "full" / "checkpoints" / "clip" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "checkpoints" / "clip" / "last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_resume_with_another_config_is_refused(fx, tmp_path):
    cfg = _cfg(fx, steps=2)
    experiments.run(cfg, tmp_path / "run", progress=False)
    before = (tmp_path / "run" / "metrics.jsonl").read_bytes()
    other = config_from_dict({**to_dict(cfg), "seed": 7,
                              "train": {**to_dict(cfg.train), "lr": 0.01}})
    with pytest.raises(UserError, match=r"seed: 0 -> 7.*train\.lr"):
        experiments.run(other, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "metrics.jsonl").read_bytes() == before
    assert "seed: 0" in (tmp_path / "run" / "config.yaml").read_text()
    # an explicit checkpoint path written under another config is refused too
    path = tmp_path / "run" / "checkpoints" / "clip" / "last.pt"
    explicit = config_from_dict({**to_dict(other), "train": {**to_dict(other.train), "resume": str(path)}})
    with pytest.raises(UserError, match="written by another config"):
        run_experiment(explicit, str(tmp_path / "elsewhere"), progress=False)


class _Evil:
    pass


@pytest.fixture(scope="module")
def good_checkpoint(fx, tmp_path_factory):
    out = tmp_path_factory.mktemp("src") / "run"
    experiments.run(_cfg(fx, steps=2), out, progress=False)
    return out / "checkpoints" / "clip" / "last.pt"


@pytest.mark.parametrize("case", ["truncated", "pickled", "other_model", "not_a_checkpoint"])
def test_bad_checkpoints_are_one_line(fx, tmp_path, case, good_checkpoint):
    cfg = _cfg(fx, steps=2)
    good = good_checkpoint
    bad = tmp_path / "bad.pt"
    if case == "truncated":
        bad.write_bytes(good.read_bytes()[:1000])
    elif case == "pickled":
        torch.save({"model": _Evil()}, bad)
    elif case == "other_model":
        state = torch.load(good, weights_only=True)
        state["model"] = {k: v[..., :1].clone() if v.ndim else v for k, v in state["model"].items()}
        state.pop("identity")
        torch.save(state, bad)
    else:
        torch.save({"weights": torch.zeros(2)}, bad)
    needle = {"truncated": "truncated or corrupt", "pickled": "refused by weights_only",
              "other_model": "does not fit this model", "not_a_checkpoint": "not a training checkpoint"}
    resumed = config_from_dict({**to_dict(cfg), "train": {**to_dict(cfg.train), "resume": str(bad)}})
    with pytest.raises(UserError, match=needle[case]) as info:
        run_experiment(resumed, str(tmp_path / "run"), progress=False)
    assert "\n" not in str(info.value) and str(bad) in str(info.value)


def test_templates_file_is_checked_before_the_first_step(fx, tmp_path):
    cfg = config_from_dict({**to_dict(_cfg(fx)), "eval": {
        "sets": [{"name": "id", "root": str(fx["eval"]), "protocol": "imagenet",
                  "subset": str(fx["subset"])}], "templates": str(tmp_path / "no-such-templates.txt")}})
    with pytest.raises(UserError, match="no-such-templates"):
        run_experiment(cfg, str(tmp_path / "run"), progress=False)
    assert not (tmp_path / "run").exists()


def test_cuda_on_a_machine_without_it_is_one_line(fx, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = _cfg(fx, device="cuda")
    with pytest.raises(UserError, match="'train.device'"):
        run_experiment(cfg, str(tmp_path / "run"), progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("field, value", [("methods", [{"name": "../../../x", "kind": "mmcl"}]),
                                          ("eval", {"sets": [{"name": "../x", "root": "r"}]}),
                                          ("name", "../../x")])
def test_hostile_names_are_refused(fx, field, value):
    data = to_dict(_cfg(fx))
    data[field] = value
    with pytest.raises(ConfigError, match="file name"):
        config_from_dict(data)


def test_smoke_keeps_the_users_overrides(tmp_path):
    from mmclshift.cli.train import smoke

    path = ROOT / "configs" / "fig3a_mscoco.yaml"
    user = ["train.steps=40", "seed=3"]
    small = smoke(experiments.load_config(path, user), tmp_path / "run", user, build=False)
    assert small.train.steps == 40 and small.seed == 3
    assert small.model.name == "mmcl-tiny"  # the smoke settings the user did not override
    assert not (tmp_path / "run").exists()


def test_hostile_method_name_built_in_code_writes_nothing(fx, tmp_path):
    from mmclshift.experiments.real import MethodConfig

    cfg = _cfg(fx)
    cfg.methods = [MethodConfig("../../../x", "mmcl", "clip")]  # bypasses from_dict's checks
    (tmp_path / "a" / "b").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"methods\[0\]\.name"):
        run_experiment(cfg, str(tmp_path / "a" / "b" / "run"), progress=False)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
