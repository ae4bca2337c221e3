"""Samples/s of our MMCL training loop vs OpenCLIP's own ``open_clip_train.train.train_one_epoch``.

Same tiny model (``mmcl-tiny``, same seed), same batch size, same data (the COCO-format fixture
built from scikit-image photos, decoded from JPEG every step by both loops with the same
preprocessing, one process, no workers), same optimizer (AdamW). Prints both rates and the
ratio ours / reference (goal >= 1.0).

  PYTHONPATH=src python benchmarks/clip_step.py [--steps 30] [--batch 16]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    from open_clip.loss import ClipLoss
    from open_clip_train.train import train_one_epoch

    from mmclshift.data.captions import load_vocab
    from mmclshift.data.fixtures import build_fixtures
    from mmclshift.data.image_text import load_image, make_source
    from mmclshift.experiments.real import build_stream, config_from_dict
    from mmclshift.models.clip_models import create_clip
    from mmclshift.runs import RunDir
    from mmclshift.train.clip import TrainSettings, train

    tmp = tempfile.mkdtemp()
    fx = build_fixtures(f"{tmp}/fx", per_photo=12)
    cfg = config_from_dict({"seed": 0, "data": {"format": "coco", "path": str(fx["coco"]),
                                                 "vocab": str(fx["vocab"])},
                            "model": {"name": "mmcl-tiny"}})
    vocab = load_vocab(str(fx["vocab"]))

    def run_ours(i: int) -> float:
        torch.manual_seed(0)
        model, preprocess, tok = create_clip("mmcl-tiny")
        stream = build_stream(cfg, preprocess, vocab)
        settings = TrainSettings(steps=args.steps, batch_size=args.batch, lr=5e-4,
                                 checkpoint_every=10**9, log_every=10**9, precision="fp32")
        run = RunDir.create(f"{tmp}/run{i}", cfg)
        # the rate over the training loop itself (model/optimizer/tensorboard setup excluded,
        # as for the reference, whose timer starts at train_one_epoch)
        return train(model, "mmcl", "clip", stream, tok, settings, run, "clip",
                     progress=False).samples_per_s

    def run_reference() -> tuple[float, int]:
        # OpenCLIP's train_one_epoch over a torch Dataset of the same pairs
        torch.manual_seed(0)
        ref_model, preprocess, tok = create_clip("mmcl-tiny")
        ref_model.output_dict = True
        items = list(make_source("coco", str(fx["coco"])).items(0, 0, None))
        items = [it for it in items if it.image and it.captions and Path(it.image).is_file()]

        class Pairs(torch.utils.data.Dataset):
            def __len__(self):
                return len(items)

            def __getitem__(self, i):
                it = items[i]
                return preprocess(load_image(it.image)), tok([it.captions[0]])[0]

        loader = torch.utils.data.DataLoader(Pairs(), batch_size=args.batch, shuffle=True,
                                             drop_last=True, num_workers=0)
        per_epoch = len(loader)
        loader.num_batches = per_epoch
        loader.num_samples = per_epoch * args.batch
        data = {"train": SimpleNamespace(dataloader=loader, set_epoch=lambda e: None)}
        ref_args = SimpleNamespace(device="cpu", precision="fp32", distill=False, accum_freq=1,
                                   skip_scheduler=True, grad_clip_norm=None, horovod=False,
                                   world_size=1, rank=0, local_rank=0, log_every_n_steps=10**9,
                                   batch_size=args.batch, wandb=False, save_logs=False)
        opt = torch.optim.AdamW(ref_model.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-6,
                                weight_decay=0.1)
        epochs = max(1, args.steps // per_epoch)
        t = time.perf_counter()
        for e in range(epochs):
            train_one_epoch(ref_model, data, ClipLoss(), e, opt, None, None, None, ref_args)
        return epochs * per_epoch * args.batch / (time.perf_counter() - t), epochs * per_epoch

    ours_rates, ref_rates = [], []
    for i in range(args.repeats):
        ours_rates.append(run_ours(i))
        rate, ref_steps = run_reference()
        ref_rates.append(rate)
    print("ours (samples/s):      " + "  ".join(f"{r:.1f}" for r in ours_rates))
    print("reference (samples/s): " + "  ".join(f"{r:.1f}" for r in ref_rates))
    ours, ref = max(ours_rates), max(ref_rates)
    print(f"ours: {ours:.1f} samples/s ({args.steps} steps x {args.batch})")
    print(f"open_clip_train.train_one_epoch: {ref:.1f} samples/s "
          f"({ref_steps} steps x {args.batch})")
    print(f"ratio ours/reference: {ours / ref:.2f}")


if __name__ == "__main__":
    main()
