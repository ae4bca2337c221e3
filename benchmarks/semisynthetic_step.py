"""Training throughput (samples/s) of the semi-synthetic MMCL step, against baselines in-process.

Three loops train the same two-tower model (configs/fig2_smoke.yaml's architecture, same init,
same minibatches) for the same number of steps on the embedded digits:

* ``ours``       -- :func:`mmclshift.train.images.train_loop` with the MMCL objective
                    (:func:`mmclshift.losses.clip_loss`, i.e. open_clip's ClipLoss), augmentation,
                    LR schedule, logging hooks and temperature clamp;
* ``reference``  -- a plain loop written here: index a batch, forward, hand-written symmetric
                    InfoNCE (two cross-entropies), backward, AdamW step; no augmentation or logging;
* ``open_clip``  -- the same plain loop with ``open_clip.loss.ClipLoss`` as the loss.

Prints samples/s for each and the ratios ours/reference and ours/open_clip (a ratio near 1 means
the library adds little overhead; augmentation is the main extra work in ``ours``), and checks
that the hand-written loss equals open_clip's on one batch.

    PYTHONPATH=src python benchmarks/semisynthetic_step.py [--steps 100] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from mmclshift.data.digits import load_embedded_digits
from mmclshift.data.semisynthetic import MAX_CAPTION_LEN, VOCAB, build_splits
from mmclshift.experiments.semisynthetic import demo_config
from mmclshift.models.towers import TwoTowerModel
from mmclshift.train.images import clamp_logit_scale, mmcl_loss_fn, train_loop


def make_model(cfg, device):
    torch.manual_seed(0)
    return TwoTowerModel(cfg.model, len(VOCAB), MAX_CAPTION_LEN, init_temperature=cfg.mmcl.temperature).to(device)


def infonce(z_img, z_txt, logit_scale):
    z_img, z_txt = F.normalize(z_img, dim=-1), F.normalize(z_txt, dim=-1)
    logits = logit_scale * z_img @ z_txt.T
    target = torch.arange(len(z_img), device=z_img.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def plain_loop(model, images, tokens, steps, batch_size, lr, loss_fn, device):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(1)
    n = len(images)
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, n, (batch_size,), generator=gen)
        x = images[idx].to(device).float().div_(255.0)
        loss = loss_fn(model.image(x), model.text(tokens[idx].to(device)), model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many timings per loop")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = demo_config()
    train = build_splits(load_embedded_digits(), cfg.data, 0, [])["train"]
    images, tokens = train.images.to(device), train.tokens
    bs, lr = cfg.train.batch_size, cfg.train.lr

    from open_clip.loss import ClipLoss

    oc = ClipLoss()

    def oc_loss(zi, zt, s):
        return oc(F.normalize(zi, dim=-1), F.normalize(zt, dim=-1), s)

    # the two losses agree (so the loops optimise the same objective)
    m = make_model(cfg, device)
    x = images[:bs].to(device).float() / 255
    zi, zt = m.image(x), m.text(tokens[:bs].to(device))
    a, b = infonce(zi, zt, m.logit_scale.exp()), oc_loss(zi, zt, m.logit_scale.exp())
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (float(a), float(b))

    train_cfg = cfg.train.__class__(**{**cfg.train.__dict__, "steps": args.steps})
    rates: dict[str, float] = {}
    for _ in range(args.repeats):
        model = make_model(cfg, device)
        stats = train_loop(model, mmcl_loss_fn(model, cfg.mmcl), images, tokens, train_cfg,
                           torch.Generator().manual_seed(1), method="mmcl", device=device,
                           progress=False, after_step=clamp_logit_scale(model, cfg.mmcl))
        rates["ours"] = max(rates.get("ours", 0.0), stats["samples_per_s"])
        rates["reference"] = max(rates.get("reference", 0.0), plain_loop(
            make_model(cfg, device), images, tokens, args.steps, bs, lr, infonce, device))
        rates["open_clip"] = max(rates.get("open_clip", 0.0), plain_loop(
            make_model(cfg, device), images, tokens, args.steps, bs, lr, oc_loss, device))
    print(f"semi-synthetic MMCL step, batch {bs}, {args.steps} steps, device {device}, "
          f"threads {args.threads}, best of {args.repeats}")
    for k, v in rates.items():
        print(f"  {k:<10} {v:10.0f} samples/s")
    print(f"ratio ours/reference = {rates['ours'] / rates['reference']:.3f}")
    print(f"ratio ours/open_clip = {rates['ours'] / rates['open_clip']:.3f}")
    train_cfg_noaug = train_cfg.__class__(**{**train_cfg.__dict__, "augment": False})
    model = make_model(cfg, device)
    stats = train_loop(model, mmcl_loss_fn(model, cfg.mmcl), images, tokens, train_cfg_noaug,
                       torch.Generator().manual_seed(1), method="mmcl", device=device, progress=False)
    print(f"  ours without augmentation {stats['samples_per_s']:10.0f} samples/s; "
          f"ratio to reference = {stats['samples_per_s'] / rates['reference']:.3f}")


if __name__ == "__main__":
    main()
