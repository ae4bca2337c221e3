"""Small on-disk fixtures in the real formats, built from scikit-image's bundled photos.

Used by the tests and by ``mmclshift train CONFIG --smoke``. :func:`build_fixtures` writes, under
one folder:

* ``images/`` small JPEG crops of real photos (cat, coffee cup, rocket, motorcycle, astronaut,
  clock), and ``bad/`` a corrupt JPEG;
* ``train.csv`` (comma) and ``train.tsv`` (tab): ``filepath`` + ``title`` columns, including one
  missing file, one corrupt JPEG and one empty caption;
* ``coco/annotations/captions_train2017.json`` + ``coco/train2017/`` (several captions per image);
* ``shards/train-000000.tar`` .. ``-000002.tar`` (``key.jpg`` + ``key.txt``) and an empty shard;
* ``eval/imagenet/<wnid>/`` a 3-class class-folder test set (tabby cat, coffee mug, space
  shuttle) with ``eval/subset3.txt`` listing those wnids; ``vocab.yaml`` a 3-class vocabulary.

Captions are written here by hand for each photo.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import numpy as np

from mmclshift.errors import UserError

#: photo -> (class used for the fixture's labels, hand-written captions)
PHOTOS: dict[str, tuple[str, list[str]]] = {
    "chelsea": ("cat", [
        "a tabby cat with striped fur looking to the side",
        "an orange cat sitting in front of a gray wall",
        "close up of a small striped cat",
        "a cat with green eyes and long white whiskers",
        "the ginger cat looks away from the camera",
    ]),
    "coffee": ("cup", [
        "a cup of coffee on a white saucer",
        "a red coffee cup with a spoon on a wooden table",
        "black coffee in a ceramic mug seen from above",
        "a hot cup of coffee next to a silver spoon",
        "a mug of dark coffee on a plate",
    ]),
    "rocket": ("rocket", [
        "a white rocket standing on the launch pad",
        "a tall rocket ready for launch under a blue sky",
        "the space rocket on its launch tower",
        "a rocket and a metal tower at the launch site",
        "a large rocket before liftoff",
    ]),
    "stereo_motorcycle": ("motorcycle", [
        "a motorcycle parked in a garage",
        "a shiny red motorcycle next to a white wall",
        "the front wheel of a parked motorcycle",
        "a motorbike standing on a gray floor",
        "an old motorcycle in a workshop",
    ]),
    "astronaut": ("person", [
        "an astronaut in a white space suit holding a helmet",
        "a woman astronaut smiling next to a flag",
        "portrait of an astronaut in an orange suit",
        "a smiling person in a space suit",
        "an astronaut posing for an official photo",
    ]),
    "clock": ("clock", [
        "a wall clock showing the time",
        "an old clock with black hands",
        "a round clock face with numbers",
        "close up of a clock on a wall",
        "a clock with a white face",
    ]),
}

#: the 3-class test set: ImageNet wnid -> photo used for its images
EVAL_CLASSES = {"n02123045": "chelsea", "n03063599": "coffee", "n04266014": "rocket"}

VOCAB = {
    "cat": ["cat", "kitten", "kitty"],
    "cup": ["cup", "mug", "coffee"],
    "rocket": ["rocket", "space shuttle"],
    "motorcycle": ["motorcycle", "motorbike"],
    "person": ["person", "astronaut", "woman", "man"],
    "clock": ["clock"],
}


def _photo(name: str) -> np.ndarray:
    try:
        import skimage.data as skd
    except ImportError as exc:  # pragma: no cover - dev extra
        raise UserError("fixtures need scikit-image (pip install 'mmclshift[dev]')") from exc
    img = getattr(skd, name)()
    if isinstance(img, tuple):
        img = img[0]
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    return img[..., :3]


def _crops(img: np.ndarray, n: int, size: int, rng: random.Random) -> list[bytes]:
    from PIL import Image

    im = Image.fromarray(img)
    w, h = im.size
    out = []
    for _ in range(n):
        s = rng.uniform(0.6, 1.0)
        cw, ch = int(w * s), int(h * s)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = im.crop((x, y, x + cw, y + ch)).resize((size, size))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        buf = io.BytesIO()
        crop.save(buf, format="JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def _tar_add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tf.addfile(info, io.BytesIO(data))


def build_fixtures(root: str | Path, *, per_photo: int = 6, size: int = 48, seed: int = 0,
                   eval_per_class: int = 4) -> dict[str, Path]:
    """Write the fixtures under ``root`` (idempotent); return the paths of each part."""
    root = Path(root)
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    records: list[tuple[str, str, list[str]]] = []  # (file name, class, captions)
    for photo, (cls, captions) in PHOTOS.items():
        img = _photo(photo)
        for i, data in enumerate(_crops(img, per_photo, size, rng)):
            name = f"{photo}_{i}.jpg"
            (root / "images" / name).write_bytes(data)
            records.append((name, cls, captions))
    rng.shuffle(records)
    (root / "bad").mkdir(exist_ok=True)
    corrupt = b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF" + bytes(rng.randrange(256) for _ in range(200))
    (root / "bad" / "corrupt.jpg").write_bytes(corrupt)

    # CSV and TSV: one row per (image, caption); plus a missing file, a corrupt one, an empty caption
    rows = [(f"images/{n}", caps[j % len(caps)]) for j, (n, _, caps) in enumerate(records)]
    rows += [("images/does_not_exist.jpg", "a cat on a sofa"), ("bad/corrupt.jpg", "a broken cup"),
             (f"images/{records[0][0]}", "")]
    for fname, sep in (("train.csv", ","), ("train.tsv", "\t")):
        lines = [f"filepath{sep}title"] + [f"{p}{sep}{c}" for p, c in rows]
        (root / fname).write_text("\n".join(lines) + "\n", encoding="utf-8")

    # COCO captions JSON
    coco = root / "coco"
    (coco / "train2017").mkdir(parents=True, exist_ok=True)
    (coco / "annotations").mkdir(exist_ok=True)
    images, anns = [], []
    for i, (name, _, caps) in enumerate(records):
        (coco / "train2017" / name).write_bytes((root / "images" / name).read_bytes())
        images.append({"id": i + 1, "file_name": name, "height": size, "width": size})
        for c in caps:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "caption": c})
    images.append({"id": len(records) + 1, "file_name": "missing.jpg"})
    anns.append({"id": len(anns) + 1, "image_id": len(records) + 1, "caption": "a lost cat"})
    (coco / "annotations" / "captions_train2017.json").write_text(
        json.dumps({"images": images, "annotations": anns}), encoding="utf-8")

    # webdataset shards (3 with data, 1 empty)
    shards = root / "shards"
    shards.mkdir(exist_ok=True)
    n_shards = 3
    for s in range(n_shards):
        with tarfile.open(shards / f"train-{s:06d}.tar", "w") as tf:
            for j, (name, _, caps) in enumerate(records):
                if j % n_shards != s:
                    continue
                key = f"{s:03d}{j:05d}"
                _tar_add(tf, f"{key}.jpg", (root / "images" / name).read_bytes())
                _tar_add(tf, f"{key}.txt", caps[j % len(caps)].encode())
            if s == 0:
                _tar_add(tf, "bad00001.jpg", corrupt)
                _tar_add(tf, "bad00001.txt", b"a broken image of a cup")
    with tarfile.open(shards / "empty-000000.tar", "w"):
        pass

    # 3-class test set in ImageNet class folders
    ev = root / "eval" / "imagenet"
    for wnid, photo in EVAL_CLASSES.items():
        (ev / wnid).mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(_crops(_photo(photo), eval_per_class, size, rng)):
            (ev / wnid / f"{wnid}_{i}.jpg").write_bytes(data)
    (root / "eval" / "subset3.txt").write_text("\n".join(EVAL_CLASSES) + "\n", encoding="utf-8")
    import yaml

    (root / "vocab.yaml").write_text(yaml.safe_dump(VOCAB, sort_keys=False), encoding="utf-8")
    return {
        "root": root, "csv": root / "train.csv", "tsv": root / "train.tsv",
        "coco": coco / "annotations" / "captions_train2017.json", "coco_images": coco / "train2017",
        "shards": shards / f"train-{{000000..{n_shards - 1:06d}}}.tar",
        "empty_shard": shards / "empty-000000.tar", "eval": ev,
        "subset": root / "eval" / "subset3.txt", "vocab": root / "vocab.yaml",
    }
