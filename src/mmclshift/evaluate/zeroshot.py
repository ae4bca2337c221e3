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
                                                            ImageNet; ``objectnet_head`` picks the rule:
                                                            ``imagenet-max`` (default; imagenet-testbed,
                                                            wise-ft): a class's logit is the max over
                                                            its ImageNet classes (125 in all);
                                                            ``objectnet-names`` (CLIP_benchmark): a
                                                            113-way head of ObjectNet's own names
============== ============================================ =========================================

ObjectNet images lose a 2-pixel border on each side before preprocessing (their red frame;
imagenet-testbed's ``crop_image`` and wise-ft's ``crop``); ``border`` overrides it (0 = no crop, as
CLIP_benchmark). ImageNet val restricted to ObjectNet's classes and collapsed to its 113 classes
(imagenet-testbed's ``val-on-objectnet-classes``, 6,250 images) is protocol ``imagenet`` with
``subset: objectnet``: ObjectNet's in-distribution axis.

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
import multiprocessing
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mmclshift.data.image_text import IMAGE_EXTENSIONS
from mmclshift.data.loader import iter_image_batches, ordered_map
from mmclshift.errors import DataError, UserError

PROTOCOLS = ("imagenet", "imagenet-v2", "imagenet-sketch", "imagenet-r", "imagenet-a", "objectnet")
#: ObjectNet head rules: max over the ImageNet classes (imagenet-testbed, wise-ft) or a head of
#: ObjectNet's own class names (CLIP_benchmark).
OBJECTNET_HEADS = ("imagenet-max", "objectnet-names")
#: Pixels removed from each side of an ObjectNet image (its red frame), as imagenet-testbed and
#: wise-ft do before preprocessing.
OBJECTNET_BORDER = 2

#: Known image counts (full sets): a folder with another count gets a warning.
KNOWN_SIZES: dict[str, int] = {
    "imagenet": 50000,
    "imagenet-v2": 10000,
    "imagenet-sketch": 50889,
    "imagenet-r": 30000,
    "imagenet-a": 7500,
    "objectnet": 18574,
}
#: Other published counts of the same test set that are not warned about: imagenet-testbed
#: registers ``objectnet-1.0-beta`` (its ``images_jpg_redacted`` folder) with 18,514 images.
OTHER_KNOWN_SIZES: dict[str, tuple[int, ...]] = {"objectnet": (18514,)}
#: ImageNet val restricted to 200 classes keeps 50 images per class; restricted to the 125
#: ImageNet classes of ObjectNet's 113 classes, 6,250 (imagenet-testbed's val-on-objectnet-classes).
SUBSET_VAL_SIZE = {"imagenet-r": 10000, "imagenet-a": 10000, "objectnet": 6250}


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
            raise UserError(f"subset {spec!r} is not imagenet-r, imagenet-a, objectnet "
                            "(protocol imagenet only) or an existing file")
        subset = path.read_text("utf-8").split()
        where = str(path)
    index = {w: i for i, w in enumerate(wnids)}
    missing = [w for w in subset if w not in index]
    if missing:
        raise DataError(f"{where}: wnid {missing[0]} is not in the class list")
    return sorted(index[w] for w in subset)


@dataclass
class EvalSet:
    """A resolved test set: images with labels into ``groups`` (each a list of class indices).

    ``head`` names the scoring rule (``imagenet``: one ImageNet class per group; ObjectNet's
    ``imagenet-max`` or ``objectnet-names``); ``border`` pixels are cut from each side of every
    image before preprocessing (:meth:`load`).
    """

    name: str
    protocol: str
    samples: list[tuple[str, int]]
    groups: list[list[int]]
    group_names: list[str]
    class_names: list[str]
    expected_size: int | None
    excluded: int = 0
    warnings: list[str] = field(default_factory=list)
    head: str = "imagenet"
    border: int = 0

    @property
    def head_classes(self) -> list[int]:
        return sorted({c for g in self.groups for c in g})


class BorderCrop:
    """Cut ``border`` pixels from each side of a PIL image (ObjectNet's red frame)."""

    def __init__(self, border: int) -> None:
        self.border = border

    def __call__(self, image: Any) -> Any:
        from PIL import ImageOps

        return ImageOps.crop(image, border=self.border)


def with_border_crop(preprocess: Callable[[Any], Any], border: int) -> Callable[[Any], Any]:
    """``preprocess`` preceded by :class:`BorderCrop` (a flat ``Compose``, so the loader can still
    split off its to-tensor/normalise steps); ``preprocess`` itself when ``border`` is 0."""
    if not border:
        return preprocess
    from torchvision import transforms as T

    steps = preprocess.transforms if isinstance(preprocess, T.Compose) else [preprocess]
    return T.Compose([BorderCrop(border), *steps])


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS)


