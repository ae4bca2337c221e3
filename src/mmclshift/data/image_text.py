"""Image-caption datasets for the real-data tier (Section 6, Figure 3): one pipeline for every method.

Three on-disk formats are read:

* **CSV/TSV** (OpenCLIP's ``--csv-img-key filepath --csv-caption-key title``): the separator is
  detected from the header line (tab, comma, semicolon or pipe), image paths are resolved against
  ``image_root`` (default: the CSV's folder). A missing column is a one-line :class:`DataError`
  naming the file and the columns it has.
* **MSCOCO captions JSON** (``annotations/captions_train2017.json`` + ``train2017/``): one record
  per image with its (usually 5) captions.
* **webdataset tar shards** (``key.jpg`` + ``key.txt``, as for CC3M/CC12M), with brace-expanded
  shard lists such as ``cc3m/{00000..00331}.tar``; several patterns may be joined with ``::``.

Every format becomes a stream of :class:`Item` (key, image loader, captions). :class:`PairStream`
turns an epoch's items into decoded training samples for one rank: it picks the caption(s), applies
the caption transforms, derives the class label, decodes the image and *skips and counts*
unreadable or missing images, empty captions and unlabelled captions (never raising mid-epoch).

Determinism: the item order of an epoch is a permutation seeded by ``(seed, epoch)``; the caption
drawn for an item depends only on ``(seed, epoch, position)``; so a run resumed from the stream
position stored in a checkpoint sees exactly the samples an uninterrupted run would.
"""

from __future__ import annotations

import csv
import io
import json
import random
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmclshift.errors import DataError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")
CAPTION_EXTENSIONS = ("txt", "caption", "text")
SEPARATORS = ("\t", ",", ";", "|")


@dataclass
class Item:
    """One image with its captions. ``image`` is a path or the raw bytes of an encoded image."""

    key: str
    image: str | bytes | None
    captions: list[str]


@dataclass
class SkipCounts:
    """How many items were skipped and why (written to the run's metrics)."""

    counts: Counter = field(default_factory=Counter)

    def add(self, reason: str, n: int = 1) -> None:
        self.counts[reason] += n

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


# --------------------------------------------------------------------------- CSV / TSV


def detect_separator(header: str, path: str | Path = "<csv>") -> str:
    """The separator of a CSV/TSV header line: the candidate that splits it into the most fields."""
    best, best_n = None, 1
    for sep in SEPARATORS:
        n = len(next(csv.reader([header], delimiter=sep)))
        if n > best_n:
            best, best_n = sep, n
    if best is None:
        raise DataError(
            f"{path}: cannot detect the separator of header {header.strip()!r} "
            f"(tried tab, comma, semicolon, pipe); set data.sep"
        )
    return best


