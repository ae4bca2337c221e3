"""The real-data trainer (``mmclshift.train.clip.train``) called directly on the COCO fixture."""

from __future__ import annotations

import copy
import json
import logging
import math
import sys

import numpy as np
import pytest
import torch

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
    s = TrainSettings(steps=steps, batch_size=batch, **{"lr": 1e-3, "log_every": 1, "workers": 0,
                                                         **settings})
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


def _comparable(name: str, w: torch.Tensor) -> torch.Tensor:
    """The attention key bias has an exactly zero gradient (softmax ignores it), so Adam turns
    rounding noise there into +-lr steps: compare only its query and value parts."""
    if name.endswith("attn.in_proj_bias"):
        n = w.shape[0] // 3
        return torch.cat([w[:n], w[2 * n:]])
    return w


def test_loss_decreases(fx, tmp_path):
    # 36 samples, 3 steps an epoch: the first epoch's losses against the tenth's (crops of one
    # photo share its captions, so the loss cannot go far below log 2 in a batch of 12)
    result, run = _train(fx, str(tmp_path / "run"), steps=30, batch=12)
    first, last = sum(result.losses[:3]) / 3, sum(result.losses[-3:]) / 3
    assert result.step == 30 and len(result.losses) == 30
    assert first == pytest.approx(math.log(12), rel=0.05)  # chance of a 12-way InfoNCE
    assert last < 0.7 * first, result.losses


def test_checkpoint_contents(fx, tmp_path):
    result, run = _train(fx, str(tmp_path / "run"), steps=3, batch=8, checkpoint_every=2)
    ck = torch.load(run.checkpoint_dir / "clip" / "last.pt", weights_only=True)
    assert {"model", "optimizer", "step", "epoch", "cursors", "skips", "method",
            "identity"} <= ck.keys()
    assert ck["step"] == 3 and ck["method"] == "clip" and ck["identity"] is None
    # 36 usable samples of 37 items in 4 batches of 8 an epoch: step 3 ends at the 24th sample
    assert ck["epoch"] == 0 and len(ck["cursors"]) == 1 and 24 <= ck["cursors"][0] <= 25
    for k, v in result.model.state_dict().items():
        assert torch.equal(ck["model"][k], v), k
    assert all(int(s["step"]) == 3 for s in ck["optimizer"]["state"].values())
    train_recs = [json.loads(line) for line in (run.path / "metrics.jsonl").open()
                  if '"train"' in line]
    assert [r["step"] for r in train_recs] == [1, 2, 3]
    assert [r["loss"] for r in train_recs] == pytest.approx(result.losses)


def test_resume_equals_uninterrupted_with_accumulation(fx, tmp_path):
    full, _ = _train(fx, str(tmp_path / "full"), steps=4, batch=4, accum_steps=2,
                     checkpoint_every=1)
    part, _ = _train(fx, str(tmp_path / "killed"), steps=4, batch=4, accum_steps=2,
                     checkpoint_every=1, resume="latest", stop_after=3)
    assert part.step == 3
    rest, _ = _train(fx, str(tmp_path / "killed"), steps=4, batch=4, accum_steps=2,
                     checkpoint_every=1, resume="latest")
    assert rest.step == 4 and rest.losses == full.losses[3:]
    a, b = full.model.state_dict(), rest.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_accumulation_through_the_trainer_matches_one_large_batch(fx, tmp_path):
    """3 micro-batches of 4 per step against batches of 12: the same samples, the same loss and,
    after two AdamW steps, the same weights (to float tolerance)."""
    big, _ = _train(fx, str(tmp_path / "big"), steps=2, batch=12)
    acc, _ = _train(fx, str(tmp_path / "acc"), steps=2, batch=4, accum_steps=3)
    assert acc.losses == pytest.approx(big.losses, rel=1e-5)
    a, b = big.model.state_dict(), acc.model.state_dict()
    for k in a:
        assert torch.allclose(_comparable(k, a[k]), _comparable(k, b[k]), atol=1e-5), k


# --------------------------------------------------------------------------- the SL head


