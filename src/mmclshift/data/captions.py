"""Class vocabularies (labels from captions) and caption-richness transforms (Figure 3b).

**Labels from captions.** The SL baseline and the intra-class-contrasting ablation (Figure 3c)
need a class per training pair. :class:`ClassVocab` finds the class names (and their synonyms) a
caption mentions: matching is lower-case, whole-word, tolerant to plurals ("dogs", "buses",
"puppies"), and a longer phrase wins over a shorter one it contains ("teddy bear" over "bear").
Two policies, both configurable in ``data``:

* ``multi_class``: a caption naming several classes is labelled with the class mentioned
  **first** (``first``, default) or dropped (``drop``);
* ``no_class``: a caption naming no class is dropped (``drop``, default) or kept with label -1
  (``keep``): MMCL still trains on it, the intra-class ablation treats it as a class of its own,
  and SL ignores it in its loss (cross-entropy ``ignore_index=-1``).

Built-in vocabularies: ``coco`` (the 80 MSCOCO categories with synonyms, ``vocab/coco.yaml``) and
``imagenet`` (the 1000 ImageNet class names OpenCLIP ships, in wnid order). A YAML file
``{class name: [synonym, ...]}`` (or a list of names) gives a user vocabulary.

**Caption transforms** (composable, applied in config order, each tested on real captions):
``class_only`` (replace the caption by the first class phrase it mentions), ``drop_words``
(remove attribute words: colours, sizes, materials, counts, textures, ...), ``truncate`` (keep the
first N words) and ``keep_captions`` (keep k of an image's captions; applied per image).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mmclshift.errors import DataError, UserError

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _singular(word: str) -> str:
    """A canonical form shared by a noun and its plural (dog/dogs, bus/buses, cake/cakes,
    puppy/puppies, glass/glasses); irregular plurals need a synonym entry."""
    if len(word) > 4 and word.endswith("ies"):
        word = word[:-3] + "y"
    elif len(word) > 3 and word.endswith(("ches", "shes", "sses", "xes", "zes", "oes")):
        word = word[:-2]
    elif len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us")):
        word = word[:-1]
    if len(word) > 3 and word.endswith("e"):
        word = word[:-1]
    return word


class ClassVocab:
    """Class names with synonyms; maps a caption to the classes it mentions, in order."""

    def __init__(self, names: Sequence[str], synonyms: Mapping[str, Sequence[str]] | None = None):
        self.names = list(names)  # may repeat (ImageNet has two "crane"s); a phrase maps to the first
        self._phrases: dict[tuple[str, ...], int] = {}
        for idx, name in enumerate(self.names):
            for phrase in [name, *((synonyms or {}).get(name, []))]:
                key = tuple(_singular(w) for w in words(phrase))
                if key:
                    self._phrases.setdefault(key, idx)
        self._max_len = max((len(k) for k in self._phrases), default=1)

    def __len__(self) -> int:
        return len(self.names)

    def mentions(self, caption: str) -> list[tuple[int, int, int]]:
        """Non-overlapping (start word, end word, class id) mentions, longest phrase first."""
        toks = [_singular(w) for w in words(caption)]
        out = []
        i = 0
        while i < len(toks):
            for n in range(min(self._max_len, len(toks) - i), 0, -1):
                cls = self._phrases.get(tuple(toks[i:i + n]))
                if cls is not None:
                    out.append((i, i + n, cls))
                    i += n
                    break
            else:
                i += 1
        return out

    def classes_in(self, caption: str) -> list[int]:
        """Distinct class ids in order of first mention."""
        seen: list[int] = []
        for _, _, c in self.mentions(caption):
            if c not in seen:
                seen.append(c)
        return seen

    def labeller(self, multi_class: str = "first", no_class: str = "drop") -> Callable[[str], int | None]:
        """A caption -> label function with the given policies (see the module docstring)."""
        if multi_class not in ("first", "drop"):
            raise UserError(f"data.multi_class must be 'first' or 'drop'; got {multi_class!r}")
        if no_class not in ("drop", "keep"):
            raise UserError(f"data.no_class must be 'drop' or 'keep'; got {no_class!r}")

        def label(caption: str) -> int | None:
            classes = self.classes_in(caption)
            if not classes:
                return -1 if no_class == "keep" else None
            if len(classes) > 1 and multi_class == "drop":
                return None
            return classes[0]

        return label


def load_vocab(spec: str) -> ClassVocab:
    """``coco``, ``imagenet`` or a YAML file (``{name: [synonyms]}`` or a list of names)."""
    if spec == "imagenet":
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        return ClassVocab(list(IMAGENET_CLASSNAMES))
    if spec == "coco":
        text = resources.files("mmclshift.data").joinpath("vocab/coco.yaml").read_text("utf-8")
        where = "coco"
    else:
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"data.vocab: {spec!r} is not 'coco', 'imagenet' or an existing file")
        text = path.read_text("utf-8")
        where = str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DataError(f"{where}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if isinstance(data, list):
        return ClassVocab([str(x) for x in data])
    if isinstance(data, dict):
        return ClassVocab([str(k) for k in data], {str(k): [str(s) for s in (v or [])]
                                                   for k, v in data.items()})
    raise DataError(f"{where}: a vocabulary is a list of class names or a mapping name -> synonyms")


# --------------------------------------------------------------------------- caption transforms

ATTRIBUTE_WORDS = frozenset("""
red orange yellow green blue purple pink brown black white gray grey silver golden gold beige
dark light bright colorful colourful pale striped spotted checkered plaid
big small large little tiny huge giant tall short long wide narrow thick thin fat skinny
old young new modern vintage antique ancient
wooden wood metal metallic plastic glass ceramic leather stone brick concrete paper steel
shiny fluffy furry soft hard wet dry dirty clean empty full fresh ripe
one two three four five six seven eight nine ten several many few some
pretty beautiful cute ugly nice fancy
""".split())


def class_only(vocab: ClassVocab) -> Callable[[str], str]:
    """Keep only the first class noun phrase of the caption (as written); '' if none."""

    def fn(caption: str) -> str:
        m = vocab.mentions(caption)
        if not m:
            return ""
        start, end, _ = m[0]
        return " ".join(words(caption)[start:end])

    return fn


def drop_words(attribute_words: Sequence[str] | None = None) -> Callable[[str], str]:
    """Remove attribute words (default :data:`ATTRIBUTE_WORDS`) from the caption."""
    drop = frozenset(w.lower() for w in attribute_words) if attribute_words else ATTRIBUTE_WORDS

    def fn(caption: str) -> str:
        return " ".join(w for w in caption.split() if re.sub(r"[^a-z0-9']", "", w.lower()) not in drop)

    return fn


def truncate(n: int) -> Callable[[str], str]:
    """Keep the first ``n`` whitespace-separated words."""
    if n < 1:
        raise UserError(f"truncate needs n >= 1; got {n}")

    def fn(caption: str) -> str:
        return " ".join(caption.split()[:n])

    return fn


def build_caption_transforms(specs: Sequence[Mapping[str, Any]], vocab: ClassVocab | None
                             ) -> tuple[Callable[[str], str], int | None]:
    """Compose transform specs (``{kind: truncate, n: 5}`` ...) into one caption function.

    Returns ``(caption_fn, keep_captions)``; ``keep_captions`` is the k of a ``keep_captions``
    spec (applied per image by the data stream) or None.
    """
    fns: list[Callable[[str], str]] = []
    keep: int | None = None
    for i, spec in enumerate(specs):
        spec = dict(spec)
        kind = spec.pop("kind", None)
        where = f"data.caption_transforms[{i}]"
        try:
            if kind == "class_only":
                if vocab is None:
                    raise UserError(f"{where}: class_only needs data.vocab")
                fns.append(class_only(vocab))
            elif kind == "drop_words":
                fns.append(drop_words(spec.pop("words", None)))
            elif kind == "truncate":
                fns.append(truncate(int(spec.pop("n"))))
            elif kind == "keep_captions":
                keep = int(spec.pop("k"))
                if keep < 1:
                    raise UserError(f"{where}: k must be >= 1")
            else:
                raise UserError(f"{where}: unknown kind {kind!r} "
                                "(class_only, drop_words, truncate, keep_captions)")
        except KeyError as exc:
            raise UserError(f"{where}: missing key {exc}") from None
        if spec:
            raise UserError(f"{where}: unknown key(s) {', '.join(sorted(spec))}")

    def compose(caption: str) -> str:
        for fn in fns:
            caption = fn(caption)
        return caption

    return compose, keep
