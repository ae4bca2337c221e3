"""Zero-shot scoring: a model's logits over a test set's head, grouped, and top-1/top-5 accuracy.

A CLIP model is scored with its text head (:mod:`mmclshift.evaluate.text_head`); an SL model with
its own linear head restricted to the same classes. Results: one record per (model, test set)
with top-1/top-5 accuracy, counts, and the test set's warnings.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from mmclshift.data.loader import iter_image_batches
from mmclshift.errors import DataError
from mmclshift.evaluate.testsets import EvalSet, with_border_crop
from mmclshift.evaluate.text_head import SIMPLE_TEMPLATES, TextHeadCache


def sl_row(vocab: Any, class_name: str) -> int:
    """Index of the SL head row that scores test class ``class_name`` (-1: none)."""
    if vocab is None:
        return -1
    if class_name in vocab.names:
        return vocab.names.index(class_name)
    found = vocab.classes_in(class_name)
    return found[0] if found else -1


@dataclass
class Scorer:
    """How to turn images into logits over a list of class indices.

    ``kind="clip"``: cosine similarity with the text head; ``kind="sl"``: the SL model's linear
    head, the row of each test class picked from the model's training vocabulary ``vocab`` (a
    :class:`~mmclshift.data.captions.ClassVocab`): the class of the same name, else the first
    vocabulary class the test class's name mentions ("coffee mug" -> ``cup`` via its synonyms);
    test classes the vocabulary lacks score -inf and are counted.
    """

    kind: str
    model: Any
    model_key: str
    tokenizer: Callable[[list[str]], torch.Tensor] | None = None
    vocab: Any = None
    templates: str = SIMPLE_TEMPLATES
    cache: TextHeadCache = field(default_factory=TextHeadCache)

    @torch.no_grad()
    def logits_fn(self, class_names: Sequence[str], device: torch.device
                  ) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
        """(images -> logits over ``class_names``, number of classes the model lacks)."""
        if self.kind == "clip":
            head = self.cache.head(self.model, self.tokenizer, self.model_key, class_names,
                                   self.templates, device)

            def f(images: torch.Tensor) -> torch.Tensor:
                feats = F.normalize(self.model.encode_image(images).float(), dim=-1)
                return feats @ head.T

            return f, 0
        rows = [sl_row(self.vocab, c) for c in class_names]
        missing = sum(r < 0 for r in rows)
        idx = torch.tensor([max(r, 0) for r in rows], device=device)
        lacks = torch.tensor([r < 0 for r in rows], device=device)

        def g(images: torch.Tensor) -> torch.Tensor:
            _, logits = self.model(images)
            return logits.float()[:, idx].masked_fill(lacks, float("-inf"))

        return g, missing


class GroupMax:
    """Group logits: group ``g``'s logit is the max over its member classes' logits.

    Every group with one member (all test sets but ObjectNet's ``imagenet-max`` head) is a column
    pick; otherwise the (group, class) pairs are gathered and reduced with ``scatter_reduce``, so
    memory is (batch, pairs) rather than (batch, groups, classes).
    """

    def __init__(self, groups: Sequence[Sequence[int]], head_classes: Sequence[int],
                 device: torch.device | str = "cpu") -> None:
        pos = {c: i for i, c in enumerate(head_classes)}
        pairs = [(g, pos[c]) for g, members in enumerate(groups) for c in members]
        self.n_groups = len(groups)
        self.identity = all(len(m) == 1 for m in groups) and [c for _, c in pairs] == list(
            range(len(head_classes)))
        self.single = all(len(m) == 1 for m in groups)
        self.cls = torch.tensor([c for _, c in pairs], dtype=torch.long, device=device)
        self.grp = torch.tensor([g for g, _ in pairs], dtype=torch.long, device=device)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """(batch, head classes) -> (batch, groups)."""
        if self.identity:
            return logits
        picked = logits.index_select(1, self.cls)
        if self.single:
            return picked
        out = logits.new_full((logits.shape[0], self.n_groups), float("-inf"))
        return out.scatter_reduce_(1, self.grp.expand(logits.shape[0], -1), picked, "amax")


def group_scorer(scorer: Scorer, ev: EvalSet, device: torch.device | str = "cpu"
                 ) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    """(preprocessed images -> (batch, groups) logits of ``ev``'s head, classes the model lacks)."""
    device = torch.device(device)
    head_classes = ev.head_classes
    logits_fn, missing = scorer.logits_fn([ev.class_names[c] for c in head_classes], device)
    group_max = GroupMax(ev.groups, head_classes, device)
    return (lambda images: group_max(logits_fn(images))), missing


def topk_hits(glog: torch.Tensor, labels: torch.Tensor, k: int = 5
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-1 hit, top-k hit) per image: boolean tensors of group logits against labels."""
    topk = glog.topk(min(k, glog.shape[1]), dim=1).indices
    return topk[:, 0] == labels, (topk == labels[:, None]).any(1)


def topk_correct(glog: torch.Tensor, labels: torch.Tensor, k: int = 5) -> tuple[int, int]:
    """(top-1 correct, top-k correct) of group logits against labels."""
    hit1, hitk = topk_hits(glog, labels, k)
    return int(hit1.sum()), int(hitk.sum())


def no_images_scored(ev: EvalSet, skipped: Counter) -> str:
    """The message for a test set of which no image could be scored: its name and why."""
    why = ", ".join(f"{count} {reason.replace('_', ' ')}" for reason, count in sorted(skipped.items()))
    first = ev.samples[0][0] if ev.samples else "(no images)"
    return (f"test set {ev.name!r} ({ev.protocol}): none of its {len(ev.samples)} images could "
            f"be read ({why or 'none decoded'}), e.g. {first}")


@torch.no_grad()
def evaluate(scorer: Scorer, ev: EvalSet, preprocess: Callable[[Any], torch.Tensor], *,
             device: torch.device | str = "cpu", batch_size: int = 256, progress: bool = False,
             workers: int = 0, prefetch: int = 2) -> dict[str, Any]:
    """Top-1/top-5 accuracy of ``scorer`` on ``ev``; unreadable images are skipped and counted.
    Images are decoded in ``workers`` DataLoader processes (0: in this one). A test set none of
    whose images can be read is a one-line :class:`DataError`, not an accuracy of NaN.

    ``mean_per_class_recall``: the mean over the classes with test images of each class's top-1
    recall (CLIP_benchmark's metric of that name, sklearn's ``balanced_accuracy_score``)."""
    device = torch.device(device)
    score, missing = group_scorer(scorer, ev, device)
    was_training = getattr(scorer.model, "training", False)
    if hasattr(scorer.model, "eval"):
        scorer.model.eval()
    correct1 = correct5 = n = 0
    class_n = torch.zeros(len(ev.groups), dtype=torch.long)
    class_hit = torch.zeros(len(ev.groups), dtype=torch.long)
    skipped: Counter = Counter()
    it: Any = iter_image_batches(ev.samples, with_border_crop(preprocess, ev.border), batch_size,
                                 workers=workers, prefetch=prefetch,
                                 pin_memory=device.type == "cuda")
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"eval {ev.name}", unit="batch",
                  total=-(-len(ev.samples) // batch_size))
    for decoded in it:
        skipped.update(decoded.skipped)
        labels = decoded.labels
        if not labels:
            continue
        glog = score(decoded.images.to(device, non_blocking=True))  # (b, groups)
        target = torch.tensor(labels, device=device)
        hit1, hit5 = topk_hits(glog, target)
        correct1 += int(hit1.sum())
        correct5 += int(hit5.sum())
        n += len(labels)
        class_n += torch.bincount(target.cpu(), minlength=len(ev.groups))
        class_hit += torch.bincount(target[hit1].cpu(), minlength=len(ev.groups))
    if was_training:
        scorer.model.train()
    if not n:
        raise DataError(no_images_scored(ev, skipped))
    return {
        "event": "eval", "split": ev.name, "protocol": ev.protocol, "head": ev.head,
        "border": ev.border,
        "accuracy": correct1 / n, "top5": correct5 / n,
        "mean_per_class_recall": float((class_hit[class_n > 0].double() / class_n[class_n > 0]).mean()),
        "n": n, "correct": correct1, "correct_top5": correct5, "n_classes": len(ev.groups),
        "expected_n": ev.expected_size, "excluded": ev.excluded, "skipped": dict(skipped),
        "classes_missing_from_model": missing, "warnings": list(ev.warnings), "theory": None,
    }

