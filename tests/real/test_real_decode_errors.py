"""Only an image that cannot be decoded is a ``corrupt_image`` skip; a failing transform raises."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mmclshift.data.image_text import PairStream, decode_image, make_source
from mmclshift.data.loader import iter_batches, iter_image_batches


class TransformBug(Exception):
    """Stands for a bug in a preprocessing step."""


def _broken_transform(im):
    raise TransformBug("preprocessing failed")


def _size(im):
    return im.size


def _encoded(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "WEBP"])
def test_undecodable_images_are_corrupt(fmt):
    data = _encoded(fmt)
    assert decode_image(data, _size) == ((24, 24), None)
    for bad in (data[: len(data) // 2], data[:20], b"not an image at all"):
        # the transform is never reached for an image that cannot be read
        assert decode_image(bad, _broken_transform) == (None, "corrupt_image")


def test_missing_image_and_fixture_corrupt_jpeg(fx, tmp_path):
    assert decode_image(str(tmp_path / "absent.jpg"), _size) == (None, "missing_image")
    assert decode_image(None, _size) == (None, "missing_image")
    assert decode_image(str(fx["root"] / "bad" / "corrupt.jpg"), _broken_transform) \
        == (None, "corrupt_image")


def test_transform_error_propagates_from_decode_image():
    with pytest.raises(TransformBug):
        decode_image(_encoded("PNG"), _broken_transform)
    # an OSError raised by the transform (not by reading the file) is not a corrupt image either
    def oserror_transform(im):
        raise OSError("disk full while caching")

    with pytest.raises(OSError, match="disk full"):
        decode_image(_encoded("PNG"), oserror_transform)


def test_transform_error_stops_the_training_stream(fx):
    stream = PairStream(make_source("coco", str(fx["coco"])), _broken_transform, seed=0)
    with pytest.raises(TransformBug):
        next(iter(stream.epoch(0)))
    assert stream.skips.as_dict() == {}  # nothing was counted as corrupt
    with pytest.raises(TransformBug):
        next(iter_batches(stream, 4, 0, workers=0))
    assert stream.skips.as_dict() == {}


def test_transform_error_stops_evaluation_decoding(fx):
    paths = sorted(p for p in (fx["root"] / "images").iterdir())[:4]
    with pytest.raises(TransformBug):
        list(iter_image_batches([(str(p), 0) for p in paths], _broken_transform, 2))
    ok = list(iter_image_batches([(str(p), 0) for p in paths], _size, 2))
    assert sum(len(b.labels) for b in ok) == 4 and not any(b.skipped for b in ok)
