"""Zero-shot scoring at 1000 classes: mmclshift's path against open_clip's, same work in-process.

Both arms score the same preprocessed images (random 32x32 tensors, ``N_IMAGES`` of them, batches
of ``BATCH``) with the same randomly initialised ``mmcl-tiny`` CLIP model against the 1000
ImageNet class names and OpenCLIP's 7 ``simple`` templates, and count top-1/top-5 hits:

* ``open_clip`` -- ``open_clip.zero_shot_classifier.build_zero_shot_classifier`` (its default
  10 classes per text batch), then per batch ``100 * encode_image(x, normalize=True) @
  classifier`` and top-k, as ``open_clip_train.zero_shot.run`` does;
* ``ours`` -- a fresh :class:`mmclshift.evaluate.text_head.TextHeadCache` (the head is built in
  every repeat, as in open_clip's arm), :func:`group_scorer` and :func:`topk_correct`, the path
  :func:`mmclshift.evaluate.scoring.evaluate` takes after decoding images. Its default on a
  machine with 2+ cores tokenizes the 7,000 prompts in 2 forked processes beside the text tower
  (tokenizing, pure Python, is over half the work of this small model's head);
* ``ours, 1 process`` -- the same with ``tokenize_workers=0`` (tokenizing in a thread of the
  process), printed for comparison: the single-process cost of our path.

One warm-up run of each arm is excluded; then the arms alternate (which goes first flips every
repeat) so that load bursts hit both. Prints each arm's min and median seconds, the number of
images whose top-1 prediction differs between the arms (must be 0) and, last,
``ratio: <open_clip median / ours median>`` (higher is better). torch uses 1 thread: on 2 shared
cores, 2 threads make the small text-tower forwards several times slower.

    PYTHONPATH=src python benchmarks/zeroshot.py
"""

from __future__ import annotations

import os
import statistics
import time

import torch

from mmclshift.evaluate.openclip_log import quiet_open_clip
from mmclshift.evaluate.scoring import Scorer, group_scorer, topk_correct
from mmclshift.evaluate.testsets import EvalSet, imagenet_classes
from mmclshift.evaluate.text_head import TextHeadCache, load_templates
from mmclshift.models.clip_models import create_clip

N_IMAGES = 1024
BATCH = 256
REPEATS = 7
TEMPLATES = "simple"


def open_clip_arm(model, tokenizer, names, images, labels):
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    classifier = build_zero_shot_classifier(model, tokenizer, names, load_templates(TEMPLATES))
    preds, hits1, hits5 = [], 0, 0
    for i in range(0, len(images), BATCH):
        x, y = images[i:i + BATCH], labels[i:i + BATCH]
        logits = 100.0 * model.encode_image(x, normalize=True) @ classifier
        top = logits.topk(5, 1).indices
        hits1 += int((top[:, 0] == y).sum())
        hits5 += int((top == y[:, None]).any(1).sum())
        preds.append(top[:, 0])
    return torch.cat(preds), hits1, hits5


def ours_arm(model, tokenizer, names, images, labels, tokenize_workers=None):
    ev = EvalSet("id", "imagenet", [], [[c] for c in range(len(names))], names, names, None)
    scorer = Scorer("clip", model, "bench", tokenizer=tokenizer, templates=TEMPLATES,
                    cache=TextHeadCache(tokenize_workers))
    score, _ = group_scorer(scorer, ev)
    preds, hits1, hits5 = [], 0, 0
    for i in range(0, len(images), BATCH):
        glog = score(images[i:i + BATCH])
        c1, c5 = topk_correct(glog, labels[i:i + BATCH])
        hits1, hits5 = hits1 + c1, hits5 + c5
        preds.append(glog.argmax(1))
    return torch.cat(preds), hits1, hits5


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with quiet_open_clip():  # open_clip warns about random weights
        model, _, tokenizer = create_clip("mmcl-tiny")
    model.eval()
    _, names = imagenet_classes()
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(N_IMAGES, 3, 32, 32, generator=gen)
    labels = torch.randint(0, len(names), (N_IMAGES,), generator=gen)
    arms = {"open_clip": open_clip_arm, "ours": ours_arm,
            "ours, 1 process": lambda *a: ours_arm(*a, tokenize_workers=0)}
    times: dict[str, list[float]] = {a: [] for a in arms}
    differing = []
    with torch.no_grad():
        for fn in arms.values():  # warm-up, excluded
            fn(model, tokenizer, names, images, labels)
        for r in range(REPEATS):
            out = {}
            for a in (list(arms) if r % 2 == 0 else list(arms)[::-1]):
                t0 = time.perf_counter()
                out[a] = arms[a](model, tokenizer, names, images, labels)
                times[a].append(time.perf_counter() - t0)
            for ours in ("ours", "ours, 1 process"):
                differing.append(int((out[ours][0] != out["open_clip"][0]).sum()))
                if out[ours][1:] != out["open_clip"][1:]:
                    differing[-1] = max(differing[-1], 1)  # top-1/top-5 counts must agree too
    print(f"{len(names)} classes x {len(load_templates(TEMPLATES))} templates, {N_IMAGES} images "
          f"(batch {BATCH}), {REPEATS} interleaved repeats after 1 warm-up, torch threads 1")
    for a, ts in times.items():
        print(f"{a:>15}: min {min(ts):.3f} s, median {statistics.median(ts):.3f} s")
    print(f"ours, 1 process (tokenize_workers=0): ratio "
          f"{statistics.median(times['open_clip']) / statistics.median(times['ours, 1 process']):.3f}; "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"differing top-1 predictions: {max(differing)} of {N_IMAGES} (worst repeat)")
    print(f"ratio: {statistics.median(times['open_clip']) / statistics.median(times['ours']):.3f}")


if __name__ == "__main__":
    main()
