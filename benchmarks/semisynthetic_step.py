"""Training throughput (samples/s) of the semi-synthetic MMCL step, against plain loops in-process.

Three loops train the same two-tower model (configs/fig2_smoke.yaml's architecture, same init)
on the embedded digits and do the same work: the same minibatches (epochs of ``randperm``, drawn
from the same generator), the same random translations (``random_translate`` on that generator,
in the same order), the same cosine learning-rate schedule, AdamW, the temperature clamp, the
same number of steps and torch threads:

* ``ours``       -- :func:`mmclshift.train.images.train_loop` with the MMCL objective
                    (:func:`mmclshift.losses.clip_loss`) and its logging hooks;
* ``reference``  -- a plain loop written here with a hand-written symmetric InfoNCE;
* ``open_clip``  -- the same plain loop with ``open_clip.loss.ClipLoss``.

Since the loops do the same arithmetic, their trained weights must agree (up to float rounding
in the loss); the largest parameter difference is printed as the check of "same work". A warm-up
of each loop is excluded and the loops rotate which goes first over repeats. Last line:
``ratio: <median of ours / reference>``.

    PYTHONPATH=src python benchmarks/semisynthetic_step.py [--steps 100] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

from mmclshift.data.digits import load_embedded_digits
from mmclshift.data.semisynthetic import MAX_CAPTION_LEN, VOCAB, build_splits
from mmclshift.experiments.semisynthetic import demo_config
from mmclshift.models.towers import TwoTowerModel
from mmclshift.threads import TIER_THREADS
from mmclshift.timing import interleave, load, ratios, summary
from mmclshift.train.images import clamp_logit_scale, mmcl_loss_fn, random_translate, train_loop


def make_model(cfg, device):
    torch.manual_seed(0)
    return TwoTowerModel(cfg.model, len(VOCAB), MAX_CAPTION_LEN, init_temperature=cfg.mmcl.temperature).to(device)


def infonce(z_img, z_txt, logit_scale):
    z_img, z_txt = F.normalize(z_img, dim=-1), F.normalize(z_txt, dim=-1)
    logits = logit_scale * z_img @ z_txt.T
    target = torch.arange(len(z_img), device=z_img.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def plain_loop(model, images, tokens, cfg, loss_fn, device):
    """Returns (samples/s, the trained model)."""
    t = cfg.train
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    gen = torch.Generator().manual_seed(1)
    limit = math.log(cfg.mmcl.max_logit_scale)
    n, bs = len(images), min(t.batch_size, len(images))
    model.train()
    t0 = time.perf_counter()
    perm, pos = torch.randperm(n, generator=gen), 0
    for step in range(t.steps):
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos:pos + bs]
        pos += bs
        x = random_translate(images[idx].to(device).float().div_(255.0), t.max_shift, gen)
        for g in opt.param_groups:
            g["lr"] = t.lr * 0.5 * (1.0 + math.cos(math.pi * step / t.steps))
        loss = loss_fn(model.image(x), model.text(tokens[idx].to(device)), model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, limit)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return t.steps * bs / (time.perf_counter() - t0), model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=TIER_THREADS["semisynthetic"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timings per loop")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = demo_config()
    cfg.train = cfg.train.__class__(**{**cfg.train.__dict__, "steps": args.steps, "warmup_steps": 0,
                                       "cosine": True, "augment": True})
    train = build_splits(load_embedded_digits(), cfg.data, 0, [])["train"]
    images, tokens = train.images.to(device), train.tokens

    from open_clip.loss import ClipLoss

    oc = ClipLoss()

    def oc_loss(zi, zt, s):
        return oc(F.normalize(zi, dim=-1), F.normalize(zt, dim=-1), s)

    trained: dict[str, torch.nn.Module] = {}

    def ours(r: int) -> float:
        model = make_model(cfg, device)
        stats = train_loop(model, mmcl_loss_fn(model, cfg.mmcl), images, tokens, cfg.train,
                           torch.Generator().manual_seed(1), method="mmcl", device=device,
                           progress=False, after_step=clamp_logit_scale(model, cfg.mmcl))
        trained["ours"] = model
        return stats["samples_per_s"]

    def plain(name, loss_fn):
        def arm(r: int) -> float:
            rate, trained[name] = plain_loop(make_model(cfg, device), images, tokens, cfg, loss_fn, device)
            return rate
        return arm

    print(f"semi-synthetic MMCL step, batch {cfg.train.batch_size}, {args.steps} steps, device {device}, "
          f"threads {args.threads}, load {load():.2f}")
    rates = interleave({"ours": ours, "reference": plain("reference", infonce),
                        "open_clip": plain("open_clip", oc_loss)}, args.repeats)
    for name, values in rates.items():
        print(summary(f"{name} (samples/s)", values))
    # same work: the same minibatches, augmentation and updates give the same weights
    ref = dict(trained["reference"].named_parameters())
    for name in ("ours", "open_clip"):
        diff = max(float((p - ref[k]).abs().max()) for k, p in trained[name].named_parameters())
        scale = max(float(p.abs().max()) for p in ref.values())
        print(f"largest parameter difference {name} vs reference after {args.steps} steps: {diff:.2e} "
              f"(largest parameter {scale:.2f})")
    r_oc = ratios(rates["ours"], rates["open_clip"])
    r = ratios(rates["ours"], rates["reference"])
    print(summary("ratio ours/open_clip", r_oc))
    print(summary("ratio ours/reference", r) + f"; load {load():.2f}")
    print(f"ratio: {statistics.median(r):.3f}")


if __name__ == "__main__":
    main()
