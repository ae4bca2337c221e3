"""Zero-shot evaluation on ImageNet and its shifted variants (Section 6, Figure 3 axes).

Test sets are class folders on disk. Each protocol fixes which classes the head has and how the
folders map to them (the conventions of CLIP_benchmark, imagenet-testbed and wise-ft):

============== ============================================ =========================================
protocol       folders                                      head (classes scored)
============== ============================================ =========================================
imagenet       ``<wnid>/`` (ImageNet val in class folders)   all 1000, or ``subset`` (e.g. the 200
                                                            classes of -R/-A for their ID axis)
imagenet-v2    ``0/`` ... ``999/`` (class index)             all 1000
imagenet-sketch ``<wnid>/``                                 all 1000
imagenet-r     ``<wnid>/`` (200 folders)                    its 200 classes
imagenet-a     ``<wnid>/`` (200 folders)                    its 200 classes
objectnet      ``images/<objectnet folder>/`` + ``mappings/`` the 113 ObjectNet classes that map to
                                                            ImageNet; a class's logit is the max over
                                                            its ImageNet classes (wise-ft)
============== ============================================ =========================================

The 1000 ImageNet wnids and the 200-wnid lists of -R and -A ship in ``evaluate/classlists/``
(taken from CLIP_benchmark's builder); class names are OpenCLIP's ``IMAGENET_CLASSNAMES``. Both
can be overridden (``classes_file``: lines ``wnid<TAB>name`` in model-class order; ``subset``: a
file of wnids). ObjectNet's mapping is read from the ``mappings/`` folder of the user's ObjectNet
download (``folder_to_objectnet_label.json``, ``objectnet_to_imagenet_1k.json``,
``pytorch_to_imagenet_2012_id.json``, ``imagenet_to_label_2012_v2``), as CLIP_benchmark does.

A CLIP model is scored with a text head (class-name prompts x templates, averaged and normalised)
that :class:`TextHeadCache` builds once per (model, class names, templates) and reuses; an SL model
is scored with its own linear head restricted to the same classes. Results: one record per
(model, dataset) with top-1/top-5 accuracy, counts, and a warning when the folder's image count
differs from the dataset's known size.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mmclshift.data.image_text import IMAGE_EXTENSIONS
from mmclshift.data.loader import iter_image_batches
from mmclshift.errors import DataError, UserError

PROTOCOLS = ("imagenet", "imagenet-v2", "imagenet-sketch", "imagenet-r", "imagenet-a", "objectnet")

#: Known image counts (full sets): a folder with another count gets a warning.
KNOWN_SIZES: dict[str, int] = {
    "imagenet": 50000,
    "imagenet-v2": 10000,
    "imagenet-sketch": 50889,
    "imagenet-r": 30000,
    "imagenet-a": 7500,
    "objectnet": 18574,
}
#: ImageNet val restricted to 200 classes keeps 50 images per class.
SUBSET_VAL_SIZE = {"imagenet-r": 10000, "imagenet-a": 10000}


def _classlist(name: str) -> list[str]:
    text = resources.files("mmclshift.evaluate").joinpath(f"classlists/{name}").read_text("utf-8")
    return text.split()


def imagenet_classes() -> tuple[list[str], list[str]]:
    """(wnids, class names) of ImageNet-1k in the standard (sorted-wnid) order."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return _classlist("imagenet_wnids.txt"), list(IMAGENET_CLASSNAMES)


