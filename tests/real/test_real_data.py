"""Image-caption datasets (CSV/TSV, COCO, webdataset) and caption vocabularies/transforms."""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    batches,
    detect_separator,
    expand_shards,
    iter_tar_items,
    load_image,
    make_source,
    read_coco_items,
    read_csv_items,
)
from mmclshift.data.loader import WorkerPool, batch_pool, iter_batches, iter_image_batches
from mmclshift.errors import DataError, UserError


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


# --------------------------------------------------------------------------- worker loader

def _tensor(im):
    from torchvision.transforms.functional import pil_to_tensor

    return pil_to_tensor(im)


@pytest.fixture(scope="module")
def rough(fx, tmp_path_factory):
    """Fixture data with every kind of skip: the shards plus a zero-byte shard, a garbage shard,
    a valid shard without items and a shard with a non-UTF-8 caption; a CSV with the same."""
    root = tmp_path_factory.mktemp("rough")
    (root / "zero.tar").write_bytes(b"")
    (root / "garbage.tar").write_bytes(bytes(range(256)) * 8)
    with tarfile.open(root / "noitems.tar", "w") as tf:
        _tar_add(tf, "readme", b"no dot, so no item")
    jpeg = (fx["root"] / "images" / "chelsea_0.jpg").read_bytes()
    with tarfile.open(root / "latin1.tar", "w") as tf:
        _tar_add(tf, "k1.jpg", jpeg)
        _tar_add(tf, "k1.txt", "un chat tigr\xe9".encode("latin-1"))
        _tar_add(tf, "k2.jpg", jpeg)
        _tar_add(tf, "k2.txt", "a cat, caf\u00e9 au lait".encode())
    shards = "::".join([str(fx["shards"]), str(root / "zero.tar"), str(root / "garbage.tar"),
                        str(root / "noitems.tar"), str(root / "latin1.tar"),
                        str(fx["empty_shard"]), str(root / "absent.tar")])
    csv_bytes = fx["csv"].read_bytes() + b"images/chelsea_1.jpg,un chat tigr\xe9\n"
    (fx["root"] / "rough.csv").write_bytes(csv_bytes)
    return {"wds": shards, "csv": str(fx["root"] / "rough.csv"), "coco": str(fx["coco"])}


def _tar_add(tf, name, data):
    import io

    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _stream(rough, fx, fmt, **kw):
    lab = load_vocab(str(fx["vocab"])).labeller("first", kw.pop("no_class", "drop"))
    return PairStream(make_source(fmt, rough[fmt]), _tensor, seed=kw.pop("seed", 1),
                      label_fn=lab, **kw)


def _serial_batches(stream, size, epoch=0, start=0):
    """The serial path: (positions, captions, labels, images, skips, visits) per batch."""
    out = []
    for b in batches(stream.epoch(epoch, start), size):
        out.append(([s.position for s in b], [s.caption for s in b], [s.label for s in b],
                    torch.stack([s.image for s in b]), stream.skips.as_dict(),
                    stream.skips.visits()))
    return out, stream.skips.as_dict(), stream.skips.visits()


def _loader_batches(stream, size, epoch=0, start=0, **kw):
    out = []
    for b in iter_batches(stream, size, epoch, start, **kw):
        out.append((b.positions, b.captions, b.labels, b.images(), stream.skips.as_dict(),
                    stream.skips.visits()))
    return out, stream.skips.as_dict(), stream.skips.visits()


def _assert_same(got, ref):
    assert len(got[0]) == len(ref[0])
    for g, r in zip(got[0], ref[0], strict=True):
        assert g[:3] == r[:3] and g[4:] == r[4:]  # samples, skips at this batch boundary
        assert torch.equal(g[3], r[3])
    assert got[1:] == ref[1:]