def read_csv_items(path: str | Path, *, image_key: str = "filepath", caption_key: str = "title",
                   sep: str | None = None, image_root: str | Path | None = None) -> list[Item]:
    """Items of a CSV/TSV file with an image-path column and a caption column (one row = one pair).

    Rows naming the same image are merged into one item with several captions.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: CSV file not found")
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    if not lines:
        raise DataError(f"{path}: empty CSV file (expected a header with columns "
                        f"{image_key!r} and {caption_key!r})")
    sep = sep or detect_separator(lines[0], path)
    reader = csv.DictReader(io.StringIO(text), delimiter=sep)
    cols = reader.fieldnames or []
    for key, what in ((image_key, "image"), (caption_key, "caption")):
        if key not in cols:
            raise DataError(
                f"{path}: no {what} column {key!r} (columns: {', '.join(cols)}; separator "
                f"{sep!r}); set data.{'image_key' if what == 'image' else 'caption_key'}"
            )
    root = Path(image_root) if image_root else path.parent
    by_image: dict[str, Item] = {}
    for row in reader:
        img = (row.get(image_key) or "").strip()
        cap = row.get(caption_key) or ""
        if not img:
            by_image.setdefault("", Item("", None, []))
            continue
        item = by_image.get(img)
        if item is None:
            item = by_image[img] = Item(img, str(root / img), [])
        item.captions.append(cap)
    return list(by_image.values())


# --------------------------------------------------------------------------- MSCOCO


def read_coco_items(annotations: str | Path, image_root: str | Path | None = None) -> list[Item]:
    """Items of an MSCOCO captions file (``captions_train2017.json``), one per image.

    ``image_root`` defaults to ``<annotations>/../../train2017`` (the official layout) when that
    folder exists, else to the JSON's own folder.
    """
    annotations = Path(annotations)
    if not annotations.is_file():
        raise DataError(f"{annotations}: COCO captions file not found")
    try:
        data = json.loads(annotations.read_text(encoding="utf-8"))
        images = {int(im["id"]): im["file_name"] for im in data["images"]}
        anns = data["annotations"]
    except json.JSONDecodeError as exc:
        raise DataError(f"{annotations}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{annotations}: not a COCO captions file (missing {exc})") from None
    if image_root is None:
        guess = annotations.parent.parent / annotations.stem.replace("captions_", "")
        image_root = guess if guess.is_dir() else annotations.parent
    root = Path(image_root)
    caps: dict[int, list[str]] = {i: [] for i in images}
    for ann in anns:
        caps.setdefault(int(ann["image_id"]), []).append(str(ann.get("caption", "")))
    items = []
    for image_id in sorted(caps):
        name = images.get(image_id)
        items.append(Item(str(image_id), str(root / name) if name else None, caps[image_id]))
    return items


# --------------------------------------------------------------------------- webdataset shards


def expand_shards(spec: str | Sequence[str]) -> list[str]:
    """Brace-expand a shard pattern (``a/{000..009}.tar``); ``::`` joins several patterns."""
    from braceexpand import braceexpand

    patterns = spec.split("::") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for pattern in patterns:
        out.extend(braceexpand(pattern))
    return out


def iter_tar_items(shard: str | Path, skips: SkipCounts | None = None) -> Iterator[Item]:
    """Items of one webdataset tar shard, grouped by key (the name up to its first dot).

    A missing, empty or unreadable shard is counted (``missing_shard``/``empty_shard``/
    ``corrupt_shard``) and yields nothing; a key without an image or caption is counted too.
    """
    skips = skips if skips is not None else SkipCounts()
    shard = Path(shard)
    if not shard.is_file():
        skips.add("missing_shard")
        return
    groups: dict[str, dict[str, bytes]] = {}
    order: list[str] = []
    try:
        with tarfile.open(shard, "r") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                name = Path(member.name).name
                if "." not in name:
                    continue
                key, ext = name.split(".", 1)
                key = str(Path(member.name).parent / key)
                fh = tf.extractfile(member)
                if fh is None:
                    continue
                if key not in groups:
                    groups[key] = {}
                    order.append(key)
                groups[key][ext.lower()] = fh.read()
    except (tarfile.TarError, OSError, EOFError):
        skips.add("corrupt_shard")
        # yield what was read before the damage
    if not order:
        skips.add("empty_shard")
        return
    for key in order:
        parts = groups[key]
        img = next((parts[e] for e in IMAGE_EXTENSIONS if e in parts), None)
        cap = next((parts[e] for e in CAPTION_EXTENSIONS if e in parts), None)
        if img is None and cap is None:
            continue  # e.g. a lone .json
        captions = [cap.decode("utf-8", errors="replace")] if cap is not None else []
        yield Item(f"{shard.name}/{key}", img, captions)


# --------------------------------------------------------------------------- sources


class ItemSource:
    """An ordered source of :class:`Item` for an epoch (seeded shuffle), the same on every rank."""

    def items(self, epoch: int, seed: int, skips: SkipCounts) -> Iterator[Item]:
        raise NotImplementedError

    def __len__(self) -> int:  # an estimate for shards
        raise NotImplementedError


class ListSource(ItemSource):
    """CSV or COCO items held in memory; each epoch visits them in a seeded random order."""

    def __init__(self, items: list[Item], shuffle: bool = True) -> None:
        self._items = items
        self.shuffle = shuffle

    def __len__(self) -> int:
        return len(self._items)

    def items(self, epoch: int, seed: int, skips: SkipCounts) -> Iterator[Item]:
        order = list(range(len(self._items)))
        if self.shuffle:
            random.Random(f"{seed}:{epoch}:items").shuffle(order)
        for i in order:
            yield self._items[i]


class ShardSource(ItemSource):
    """webdataset shards: the shard order is shuffled per epoch; items stream in shard order."""

    def __init__(self, shards: list[str], shuffle: bool = True) -> None:
        if not shards:
            raise DataError("no shards in data.path")
        self.shards = shards
        self.shuffle = shuffle
        self._len: int | None = None

    def __len__(self) -> int:
        if self._len is None:
            self._len = sum(1 for s in self.shards for _ in iter_tar_items(s, SkipCounts()))
        return self._len

    def items(self, epoch: int, seed: int, skips: SkipCounts) -> Iterator[Item]:
        order = list(self.shards)
        if self.shuffle:
            random.Random(f"{seed}:{epoch}:shards").shuffle(order)
        for shard in order:
            yield from iter_tar_items(shard, skips)


def make_source(fmt: str, path: str, *, image_root: str | None = None, image_key: str = "filepath",
                caption_key: str = "title", sep: str | None = None,
                shuffle: bool = True) -> ItemSource:
    """The item source of a ``data`` config: ``fmt`` is ``csv``, ``coco`` or ``wds``."""
    if fmt == "csv":
        return ListSource(read_csv_items(path, image_key=image_key, caption_key=caption_key,
                                         sep=sep, image_root=image_root), shuffle)
    if fmt == "coco":
        return ListSource(read_coco_items(path, image_root), shuffle)
    if fmt == "wds":
        return ShardSource(expand_shards(path), shuffle)
    raise DataError(f"unknown data format {fmt!r} (known: csv, coco, wds)")


# --------------------------------------------------------------------------- decoding


def load_image(image: str | bytes | None) -> Any:
    """Decode an image to RGB PIL; raises ``FileNotFoundError`` / ``OSError`` on bad input."""
    from PIL import Image

    if image is None:
        raise FileNotFoundError("no image")
    if isinstance(image, bytes):
        im = Image.open(io.BytesIO(image))
    else:
        if not Path(image).is_file():
            raise FileNotFoundError(image)
        im = Image.open(image)
    im.load()  # force decoding now so that truncated files fail here
    return im.convert("RGB")


@dataclass
class Sample:
    """A decoded training pair: the image tensor, the caption text, the class id (-1: none) and
    the stream position it came from (used to resume)."""

    image: Any
    caption: str
    label: int
    position: int


CaptionFn = Callable[[str], str]
LabelFn = Callable[[str], int | None]


class PairStream:
    """Decoded (image, caption, label) samples of one epoch for one rank.

    Items at stream positions ``p`` with ``p % world_size == rank`` belong to this rank (so a
    global batch split over ranks is a permutation of the single-process batch). With
    ``caption_mode="sample"`` one caption per item is drawn (seeded by epoch and position);
    ``"first"`` takes the first; ``"all"`` yields every caption as its own pair. ``keep_captions``
    keeps only the first k captions of each image before that choice (Figure 3b).
    ``label_fn`` returns a class id, -1 for "no class", or None to drop the pair.
    """

    def __init__(self, source: ItemSource, transform: Callable[[Any], Any], *, seed: int,
                 caption_fn: CaptionFn | None = None, label_fn: LabelFn | None = None,
                 caption_mode: str = "sample", keep_captions: int | None = None,
                 rank: int = 0, world_size: int = 1) -> None:
        if caption_mode not in ("sample", "first", "all"):
            raise DataError(f"unknown caption_mode {caption_mode!r} (sample, first, all)")
        self.source = source
        self.transform = transform
        self.seed = seed
        self.caption_fn = caption_fn or (lambda c: c)
        self.label_fn = label_fn or (lambda c: -1)
        self.caption_mode = caption_mode
        self.keep_captions = keep_captions
        self.rank = rank
        self.world_size = world_size
        self.skips = SkipCounts()

    def _pairs(self, epoch: int) -> Iterator[tuple[int, Item, str]]:
        pos = 0
        for item in self.source.items(epoch, self.seed, self.skips):
            caps = item.captions[: self.keep_captions] if self.keep_captions else item.captions
            if self.caption_mode == "all":
                chosen = caps or [""]
            elif not caps:
                chosen = [""]
            elif self.caption_mode == "first":
                chosen = [caps[0]]
            else:
                rng = random.Random(f"{self.seed}:{epoch}:{item.key}")
                chosen = [caps[rng.randrange(len(caps))]]
            for cap in chosen:
                yield pos, item, cap
                pos += 1

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Sample]:
        """Samples of ``epoch`` from stream position ``start`` on (skipped items are counted)."""
        for pos, item, raw_caption in self._pairs(epoch):
            if pos < start or pos % self.world_size != self.rank:
                continue
            caption = self.caption_fn(raw_caption).strip()
            if not caption:
                self.skips.add("empty_caption")
                continue
            label = self.label_fn(raw_caption)  # the image's class, not the shortened text
            if label is None:
                self.skips.add("no_label")
                continue
            try:
                image = self.transform(load_image(item.image))
            except FileNotFoundError:
                self.skips.add("missing_image")
                continue
            except Exception:  # noqa: BLE001 - any decoder failure is a counted skip
                self.skips.add("corrupt_image")
                continue
            yield Sample(image, caption, label, pos)


def batches(samples: Iterator[Sample], batch_size: int) -> Iterator[list[Sample]]:
    """Full batches of ``batch_size`` samples (a last partial batch is dropped)."""
    batch: list[Sample] = []
    for s in samples:
        batch.append(s)
        if len(batch) == batch_size:
            yield batch
            batch = []