def _class_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        raise UserError(f"test set folder {root} not found")
    return sorted(p for p in root.iterdir() if p.is_dir())


@dataclass
class ObjectNetMapping:
    """ObjectNet's classes that map to ImageNet, in sorted folder order (imagenet-testbed's order).

    ``members[i]``: ImageNet class indices of ObjectNet class ``folders[i]``; ``names[i]``: its
    ObjectNet label, lowercased (the names CLIP_benchmark's head uses).
    """

    folders: list[str]
    names: list[str]
    members: list[list[int]]


def _read_mapping_file(path: Path) -> Any:
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise UserError(f"objectnet: mapping file {path} not found (set mappings_dir to the "
                        "mappings/ folder of the ObjectNet download)") from None
    if path.suffix != ".json":
        return text.splitlines()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None


def read_objectnet_mapping(mappings: str | Path) -> ObjectNetMapping:
    """Read the ``mappings/`` folder of an ObjectNet download (as imagenet-testbed and wise-ft).

    Every ObjectNet class of ``objectnet_to_imagenet_1k.json`` must have a folder in
    ``folder_to_objectnet_label.json`` and every ImageNet name must be a line of
    ``imagenet_to_label_2012_v2`` whose id ``pytorch_to_imagenet_2012_id.json`` maps to a class
    index; a name that does not match is a one-line :class:`DataError` naming the file and class.
    """
    mappings = Path(mappings)
    folder_file = mappings / "folder_to_objectnet_label.json"
    on_file = mappings / "objectnet_to_imagenet_1k.json"
    folder_map = _read_mapping_file(folder_file)
    on_to_in = _read_mapping_file(on_file)
    pytorch_map = _read_mapping_file(mappings / "pytorch_to_imagenet_2012_id.json")
    label_lines = _read_mapping_file(mappings / "imagenet_to_label_2012_v2")
    # imagenet_to_label_2012_v2 line i names ImageNet-2012 id i; pytorch_to_imagenet maps the
    # torchvision class index to that id.
    id_to_pytorch = {int(v): int(k) for k, v in pytorch_map.items()}
    name_to_index = {line.strip(): id_to_pytorch[i] for i, line in enumerate(label_lines)
                     if i in id_to_pytorch}
    label_to_folder = {v: k for k, v in folder_map.items()}
    by_folder: dict[str, tuple[str, list[int]]] = {}
    for on_name, in_names in on_to_in.items():
        folder = label_to_folder.get(on_name)
        if folder is None:
            raise DataError(f"{on_file}: ObjectNet class {on_name!r} has no folder in {folder_file.name}")
        idx = []
        for n in in_names.split("; "):
            if n not in name_to_index:
                raise DataError(f"{on_file}: ImageNet class {n!r} (of ObjectNet class {on_name!r}) "
                                "is not a line of imagenet_to_label_2012_v2 mapped by "
                                "pytorch_to_imagenet_2012_id.json")
            idx.append(name_to_index[n])
        by_folder[folder] = (on_name.lower(), sorted(set(idx)))
    folders = sorted(by_folder)
    return ObjectNetMapping(folders, [by_folder[f][0] for f in folders],
                            [by_folder[f][1] for f in folders])


def _objectnet_head(mapping: ObjectNetMapping, head: set[int], rule: str, class_names: list[str]
                    ) -> tuple[list[list[int]], list[str], list[str], dict[str, int]]:
    """(groups, group names, class names, folder -> group) of an ObjectNet head under ``rule``."""
    groups: list[list[int]] = []
    names: list[str] = []
    folder_group: dict[str, int] = {}
    for folder, name, members in zip(mapping.folders, mapping.names, mapping.members, strict=True):
        kept = [c for c in members if c in head]
        if not kept:
            continue
        folder_group[folder] = len(groups)
        groups.append(kept)
        names.append(name)
    if rule == "objectnet-names":  # one class per ObjectNet name
        return [[g] for g in range(len(groups))], names, list(names), folder_group
    return groups, names, class_names, folder_group


def _expected_size(protocol: str, subset: str | None) -> int | None:
    if subset and protocol == "imagenet" and subset in SUBSET_VAL_SIZE:
        return SUBSET_VAL_SIZE[subset]
    if not subset or subset == protocol:
        return KNOWN_SIZES.get(protocol)
    return None


