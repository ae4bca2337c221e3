"""Image-caption datasets (CSV/TSV, COCO, webdataset) and caption vocabularies/transforms."""

from __future__ import annotations

import json
import tarfile

import pytest

from mmclshift.data.captions import (
    build_caption_transforms,
    class_only,
    drop_words,
    load_vocab,
    truncate,
)
from mmclshift.data.image_text import (
    PairStream,
    SkipCounts,
    detect_separator,
    expand_shards,
    iter_tar_items,
    make_source,
    read_coco_items,
    read_csv_items,
)
from mmclshift.errors import DataError


def _count(stream, epoch=0):
    return sum(1 for _ in stream.epoch(epoch))


def test_separator_detection_and_both_formats(fx):
    assert detect_separator("filepath\ttitle") == "\t"
    assert detect_separator("filepath,title") == ","
    csv_items = read_csv_items(fx["csv"])
    tsv_items = read_csv_items(fx["tsv"])
    assert [i.key for i in csv_items] == [i.key for i in tsv_items]
    assert [i.captions for i in csv_items] == [i.captions for i in tsv_items]
    assert len(csv_items) == 36 + 2  # 36 photos + missing + corrupt (the empty caption merges)


def test_csv_missing_column_is_one_line_error(fx, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("filepath,caption\nimages/a.jpg,a cat\n")
    with pytest.raises(DataError) as exc:
        read_csv_items(bad)
    msg = str(exc.value)
    assert "\n" not in msg and str(bad) in msg and "'title'" in msg
    assert "columns: filepath, caption" in msg


def test_coco_json(fx, tmp_path):
    items = read_coco_items(fx["coco"])
    assert len(items) == 37
    assert sum(len(i.captions) == 5 for i in items) == 36
    assert str(fx["coco_images"]) in items[0].image
    broken = tmp_path / "captions.json"
    broken.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_coco_items(broken)


def test_shards_brace_expansion_and_empty_shard(fx):
    shards = expand_shards(str(fx["shards"]))
    assert len(shards) == 3 and shards[0].endswith("train-000000.tar")
    skips = SkipCounts()
    assert list(iter_tar_items(fx["empty_shard"], skips)) == []
    assert skips.as_dict() == {"empty_shard": 1}
    n = sum(1 for s in shards for _ in iter_tar_items(s, skips))
    assert n == 36 + 1  # the corrupt image is an item until decoded
    both = expand_shards(f"{fx['shards']}::{fx['empty_shard']}")
    assert len(both) == 4


def _identity(im):
    return im.size


def test_skips_are_counted_not_raised(fx):
    vocab = load_vocab(str(fx["vocab"]))
    lab = vocab.labeller("first", "keep")
    csv_stream = PairStream(make_source("csv", str(fx["csv"])), _identity, seed=0,
                            label_fn=lab, caption_mode="all")
    n = _count(csv_stream)
    assert csv_stream.skips.as_dict() == {"corrupt_image": 1, "empty_caption": 1,
                                          "missing_image": 1}
    assert n == 36
    wds = PairStream(make_source("wds", f"{fx['shards']}::{fx['empty_shard']}"), _identity,
                     seed=0, label_fn=lab)
    assert _count(wds) == 36
    assert wds.skips.as_dict() == {"corrupt_image": 1, "empty_shard": 1}
    coco = PairStream(make_source("coco", str(fx["coco"])), _identity, seed=0, label_fn=lab)
    assert _count(coco) == 36 and coco.skips.as_dict() == {"missing_image": 1}


def test_stream_is_deterministic_and_splits_over_ranks(fx):
    src = make_source("coco", str(fx["coco"]))
    one = [(s.position, s.caption) for s in PairStream(src, _identity, seed=3).epoch(1)]
    again = [(s.position, s.caption) for s in PairStream(src, _identity, seed=3).epoch(1)]
    assert one == again
    other = [(s.position, s.caption) for s in PairStream(src, _identity, seed=3).epoch(2)]
    assert one != other
    r0 = [(s.position, s.caption) for s in PairStream(src, _identity, seed=3, rank=0,
                                                      world_size=2).epoch(1)]
    r1 = [(s.position, s.caption) for s in PairStream(src, _identity, seed=3, rank=1,
                                                      world_size=2).epoch(1)]
    assert sorted(r0 + r1) == sorted(one)
    resumed = [(s.position, s.caption) for s in PairStream(src, _identity, seed=3).epoch(1, 10)]
    assert resumed == [p for p in one if p[0] >= 10]


# --------------------------------------------------------------------------- vocabulary

COCO_CAPTIONS = [  # real MSCOCO-style captions
    "A man riding a wave on top of a surfboard.",
    "Two dogs playing with a frisbee in the park.",
    "A teddy bear sitting on a wooden bench.",
    "A bowl of broccoli and carrots on a table.",
    "The view of the sky at sunset.",
    "Several buses parked next to each other.",
]


def test_vocab_labels_real_captions():
    coco = load_vocab("coco")
    assert len(coco) == 80
    n = coco.names.index
    assert coco.classes_in(COCO_CAPTIONS[0]) == [n("person"), n("surfboard")]
    assert coco.classes_in(COCO_CAPTIONS[1]) == [n("dog"), n("frisbee")]  # plural "dogs"
    assert coco.classes_in(COCO_CAPTIONS[2])[0] == n("teddy bear")  # longest phrase wins
    assert coco.classes_in(COCO_CAPTIONS[5]) == [n("bus")]  # "buses"
    first = coco.labeller("first", "drop")
    drop = coco.labeller("drop", "keep")
    assert first(COCO_CAPTIONS[3]) == n("bowl")
    assert drop(COCO_CAPTIONS[3]) is None  # multi-class dropped
    assert first(COCO_CAPTIONS[4]) is None  # no class dropped
    assert drop(COCO_CAPTIONS[4]) == -1  # no class kept as -1
    imagenet = load_vocab("imagenet")
    assert len(imagenet) == 1000
    assert imagenet.classes_in("a tabby cat on a sofa") == [imagenet.names.index("tabby cat")]


def test_caption_transforms_on_real_captions(fx):
    coco = load_vocab("coco")
    cap = "A small brown dog running on the green grass with a red frisbee."
    assert class_only(coco)(cap) == "dog"
    assert class_only(coco)("The view of the sky at sunset.") == ""
    assert drop_words()(cap) == "A dog running on the grass with a frisbee."
    assert truncate(4)(cap) == "A small brown dog"
    fn, keep = build_caption_transforms(
        [{"kind": "drop_words"}, {"kind": "truncate", "n": 3}, {"kind": "keep_captions", "k": 2}],
        coco)
    assert fn(cap) == "A dog running" and keep == 2
    # keep_captions on COCO items: only the first 2 captions are ever drawn
    src = make_source("coco", str(fx["coco"]))
    stream = PairStream(src, _identity, seed=0, keep_captions=2, caption_mode="all")
    samples = list(stream.epoch(0))
    assert len(samples) == 72
    first_two = {c for it in read_coco_items(fx["coco"]) for c in it.captions[:2]}
    assert {s.caption for s in samples} <= first_two
    with pytest.raises(Exception, match="unknown kind"):
        build_caption_transforms([{"kind": "shout"}], coco)


def test_coco_json_missing_keys(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="not a COCO captions file"):
        read_coco_items(p)


def test_truncated_shard_counts(tmp_path, fx):
    data = open(expand_shards(str(fx["shards"]))[1], "rb").read()
    bad = tmp_path / "cut.tar"
    bad.write_bytes(data[: len(data) // 2 + 100])
    skips = SkipCounts()
    got = list(iter_tar_items(bad, skips))
    assert "corrupt_shard" in skips.as_dict() or len(got) < 12
    assert isinstance(tarfile.TarError, type)
