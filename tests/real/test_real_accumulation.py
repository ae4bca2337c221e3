"""Gradient accumulation (``train.accum_steps``) with OpenCLIP's ``accum_freq`` semantics: the
gradient of k micro-batches equals the gradient of the one batch they make."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from mmclshift.models.clip_models import create_clip, create_sl
from mmclshift.train.clip import (
    DistInfo,
    MicroBatch,
    TrainSettings,
    accumulate_gradients,
    compute_loss,
)

CAPTIONS = ["a cat on a sofa", "a red car", "a dog in the park", "two cups of coffee",
            "a cat sleeping", "a blue car on a road", "a small dog", "a cup on a table",
            "a black cat", "a parked car", "a dog with a ball", "an empty cup"]
LABELS = [0, 1, 2, 3, 0, 1, 2, 3, 0, -1, 2, 3]  # -1: a caption without a class
SETTINGS = TrainSettings(steps=1, batch_size=12, supcon_temperature=0.1)
TOL = 1e-5  # relative to each parameter's largest gradient entry
CONTRASTIVE = ("clip", "siglip", "clip_no_intra", "supcon")


def _model_and_batch(kind: str, loss: str):
    logging.getLogger().setLevel(logging.ERROR)  # open_clip warns about random init
    torch.manual_seed(0)
    if kind == "mmcl":
        model, _, tokenizer = create_clip("mmcl-tiny", siglip=loss == "siglip")
        texts = tokenizer(CAPTIONS)
    else:
        model, _ = create_sl("mmcl-tiny", 4)
        texts = None
    model.train()
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(len(CAPTIONS), 3, 32, 32, generator=gen)
    return model, MicroBatch(images, texts, torch.tensor(LABELS))


def _split(batch: MicroBatch, k: int) -> list[MicroBatch]:
    n = len(batch.labels) // k
    return [MicroBatch(batch.images[i:i + n], None if batch.texts is None else batch.texts[i:i + n],
                       batch.labels[i:i + n]) for i in range(0, len(batch.labels), n)]


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind,loss", [("mmcl", "clip"), ("mmcl", "siglip"),
                                       ("mmcl", "clip_no_intra"), ("sl", "ce"),
                                       ("sl", "supcon")])
def test_accumulated_gradient_equals_one_large_batch(kind, loss, k=3):
    model, batch = _model_and_batch(kind, loss)
    accum, within = copy.deepcopy(model), copy.deepcopy(model)
    d = DistInfo()

    big = compute_loss(model, kind, loss, batch.images, batch.texts, batch.labels, d, SETTINGS)
    big.backward()
    value = accumulate_gradients(accum, kind, loss, _split(batch, k), d, SETTINGS)

    assert value == pytest.approx(float(big.detach()), rel=1e-5, abs=1e-6)
    want, got = _grads(model), _grads(accum)
    assert want.keys() == got.keys() and len(want) > 10
    for name, g in want.items():
        scale = float(g.abs().max())
        err = float((got[name] - g).abs().max())
        assert err <= TOL * scale + 1e-7, (name, err, scale)
    # (the loop includes logit_scale and logit_bias: k times their gradient would fail it)

    if loss in CONTRASTIVE:
        # contrasting each micro-batch within itself (the semantics this replaces) gives
        # another gradient, which the comparison above would catch (for SigLIP at its initial
        # bias of -10 the negatives weigh little, so the gap is smallest there)
        for mb in _split(batch, k):
            (compute_loss(within, kind, loss, mb.images, mb.texts, mb.labels, d, SETTINGS)
             / k).backward()
        off = max(float((g - want[n]).abs().max() / want[n].abs().max())
                  for n, g in _grads(within).items() if float(want[n].abs().max()) > 0)
        assert off > 10 * TOL


def test_one_micro_batch_is_a_plain_backward():
    model, batch = _model_and_batch("mmcl", "clip")
    accum = copy.deepcopy(model)
    d = DistInfo()
    compute_loss(model, "mmcl", "clip", batch.images, batch.texts, batch.labels, d,
                 SETTINGS).backward()
    accumulate_gradients(accum, "mmcl", "clip", [batch], d, SETTINGS)
    for name, g in _grads(model).items():
        assert torch.equal(g, _grads(accum)[name]), name


def test_matches_open_clip_accum_freq():
    """Against OpenCLIP's own loop (``train_one_epoch`` with ``accum_freq=3``): the same gradient
    for every parameter but the temperature, which OpenCLIP backpropagates in each of the k
    passes (k times the large batch's gradient) and this trainer once."""
    from types import SimpleNamespace

    from open_clip.loss import ClipLoss

    train_one_epoch = pytest.importorskip("open_clip_train.train").train_one_epoch
    model, batch = _model_and_batch("mmcl", "clip")
    ours, ref = copy.deepcopy(model), copy.deepcopy(model)
    k = 3
    micro = _split(batch, k)
    accumulate_gradients(ours, "mmcl", "clip", micro, DistInfo(), SETTINGS)

    class Loader(list):
        num_batches, num_samples = k, len(batch.labels)

    args = SimpleNamespace(device="cpu", precision="fp32", distill=False, accum_freq=k,
                           skip_scheduler=True, grad_clip_norm=None, horovod=False, world_size=1,
                           rank=0, local_rank=0, log_every_n_steps=10**9,
                           batch_size=len(micro[0].labels), wandb=False, save_logs=False)
    data = {"train": SimpleNamespace(dataloader=Loader([(mb.images, mb.texts) for mb in micro]),
                                     set_epoch=lambda epoch: None)}
    opt = torch.optim.SGD(ref.parameters(), lr=0.0)  # keeps the weights; the gradients stay
    train_one_epoch(ref, data, ClipLoss(), 0, opt, None, None, None, args)
    want, got = _grads(ref), _grads(ours)
    assert want.keys() == got.keys()
    want["logit_scale"] = want["logit_scale"] / k
    for name, g in want.items():
        err = float((got[name] - g).abs().max())
        assert err <= TOL * float(g.abs().max()) + 1e-7, (name, err)


DDP_SCRIPT = r"""
import json, logging, sys
logging.getLogger().setLevel(logging.ERROR)
from mmclshift.experiments.real import config_from_dict, run_experiment
run_experiment(config_from_dict(json.loads(sys.argv[1])), sys.argv[2], progress=False)
"""


@pytest.mark.slow
def test_ddp_accumulation_matches_one_process_large_batch(fx, tmp_path):
    """2 gloo processes x 2 samples x 2 micro-batches == 1 process x 8 samples, one micro-batch
    (the accumulated batch spans both ranks and both micro-batches)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[2] / "src")
    base = {"name": "ddp-accum", "seed": 0,
            "data": {"format": "coco", "path": str(fx["coco"]), "vocab": str(fx["vocab"]),
                     "workers": 0},
            "model": {"name": "mmcl-tiny"},
            "methods": [{"name": "clip", "kind": "mmcl", "loss": "clip"}],
            "train": {"steps": 2, "precision": "fp32", "log_every": 1, "lr": 1e-3,
                      "device": "cpu", "resume": None}}
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    for out, n, batch, accum in (("single", 1, 8, 1), ("ddp", 2, 4, 2)):
        cfg = json.loads(json.dumps(base))
        cfg["train"].update(batch_size=batch, accum_steps=accum)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={n}", str(script), json.dumps(cfg), str(tmp_path / out)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]

    def losses(out):
        return [json.loads(line)["loss"] for line in (tmp_path / out / "metrics.jsonl").open()
                if '"train"' in line]

    assert losses("ddp") == pytest.approx(losses("single"), rel=1e-5) and len(losses("ddp")) == 2
    wa = torch.load(tmp_path / "single/checkpoints/clip/last.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "ddp/checkpoints/clip/last.pt", weights_only=True)["model"]
    for k, a in wa.items():
        b = wb[k]
        if k.endswith("attn.in_proj_bias"):  # the key part: exactly zero gradient, Adam noise
            w = a.shape[0] // 3
            a, b = torch.cat([a[:w], a[2 * w:]]), torch.cat([b[:w], b[2 * w:]])
        assert torch.allclose(a, b, atol=1e-5), k
