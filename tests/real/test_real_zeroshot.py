"""Zero-shot evaluation: exact accuracy of a hand-built model, class subsets, ObjectNet groups."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmclshift.data.captions import ClassVocab
from mmclshift.errors import DataError
from mmclshift.evaluate.zeroshot import (
    Scorer,
    TextHeadCache,
    _classlist,
    evaluate,
    resolve_eval_set,
)

NAMES = ["red thing", "green thing", "blue thing", "gray thing", "black thing"]
WNIDS = ["n00000001", "n00000002", "n00000003", "n00000004", "n00000005"]
COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (128, 128, 128), (0, 0, 0)]


def preprocess(im):
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)


class ColorModel(torch.nn.Module):
    """Image feature = mean colour minus 0.4; text feature = that of the named colour."""

    training = False

    def encode_image(self, x):
        return x.mean((2, 3)) - 0.4

    def encode_text(self, tokens):
        return torch.stack([torch.tensor(COLORS[int(t)], dtype=torch.float32) / 255 - 0.4
                            for t in tokens])

    def forward(self, x):  # as an SL model: its head is the same colour vectors
        f = self.encode_image(x)
        return f, f @ self.encode_text(torch.arange(5)).T


def tokenizer(texts):
    return torch.tensor([next(i for i, n in enumerate(NAMES) if n in t) for t in texts])


@pytest.fixture()
def colour_set(tmp_path):
    (tmp_path / "classes.txt").write_text("".join(f"{w}\t{n}\n" for w, n in zip(WNIDS, NAMES, strict=True)))
    (tmp_path / "subset.txt").write_text("n00000001\nn00000003\nn00000005\n")
    root = tmp_path / "val"
    for k in range(4):
        (root / WNIDS[k]).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), COLORS[k]).save(root / WNIDS[k] / f"{i}.png")
    return tmp_path


def test_hand_built_model_scores_100_percent(colour_set):
    ev = resolve_eval_set("id", colour_set / "val", "imagenet",
                          classes_file=str(colour_set / "classes.txt"))
    assert len(ev.samples) == 12 and ev.warnings  # 12 != 50000 -> warned
    cache = TextHeadCache()
    clip = Scorer("clip", ColorModel(), "m", tokenizer=tokenizer, templates="simple", cache=cache)
    rec = evaluate(clip, ev, preprocess)
    assert rec["accuracy"] == 1.0 and rec["correct"] == 12 and rec["n"] == 12
    assert rec["top5"] == 1.0 and rec["n_classes"] == 4
    built = cache.built
    evaluate(clip, ev, preprocess)
    assert cache.built == built == 4  # the text head is built once and reused
    sl = Scorer("sl", ColorModel(), "m", vocab=ClassVocab(NAMES))
    assert evaluate(sl, ev, preprocess)["accuracy"] == 1.0


def test_three_class_subset_mapping(colour_set):
    ev = resolve_eval_set("id3", colour_set / "val", "imagenet",
                          classes_file=str(colour_set / "classes.txt"),
                          subset=str(colour_set / "subset.txt"))
    # folders 0..3 exist; subset = classes 0, 2, 4 -> folders 0 and 2 kept, 1 and 3 excluded
    assert ev.head_classes == [0, 2]
    assert ev.groups == [[0], [2]] and ev.group_names == ["red thing", "blue thing"]
    assert ev.excluded == 6 and len(ev.samples) == 6
    assert sorted({lab for _, lab in ev.samples}) == [0, 1]
    clip = Scorer("clip", ColorModel(), "m", tokenizer=tokenizer, templates="simple")
    rec = evaluate(clip, ev, preprocess)
    assert rec["accuracy"] == 1.0 and rec["n"] == 6 and rec["excluded"] == 6


def test_unknown_class_folder_is_one_line_error(colour_set):
    (colour_set / "val" / "n99999999").mkdir()
    with pytest.raises(DataError) as exc:
        resolve_eval_set("id", colour_set / "val", "imagenet",
                         classes_file=str(colour_set / "classes.txt"))
    assert "n99999999" in str(exc.value) and "\n" not in str(exc.value)


def test_shipped_200_class_lists():
    wnids = _classlist("imagenet_wnids.txt")
    assert len(wnids) == 1000 == len(set(wnids))
    for name in ("imagenet_r_wnids.txt", "imagenet_a_wnids.txt"):
        sub = _classlist(name)
        assert len(sub) == 200 == len(set(sub)) and set(sub) <= set(wnids)


def test_objectnet_groups_project_by_max(tmp_path):
    """Two ObjectNet classes: 'Cup' -> red+green thing, 'Lamp' -> blue thing."""
    m = tmp_path / "mappings"
    m.mkdir()
    (m / "folder_to_objectnet_label.json").write_text(json.dumps({"cup": "Cup", "lamp": "Lamp",
                                                                  "sock": "Sock"}))
    (m / "objectnet_to_imagenet_1k.json").write_text(json.dumps(
        {"Cup": "red thing; green thing", "Lamp": "blue thing"}))
    # ImageNet-2012 ids are a permutation of the torchvision indices
    (m / "pytorch_to_imagenet_2012_id.json").write_text(json.dumps({str(i): (i + 1) % 5
                                                                    for i in range(5)}))
    by_id = {(i + 1) % 5: NAMES[i] for i in range(5)}
    (m / "imagenet_to_label_2012_v2").write_text("".join(by_id[j] + "\n" for j in range(5)))
    (tmp_path / "classes.txt").write_text("".join(f"{w}\t{n}\n" for w, n in zip(WNIDS, NAMES, strict=True)))
    for folder, color in (("cup", COLORS[1]), ("lamp", COLORS[2]), ("sock", COLORS[4])):
        (tmp_path / "images" / folder).mkdir(parents=True)
        Image.new("RGB", (8, 8), color).save(tmp_path / "images" / folder / "a.png")
    ev = resolve_eval_set("objectnet", tmp_path, "objectnet",
                          classes_file=str(tmp_path / "classes.txt"))
    assert ev.groups == [[0, 1], [2]] and ev.group_names == ["cup", "lamp"]
    assert ev.excluded == 1  # 'sock' has no ImageNet class
    clip = Scorer("clip", ColorModel(), "m", tokenizer=tokenizer, templates="simple")
    rec = evaluate(clip, ev, preprocess)
    assert rec["accuracy"] == 1.0 and rec["n"] == 2  # green image -> 'cup' via max over members


def test_head_tokenized_in_worker_processes_equals_the_serial_head():
    """The 1000-class ImageNet head with 2 tokenizer processes is bitwise the head tokenized in the
    calling process (same tokens, same text-tower batches)."""
    import logging

    from mmclshift.evaluate.zeroshot import (
        TOKENIZE_IN_WORKERS_FROM,
        imagenet_classes,
        tokenized_chunks,
    )
    from mmclshift.models.clip_models import create_clip

    logging.getLogger().setLevel(logging.ERROR)
    torch.manual_seed(0)
    model, _, tok = create_clip("mmcl-tiny")
    model.eval()
    _, names = imagenet_classes()
    names = names[:400]  # 400 x 7 simple templates = 2800 texts: the worker path
    assert len(names) * 7 >= TOKENIZE_IN_WORKERS_FROM
    texts = [[f"a photo of a {c}." for c in names[i:i + 50]] for i in range(0, 200, 50)]
    serial = list(tokenized_chunks(tok, texts, workers=0))
    forked = list(tokenized_chunks(tok, texts, workers=2))
    assert len(forked) == 4 and all(torch.equal(a, b) for a, b in zip(serial, forked, strict=True))
    heads = [TextHeadCache(tokenize_workers=w).head(model, tok, "m", names, "simple", torch.device("cpu"))
             for w in (0, 2)]
    assert heads[0].shape == (400, model.text_projection.shape[1]) and torch.equal(heads[0], heads[1])