@pytest.mark.parametrize("fmt", ["csv", "coco", "wds"])
def test_worker_loader_equals_serial_path(fx, rough, fmt):
    """2 DataLoader workers, chunks that cut across batches: the serial path's batches, and its
    skip counts at every batch boundary (per item and per visit)."""
    ref = _serial_batches(_stream(rough, fx, fmt, caption_mode="all", no_class="keep"), 5)
    got = _loader_batches(_stream(rough, fx, fmt, caption_mode="all", no_class="keep"), 5,
                          workers=2, chunk_size=3)
    _assert_same(got, ref)
    expected = {"csv": {"caption_not_utf8", "corrupt_image", "empty_caption", "missing_image"},
                "coco": {"missing_image"},
                "wds": {"caption_not_utf8", "corrupt_image", "corrupt_shard", "empty_shard",
                        "missing_shard"}}[fmt]
    assert set(ref[1]) == expected


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(["csv", "coco", "wds"]), mode=st.sampled_from(["sample", "first", "all"]),
       size=st.integers(1, 7), chunk=st.integers(1, 9), start=st.integers(0, 40),
       world=st.integers(1, 3), rank_seed=st.integers(0, 2), epoch=st.integers(0, 2))
def test_chunked_loader_equals_serial_path_everywhere(fx, rough, fmt, mode, size, chunk, start,
                                                     world, rank_seed, epoch):
    """The chunked loader (run in-process) against the serial path over formats, caption modes,
    batch and chunk sizes, resume positions, ranks and epochs."""
    kw = {"caption_mode": mode, "rank": rank_seed % world, "world_size": world}
    ref = _serial_batches(_stream(rough, fx, fmt, **kw), size, epoch, start)
    got = _loader_batches(_stream(rough, fx, fmt, **kw), size, epoch, start, workers=0,
                          chunk_size=chunk)
    _assert_same(got, ref)


def test_openclip_preprocessing_per_chunk_is_bitwise_per_image(fx):
    """OpenCLIP's transform with to-tensor + normalise run once per chunk (SplitTransform) gives
    the serial path's per-image tensors bit for bit; tokenised captions come with the batch."""
    from mmclshift.data.loader import SplitTransform
    from mmclshift.models.clip_models import create_clip

    _, preprocess, tok = create_clip("mmcl-tiny")
    assert SplitTransform(preprocess).normalize is not None  # the split path is taken
    ref = _serial_batches(PairStream(make_source("coco", str(fx["coco"])), preprocess, seed=0), 8)
    stream = PairStream(make_source("coco", str(fx["coco"])), preprocess, seed=0)
    got = []
    for b in iter_batches(stream, 8, 0, workers=1, tokenizer=tok, chunk_size=6):
        assert torch.equal(b.texts(), tok(b.captions))
        got.append((b.positions, b.captions, b.labels, b.images(), stream.skips.as_dict(),
                    stream.skips.visits()))
    _assert_same((got, stream.skips.as_dict(), stream.skips.visits()), ref)
    paths = [str(p) for p in sorted(fx["eval"].rglob("*.jpg"))]
    decoded = list(iter_image_batches([(p, 0) for p in paths], preprocess, 5))
    assert torch.equal(torch.cat([d.images for d in decoded]),
                       torch.stack([preprocess(load_image(p)) for p in paths]))


def test_eval_image_batches_with_workers(fx):
    samples = [(str(p), i) for i, p in enumerate(sorted(fx["eval"].rglob("*.jpg")))]
    samples[3] = (str(fx["root"] / "bad" / "corrupt.jpg"), 3)
    samples[7] = (str(fx["root"] / "nowhere.jpg"), 7)
    serial = list(iter_image_batches(samples, _tensor, 5))
    parallel = list(iter_image_batches(samples, _tensor, 5, workers=2))
    assert len(serial) == len(parallel) == 3
    for a, b in zip(serial, parallel, strict=True):
        assert a.labels == b.labels and a.skipped == b.skipped
        assert torch.equal(a.images, b.images)
    assert [y for b in serial for y in b.labels] == [i for i in range(12) if i not in (3, 7)]
    assert sum((b.skipped for b in serial), Counter()) == {"corrupt_image": 1, "missing_image": 1}
    ref = torch.stack([_tensor(load_image(p)) for p, i in samples if i not in (3, 7)])
    assert torch.equal(torch.cat([b.images for b in parallel]), ref)


