"""A Figure 2 grid trained as one stacked model vs one cell at a time, in one process.

The grid: configs/fig2_smoke.yaml's architecture and optimisation (embedded digits, small CNN on
14x14 inputs, bag-of-words text tower, CLIP loss, AdamW, batch 128) over pi_core x pi_spu x seeds
= 3 x 3 x 3 = 27 MMCL cells. Both arms train the same 27 models from the same initial weights on
the same images, captions, minibatches and translations, for the same number of steps:

* ``one at a time`` -- :func:`mmclshift.train.images.train_loop`, cell after cell (what the grid
  did before stacking);
* ``stacked``       -- :func:`mmclshift.train.stacked.train_stacked`, all 27 cells at once.

Only training is timed (building the data and the models is done outside both timers); a short
warm-up of each arm is excluded; the arms alternate over ``--repeats``; min and median seconds
are printed. The models of the two arms are then compared: the largest parameter difference and
the number of the 27 x 1,000 OOD zero-shot test predictions that differ (float32; the stacked
kernels round differently, and AdamW turns rounding in near-zero gradients into small weight
differences). The last line is ``ratio: <median one-at-a-time seconds / median stacked seconds>``.

Before it, a **ceiling**: both arms run the same 27 x ``--steps`` forward and backward passes of
the two convolution layers (each with its max-pool and ReLU), and no stacking removes that work.
The benchmark times those passes alone, on the same shapes (a group's 128 inputs at the cell's
image size, weights that need gradients, inputs that do not), in two forms: per cell, as
:class:`~mmclshift.train.stacked.StackedSmallCNN` runs them, and batched over a seed group (one
convolution with the group's first-layer filters concatenated, then one grouped convolution).
``one-at-a-time seconds / the faster form's seconds`` is the largest ratio any stacked program
built on these kernels can reach, even if everything but the convolutions cost nothing.

    PYTHONPATH=src python benchmarks/grid.py [--steps 15] [--repeats 3] [--threads 1] [--seeds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import torch
import torch.nn.functional as F

from mmclshift.config import replace
from mmclshift.data.digits import load_embedded_digits
from mmclshift.data.semisynthetic import MAX_CAPTION_LEN, VOCAB, build_splits, zero_shot_prompts
from mmclshift.evaluate.semisynthetic import predict_classes, zero_shot_head
from mmclshift.experiments.semisynthetic import demo_config
from mmclshift.models.towers import TwoTowerModel, conv3x3_pool_relu
from mmclshift.train.images import clamp_logit_scale, mmcl_loss_fn, train_loop
from mmclshift.train.stacked import StackedCell, train_stacked

PIS = (0.0, 0.5, 1.0)


def build(cfg, seeds: list[int]):
    """Per cell: (seed, train split); one ood test split per seed."""
    digits = load_embedded_digits()
    cells, tests = [], {}
    for seed in seeds:
        for pc in PIS:
            for ps in PIS:
                data = build_splits(digits, replace(cfg.data, pi_core=pc, pi_spu=ps), seed, ["ood"])
                cells.append((seed, data["train"]))
                tests[seed] = data["ood"]
    # cells of a seed share their images (as a grid's runs do): one tensor per seed
    images = {seed: tr.images for seed, tr in reversed(cells)}
    return [(seed, dataclasses.replace(tr, images=images[seed])) for seed, tr in cells], tests


def model(cfg, seed: int) -> TwoTowerModel:
    torch.manual_seed(seed)
    return TwoTowerModel(cfg.model, len(VOCAB), MAX_CAPTION_LEN, init_temperature=cfg.mmcl.temperature,
                         learn_temperature=cfg.mmcl.learn_temperature)


def one_at_a_time(cfg, cells) -> tuple[float, list[TwoTowerModel]]:
    models = [model(cfg, seed) for seed, _ in cells]
    t = time.perf_counter()
    for m, (seed, tr) in zip(models, cells, strict=True):
        train_loop(m, mmcl_loss_fn(m, cfg.mmcl), tr.images, tr.tokens, cfg.train,
                   torch.Generator().manual_seed(seed + 1), method="mmcl", device=torch.device("cpu"),
                   progress=False, after_step=clamp_logit_scale(m, cfg.mmcl))
    return time.perf_counter() - t, models


def stacked(cfg, cells) -> tuple[float, list[TwoTowerModel]]:
    stack = [StackedCell(model(cfg, seed), tr.images, tr.tokens, seed + 1) for seed, tr in cells]
    t = time.perf_counter()
    train_stacked(stack, "mmcl", cfg.train, mmcl=cfg.mmcl, progress=False)
    return time.perf_counter() - t, [c.model for c in stack]


def convolutions(cfg, n_groups: int, per_group: int, steps: int, grouped: bool) -> float:
    """Seconds of ``steps`` forward and backward passes of every cell's two convolution layers
    (with pool and ReLU), per cell or batched over each group (see the module docstring)."""
    torch.manual_seed(0)
    side, w = cfg.model.image_size or 28, cfg.model.cnn_width
    xs = [torch.rand(cfg.train.batch_size, 3, side, side) for _ in range(n_groups)]
    n = n_groups * per_group
    w1 = (0.1 * torch.randn(n, w, 3, 3, 3)).requires_grad_()
    b1 = torch.zeros(n, w).requires_grad_()
    w2 = (0.1 * torch.randn(n, 2 * w, w, 3, 3)).requires_grad_()
    b2 = torch.zeros(n, 2 * w).requires_grad_()
    t = time.perf_counter()
    for _ in range(steps):
        outs = []
        for g, x in enumerate(xs):
            x = x.contiguous(memory_format=torch.channels_last)
            cells = slice(g * per_group, (g + 1) * per_group)
            if grouped:
                h = conv3x3_pool_relu(x, w1[cells].flatten(0, 1), b1[cells].flatten())
                outs.append(F.relu(F.max_pool2d(F.conv2d(h, w2[cells].flatten(0, 1), b2[cells].flatten(),
                                                         padding=1, groups=per_group), 2)))
            else:
                for c in range(g * per_group, (g + 1) * per_group):
                    outs.append(conv3x3_pool_relu(conv3x3_pool_relu(x, w1[c], b1[c]), w2[c], b2[c]))
        sum(o.sum() for o in outs).backward()
        for p in (w1, b1, w2, b2):
            p.grad = None
    return time.perf_counter() - t


def compare(a: list[TwoTowerModel], b: list[TwoTowerModel], cells, tests) -> tuple[float, int, int]:
    """(largest parameter difference, differing ood predictions, predictions compared)."""
    diff, differing, total = 0.0, 0, 0
    prompts = zero_shot_prompts()
    device = torch.device("cpu")
    for ma, mb, (seed, _) in zip(a, b, cells, strict=True):
        for pa, pb in zip(ma.parameters(), mb.parameters(), strict=True):
            diff = max(diff, float((pa - pb).detach().abs().max()))
        test = tests[seed]
        preds = [predict_classes(m.image, test.images, device, head=zero_shot_head(m, prompts, device)) for m in (ma, mb)]
        differing += int((preds[0] != preds[1]).sum())
        total += len(test)
    return diff, differing, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=15, help="training steps per cell (the smoke config: 300)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats of each arm, interleaved")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--seeds", type=int, default=3, help="seeds (cells = 9 x seeds)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = demo_config()
    cfg = replace(base, **{"train.steps": args.steps})
    cells, tests = build(cfg, list(range(args.seeds)))
    print(f"grid: {len(cells)} MMCL cells (pi_core x pi_spu = 3 x 3, {args.seeds} seeds), "
          f"{args.steps} steps each, batch {cfg.train.batch_size}, torch threads {args.threads}")
    warm = replace(cfg, **{"train.steps": 2})
    one_at_a_time(warm, cells)
    stacked(warm, cells)
    times: dict[str, list[float]] = {"one at a time": [], "stacked": []}
    models: dict[str, list[TwoTowerModel]] = {}
    for r in range(args.repeats):
        arms = [("one at a time", one_at_a_time), ("stacked", stacked)]
        for name, fn in (arms if r % 2 == 0 else arms[::-1]):
            seconds, models[name] = fn(cfg, cells)
            times[name].append(seconds)
            print(f"  repeat {r + 1}: {name:<13} {seconds:7.2f} s", flush=True)
    for name, ts in times.items():
        print(f"{name:<13} min {min(ts):7.2f} s  median {statistics.median(ts):7.2f} s  "
              f"({len(cells) * args.steps / statistics.median(ts):.0f} cell-steps/s)")
    per_group = len(cells) // args.seeds
    conv: dict[str, list[float]] = {"per cell": [], "grouped": []}
    convolutions(cfg, args.seeds, per_group, 2, False)
    convolutions(cfg, args.seeds, per_group, 2, True)  # warm-ups
    for r in range(args.repeats):
        for form in (("per cell", "grouped") if r % 2 == 0 else ("grouped", "per cell")):
            conv[form].append(convolutions(cfg, args.seeds, per_group, args.steps, form == "grouped"))
    for form, ts in conv.items():
        print(f"convolutions alone, {form:<8}: min {min(ts):6.2f} s  median {statistics.median(ts):6.2f} s")
    floor = min(statistics.median(ts) for ts in conv.values())
    print(f"ceiling: one at a time / convolutions alone (faster form) = "
          f"{statistics.median(times['one at a time']) / floor:.3f} (the most any stacking on these kernels "
          f"can reach); stacked spends {100 * floor / statistics.median(times['stacked']):.0f}% of its time "
          f"in them")
    diff, differing, total = compare(models["one at a time"], models["stacked"], cells, tests)
    print(f"load {os.getloadavg()[0]:.2f} (1-min) at the end")
    print(f"agreement: largest parameter difference {diff:.2e}; {differing} of {total} ood zero-shot "
          f"predictions differ")
    print(f"ratio min/min: {min(times['one at a time']) / min(times['stacked']):.3f}")
    print(f"ratio: {statistics.median(times['one at a time']) / statistics.median(times['stacked']):.3f}")


if __name__ == "__main__":
    main()
