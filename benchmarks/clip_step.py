"""Samples/s of our MMCL training loop vs OpenCLIP's own ``open_clip_train.train.train_one_epoch``.

Same tiny model (``mmcl-tiny``, same seed), same batch size, same data (the COCO-format fixture
built from scikit-image photos, decoded from JPEG every step by both loops with the same
preprocessing, one process, no loader workers), the same optimizer (AdamW, lr 5e-4, betas 0.9/0.98, eps 1e-6, weight
decay 0.1; ours exempts gains, biases and the temperature from decay as OpenCLIP's main does, and
runs PyTorch's fused kernel, :func:`mmclshift.train.clip.openclip_optimizer`; the reference the plain
one), same number of steps,
same torch threads, and the same final work: both timers end after one checkpoint of the model
and optimizer state written through :func:`mmclshift.runs.save_checkpoint` (ours writes it
itself; the reference loop is followed by the same call inside its timer). Model, optimizer and
data setup are outside both timers (optimizer setup inside both). A warm-up run of each loop is
excluded, the loops alternate which goes first, and the ratio is the median over repeats of
ours / reference; with one torch thread (the default) the rates are per CPU second of the
process (on shared cores wall time mostly measures the wait for a core), and the wall-clock
ratio is printed too.

  PYTHONPATH=src python benchmarks/clip_step.py [--steps 24] [--batch 16] [--repeats 9] [--threads 1]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

from mmclshift.timing import Stopwatch, column, interleave, load, ratios, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for both loops (1: fastest for this tiny model on shared cores)")
    args = ap.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)

    from open_clip.loss import ClipLoss
    from open_clip_train.train import train_one_epoch

    from mmclshift.data.captions import load_vocab
    from mmclshift.data.fixtures import build_fixtures
    from mmclshift.data.image_text import load_image, make_source
    from mmclshift.experiments.real import build_stream, config_from_dict
    from mmclshift.models.clip_models import create_clip
    from mmclshift.runs import RunDir, save_checkpoint
    from mmclshift.train.clip import TrainSettings, train

    with tempfile.TemporaryDirectory(prefix="mmclshift-bench-clip-") as tmp:
        fx = build_fixtures(f"{tmp}/fx", per_photo=12)
        cfg = config_from_dict({"seed": 0, "data": {"format": "coco", "path": str(fx["coco"]),
                                                     "vocab": str(fx["vocab"])},
                                "model": {"name": "mmcl-tiny"}})
        vocab = load_vocab(str(fx["vocab"]))
        items = [it for it in make_source("coco", str(fx["coco"])).items(0, 0, None)
                 if it.image and it.captions and Path(it.image).is_file()]
        per_epoch = len(items) // args.batch
        steps = max(1, args.steps // per_epoch) * per_epoch  # whole epochs, the same in both loops
        n = steps * args.batch

        def ours(r: int) -> dict[str, float]:
            torch.manual_seed(0)
            model, preprocess, tok = create_clip("mmcl-tiny")
            stream = build_stream(cfg, preprocess, vocab)
            settings = TrainSettings(steps=steps, batch_size=args.batch, lr=5e-4,
                                     checkpoint_every=10**9, log_every=10**9, precision="fp32",
                                     workers=0)
            run = RunDir.create(f"{tmp}/ours{r}", cfg)
            # the whole call: optimizer setup, the loop, the final checkpoint
            with Stopwatch() as watch:
                train(model, "mmcl", "clip", stream, tok, settings, run, "clip", progress=False)
            return {"wall": n / watch.wall, "cpu": n / watch.cpu}

        def reference(r: int) -> dict[str, float]:
            torch.manual_seed(0)
            ref_model, preprocess, tok = create_clip("mmcl-tiny")
            ref_model.output_dict = True

            class Pairs(torch.utils.data.Dataset):
                def __len__(self):
                    return len(items)

                def __getitem__(self, i):
                    it = items[i]
                    return preprocess(load_image(it.image)), tok([it.captions[0]])[0]

            ref_args = SimpleNamespace(device="cpu", precision="fp32", distill=False, accum_freq=1,
                                       skip_scheduler=True, grad_clip_norm=None, horovod=False,
                                       world_size=1, rank=0, local_rank=0, log_every_n_steps=10**9,
                                       batch_size=args.batch, wandb=False, save_logs=False)
            with Stopwatch() as watch:  # optimizer setup, the loop, the same final checkpoint
                loader = torch.utils.data.DataLoader(Pairs(), batch_size=args.batch, shuffle=True,
                                                     drop_last=True, num_workers=0)
                loader.num_batches = per_epoch
                loader.num_samples = per_epoch * args.batch
                data = {"train": SimpleNamespace(dataloader=loader, set_epoch=lambda e: None)}
                opt = torch.optim.AdamW(ref_model.parameters(), lr=5e-4, betas=(0.9, 0.98),
                                        eps=1e-6, weight_decay=0.1)
                for e in range(steps // per_epoch):
                    train_one_epoch(ref_model, data, ClipLoss(), e, opt, None, None, None, ref_args)
                save_checkpoint({"model": ref_model.state_dict(), "optimizer": opt.state_dict(),
                                 "step": steps}, Path(tmp) / f"ref{r}" / "last.pt")
            return {"wall": n / watch.wall, "cpu": n / watch.cpu}

        print(f"mmcl-tiny, batch {args.batch}, {steps} steps ({per_epoch} per epoch), "
              f"{args.threads} torch threads, load {load():.2f}")
        rates = interleave({"ours": ours, "reference": reference}, args.repeats)
    clock = "cpu" if args.threads == 1 else "wall"
    for name, label in (("ours", "ours"), ("reference", "open_clip_train.train_one_epoch")):
        print(summary(f"{label} (samples/s, wall clock)", column(rates[name], "wall")))
        print(summary(f"{label} (samples per CPU second)", column(rates[name], "cpu")))
    wall = ratios(column(rates["ours"], "wall"), column(rates["reference"], "wall"))
    r = ratios(column(rates["ours"], clock), column(rates["reference"], clock))
    print(summary("ratio ours/reference, wall clock", wall))
    print(summary(f"ratio ours/reference ({clock})", r) + f"; load {load():.2f}")
    print(f"ratio: {statistics.median(r):.3f}")


if __name__ == "__main__":
    main()