def _worker_pid(_task):
    import os

    return os.getpid()


def test_worker_pool_keeps_its_workers_across_passes():
    """A pool forks once: a second pass is served by the same worker processes, a pass that
    was left part-way is ended by the next one (its outstanding results dropped), an ended
    pass raises when advanced, and close() stops the workers."""
    import os

    with WorkerPool(_worker_pid, workers=2) as pool:
        first = set(pool.map(range(8)))
        assert len(first) == 2 and os.getpid() not in first
        left = pool.map(range(100))
        next(left)
        assert set(pool.map(range(8))) == first
        with pytest.raises(RuntimeError, match="ended by a later pass"):
            next(left)
        assert list(pool.map([])) == []
    assert pool._loader._iterator is None
    serial = WorkerPool(_worker_pid, workers=0)
    assert set(serial.map(range(3))) == {os.getpid()}


@pytest.mark.parametrize("fmt", ["csv", "coco", "wds"])
def test_pool_across_epochs_equals_serial_path(fx, rough, fmt):
    """One pool (2 workers) for three epochs, the second resumed part-way: each epoch's batches
    and skip counts at every batch boundary are the serial path's."""
    kw = {"caption_mode": "sample", "no_class": "keep"}
    ref_stream, stream = _stream(rough, fx, fmt, **kw), _stream(rough, fx, fmt, **kw)
    with batch_pool(stream, workers=2) as pool:
        for epoch, start in ((0, 0), (1, 7), (2, 0)):
            ref = _serial_batches(ref_stream, 4, epoch, start)
            got = _loader_batches(stream, 4, epoch, start, pool=pool, chunk_size=3)
            _assert_same(got, ref)
        with pytest.raises(ValueError, match="not made by batch_pool"):
            next(iter_batches(ref_stream, 4, 0, pool=pool))


def test_loader_rejects_negative_workers(fx):
    stream = PairStream(make_source("coco", str(fx["coco"])), _tensor, seed=0)
    with pytest.raises(UserError, match="data.workers"):
        next(iter_batches(stream, 4, 0, workers=-1))


def test_resume_with_other_worker_counts_is_bit_identical(fx, tmp_path):
    """Killed with 2 workers, resumed with 1: the weights and skip counts of an uninterrupted
    serial run (5 steps of 8 cross an epoch of the 36 usable COCO pairs)."""
    from mmclshift.experiments.real import config_from_dict, run_experiment

    def cfg(workers):
        return config_from_dict({
            "seed": 0, "data": {"format": "coco", "path": str(fx["coco"]),
                                "vocab": str(fx["vocab"]), "no_class": "keep",
                                "workers": workers},
            "model": {"name": "mmcl-tiny"},
            "methods": [{"name": "clip", "kind": "mmcl", "loss": "clip"}],
            "train": {"steps": 5, "batch_size": 8, "precision": "fp32", "checkpoint_every": 1,
                      "log_every": 1, "resume": "latest"}})

    run_experiment(cfg(0), str(tmp_path / "full"), progress=False)
    run_experiment(cfg(2), str(tmp_path / "killed"), progress=False, stop_after=2)
    run_experiment(cfg(1), str(tmp_path / "killed"), progress=False)
    a = torch.load(tmp_path / "full" / "checkpoints" / "clip" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "checkpoints" / "clip" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 5 and a["epoch"] == b["epoch"] == 1
    assert a["skips"] == b["skips"]
    assert a["skips"]["keys"] == {"missing_image": ["37"]}  # one item, whatever the epochs
    # the serial path, stopped where the run stopped: all of epoch 0, one batch of epoch 1
    ref = PairStream(make_source("coco", str(fx["coco"])), _tensor, seed=0,
                     label_fn=load_vocab(str(fx["vocab"])).labeller("first", "keep"))
    assert len(list(batches(ref.epoch(0), 8))) == 4
    assert len(next(batches(ref.epoch(1), 8))) == 8
    assert a["skips"]["visits"] == ref.skips.visits()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


# --------------------------------------------------------------------------- bad input


def test_coco_annotation_without_image_id_is_one_line(tmp_path):
    p = tmp_path / "captions.json"
    p.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}],
                             "annotations": [{"id": 1, "image_id": 1, "caption": "a cat"},
                                             {"id": 2, "caption": "a dog"}]}))
    with pytest.raises(DataError) as exc:
        read_coco_items(p)
    msg = str(exc.value)
    assert "\n" not in msg and str(p) in msg and "annotations[1]" in msg and "'image_id'" in msg
    p.write_text(json.dumps({"images": [{"id": "x1", "file_name": "a.jpg"}], "annotations": []}))
    with pytest.raises(DataError, match=r"images\[0\] has no integer 'id'"):
        read_coco_items(p)
    p.write_bytes(b'{"images": [], "annotations": [{"caption": "caf\xe9"}]}')
    with pytest.raises(DataError, match="not UTF-8"):
        read_coco_items(p)


