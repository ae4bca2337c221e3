"""The experiment config's train keys and the trainer's settings share one set of defaults."""

from __future__ import annotations

from dataclasses import MISSING, fields

from mmclshift.experiments.real import DataConfig, TrainConfig, config_from_dict, train_settings
from mmclshift.train.clip import TrainSettings


def _default(cls, name):
    f = {f.name: f for f in fields(cls)}[name]
    return f.default_factory() if f.default is MISSING else f.default


def test_config_defaults_are_the_trainer_defaults():
    shared = 0
    for f in fields(TrainSettings):
        if f.default is MISSING:  # steps, batch_size: required by the trainer
            continue
        owner = TrainConfig if f.name in {g.name for g in fields(TrainConfig)} else DataConfig
        assert _default(owner, f.name) == f.default, f.name
        shared += 1
    assert shared == 11


def test_train_settings_carry_every_config_value():
    values = {"steps": 7, "batch_size": 6, "accum_steps": 3, "lr": 0.02, "weight_decay": 0.3,
              "warmup_steps": 2, "grad_clip": 1.5, "checkpoint_every": 4, "log_every": 5,
              "precision": "fp32", "supcon_temperature": 0.2}
    cfg = config_from_dict({"train": values, "data": {"workers": 0, "prefetch": 3}})
    assert train_settings(cfg) == TrainSettings(**values, workers=0, prefetch=3)
    assert {f.name for f in fields(TrainSettings)} == set(values) | {"workers", "prefetch"}