def resolve_eval_set(name: str, root: str | Path, protocol: str, *, subset: str | None = None,
                     classes_file: str | None = None, mappings_dir: str | None = None,
                     expected_size: int | None = None, objectnet_head: str = "imagenet-max",
                     border: int | None = None) -> EvalSet:
    """Index a class-folder test set under ``protocol`` (see the module table).

    A class folder that is not a known class is a one-line :class:`DataError`; folders of known
    classes outside the head (e.g. ImageNet val with a 200-class ``subset``) are excluded and
    counted. ``expected_size`` overrides the known size used for the count warning.
    ``subset="objectnet"`` (protocol ``imagenet``) keeps the ImageNet classes of ObjectNet's
    classes and labels each image with its ObjectNet class (read from ``mappings_dir``);
    ``objectnet_head`` picks the ObjectNet head rule (:data:`OBJECTNET_HEADS`) for both.
    ``border``: pixels cut from each side of every image (default 2 for ObjectNet, else 0).
    """
    if protocol not in PROTOCOLS:
        raise UserError(f"eval set {name!r}: unknown protocol {protocol!r} ({', '.join(PROTOCOLS)})")
    if objectnet_head not in OBJECTNET_HEADS:
        raise UserError(f"eval set {name!r}: unknown objectnet_head {objectnet_head!r} "
                        f"({', '.join(OBJECTNET_HEADS)})")
    if border is not None and border < 0:
        raise UserError(f"eval set {name!r}: border must be >= 0, got {border}")
    root = Path(root)
    wnids, class_names = read_classes_file(classes_file) if classes_file else imagenet_classes()
    index = {w: i for i, w in enumerate(wnids)}
    if subset is None and protocol in ("imagenet-r", "imagenet-a"):
        subset = protocol
    objectnet_subset = subset == "objectnet" and protocol == "imagenet"
    head = set(read_subset(subset, wnids)) if subset and not objectnet_subset else set(range(len(wnids)))
    samples: list[tuple[str, int]] = []
    groups: list[list[int]] = []
    group_names: list[str] = []
    excluded = 0
    head_rule = "imagenet"
    if protocol == "objectnet" or objectnet_subset:
        default_maps = root / "mappings" if protocol == "objectnet" else None
        if mappings_dir is None and default_maps is None:
            raise UserError(f"eval set {name!r}: subset 'objectnet' needs mappings_dir (the "
                            "mappings/ folder of the ObjectNet download)")
        mapping = read_objectnet_mapping(Path(mappings_dir) if mappings_dir else default_maps)
        groups, group_names, class_names, folder_group = _objectnet_head(
            mapping, head, objectnet_head, class_names)
        head_rule = objectnet_head
    if protocol == "objectnet":
        img_root = root / "images" if (root / "images").is_dir() else root
        for folder in _class_folders(img_root):
            if folder.name not in folder_group:  # ObjectNet classes with no ImageNet match
                excluded += len(_images_in(folder))
                continue
            samples.extend((str(p), folder_group[folder.name]) for p in _images_in(folder))
    else:
        # ImageNet class -> group: itself, or (subset objectnet) its ObjectNet class
        class_group: dict[int, int] = {}
        if objectnet_subset:
            for folder, members in zip(mapping.folders, mapping.members, strict=True):
                for c in members if folder in folder_group else ():
                    if c in class_group:
                        raise DataError(f"{mappings_dir}: ImageNet class {class_names[c]!r} maps "
                                        "to two ObjectNet classes; its images have no single label")
                    class_group[c] = folder_group[folder]
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
            if objectnet_subset:
                if cls not in class_group:
                    excluded += len(_images_in(folder))
                    continue
                gi = class_group[cls]
            else:
                if cls not in head:
                    excluded += len(_images_in(folder))
                    continue
                gi = len(groups)
                groups.append([cls])
                group_names.append(class_names[cls])
            samples.extend((str(p), gi) for p in _images_in(folder))
    if not samples:
        raise DataError(f"{root}: no images found for test set {name!r}")
    known: tuple[int, ...] = (expected_size,) if expected_size is not None else ()
    if expected_size is None:
        expected_size = _expected_size(protocol, subset)
        if expected_size is not None:
            known = (expected_size, *OTHER_KNOWN_SIZES.get(protocol, ()))
    if border is None:
        border = OBJECTNET_BORDER if protocol == "objectnet" else 0
    ev = EvalSet(name, protocol, samples, groups, group_names, class_names, expected_size, excluded,
                 head=head_rule, border=border)
    if known and len(samples) not in known:
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


#: Texts per text-tower forward when building a zero-shot head.
TEXT_BATCH = 512
#: Below this many texts a head is tokenized in the calling process (a worker is not worth it).
TOKENIZE_IN_WORKERS_FROM = 2048


