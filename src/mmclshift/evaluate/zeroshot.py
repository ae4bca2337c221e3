"""Zero-shot evaluation on ImageNet and its shifted variants (Section 6, Figure 3 axes).

Three steps, one module each; this module gathers their public names:

* :mod:`~mmclshift.evaluate.testsets` -- resolve a class-folder test set under its protocol
  (ImageNet, -V2, -Sketch, -R, -A, ObjectNet; the protocol table is there) into an
  :class:`EvalSet`: images, labels, and the head's classes;
* :mod:`~mmclshift.evaluate.text_head` -- a CLIP model's text head (class-name prompts x
  templates, averaged and normalised), built once per (model, class names, templates) by
  :class:`TextHeadCache` and reused;
* :mod:`~mmclshift.evaluate.scoring` -- score a model on an :class:`EvalSet` (a CLIP model with its
  text head, an SL model with its own linear head restricted to the same classes): one record per
  (model, test set) with top-1/top-5 accuracy, counts, and a warning when the folder's image count
  differs from the test set's known size.
"""

from __future__ import annotations

from mmclshift.evaluate.scoring import (
    GroupMax,
    Scorer,
    evaluate,
    group_scorer,
    sl_row,
    topk_correct,
    topk_hits,
)
from mmclshift.evaluate.testsets import (
    KNOWN_SIZES,
    OBJECTNET_BORDER,
    OBJECTNET_HEADS,
    OTHER_KNOWN_SIZES,
    PROTOCOLS,
    SUBSET_VAL_SIZE,
    BorderCrop,
    EvalSet,
    ObjectNetMapping,
    imagenet_classes,
    read_classes_file,
    read_objectnet_mapping,
    read_subset,
    resolve_eval_set,
    with_border_crop,
)
from mmclshift.evaluate.testsets import _classlist as _classlist  # the shipped class lists
from mmclshift.evaluate.text_head import (
    OPENAI_TEMPLATES,
    SIMPLE_TEMPLATES,
    TEXT_BATCH,
    TOKENIZE_IN_WORKERS_FROM,
    TextHeadCache,
    default_tokenize_workers,
    load_templates,
    tokenized_chunks,
)

__all__ = [
    "KNOWN_SIZES", "OBJECTNET_BORDER", "OBJECTNET_HEADS", "OPENAI_TEMPLATES", "OTHER_KNOWN_SIZES",
    "PROTOCOLS", "SIMPLE_TEMPLATES", "SUBSET_VAL_SIZE", "TEXT_BATCH", "TOKENIZE_IN_WORKERS_FROM",
    "BorderCrop", "EvalSet", "GroupMax", "ObjectNetMapping", "Scorer", "TextHeadCache",
    "default_tokenize_workers", "evaluate", "group_scorer", "imagenet_classes", "load_templates",
    "read_classes_file", "read_objectnet_mapping", "read_subset", "resolve_eval_set", "sl_row",
    "tokenized_chunks", "topk_correct", "topk_hits", "with_border_crop",
]
