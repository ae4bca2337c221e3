"""The real-data trainer (``mmclshift.train.clip.train``) called directly on the COCO fixture."""

from __future__ import annotations

import logging
import sys

import pytest

from mmclshift.data.captions import load_vocab
from mmclshift.experiments.real import build_method, build_stream, config_from_dict
from mmclshift.runs import RunDir
from mmclshift.train import clip as trainer
from mmclshift.train.clip import TrainSettings, train


def _cfg(fx):
    return config_from_dict({"name": "trainer", "seed": 0,
                             "data": {"format": "coco", "path": str(fx["coco"]),
                                      "vocab": str(fx["vocab"]), "workers": 0},
                             "model": {"name": "mmcl-tiny"}})


def _train(fx, out, *, kind="mmcl", loss="clip", steps=2, batch=4, resume=None, stop_after=None,
           method=None, **settings):
    """Build the method's model (seeded) and stream as the experiment does, then train."""
    from mmclshift.experiments.real import MethodConfig

    cfg = _cfg(fx)
    vocab = load_vocab(cfg.data.vocab)
    m = MethodConfig(method or loss, kind, loss)
    model, preprocess, tokenizer = build_method(cfg, m, len(vocab))
    stream = build_stream(cfg, preprocess, vocab)
    run = RunDir.create(out, cfg, resume=resume is not None)
    s = TrainSettings(steps=steps, batch_size=batch, lr=1e-3, log_every=1, **settings)
    return train(model, kind, loss, stream, tokenizer, s, run, m.name, resume=resume,
                 progress=False, stop_after=stop_after), run


@pytest.fixture
def fresh_tensorboard_lookup():
    trainer.tensorboard_writer_class.cache_clear()
    yield
    trainer.tensorboard_writer_class.cache_clear()


def test_missing_tensorboard_warns_once_and_training_goes_on(fx, tmp_path, monkeypatch, caplog,
                                                             fresh_tensorboard_lookup):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    caplog.set_level(logging.WARNING, logger=trainer.__name__)
    for name in ("first", "second"):
        result, run = _train(fx, str(tmp_path / name), steps=1)
        assert result.step == 1 and not (run.path / "tb").exists()
    warnings = [r for r in caplog.records if "tensorboard" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "\n" not in warnings[0].getMessage()


def test_tensorboard_writer_errors_propagate(fx, tmp_path, monkeypatch, fresh_tensorboard_lookup):
    import torch.utils.tensorboard as tb

    class BrokenWriter:
        def __init__(self, logdir):
            raise PermissionError(f"cannot write {logdir}")

    monkeypatch.setattr(tb, "SummaryWriter", BrokenWriter)
    with pytest.raises(PermissionError, match="cannot write"):
        _train(fx, str(tmp_path / "run"), steps=1)