def tokenized_chunks(tokenizer: Callable[[list[str]], torch.Tensor], chunks: Sequence[list[str]],
                     workers: int) -> Iterator[torch.Tensor]:
    """The token tensors of ``chunks`` (lists of texts), in order, tokenized ahead of use.

    With ``workers`` > 0 and a ``fork`` start method, the chunks are tokenized in that many forked
    DataLoader workers (:func:`mmclshift.data.loader.ordered_map`; the tokenizer is inherited, not
    pickled), so tokenizing -- pure Python, most of the work of a small text tower's head -- runs
    beside the text-tower forwards on other cores instead of contending for the interpreter lock.
    Otherwise the next chunk is tokenized in a background thread while the caller encodes the
    current one. The tokens are the same either way.
    """
    if not chunks:
        return
    if workers > 0 and len(chunks) > 1 and "fork" in multiprocessing.get_all_start_methods():
        yield from ordered_map(tokenizer, chunks, workers=min(workers, len(chunks)))
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(tokenizer, chunks[0])
        for i in range(len(chunks)):
            tokens = pending.result()
            if i + 1 < len(chunks):
                pending = pool.submit(tokenizer, chunks[i + 1])
            yield tokens


def default_tokenize_workers() -> int:
    """Tokenizer processes for a large head: 2 on a machine with 2 or more cores, else none
    (measured on 2 cores: 2 tokenizer processes beside the text tower beat 1; benchmarks/zeroshot.py)."""
    return 2 if (os.cpu_count() or 1) >= 2 else 0


class TextHeadCache:
    """Zero-shot text heads, built once per (model key, class name, template set) and reused.

    Rows are cached per class, so the 200-class head of -R and the 1000-class head of ImageNet
    share the 200 rows they have in common. ``tokenize_workers`` processes tokenize a large head
    (at least :data:`TOKENIZE_IN_WORKERS_FROM` texts) beside the text tower (None:
    :func:`default_tokenize_workers`; 0: a background thread, as for small heads).
    """

    def __init__(self, tokenize_workers: int | None = None) -> None:
        self._rows: dict[tuple[str, str, str], torch.Tensor] = {}
        self.built = 0  # number of class rows computed (for tests)
        self.tokenize_workers = default_tokenize_workers() if tokenize_workers is None else tokenize_workers

    @torch.no_grad()
    def head(self, model: Any, tokenizer: Callable[[list[str]], torch.Tensor], model_key: str,
             class_names: Sequence[str], templates: str, device: torch.device,
             batch_classes: int | None = None) -> torch.Tensor:
        """(n_classes, d) normalised text embeddings (mean over templates, renormalised).

        Texts are encoded ``TEXT_BATCH`` at a time (whole classes; ``batch_classes`` overrides),
        tokenized ahead of the text tower by :func:`tokenized_chunks`.
        """
        fns = load_templates(templates)
        if batch_classes is None:
            batch_classes = max(1, TEXT_BATCH // len(fns))
        todo = [c for c in dict.fromkeys(class_names) if (model_key, templates, c) not in self._rows]
        chunks = [todo[i:i + batch_classes] for i in range(0, len(todo), batch_classes)]
        texts = [[fn(c) for c in chunk for fn in fns] for chunk in chunks]
        workers = self.tokenize_workers if len(todo) * len(fns) >= TOKENIZE_IN_WORKERS_FROM else 0
        for chunk, tokens in zip(chunks, tokenized_chunks(tokenizer, texts, workers), strict=True):
            emb = model.encode_text(tokens.to(device))
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


@torch.no_grad()
def evaluate(scorer: Scorer, ev: EvalSet, preprocess: Callable[[Any], torch.Tensor], *,
             device: torch.device | str = "cpu", batch_size: int = 256, progress: bool = False,
             workers: int = 0, prefetch: int = 2) -> dict[str, Any]:
    """Top-1/top-5 accuracy of ``scorer`` on ``ev``; unreadable images are skipped and counted.
    Images are decoded in ``workers`` DataLoader processes (0: in this one).

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
    return {
        "event": "eval", "split": ev.name, "protocol": ev.protocol, "head": ev.head,
        "border": ev.border,
        "accuracy": correct1 / n if n else float("nan"), "top5": correct5 / n if n else float("nan"),
        "mean_per_class_recall": (float((class_hit[class_n > 0].double() / class_n[class_n > 0]).mean())
                                  if n else float("nan")),
        "n": n, "correct": correct1, "correct_top5": correct5, "n_classes": len(ev.groups),
        "expected_n": ev.expected_size, "excluded": ev.excluded, "skipped": dict(skipped),
        "classes_missing_from_model": missing, "warnings": list(ev.warnings), "theory": None,
    }
