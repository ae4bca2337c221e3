"""The zero-shot text head: prompt templates, tokenization and the cached class embeddings.

A CLIP model scores a class by the normalised mean of its text embeddings over the prompt
templates (class name x template); :class:`TextHeadCache` builds these rows once per (model,
class name, templates) and reuses them across test sets. Tokenizing runs ahead of the text tower
(:func:`tokenized_chunks`).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mmclshift.data.loader import ordered_map
from mmclshift.errors import DataError, UserError

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

