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

Since the loops do the same arithmetic, their trained weights must agree (``ours`` and
``open_clip`` bit for bit; the hand-written loss rounds differently); the largest parameter
difference is printed as the check of "same work". A warm-up of each loop is excluded and the
loops rotate which goes first over repeats. With one thread on CPU (the tier's policy) the rates
are per CPU second of the process (on shared cores wall time mostly measures the wait for a
core); the wall-clock ratio is printed too. Last line: ``ratio: <median of ours / reference>``.

    PYTHONPATH=src python benchmarks/semisynthetic_step.py [--steps 100] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch
import torch.nn.functional as F

from mmclshift.data.digits import load_embedded_digits
from mmclshift.data.semisynthetic import MAX_CAPTION_LEN, VOCAB, build_splits
from mmclshift.experiments.semisynthetic import demo_config
from mmclshift.models.towers import TwoTowerModel
from mmclshift.threads import TIER_THREADS
from mmclshift.timing import Stopwatch, column, interleave, load, ratios, summary
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
    """Returns ({"wall": samples/s, "cpu": samples per CPU second}, the trained model)."""
    t = cfg.train
    limit = math.log(cfg.mmcl.max_logit_scale)
    n, bs = len(images), min(t.batch_size, len(images))
    with Stopwatch() as watch:  # the same scope as ours: optimiser setup included
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        gen = torch.Generator().manual_seed(1)
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
    return {"wall": t.steps * bs / watch.wall, "cpu": t.steps * bs / watch.cpu}, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=TIER_THREADS["semisynthetic"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=9, help="interleaved timings per loop")
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

    def ours(r: int) -> dict[str, float]:
        model = make_model(cfg, device)
        loss_fn, clamp = mmcl_loss_fn(model, cfg.mmcl), clamp_logit_scale(model, cfg.mmcl)
        with Stopwatch() as watch:  # around the whole call: its optimiser setup counts too
            train_loop(model, loss_fn, images, tokens, cfg.train, torch.Generator().manual_seed(1),
                       method="mmcl", device=device, progress=False, after_step=clamp)
        trained["ours"] = model
        n = cfg.train.steps * cfg.train.batch_size
        return {"wall": n / watch.wall, "cpu": n / watch.cpu}

    def plain(name, loss_fn):
        def arm(r: int) -> dict[str, float]:
            rate, trained[name] = plain_loop(make_model(cfg, device), images, tokens, cfg, loss_fn, device)
            return rate
        return arm

    print(f"semi-synthetic MMCL step, batch {cfg.train.batch_size}, {args.steps} steps, device {device}, "
          f"threads {args.threads}, load {load():.2f}")
    rates = interleave({"ours": ours, "reference": plain("reference", infonce),
                        "open_clip": plain("open_clip", oc_loss)}, args.repeats)
    clock = "cpu" if args.threads == 1 and device.type == "cpu" else "wall"
    for name, values in rates.items():
        print(summary(f"{name} (samples/s, wall clock)", column(values, "wall")))
        print(summary(f"{name} (samples per CPU second)", column(values, "cpu")))
    # same work: the same minibatches, augmentation and updates give the same weights
    with torch.no_grad():
        for a, b in (("ours", "open_clip"), ("ours", "reference")):
            pa, pb = dict(trained[a].named_parameters()), dict(trained[b].named_parameters())
            diff = max(float((p - pb[k]).abs().max()) for k, p in pa.items())
            scale = max(float(p.abs().max()) for p in pb.values())
            print(f"largest parameter difference {a} vs {b} after {args.steps} steps: {diff:.2e} "
                  f"(largest parameter {scale:.2f})")
    ours_rates = column(rates["ours"], clock)
    r_oc = ratios(ours_rates, column(rates["open_clip"], clock))
    r = ratios(ours_rates, column(rates["reference"], clock))
    wall = ratios(column(rates["ours"], "wall"), column(rates["reference"], "wall"))
    print(summary("ratio ours/reference, wall clock", wall))
    print(summary(f"ratio ours/open_clip ({clock})", r_oc))
    print(summary(f"ratio ours/reference ({clock})", r) + f"; load {load():.2f}")
    print(f"ratio: {statistics.median(r):.3f}")


if __name__ == "__main__":
    main()