def _blobs(means: torch.Tensor, n_per_class: int, gen: torch.Generator
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples of well-separated Gaussian classes (one mean each) as 3x4x4 "images"."""
    labels = torch.arange(len(means)).repeat_interleave(n_per_class)
    return means[labels] + torch.randn(len(labels), 3, 4, 4, generator=gen), labels


def _reference_fit(feats: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Multinomial logistic regression fitted by scipy's L-BFGS; returns (weights, bias)."""
    from scipy.optimize import minimize
    from scipy.special import logsumexp

    x = np.hstack([feats, np.ones((len(feats), 1))])
    onehot = np.eye(n_classes)[labels]

    def nll(flat):
        w = flat.reshape(x.shape[1], n_classes)
        z = x @ w
        p = np.exp(z - logsumexp(z, axis=1, keepdims=True))
        return -(onehot * (z - logsumexp(z, axis=1, keepdims=True))).sum() / len(x), \
            (x.T @ (p - onehot) / len(x)).ravel()

    res = minimize(nll, np.zeros(x.shape[1] * n_classes), jac=True, method="L-BFGS-B")
    return res.x.reshape(x.shape[1], n_classes)


def test_supcon_fits_the_sl_head():
    """SupCon trains the tower; the linear head the SL scorer uses is fitted beside it. On a
    separable toy its held-out accuracy is far above chance (1/4) and close to a logistic
    regression fitted by scipy on the trained features."""
    from mmclshift.models.clip_models import SLModel
    from mmclshift.train.clip import DistInfo, MicroBatch, openclip_optimizer, optimizer_step

    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    means = 3.0 * torch.randn(4, 3, 4, 4, generator=gen)
    x_train, y_train = _blobs(means, 16, gen)
    x_test, y_test = _blobs(means, 16, gen)
    model = SLModel(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 8)), 8, 4)
    initial_head = copy.deepcopy(model.head)
    settings = TrainSettings(steps=150, batch_size=64, lr=1e-2, weight_decay=0.0)
    opt = openclip_optimizer(model, settings)
    for step in range(settings.steps):
        optimizer_step(model, model, opt, "sl", "supcon", [MicroBatch(x_train, None, y_train)],
                       step, settings, DistInfo())

    model.eval()
    with torch.no_grad():
        f_train, f_test = model.visual(x_train), model.visual(x_test)
        head_acc = float((model.head(f_test).argmax(1) == y_test).float().mean())
        unfitted_acc = float((initial_head(f_test).argmax(1) == y_test).float().mean())
    w = _reference_fit(f_train.numpy().astype(np.float64), y_train.numpy(), 4)
    z = np.hstack([f_test.numpy(), np.ones((len(f_test), 1))]) @ w
    ref_acc = float((z.argmax(1) == y_test.numpy()).mean())
    assert ref_acc >= 0.9  # the toy is separable in the trained features
    assert head_acc >= 0.9 and head_acc >= ref_acc - 0.05, (head_acc, ref_acc)
    assert unfitted_acc <= 0.6  # the initial head on the same features: the fit made the gap


def test_contrastive_batch_counts_the_accumulated_samples(fx, tmp_path):
    from mmclshift.errors import UserError

    with pytest.raises(UserError, match="batch_size x train.accum_steps must be >= 2"):
        _train(fx, str(tmp_path / "one"), batch=1, steps=1)
    pairs, _ = _train(fx, str(tmp_path / "pairs"), batch=1, accum_steps=2, steps=1)
    big, _ = _train(fx, str(tmp_path / "big"), batch=2, steps=1)
    assert pairs.losses == pytest.approx(big.losses, rel=1e-5)


def test_a_diverged_loss_stops_the_run_with_one_line_naming_method_and_step(fx, tmp_path):
    """A NaN loss stops the real-data trainer with NonFiniteLoss (a UserError); the run is not done."""
    from mmclshift.errors import UserError
    from mmclshift.train.optim import NonFiniteLoss

    with pytest.raises(NonFiniteLoss, match=r"^clip: loss became (nan|-?inf) at step \d+; lower train.lr$") as err:
        _train(fx, str(tmp_path / "run"), steps=6, batch=4, lr=1e30)
    assert isinstance(err.value, UserError)
    from mmclshift.runs import DONE_FILE

    assert (tmp_path / "run").is_dir() and not (tmp_path / "run" / DONE_FILE).exists()
