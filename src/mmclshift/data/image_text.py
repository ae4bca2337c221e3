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
turns an epoch's items into decoded training samples for one rank in two stages: a cheap *plan*
(:meth:`PairStream.plan`: item order, caption choice, rank split; shard-level skips) and the
per-pair *work* (:meth:`PairStream.process`: caption transforms, class label, image decoding and
transform). Undecodable or missing images, empty captions, captions that are not valid UTF-8 and
unlabelled captions are *skipped and counted* (never raising mid-epoch); an exception in the image
transform is a bug, not bad data, and propagates. The serial path runs both
stages in the training process; :mod:`mmclshift.data.loader` runs the work in DataLoader workers
and yields the same batches with the same skip counts.

Determinism: the item order of an epoch is a permutation seeded by ``(seed, epoch)``; the caption
drawn for an item depends only on ``(seed, epoch, position)``; so a run resumed from the stream
position stored in a checkpoint sees exactly the samples an uninterrupted run would.
"""

from __future__ import annotations

import csv
import io
import json
import random
import struct
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
    """What was skipped and why (written to the run's metrics and checkpoints).

    Each skip names the thing skipped (an item key, ``key<TAB>caption`` for a caption, or a shard
    path). :meth:`as_dict` counts distinct things per reason, so a corrupt image is one skip however
    many epochs (or captions) visit it; :meth:`visits` counts every visit.
    """

    counts: Counter = field(default_factory=Counter)
    keys: dict[str, set[str]] = field(default_factory=dict)

    def add(self, reason: str, key: str) -> None:
        self.counts[reason] += 1
        self.keys.setdefault(reason, set()).add(key)

    def as_dict(self) -> dict[str, int]:
        """Distinct skipped things per reason."""
        return {r: len(self.keys[r]) for r in sorted(self.keys)}

    def visits(self) -> dict[str, int]:
        """Every visit of a skipped thing, per reason (grows with epochs)."""
        return dict(sorted(self.counts.items()))

    @property
    def total(self) -> int:
        return sum(self.as_dict().values())

    def state(self) -> dict[str, Any]:
        """A checkpointable copy (plain lists and ints)."""
        return {"visits": self.visits(), "keys": {r: sorted(k) for r, k in self.keys.items()}}

    def load(self, state: dict[str, Any]) -> None:
        """Add a :meth:`state` (or an older flat ``{reason: count}``) to these counts."""
        if "visits" not in state:  # older checkpoints: per-reason counts only
            for reason, n in state.items():
                self.counts[reason] += int(n)
                self.keys.setdefault(reason, set()).update(
                    f"<checkpoint {i}>" for i in range(int(n)))
            return
        self.counts.update({r: int(n) for r, n in state["visits"].items()})
        for reason, keys in state.get("keys", {}).items():
            self.keys.setdefault(reason, set()).update(keys)


class _SkipLog(SkipCounts):
    """A SkipCounts that also queues each skip, so a plan can emit it in stream order."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[Skip] = []

    def add(self, reason: str, key: str) -> None:
        self.pending.append(Skip(reason, key))

    def drain(self) -> list[Skip]:
        out, self.pending = self.pending, []
        return out


@dataclass(frozen=True)
class Skip:
    """One skipped thing in stream order (see :class:`SkipCounts`)."""

    reason: str
    key: str


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
    # invalid UTF-8 stays visible as lone surrogates: a caption with them is skipped and counted,
    # an image path with them names the file the bytes name
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
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
        data = json.loads(annotations.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{annotations}: not UTF-8 (byte {exc.start}); JSON files are UTF-8"
                        ) from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{annotations}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise DataError(f"{annotations}: not a COCO captions file (expected an object with "
                        "'images' and 'annotations')")
    images: dict[int, str] = {}
    for what in ("images", "annotations"):
        if not isinstance(data.get(what), list):
            raise DataError(f"{annotations}: not a COCO captions file (missing list {what!r})")
    for i, im in enumerate(data["images"]):
        images[_coco_int(im, "id", annotations, f"images[{i}]")] = \
            str(im["file_name"]) if isinstance(im, dict) and "file_name" in im else ""
    if image_root is None:
        guess = annotations.parent.parent / annotations.stem.replace("captions_", "")
        image_root = guess if guess.is_dir() else annotations.parent
    root = Path(image_root)
    caps: dict[int, list[str]] = {i: [] for i in images}
    for i, ann in enumerate(data["annotations"]):
        image_id = _coco_int(ann, "image_id", annotations, f"annotations[{i}]")
        caption = ann.get("caption")
        caps.setdefault(image_id, []).append(caption if isinstance(caption, str) else "")
    items = []
    for image_id in sorted(caps):
        name = images.get(image_id)
        items.append(Item(str(image_id), str(root / name) if name else None, caps[image_id]))
    return items


def _coco_int(record: Any, key: str, path: Path, where: str) -> int:
    """``record[key]`` as an int, or a one-line :class:`DataError` naming the record."""
    value = record.get(key) if isinstance(record, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise DataError(f"{path}: {where} has no integer {key!r} (got {value!r})")
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{path}: {where} has no integer {key!r} (got {value!r})") from None


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

    Each shard visit counts at most one shard-level reason: ``missing_shard`` (no such file),
    ``empty_shard`` (zero bytes, or a valid tar with no items) or ``corrupt_shard`` (unreadable or
    damaged: the items read before the damage are still yielded). A caption's bytes are decoded
    as UTF-8, invalid bytes kept as lone surrogates (:meth:`PairStream.process` skips and counts
    such captions).
    """
    skips = skips if skips is not None else SkipCounts()
    shard = Path(shard)
    if not shard.is_file():
        skips.add("missing_shard", str(shard))
        return
    if shard.stat().st_size == 0:
        skips.add("empty_shard", str(shard))
        return
    groups: dict[str, dict[str, bytes]] = {}
    order: list[str] = []
    damaged = False
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
                data = fh.read()
                if key not in groups:
                    groups[key] = {}
                    order.append(key)
                groups[key][ext.lower()] = data
    except (tarfile.TarError, OSError, EOFError):
        damaged = True  # yield what was read before the damage
    items = []
    for key in order:
        parts = groups[key]
        img = next((parts[e] for e in IMAGE_EXTENSIONS if e in parts), None)
        cap = next((parts[e] for e in CAPTION_EXTENSIONS if e in parts), None)
        if img is None and cap is None:
            continue  # e.g. a lone .json
        captions = [cap.decode("utf-8", errors="surrogateescape")] if cap is not None else []
        items.append(Item(f"{shard.name}/{key}", img, captions))
    if damaged:
        skips.add("corrupt_shard", str(shard))
    elif not items:
        skips.add("empty_shard", str(shard))
    yield from items


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
    """Decode an image to RGB PIL; raises ``FileNotFoundError`` on a missing image and one of
    :func:`decode_errors` on an unreadable one."""
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


def decode_errors() -> tuple[type[BaseException], ...]:
    """The exceptions with which PIL reports an unreadable image: ``OSError`` (unidentified or
    truncated files), and what its format plugins raise on damaged data (``SyntaxError``,
    ``ValueError``, ``EOFError``, ``struct.error``) or on an image over its pixel limit."""
    from PIL import Image

    return (OSError, SyntaxError, ValueError, EOFError, struct.error,
            Image.DecompressionBombError)


def decode_image(image: str | bytes | None, transform: Callable[[Any], Any]
                 ) -> tuple[Any, str | None]:
    """``(transform(decoded image), None)``, or ``(None, reason)`` with reason ``missing_image``
    or ``corrupt_image`` (the image could not be decoded, see :func:`decode_errors`).

    Only reading the image is guarded: an exception raised by ``transform`` propagates, so a
    broken preprocessing step fails the run instead of turning every image into a skip."""
    try:
        decoded = load_image(image)
    except FileNotFoundError:
        return None, "missing_image"
    except decode_errors():
        return None, "corrupt_image"
    return transform(decoded), None


@dataclass
class Sample:
    """A decoded training pair: the image tensor, the caption text, the class id (-1: none) and
    the stream position it came from (used to resume)."""

    image: Any
    caption: str
    label: int
    position: int


@dataclass
class RawPair:
    """A planned pair: its stream position, the item it comes from and the caption drawn."""

    position: int
    key: str
    image: str | bytes | None
    caption: str


CaptionFn = Callable[[str], str]
LabelFn = Callable[[str], int | None]


def _no_label(caption: str) -> int:
    return -1


def _same(caption: str) -> str:
    return caption


def has_invalid_utf8(text: str) -> bool:
    """Whether ``text`` carries undecodable bytes (lone surrogates from ``surrogateescape``)."""
    return any("\udc80" <= ch <= "\udcff" for ch in text)


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
        self.caption_fn = caption_fn or _same
        self.label_fn = label_fn or _no_label
        self.caption_mode = caption_mode
        self.keep_captions = keep_captions
        self.rank = rank
        self.world_size = world_size
        self.skips = SkipCounts()

    def _pairs(self, epoch: int, log: _SkipLog) -> Iterator[tuple[int, Item, str]]:
        pos = 0
        for item in self.source.items(epoch, self.seed, log):
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

    def plan(self, epoch: int, start: int = 0) -> Iterator[RawPair | Skip]:
        """This rank's pairs of ``epoch`` from stream position ``start`` on, in stream order,
        with the source's skips (missing, empty or corrupt shards) where they occur."""
        log = _SkipLog()
        for pos, item, raw_caption in self._pairs(epoch, log):
            yield from log.drain()
            if pos < start or pos % self.world_size != self.rank:
                continue
            yield RawPair(pos, item.key, item.image, raw_caption)
        yield from log.drain()

    def process(self, pair: RawPair, transform: Callable[[Any], Any] | None = None
                ) -> Sample | Skip:
        """Caption transform, class label, image decoding and transform of one planned pair
        (``transform`` replaces the stream's image transform)."""
        if has_invalid_utf8(pair.caption):
            return Skip("caption_not_utf8", f"{pair.key}\t{pair.caption}")
        caption = self.caption_fn(pair.caption).strip()
        if not caption:
            return Skip("empty_caption", f"{pair.key}\t{pair.caption}")
        label = self.label_fn(pair.caption)  # the image's class, not the shortened text
        if label is None:
            return Skip("no_label", f"{pair.key}\t{pair.caption}")
        image, failure = decode_image(pair.image, transform or self.transform)
        if failure is not None:
            return Skip(failure, pair.key)
        return Sample(image, caption, label, pair.position)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Sample]:
        """Samples of ``epoch`` from stream position ``start`` on (skipped items are counted)."""
        for event in self.plan(epoch, start):
            out = self.process(event) if isinstance(event, RawPair) else event
            if isinstance(out, Skip):
                self.skips.add(out.reason, out.key)
            else:
                yield out


def batches(samples: Iterator[Sample], batch_size: int) -> Iterator[list[Sample]]:
    """Full batches of ``batch_size`` samples (a last partial batch is dropped)."""
    batch: list[Sample] = []
    for s in samples:
        batch.append(s)
        if len(batch) == batch_size:
            yield batch
            batch = []
