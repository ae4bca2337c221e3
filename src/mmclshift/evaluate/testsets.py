"""Test-set resolution for zero-shot evaluation: class folders on disk -> an :class:`EvalSet`.

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
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from mmclshift.data.image_text import IMAGE_EXTENSIONS
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


def _known_sizes(protocol: str, subset: str | None, expected_size: int | None
                 ) -> tuple[int | None, tuple[int, ...]]:
    """(the size a full set has, every count not warned about); ``expected_size`` overrides both."""
    if expected_size is not None:
        return expected_size, (expected_size,)
    if subset and protocol == "imagenet" and subset in SUBSET_VAL_SIZE:
        size = SUBSET_VAL_SIZE[subset]
    elif not subset or subset == protocol:
        size = KNOWN_SIZES.get(protocol)
    else:
        return None, ()
    return size, ((size, *OTHER_KNOWN_SIZES.get(protocol, ())) if size is not None else ())


def _check_options(name: str, protocol: str, objectnet_head: str, border: int | None) -> None:
    if protocol not in PROTOCOLS:
        raise UserError(f"eval set {name!r}: unknown protocol {protocol!r} ({', '.join(PROTOCOLS)})")
    if objectnet_head not in OBJECTNET_HEADS:
        raise UserError(f"eval set {name!r}: unknown objectnet_head {objectnet_head!r} "
                        f"({', '.join(OBJECTNET_HEADS)})")
    if border is not None and border < 0:
        raise UserError(f"eval set {name!r}: border must be >= 0, got {border}")


def _folder_class(folder: Path, protocol: str, wnids: Sequence[str], index: dict[str, int],
                  classes_file: str | None) -> int:
    """The class index a class folder stands for (a one-line :class:`DataError` if none)."""
    key = folder.name
    if protocol == "imagenet-v2":
        if not key.isdigit() or int(key) >= len(wnids):
            raise DataError(f"{folder}: ImageNet-V2 class folders are 0..{len(wnids) - 1}")
        return int(key)
    if key not in index:
        raise DataError(f"{folder}: unknown class folder {key!r} (not a wnid of the "
                        f"{len(wnids)}-class list{'; set classes_file' if not classes_file else ''})")
    return index[key]


def _objectnet_class_groups(mapping: ObjectNetMapping, folder_group: dict[str, int],
                            class_names: Sequence[str], mappings_dir: str | None) -> dict[int, int]:
    """ImageNet class -> its ObjectNet group (subset ``objectnet``); a class in two is an error."""
    class_group: dict[int, int] = {}
    for folder, members in zip(mapping.folders, mapping.members, strict=True):
        for c in members if folder in folder_group else ():
            if c in class_group:
                raise DataError(f"{mappings_dir}: ImageNet class {class_names[c]!r} maps "
                                "to two ObjectNet classes; its images have no single label")
            class_group[c] = folder_group[folder]
    return class_group


@dataclass
class _Index:
    """Images found so far, the groups they are labelled with, and the images left out."""

    samples: list[tuple[str, int]] = field(default_factory=list)
    groups: list[list[int]] = field(default_factory=list)
    group_names: list[str] = field(default_factory=list)
    excluded: int = 0

    def add(self, folder: Path, group: int | None) -> None:
        """``folder``'s images with label ``group`` (None: counted as excluded)."""
        if group is None:
            self.excluded += len(_images_in(folder))
        else:
            self.samples.extend((str(p), group) for p in _images_in(folder))


def _index_objectnet(root: Path, folder_group: dict[str, int], ix: _Index) -> None:
    """ObjectNet's ``images/<folder>/`` (or ``<folder>/``); folders with no ImageNet match are
    excluded."""
    img_root = root / "images" if (root / "images").is_dir() else root
    for folder in _class_folders(img_root):
        ix.add(folder, folder_group.get(folder.name))


def _index_class_folders(root: Path, protocol: str, wnids: Sequence[str], classes_file: str | None,
                         head: set[int], class_names: Sequence[str],
                         class_group: dict[int, int] | None, ix: _Index) -> None:
    """ImageNet-style class folders: with ``class_group`` (subset ``objectnet``) each image gets
    its class's group; otherwise each head class with a folder becomes a group, in folder order.
    Folders of classes outside the head are excluded."""
    index = {w: i for i, w in enumerate(wnids)}
    for folder in _class_folders(root):
        cls = _folder_class(folder, protocol, wnids, index, classes_file)
        if class_group is not None:
            ix.add(folder, class_group.get(cls))
        elif cls in head:
            ix.add(folder, len(ix.groups))
            ix.groups.append([cls])
            ix.group_names.append(class_names[cls])
        else:
            ix.add(folder, None)


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
    _check_options(name, protocol, objectnet_head, border)
    root = Path(root)
    wnids, class_names = read_classes_file(classes_file) if classes_file else imagenet_classes()
    if subset is None and protocol in ("imagenet-r", "imagenet-a"):
        subset = protocol
    objectnet_subset = subset == "objectnet" and protocol == "imagenet"
    head = set(read_subset(subset, wnids)) if subset and not objectnet_subset else set(range(len(wnids)))
    ix = _Index()
    head_rule = "imagenet"
    class_group = None
    folder_group: dict[str, int] = {}
    if protocol == "objectnet" or objectnet_subset:
        default_maps = root / "mappings" if protocol == "objectnet" else None
        if mappings_dir is None and default_maps is None:
            raise UserError(f"eval set {name!r}: subset 'objectnet' needs mappings_dir (the "
                            "mappings/ folder of the ObjectNet download)")
        mapping = read_objectnet_mapping(Path(mappings_dir) if mappings_dir else default_maps)
        imagenet_names = class_names
        ix.groups, ix.group_names, class_names, folder_group = _objectnet_head(
            mapping, head, objectnet_head, class_names)
        head_rule = objectnet_head
        if objectnet_subset:
            class_group = _objectnet_class_groups(mapping, folder_group, imagenet_names,
                                                  mappings_dir)
    if protocol == "objectnet":
        _index_objectnet(root, folder_group, ix)
    else:
        _index_class_folders(root, protocol, wnids, classes_file, head, class_names, class_group, ix)
    if not ix.samples:
        raise DataError(f"{root}: no images found for test set {name!r}")
    expected_size, known = _known_sizes(protocol, subset, expected_size)
    if border is None:
        border = OBJECTNET_BORDER if protocol == "objectnet" else 0
    ev = EvalSet(name, protocol, ix.samples, ix.groups, ix.group_names, class_names, expected_size,
                 ix.excluded, head=head_rule, border=border)
    if known and len(ix.samples) not in known:
        msg = (f"test set {name!r} ({protocol}) at {root}: {len(ix.samples)} images, the full set "
               f"has {expected_size}; numbers will not be comparable to published ones")
        ev.warnings.append(msg)
        warnings.warn(msg, stacklevel=2)
    return ev
