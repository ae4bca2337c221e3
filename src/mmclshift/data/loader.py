"""Batches of the real-data tier decoded in ``torch.utils.data.DataLoader`` worker processes.

The training process keeps the cheap, order-defining part of a :class:`PairStream` (its
:meth:`~PairStream.plan`: item order, caption choice, rank split, and the reading of CSV/COCO
records or of webdataset shards); the expensive part (:meth:`~PairStream.process`: caption
transforms, labels, JPEG decoding, the image transform, and tokenisation) runs in ``workers``
DataLoader processes, one *chunk* of planned pairs per task. The DataLoader returns chunks in the
order they were planned, and the training process cuts them into batches in that order, counting
each skip when it passes it. So for every number of workers the batches, their samples and the
skip counts at every batch boundary are the serial path's (``PairStream.epoch`` +
:func:`~mmclshift.data.image_text.batches`), and a run resumed from a checkpoint sees the same
stream whatever ``workers`` it uses.

With ``pin_memory`` (on GPU) the chunks' tensors are pinned by the DataLoader, and
:meth:`Batch.images` copies them to the device without blocking; ``prefetch`` chunks per worker
are decoded ahead. Shards are read in the training process (so that stream positions, the rank
split and resumption stay exact); decoding, the costly part, is what the workers share.
Decoded chunks come back by value through the DataLoader's pipe (see :func:`_to_wire`). A
training run keeps its workers for all of its epochs (:func:`batch_pool`, :class:`WorkerPool`);
:func:`iter_batches` without a pool starts workers for one epoch.

:func:`iter_image_batches` does the same for a labelled image list (zero-shot evaluation).
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mmclshift.data.image_text import (
    PairStream,
    RawPair,
    Sample,
    Skip,
    SkipCounts,
    decode_image,
)
from mmclshift.errors import UserError

Tokenizer = Callable[[list[str]], torch.Tensor]


def _stack(images: list[Any]) -> Any:
    """A tensor of ``images`` when they are tensors, else the list (transforms used in tests)."""
    if images and all(isinstance(x, torch.Tensor) for x in images):
        return torch.stack(images)
    return list(images)


class SplitTransform:
    """An image transform run as a per-image part and a per-chunk part, with the same result.

    A torchvision ``Compose`` that ends in ``ToTensor`` (or OpenCLIP's ``MaybeToTensor``) and
    ``Normalize`` steps (OpenCLIP's preprocessing) is split there: the PIL steps (resize, crop,
    mode) run per image, and to-tensor + normalise run once on the chunk's stacked uint8 images.
    Both are elementwise (``x / 255``, then ``(x - mean) / std`` in float32), so the result is
    bitwise the per-image transform's. Any other transform runs per image unchanged.
    """

    def __init__(self, transform: Callable[[Any], Any]) -> None:
        from torchvision import transforms as T

        self.transform = transform
        self.per_image: Callable[[Any], Any] = transform
        self.normalize: list[Any] | None = None
        steps = transform.transforms if isinstance(transform, T.Compose) else []
        at = [i for i, t in enumerate(steps) if isinstance(t, T.ToTensor)]
        if len(at) == 1 and all(isinstance(t, T.Normalize) for t in steps[at[0] + 1:]):
            self.per_image = T.Compose(steps[:at[0]])
            self.normalize = steps[at[0] + 1:]
            self._tensor_part = T.Compose(steps[at[0]:])

    def stack(self, images: list[Any]) -> Any:
        """The per-chunk part on the per-image outputs: a (n, C, H, W) tensor (or a list)."""
        if self.normalize is None:
            return _stack(images)
        from PIL import Image

        first = images[0] if images else None
        if not (isinstance(first, Image.Image) and all(
                isinstance(im, Image.Image) and im.mode == "RGB" and im.size == first.size
                for im in images)):
            return _stack([self._tensor_part(im) for im in images])
        x = torch.from_numpy(np.stack([np.asarray(im) for im in images]))
        x = x.permute(0, 3, 1, 2).contiguous().to(torch.get_default_dtype()).div(255)
        for step in self.normalize:
            x = step(x)
        return x


def _pin(x: Any) -> Any:
    return x.pin_memory() if isinstance(x, torch.Tensor) else x


def _to_wire(state: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """``state`` with the tensors under ``keys`` as numpy arrays, so that a chunk sent from a
    worker travels by value through the DataLoader's pipe rather than as a shared-memory tensor
    (a new shared-memory file, a socket connection to pass its descriptor and fresh page faults
    on both sides, per tensor). Measured on 2,000 48-px JPEGs with 2 kept workers: 2,865 against
    2,527 samples/s (medians of 5 passes). Tensors numpy cannot hold (bfloat16) go as tensors."""
    state = dict(state)
    for key in keys:
        x = state[key]
        if isinstance(x, torch.Tensor) and x.device.type == "cpu" and x.dtype != torch.bfloat16 \
                and not x.requires_grad:
            state[key] = x.numpy()
    return state


def _from_wire(state: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    for key in keys:
        if isinstance(state[key], np.ndarray):
            state[key] = torch.from_numpy(state[key])
    return state


def _join(parts: list[Any]) -> Any:
    if len(parts) == 1:
        return parts[0]
    if all(isinstance(p, torch.Tensor) for p in parts):
        return torch.cat(parts)
    return [x for p in parts for x in p]


@dataclass
class Batch:
    """One batch: images (as the chunk slices they came in), captions, class ids, stream positions
    and, when a tokenizer was given, the tokenised captions."""

    image_parts: list[Any]
    captions: list[str]
    labels: list[int]
    positions: list[int]
    text_parts: list[torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.positions)

    def images(self, device: torch.device | str | None = None) -> Any:
        """The images as one tensor, on ``device`` (copied without blocking from pinned memory)."""
        if device is None:
            return _join(self.image_parts)
        return _join([p.to(device, non_blocking=True) for p in self.image_parts])

    def texts(self, device: torch.device | str | None = None) -> torch.Tensor | None:
        if self.text_parts is None:
            return None
        if device is None:
            return _join(self.text_parts)
        return _join([p.to(device, non_blocking=True) for p in self.text_parts])


@dataclass
class _Chunk:
    """A decoded chunk: per planned event its outcome (a Skip, or the index of its sample)."""

    outcomes: list[Skip | int]
    images: Any
    captions: list[str]
    labels: list[int]
    positions: list[int]
    texts: torch.Tensor | None = None

    def pin_memory(self) -> _Chunk:  # called by the DataLoader's pinning thread
        self.images = _pin(self.images)
        self.texts = _pin(self.texts)
        return self

    def __getstate__(self) -> dict[str, Any]:  # pickled only to leave a worker
        return _to_wire(self.__dict__, ("images", "texts"))

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(_from_wire(state, ("images", "texts")))


class _DecodeChunk:
    """The work of one chunk (runs in a worker): process each planned pair, stack, tokenise."""

    def __init__(self, stream: PairStream, tokenizer: Tokenizer | None) -> None:
        self.stream = stream
        self.tokenizer = tokenizer
        self.split = SplitTransform(stream.transform)

    def __call__(self, events: list[RawPair | Skip]) -> _Chunk:
        outcomes: list[Skip | int] = []
        samples: list[Sample] = []
        for event in events:
            out = self.stream.process(event, self.split.per_image) \
                if isinstance(event, RawPair) else event
            if isinstance(out, Skip):
                outcomes.append(out)
            else:
                outcomes.append(len(samples))
                samples.append(out)
        captions = [s.caption for s in samples]
        texts = self.tokenizer(captions) if self.tokenizer is not None and captions else None
        return _Chunk(outcomes, self.split.stack([s.image for s in samples]), captions,
                      [s.label for s in samples], [s.position for s in samples], texts)


class _TaskDataset(torch.utils.data.Dataset):
    """A dataset whose "index" is a whole task: ``dataset[task] = fn(task)``."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def __getitem__(self, task: Any) -> Any:
        return self.fn(task)


def _identity(x: Any) -> Any:
    return x


class _Feed:
    """The sampler of a :class:`WorkerPool`'s DataLoader: the task iterator of the current pass
    (the DataLoader may call ``iter(sampler)`` more than once per pass; each call gets the same
    iterator)."""

    def __init__(self) -> None:
        self.tasks: Iterator[Any] = iter(())

    def __iter__(self) -> Iterator[Any]:
        return self.tasks


class WorkerPool:
    """``fn(task)`` computed in DataLoader worker processes that outlive one pass.

    The workers are forked at the first :meth:`map` and kept (the DataLoader's
    ``persistent_workers``) until :meth:`close`, so a training run pays their start-up (the fork
    and the first copy-on-write touches of the parent's memory, about 0.1 s with two workers on
    the project's 2-core machine) once rather than once per epoch. ``fn`` is fixed when the
    workers fork; each :meth:`map` pass feeds new tasks. With ``workers=0`` :meth:`map` runs
    ``fn`` in this process. Results come back in task order; ``prefetch`` tasks ahead per
    worker; results are pinned with ``pin_memory``.

    One pass at a time: starting a pass ends the previous one (its outstanding results are
    dropped), and a generator of an ended pass raises if it is advanced again.
    """

    def __init__(self, fn: Callable[[Any], Any], *, workers: int = 0, prefetch: int = 2,
                 pin_memory: bool = False) -> None:
        if workers < 0 or prefetch < 1:
            raise UserError(f"data.workers must be >= 0 (got {workers}) and data.prefetch >= 1 "
                            f"(got {prefetch})")
        self.fn, self.pin_memory = fn, pin_memory
        self._feed = _Feed()
        self._pass = 0
        self._loader: torch.utils.data.DataLoader | None = None
        if workers:
            ctx = multiprocessing.get_context("fork") \
                if "fork" in multiprocessing.get_all_start_methods() else None
            self._loader = torch.utils.data.DataLoader(
                _TaskDataset(fn), batch_size=None, sampler=self._feed, num_workers=workers,
                collate_fn=_identity, pin_memory=pin_memory, prefetch_factor=prefetch,
                persistent_workers=True, multiprocessing_context=ctx)

    def map(self, tasks: Iterable[Any]) -> Generator[Any, None, None]:
        """``fn(task)`` for each task, in order (one pass)."""
        self._pass += 1
        this = self._pass
        if self._loader is None:
            for task in tasks:
                out = self.fn(task)
                yield out.pin_memory() if self.pin_memory and hasattr(out, "pin_memory") else out
                self._check(this)
            return
        self._feed.tasks = iter(tasks)
        for out in iter(self._loader):  # the first pass forks the workers, later ones reuse them
            yield out
            self._check(this)

    def _check(self, this: int) -> None:
        if this != self._pass:
            raise RuntimeError("this WorkerPool pass was ended by a later pass")

    def close(self) -> None:
        """Stop the workers (a later :meth:`map` starts new ones)."""
        it = getattr(self._loader, "_iterator", None)
        if it is not None:
            it._shutdown_workers()
            self._loader._iterator = None  # type: ignore[union-attr]

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ordered_map(fn: Callable[[Any], Any], tasks: Iterable[Any], *, workers: int = 0,
                prefetch: int = 2, pin_memory: bool = False) -> Generator[Any, None, None]:
    """``fn(task)`` for each task, in order; with ``workers > 0`` computed in DataLoader workers
    started for this one pass (see :class:`WorkerPool` for workers kept across passes)."""
    pool = WorkerPool(fn, workers=workers, prefetch=prefetch, pin_memory=pin_memory)
    try:
        yield from pool.map(tasks)
    finally:
        pool.close()


def _chunks(events: Iterable[RawPair | Skip], size: int) -> Iterator[list[RawPair | Skip]]:
    """Planned events cut into chunks of ``size`` pairs (skips ride along in order)."""
    chunk: list[RawPair | Skip] = []
    n = 0
    for event in events:
        chunk.append(event)
        if isinstance(event, RawPair):
            n += 1
            if n == size:
                yield chunk
                chunk, n = [], 0
    if chunk:
        yield chunk


def _assemble(chunks: Iterable[_Chunk], batch_size: int, skips: SkipCounts) -> Iterator[Batch]:
    """Full batches of ``batch_size`` samples from decoded chunks, in order; each skip is counted
    when it is passed (as the serial path counts it); a last partial batch is dropped."""
    parts: list[tuple[_Chunk, int, int]] = []
    n = 0
    for ch in chunks:
        lo: int | None = None
        for out in ch.outcomes:
            if isinstance(out, Skip):
                skips.add(out.reason, out.key)
                continue
            if lo is None:
                lo = out
            n += 1
            if n == batch_size:
                parts.append((ch, lo, out + 1))
                yield _batch(parts)
                parts, n, lo = [], 0, None
        if lo is not None:
            parts.append((ch, lo, len(ch.positions)))


def _slice(x: Any, lo: int, hi: int, whole: int) -> Any:
    return x if lo == 0 and hi == whole else x[lo:hi]


def _batch(parts: list[tuple[_Chunk, int, int]]) -> Batch:
    texts = None
    if all(ch.texts is not None for ch, _, _ in parts):
        texts = [_slice(ch.texts, lo, hi, len(ch.positions)) for ch, lo, hi in parts]
    return Batch([_slice(ch.images, lo, hi, len(ch.positions)) for ch, lo, hi in parts],
                 [c for ch, lo, hi in parts for c in ch.captions[lo:hi]],
                 [y for ch, lo, hi in parts for y in ch.labels[lo:hi]],
                 [p for ch, lo, hi in parts for p in ch.positions[lo:hi]], texts)


def batch_pool(stream: PairStream, *, workers: int, prefetch: int = 2, pin_memory: bool = False,
               tokenizer: Tokenizer | None = None) -> WorkerPool:
    """Workers that decode ``stream``'s chunks for every epoch of a run (see :class:`WorkerPool`);
    pass it to :func:`iter_batches` as ``pool`` and close it when the run ends."""
    return WorkerPool(_DecodeChunk(stream, tokenizer), workers=workers, prefetch=prefetch,
                      pin_memory=pin_memory)


def iter_batches(stream: PairStream, batch_size: int, epoch: int, start: int = 0, *,
                 workers: int = 0, prefetch: int = 2, pin_memory: bool = False,
                 tokenizer: Tokenizer | None = None, chunk_size: int | None = None,
                 pool: WorkerPool | None = None) -> Generator[Batch, None, None]:
    """Full batches of ``stream``'s ``epoch`` from stream position ``start`` on.

    The same batches and the same ``stream.skips`` at every batch boundary for any ``workers``
    (see the module docstring); ``chunk_size`` pairs per worker task (default ``batch_size``).
    With ``pool`` (from :func:`batch_pool` on this stream and tokenizer) the pool's workers
    decode, and ``workers``, ``prefetch``, ``pin_memory`` and ``tokenizer`` are the pool's;
    without, workers are started for this epoch and stopped after it.
    """
    size = chunk_size or batch_size
    chunks = _chunks(stream.plan(epoch, start), size)
    if pool is not None:
        if not (isinstance(pool.fn, _DecodeChunk) and pool.fn.stream is stream):
            raise ValueError("iter_batches: the pool was not made by batch_pool for this stream")
        decoded = pool.map(chunks)
    else:
        decoded = ordered_map(_DecodeChunk(stream, tokenizer), chunks, workers=workers,
                              prefetch=prefetch, pin_memory=pin_memory)
    try:
        yield from _assemble(decoded, batch_size, stream.skips)
    finally:
        decoded.close()


# --------------------------------------------------------------------------- evaluation


@dataclass
class ImageBatch:
    """Decoded images of one slice of a labelled image list, their labels and its skips."""

    images: Any
    labels: list[int]
    skipped: Counter = field(default_factory=Counter)

    def pin_memory(self) -> ImageBatch:
        self.images = _pin(self.images)
        return self

    def __getstate__(self) -> dict[str, Any]:  # pickled only to leave a worker
        return _to_wire(self.__dict__, ("images",))

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(_from_wire(state, ("images",)))


class _DecodeImages:
    def __init__(self, transform: Callable[[Any], Any]) -> None:
        self.split = SplitTransform(transform)

    def __call__(self, samples: Sequence[tuple[str, int]]) -> ImageBatch:
        images, labels, skipped = [], [], Counter()
        for path, label in samples:
            image, failure = decode_image(path, self.split.per_image)
            if failure is not None:
                skipped[failure] += 1
                continue
            images.append(image)
            labels.append(label)
        return ImageBatch(self.split.stack(images) if images else None, labels, skipped)


def iter_image_batches(samples: Sequence[tuple[str, int]], transform: Callable[[Any], Any],
                       batch_size: int, *, workers: int = 0, prefetch: int = 2,
                       pin_memory: bool = False) -> Generator[ImageBatch, None, None]:
    """One :class:`ImageBatch` per ``batch_size`` consecutive ``(path, label)`` samples, in order;
    unreadable images are left out and counted (``missing_image``/``corrupt_image``)."""
    slices = (samples[i:i + batch_size] for i in range(0, len(samples), batch_size))
    return ordered_map(_DecodeImages(transform), slices, workers=workers, prefetch=prefetch,
                       pin_memory=pin_memory)