def read_classes_file(path: str | Path) -> tuple[list[str], list[str]]:
    """``wnid<TAB>name`` (or ``wnid name words``) per line -> (wnids, names)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"classes_file {path} not found")
    wnids, names = [], []
    for i, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t") if "\t" in line else line.split(None, 1)
        if len(parts) != 2:
            raise DataError(f"{path}:{i}: expected 'wnid<TAB>class name'")
        wnids.append(parts[0].strip())
        names.append(parts[1].strip())
    return wnids, names


def read_subset(spec: str, wnids: Sequence[str]) -> list[int]:
    """Class indices of a subset: ``imagenet-r``/``imagenet-a`` (shipped lists) or a wnid file."""
    if spec in ("imagenet-r", "imagenet-a"):
        subset = _classlist(f"{spec.replace('-', '_')}_wnids.txt")
        where = spec
    else:
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"subset {spec!r} is not imagenet-r, imagenet-a or an existing file")
        subset = path.read_text("utf-8").split()
        where = str(path)
    index = {w: i for i, w in enumerate(wnids)}
    missing = [w for w in subset if w not in index]
    if missing:
        raise DataError(f"{where}: wnid {missing[0]} is not in the class list")
    return sorted(index[w] for w in subset)


@dataclass
class EvalSet:
    """A resolved test set: images with labels into ``groups`` (each a list of class indices)."""

    name: str
    protocol: str
    samples: list[tuple[str, int]]
    groups: list[list[int]]
    group_names: list[str]
    class_names: list[str]
    expected_size: int | None
    excluded: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def head_classes(self) -> list[int]:
        return sorted({c for g in self.groups for c in g})


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS)


def _class_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        raise UserError(f"test set folder {root} not found")
    return sorted(p for p in root.iterdir() if p.is_dir())


def _objectnet_groups(root: Path, mappings: Path, wnids: Sequence[str]
                      ) -> tuple[dict[str, list[int]], dict[str, str]]:
    """ObjectNet folder -> ImageNet class indices, and folder -> ObjectNet class name."""
    try:
        folder_map = json.loads((mappings / "folder_to_objectnet_label.json").read_text("utf-8"))
        on_to_in = json.loads((mappings / "objectnet_to_imagenet_1k.json").read_text("utf-8"))
        pytorch_map = json.loads((mappings / "pytorch_to_imagenet_2012_id.json").read_text("utf-8"))
        label_lines = (mappings / "imagenet_to_label_2012_v2").read_text("utf-8").splitlines()
    except FileNotFoundError as exc:
        raise UserError(f"objectnet: mapping file {exc.filename} not found (set mappings_dir "
                        "to the mappings/ folder of the ObjectNet download)") from None
    # imagenet_to_label_2012_v2 line i names ImageNet-2012 id i; pytorch_to_imagenet maps the
    # torchvision class index to that id.
    id_to_pytorch = {int(v): int(k) for k, v in pytorch_map.items()}
    name_to_index = {line.strip(): id_to_pytorch[i] for i, line in enumerate(label_lines)
                     if i in id_to_pytorch}
    label_to_folder = {v: k for k, v in folder_map.items()}
    groups: dict[str, list[int]] = {}
    names: dict[str, str] = {}
    for on_name, in_names in on_to_in.items():
        folder = label_to_folder.get(on_name)
        if folder is None:
            continue
        idx = sorted({name_to_index[n] for n in in_names.split("; ") if n in name_to_index})
        if idx:
            groups[folder] = idx
            names[folder] = on_name.lower()
    del wnids
    return groups, names


def resolve_eval_set(name: str, root: str | Path, protocol: str, *, subset: str | None = None,
                     classes_file: str | None = None, mappings_dir: str | None = None,
                     expected_size: int | None = None) -> EvalSet:
    """Index a class-folder test set under ``protocol`` (see the module table).

    A class folder that is not a known class is a one-line :class:`DataError`; folders of known
    classes outside the head (e.g. ImageNet val with a 200-class ``subset``) are excluded and
    counted. ``expected_size`` overrides the known size used for the count warning.
    """
    if protocol not in PROTOCOLS:
        raise UserError(f"eval set {name!r}: unknown protocol {protocol!r} ({', '.join(PROTOCOLS)})")
    root = Path(root)
    wnids, class_names = read_classes_file(classes_file) if classes_file else imagenet_classes()
    index = {w: i for i, w in enumerate(wnids)}
    if subset is None and protocol in ("imagenet-r", "imagenet-a"):
        subset = protocol
    head = set(read_subset(subset, wnids)) if subset else set(range(len(wnids)))
    samples: list[tuple[str, int]] = []
    groups: list[list[int]] = []
    group_names: list[str] = []
    excluded = 0

    if protocol == "objectnet":
        img_root = root / "images" if (root / "images").is_dir() else root
        folder_groups, folder_names = _objectnet_groups(
            root, Path(mappings_dir) if mappings_dir else root / "mappings", wnids)
        for folder in _class_folders(img_root):
            if folder.name not in folder_groups:
                excluded += len(_images_in(folder))  # ObjectNet classes with no ImageNet match
                continue
            members = [c for c in folder_groups[folder.name] if c in head]
            if not members:
                excluded += len(_images_in(folder))
                continue
            gi = len(groups)
            groups.append(members)
            group_names.append(folder_names[folder.name])
            samples.extend((str(p), gi) for p in _images_in(folder))
    else:
        for folder in _class_folders(root):
            key = folder.name
            if protocol == "imagenet-v2":
                if not key.isdigit() or int(key) >= len(wnids):
                    raise DataError(f"{folder}: ImageNet-V2 class folders are 0..{len(wnids) - 1}")
                cls = int(key)
            else:
                if key not in index:
                    raise DataError(f"{folder}: unknown class folder {key!r} (not a wnid of the "
                                    f"{len(wnids)}-class list{'; set classes_file' if not classes_file else ''})")
                cls = index[key]
            if cls not in head:
                excluded += len(_images_in(folder))
                continue
            gi = len(groups)
            groups.append([cls])
            group_names.append(class_names[cls])
            samples.extend((str(p), gi) for p in _images_in(folder))
    if not samples:
        raise DataError(f"{root}: no images found for test set {name!r}")
    if expected_size is None:
        if subset and protocol == "imagenet" and subset in SUBSET_VAL_SIZE:
            expected_size = SUBSET_VAL_SIZE[subset]
        elif not subset or subset == protocol:
            expected_size = KNOWN_SIZES.get(protocol)
    ev = EvalSet(name, protocol, samples, groups, group_names, class_names, expected_size, excluded)
    if expected_size is not None and len(samples) != expected_size:
        msg = (f"test set {name!r} ({protocol}) at {root}: {len(samples)} images, the full set "
               f"has {expected_size}; numbers will not be comparable to published ones")
        ev.warnings.append(msg)
        warnings.warn(msg, stacklevel=2)
    return ev


# --------------------------------------------------------------------------- heads

OPENAI_TEMPLATES = "openai"
SIMPLE_TEMPLATES = "simple"


def load_templates(spec: str) -> list[Callable[[str], str]]:
    """``openai`` (the 80 CLIP templates), ``simple`` (OpenCLIP's 7) or a file of lines with
    ``{}`` standing for the class name."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    if spec == OPENAI_TEMPLATES:
        return list(OPENAI_IMAGENET_TEMPLATES)
    if spec == SIMPLE_TEMPLATES:
        return list(SIMPLE_IMAGENET_TEMPLATES)
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"templates {spec!r} is not 'openai', 'simple' or an existing file")
    lines = [line.strip() for line in path.read_text("utf-8").splitlines() if line.strip()]
    bad = [t for t in lines if "{}" not in t]
    if bad or not lines:
        raise DataError(f"{path}: every template line needs '{{}}' for the class name")
    return [lambda c, t=t: t.replace("{}", c) for t in lines]


