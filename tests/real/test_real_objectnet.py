"""ObjectNet protocols: the 2-px frame crop, both head rules, the ObjectNet-classes ID set, mapping
errors; the group max against a plain per-group max; zero-shot predictions against open_clip's path."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mmclshift.errors import DataError, UserError
from mmclshift.evaluate.zeroshot import (
    GroupMax,
    Scorer,
    evaluate,
    group_scorer,
    resolve_eval_set,
)

from .test_real_zeroshot import COLORS, NAMES, WNIDS, ColorModel, preprocess

# test-local text colours of ObjectNet's own names ("cup" -> gray, "lamp" -> red)
TEXT_COLOUR = {**{n: i for i, n in enumerate(NAMES)}, "cup": 3, "lamp": 0}


def tokenizer(texts):
    return torch.tensor([next(i for n, i in TEXT_COLOUR.items() if n in t) for t in texts])


def _write_mappings(m, on_to_in=None):
    """ObjectNet mapping files: 'Cup' -> red + green thing, 'Lamp' -> blue thing, 'Sock' -> none."""
    m.mkdir(parents=True, exist_ok=True)
    (m / "folder_to_objectnet_label.json").write_text(json.dumps(
        {"cup": "Cup", "lamp": "Lamp", "sock": "Sock"}))
    (m / "objectnet_to_imagenet_1k.json").write_text(json.dumps(
        on_to_in or {"Cup": "red thing; green thing", "Lamp": "blue thing"}))
    # ImageNet-2012 ids are a permutation of the torchvision indices
    (m / "pytorch_to_imagenet_2012_id.json").write_text(json.dumps({str(i): (i + 1) % 5 for i in range(5)}))
    by_id = {(i + 1) % 5: NAMES[i] for i in range(5)}
    (m / "imagenet_to_label_2012_v2").write_text("".join(by_id[j] + "\n" for j in range(5)))


def _framed(colour, frame=(255, 0, 0), size=12, border=2):
    im = Image.new("RGB", (size, size), frame)
    im.paste(Image.new("RGB", (size - 2 * border, size - 2 * border), colour), (border, border))
    return im


@pytest.fixture()
def objectnet(tmp_path):
    _write_mappings(tmp_path / "mappings")
    (tmp_path / "classes.txt").write_text("".join(f"{w}\t{n}\n" for w, n in zip(WNIDS, NAMES, strict=True)))
    images = {"cup": [COLORS[0], COLORS[1]], "lamp": [COLORS[2]], "sock": [COLORS[4]]}
    for folder, colours in images.items():
        (tmp_path / "images" / folder).mkdir(parents=True)
        for i, c in enumerate(colours):
            _framed(c).save(tmp_path / "images" / folder / f"{i}.png")
    return tmp_path


def _resolve(root, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fixture sizes differ from the full sets
        return resolve_eval_set(kw.pop("name", "objectnet"), kw.pop("path", root),
                                kw.pop("protocol", "objectnet"),
                                classes_file=str(root / "classes.txt"), **kw)


def _clip():
    return Scorer("clip", ColorModel(), "m", tokenizer=tokenizer, templates="simple")


def test_border_crop_keeps_frame_pixels_from_the_model(objectnet):
    seen = []

    def recording(im):
        seen.append(np.asarray(im))
        return preprocess(im)

    ev = _resolve(objectnet)
    assert ev.border == 2
    rec = evaluate(_clip(), ev, recording)
    assert len(seen) == 3 and all(a.shape == (8, 8, 3) for a in seen)
    interiors = {tuple(map(int, a.reshape(-1, 3)[0])) for a in seen}
    assert all((a == a[0, 0]).all() for a in seen)  # one colour: no frame pixel left
    assert interiors == {COLORS[0], COLORS[1], COLORS[2]} and rec["border"] == 2
    # the blue lamp image with its red frame: mean colour reddish -> scored 'cup' without the crop
    assert rec["accuracy"] == 1.0
    uncropped = evaluate(_clip(), _resolve(objectnet, border=0), preprocess)
    assert uncropped["border"] == 0 and uncropped["correct"] == 2


def _numpy_predictions(images, text_rows, groups):
    """Reference: cosine scores of mean colours against text colours, max over each group."""
    feats = np.stack([np.asarray(c, float) / 255 - 0.4 for c in images])
    text = np.stack([np.asarray(COLORS[r], float) / 255 - 0.4 for r in text_rows])
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    s = feats @ text.T
    return np.stack([s[:, g].max(1) for g in groups], axis=1).argmax(1)


def test_both_heads_on_the_same_fixture_are_labelled(objectnet):
    images, labels = [COLORS[0], COLORS[1], COLORS[2]], np.array([0, 0, 1])  # cup, cup, lamp
    recs = {}
    for head in ("imagenet-max", "objectnet-names"):
        ev = _resolve(objectnet, objectnet_head=head)
        recs[head] = evaluate(_clip(), ev, preprocess)
        assert recs[head]["head"] == head and recs[head]["n_classes"] == 2
        assert ev.group_names == ["cup", "lamp"]
    # imagenet-max: cup = max(red, green), lamp = blue; objectnet-names: cup = gray, lamp = red
    want_max = _numpy_predictions(images, [0, 1, 2], [[0, 1], [2]])
    want_names = _numpy_predictions(images, [3, 0], [[0], [1]])
    assert recs["imagenet-max"]["correct"] == int((want_max == labels).sum()) == 3
    assert recs["objectnet-names"]["correct"] == int((want_names == labels).sum()) == 1
    assert _resolve(objectnet, objectnet_head="objectnet-names").class_names == ["cup", "lamp"]


def test_imagenet_val_on_objectnet_classes(objectnet):
    val = objectnet / "val"
    for k in range(5):  # red, green -> Cup; blue -> Lamp; gray, black: not ObjectNet classes
        (val / WNIDS[k]).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), COLORS[k]).save(val / WNIDS[k] / f"{i}.png")
    with pytest.warns(UserWarning, match="6250"):
        ev = resolve_eval_set("id_objectnet", val, "imagenet", subset="objectnet",
                              mappings_dir=str(objectnet / "mappings"),
                              classes_file=str(objectnet / "classes.txt"))
    assert ev.groups == [[0, 1], [2]] and ev.group_names == ["cup", "lamp"]
    assert ev.head == "imagenet-max" and ev.border == 0 and ev.excluded == 4
    assert sorted(lab for _, lab in ev.samples) == [0, 0, 0, 0, 1, 1]
    rec = evaluate(_clip(), ev, preprocess)
    assert rec["accuracy"] == 1.0 and rec["n"] == 6 and rec["n_classes"] == 2
    # the same images under the CLIP_benchmark head: cup = gray, lamp = red
    names = _resolve(objectnet, name="id_objectnet", path=val, protocol="imagenet",
                     subset="objectnet", mappings_dir=str(objectnet / "mappings"),
                     objectnet_head="objectnet-names")
    want = _numpy_predictions([COLORS[0], COLORS[1], COLORS[2]], [3, 0], [[0], [1]])
    assert evaluate(_clip(), names, preprocess)["correct"] == 2 * int((want == [0, 0, 1]).sum())
    with pytest.raises(UserError, match="mappings_dir"):
        resolve_eval_set("x", val, "imagenet", subset="objectnet",
                         classes_file=str(objectnet / "classes.txt"))


@pytest.mark.parametrize("on_to_in,where,what", [
    ({"Cup": "red thing; teal thing", "Lamp": "blue thing"}, "objectnet_to_imagenet_1k.json",
     "teal thing"),
    ({"Cup": "red thing", "Kettle": "blue thing"}, "objectnet_to_imagenet_1k.json", "Kettle"),
])
def test_unmatched_mapping_names_are_one_line_errors(objectnet, on_to_in, where, what):
    _write_mappings(objectnet / "mappings", on_to_in)
    with pytest.raises(DataError) as exc:
        _resolve(objectnet)
    msg = str(exc.value)
    assert where in msg and repr(what) in msg and "\n" not in msg


def test_objectnet_size_counts(objectnet):
    with pytest.warns(UserWarning, match="18574"):
        resolve_eval_set("o", objectnet, "objectnet", classes_file=str(objectnet / "classes.txt"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the count given is the count found: no warning
        ev = resolve_eval_set("o", objectnet, "objectnet", expected_size=3,
                              classes_file=str(objectnet / "classes.txt"))
    assert ev.expected_size == 3 and not ev.warnings


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 9), st.integers(1, 6), st.integers(1, 5), st.data())
def test_group_max_matches_per_group_max(n_classes, n_groups, batch, data):
    groups = [data.draw(st.lists(st.integers(0, n_classes - 1), min_size=1, max_size=4, unique=True))
              for _ in range(n_groups)]
    head = sorted({c for g in groups for c in g})
    logits = torch.randn(batch, len(head), dtype=torch.float64)
    pos = {c: i for i, c in enumerate(head)}
    want = np.stack([logits.numpy()[:, [pos[c] for c in g]].max(1) for g in groups], axis=1)
    np.testing.assert_array_equal(GroupMax(groups, head)(logits).numpy(), want)


def test_predictions_identical_to_open_clip_path_at_1000_classes(tmp_path):
    """1000 ImageNet classes, a random mmcl-tiny model: our head and group scoring pick the same
    class as open_clip's ``build_zero_shot_classifier`` + ``features @ classifier`` on every image."""
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    from mmclshift.evaluate.zeroshot import EvalSet, imagenet_classes
    from mmclshift.models.clip_models import create_clip

    torch.manual_seed(0)
    model, _, tok = create_clip("mmcl-tiny")
    model.eval()
    (tmp_path / "t.txt").write_text("a photo of a {}.\n")
    _, names = imagenet_classes()
    ev = EvalSet("id", "imagenet", [], [[c] for c in range(1000)], names, names, None)
    score, _ = group_scorer(Scorer("clip", model, "m", tokenizer=tok,
                                   templates=str(tmp_path / "t.txt")), ev)
    images = torch.randn(48, 3, 32, 32)
    with torch.no_grad():
        classifier = build_zero_shot_classifier(model, tok, names, ["a photo of a {}."],
                                                num_classes_per_batch=None)
        ref = (100.0 * model.encode_image(images, normalize=True) @ classifier).argmax(1)
        ours = score(images).argmax(1)
    assert torch.equal(ours, ref)