def test_coco_caption_that_is_not_text_counts_as_empty(tmp_path, fx):
    p = tmp_path / "captions.json"
    image = str(fx["root"] / "images" / "chelsea_0.jpg")
    p.write_text(json.dumps({"images": [{"id": 1, "file_name": image}],
                             "annotations": [{"image_id": 1, "caption": None},
                                             {"image_id": 1, "caption": "a cat"}]}))
    stream = PairStream(make_source("coco", str(p)), _tensor, seed=0, caption_mode="all")
    assert [s.caption for s in stream.epoch(0)] == ["a cat"]
    assert stream.skips.as_dict() == {"empty_caption": 1}


def test_each_bad_shard_counts_one_reason(rough):
    root = Path(rough["wds"].split("::")[1]).parent
    for name, reason in (("zero.tar", "empty_shard"), ("garbage.tar", "corrupt_shard"),
                         ("noitems.tar", "empty_shard"), ("absent.tar", "missing_shard")):
        skips = SkipCounts()
        assert list(iter_tar_items(root / name, skips)) == []
        assert skips.as_dict() == {reason: 1}, name


def test_non_utf8_captions_are_skipped_and_counted(fx, rough):
    items = list(iter_tar_items(Path(rough["wds"].split("::")[4])))
    assert items[1].captions == ["a cat, caf\u00e9 au lait"]  # valid UTF-8 stays as it is
    for fmt in ("wds", "csv"):
        stream = _stream(rough, fx, fmt, caption_mode="all", no_class="keep")
        captions = [s.caption for s in stream.epoch(0)]
        assert stream.skips.as_dict()["caption_not_utf8"] == 1
        assert not any("tigr" in c for c in captions)
        if fmt == "wds":
            assert "a cat, caf\u00e9 au lait" in captions


def test_skips_count_items_not_visits(tmp_path, fx):
    """A missing image with 3 captions (caption_mode all) over 3 epochs: 1 item, 9 visits."""
    csv = tmp_path / "t.csv"
    good = fx["root"] / "images" / "chelsea_0.jpg"
    csv.write_text("filepath,title\n" + "".join(f"{good},a cat {i}\n" for i in range(2))
                   + "".join(f"{tmp_path / 'gone.jpg'},a dog {i}\n" for i in range(3)))
    stream = PairStream(make_source("csv", str(csv)), _tensor, seed=0, caption_mode="all")
    for epoch in range(3):
        assert len(list(stream.epoch(epoch))) == 2
    assert stream.skips.as_dict() == {"missing_image": 1}
    assert stream.skips.visits() == {"missing_image": 9}
    assert stream.skips.total == 1
    again = SkipCounts()
    again.load(stream.skips.state())
    assert again.as_dict() == stream.skips.as_dict() and again.visits() == stream.skips.visits()
    old = SkipCounts()
    old.load({"missing_image": 2, "corrupt_image": 1})  # checkpoints written before item keys
    assert old.as_dict() == {"corrupt_image": 1, "missing_image": 2}
