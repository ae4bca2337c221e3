"""One stacked training step with AdamW's default CPU kernels vs its fused kernel; evaluation cost.

The stack: ``--cells`` MMCL cells of configs/fig2_mnist.yaml's architecture (width-32 CNN on 28 x 28
images, 256-wide features, 128-d embeddings, bag-of-words text tower, CLIP loss, AdamW, batch
128) on the embedded digits, cells of ``--seeds`` seeds (the cells of a seed share their images
and minibatches, as in a grid). Both arms run :func:`mmclshift.train.stacked.train_stacked` on
the same cells from the same initial weights for ``--steps`` steps; they differ only in the
optimiser: ``default`` (``torch.optim.AdamW``'s CPU implementation, one chain of elementwise ops
per tensor) and ``fused`` (``fused=True``). Building the data and the models is outside the timers;
:func:`mmclshift.timing.interleave` excludes a warm-up run of each arm and rotates the arms over
``--repeats``; min and median CPU seconds of the process per step are printed (``time.process_time``: with one
thread this is the time on a core of its own; wall clock on shared cores measures the other
processes' load as much as the step).

Results: the arms' trained parameters are compared. In float32 they differ by rounding, which
AdamW turns into differences bounded by 2 lr per step (an update is lr * m / (sqrt(v) + eps),
at most about lr in size; rounding can at most change its sign), so the check is
``max |difference| <= 2 * lr * steps``; and a float64 run of 2 cells for 3 steps must agree to 1e-9.

The optimiser step alone (both arms on tensors of the stack's shapes, random gradients) shows
what the fused kernel saves per step.

Evaluation: the CPU seconds to classify 1,000 test images with one cell's zero-shot head (what a
learning-curve point costs per cell and split per 1,000 images).

The last line is ``ratio: <median over repeats of default CPU seconds / fused CPU seconds>``.

    PYTHONPATH=src python benchmarks/stack_optimizer.py [--cells 12] [--steps 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from mmclshift.config import replace
from mmclshift.data.digits import load_embedded_digits
from mmclshift.data.semisynthetic import build_splits, zero_shot_prompts
from mmclshift.evaluate.semisynthetic import predict_classes, zero_shot_head
from mmclshift.experiments import load_config
from mmclshift.experiments.semisynthetic import new_model
from mmclshift.timing import Stopwatch, column, interleave, load, ratios, summary
from mmclshift.train.stacked import StackedCell, stack_optimizer, train_stacked

FULL = "configs/fig2_mnist.yaml"


def build(cells: int, seeds: int, steps: int, dtype=torch.float32):
    cfg = load_config(FULL, [f"train.steps={steps}", "train.warmup_steps=0", "data.root=null"])
    digits = load_embedded_digits()
    out = []
    per_seed = max(1, cells // seeds)
    data = {}
    for i in range(cells):
        seed = min(i // per_seed, seeds - 1)
        pc = [1.0, 0.5, 0.0][i % 3]
        ps = [0.0, 0.5, 1.0][(i // 3) % 3]
        c = replace(cfg, seed=seed, **{"data.pi_core": pc, "data.pi_spu": ps})
        split = build_splits(digits, c.data, seed, ["ood"])
        data.setdefault(seed, split)  # the seed's images (equal for all its cells)
        out.append((c, split["train"].tokens, data[seed]["train"].images))
    return cfg, out, data


def arm(cfg, cells, fused: bool, dtype=torch.float32) -> tuple[Stopwatch, list[torch.nn.Module]]:
    stack = []
    for c, tokens, images in cells:
        m = new_model(c, "mmcl", torch.device("cpu")).to(dtype)
        stack.append(StackedCell(m, images, tokens, c.seed + 1))
    with Stopwatch() as sw:
        train_stacked(stack, "mmcl", cfg.train, mmcl=cfg.mmcl, progress=False, fused=fused)
    return sw, [s.model for s in stack]


def max_diff(a: list[torch.nn.Module], b: list[torch.nn.Module]) -> float:
    return max(float((p.detach() - q.detach()).abs().max()) for ma, mb in zip(a, b, strict=True)
               for p, q in zip(ma.parameters(), mb.parameters(), strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=12)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg, cells, data = build(args.cells, args.seeds, args.steps)
    print(f"{args.cells} cells of {FULL}'s architecture, {args.steps} steps per run, "
          f"{args.threads} thread(s), torch {torch.__version__}")
    models: dict[str, list[torch.nn.Module]] = {}

    def run(name: str, fused: bool):
        def one(r: int) -> dict[str, float]:
            sw, trained = arm(cfg, cells, fused)
            if r >= 0:
                models[name] = trained
            return {"cpu": sw.cpu / args.steps, "wall": sw.wall / args.steps}
        return one

    times = interleave({"default": run("default", False), "fused": run("fused", True)}, args.repeats)
    for name in times:
        print(summary(f"{name} CPU s/step", column(times[name], "cpu")))
    per = ratios(column(times["fused"], "cpu"), column(times["default"], "cpu"), higher_is_better=False)
    wall = ratios(column(times["fused"], "wall"), column(times["default"], "wall"), higher_is_better=False)
    print(f"wall-clock ratio: median {statistics.median(wall):.3f} (load {load():.2f})")
    diff = max_diff(models["default"], models["fused"])
    bound = 2 * cfg.train.lr * args.steps
    print(f"float32: largest parameter difference {diff:.2e} (bound 2 lr steps = {bound:.1e}): "
          f"{'ok' if diff <= bound else 'EXCEEDED'}")
    small = cfg, cells[:2]
    c64 = replace(small[0], **{"train.steps": 3})
    d64 = max_diff(arm(c64, small[1], False, torch.float64)[1], arm(c64, small[1], True, torch.float64)[1])
    print(f"float64, 2 cells, 3 steps: largest parameter difference {d64:.2e} (must be <= 1e-9): "
          f"{'ok' if d64 <= 1e-9 else 'EXCEEDED'}")
    # the optimiser step alone, on tensors of the stack's shapes (random gradients)
    shapes = [(len(cells), *q.shape) for q in models["fused"][0].parameters() if q.requires_grad]
    steps: dict[str, float] = {}
    for name, fused in (("default", False), ("fused", True)):
        params = [torch.randn(*sh, requires_grad=True) for sh in shapes]
        for q in params:
            q.grad = torch.randn_like(q)
        opt = stack_optimizer(params, cfg.train, fused=fused)
        opt.step()  # warm-up: creates the state
        with Stopwatch() as sw:
            for _ in range(3):
                opt.step()
        steps[name] = sw.cpu / 3
    print(f"optimiser step alone: default {steps['default']:.3f} CPU s, fused {steps['fused']:.3f} CPU s")
    # evaluation: one cell's zero-shot predictions on 1,000 OOD test images
    model = models["fused"][0]
    test = data[0]["ood"]
    images = test.images[:1000]
    with torch.no_grad():
        head = zero_shot_head(model, zero_shot_prompts(), torch.device("cpu"))
    predict_classes(model.image, images, torch.device("cpu"), head=head)  # warm-up
    evals = []
    for _ in range(args.repeats):
        with Stopwatch() as sw:
            predict_classes(model.image, images, torch.device("cpu"), head=head)
        evals.append(sw.cpu)
    print(f"eval: {statistics.median(evals):.3f} CPU s per 1,000 images per cell (median; min {min(evals):.3f})")
    print(f"ratio: {statistics.median(per):.3f}")


if __name__ == "__main__":
    main()