class TextHeadCache:
    """Zero-shot text heads, built once per (model key, class name, template set) and reused.

    Rows are cached per class, so the 200-class head of -R and the 1000-class head of ImageNet
    share the 200 rows they have in common.
    """

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str, str], torch.Tensor] = {}
        self.built = 0  # number of class rows computed (for tests)

    @torch.no_grad()
    def head(self, model: Any, tokenizer: Callable[[list[str]], torch.Tensor], model_key: str,
             class_names: Sequence[str], templates: str, device: torch.device,
             batch_classes: int = 64) -> torch.Tensor:
        """(n_classes, d) normalised text embeddings (mean over templates, renormalised)."""
        fns = load_templates(templates)
        todo = [c for c in dict.fromkeys(class_names) if (model_key, templates, c) not in self._rows]
        for i in range(0, len(todo), batch_classes):
            chunk = todo[i:i + batch_classes]
            texts = [fn(c) for c in chunk for fn in fns]
            emb = model.encode_text(tokenizer(texts).to(device))
            emb = F.normalize(emb.float(), dim=-1).reshape(len(chunk), len(fns), -1).mean(1)
            for c, row in zip(chunk, F.normalize(emb, dim=-1), strict=True):
                self._rows[(model_key, templates, c)] = row
            self.built += len(chunk)
        return torch.stack([self._rows[(model_key, templates, c)] for c in class_names])


# --------------------------------------------------------------------------- scoring


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


@torch.no_grad()
def evaluate(scorer: Scorer, ev: EvalSet, preprocess: Callable[[Any], torch.Tensor], *,
             device: torch.device | str = "cpu", batch_size: int = 256, progress: bool = False,
             workers: int = 0, prefetch: int = 2) -> dict[str, Any]:
    """Top-1/top-5 accuracy of ``scorer`` on ``ev``; unreadable images are skipped and counted.
    Images are decoded in ``workers`` DataLoader processes (0: in this one)."""
    device = torch.device(device)
    head_classes = ev.head_classes
    pos = {c: i for i, c in enumerate(head_classes)}
    logits_fn, missing = scorer.logits_fn([ev.class_names[c] for c in head_classes], device)
    # group g's logit = max over its member classes (one member except for ObjectNet)
    member = torch.full((len(ev.groups), len(head_classes)), float("-inf"), device=device)
    for g, members in enumerate(ev.groups):
        for c in members:
            member[g, pos[c]] = 0.0
    was_training = getattr(scorer.model, "training", False)
    if hasattr(scorer.model, "eval"):
        scorer.model.eval()
    correct1 = correct5 = n = 0
    skipped: Counter = Counter()
    k = min(5, len(ev.groups))
    it: Any = iter_image_batches(ev.samples, preprocess, batch_size, workers=workers,
                                 prefetch=prefetch, pin_memory=device.type == "cuda")
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"eval {ev.name}", unit="batch",
                  total=-(-len(ev.samples) // batch_size))
    for decoded in it:
        skipped.update(decoded.skipped)
        labels = decoded.labels
        if not labels:
            continue
        logits = logits_fn(decoded.images.to(device, non_blocking=True))  # (b, head)
        glog = (logits[:, None, :] + member[None]).amax(-1)  # (b, groups)
        y = torch.tensor(labels, device=device)
        topk = glog.topk(k, dim=1).indices
        correct1 += int((topk[:, 0] == y).sum())
        correct5 += int((topk == y[:, None]).any(1).sum())
        n += len(labels)
    if was_training:
        scorer.model.train()
    return {
        "event": "eval", "split": ev.name, "protocol": ev.protocol,
        "accuracy": correct1 / n if n else float("nan"), "top5": correct5 / n if n else float("nan"),
        "n": n, "correct": correct1, "correct_top5": correct5, "n_classes": len(ev.groups),
        "expected_n": ev.expected_size, "excluded": ev.excluded, "skipped": dict(skipped),
        "classes_missing_from_model": missing, "warnings": list(ev.warnings), "theory": None,
    }
