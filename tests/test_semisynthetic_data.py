"""Semi-synthetic construction: digit loaders, images, captions, prompts, bad inputs."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmclshift.config import ConfigError, from_dict
from mmclshift.data import semisynthetic as ss
from mmclshift.data.digits import (
    EMBEDDED_SOURCE,
    IDX_FILES,
    DataError,
    load_digits,
    load_embedded_digits,
    load_mnist_idx,
    read_idx,
    write_idx,
)


@pytest.fixture(scope="module")
def embedded():
    return load_embedded_digits()


def _binomial_ok(k: int, n: int, p: float, z: float = 4.5) -> bool:
    """|k/n - p| within z binomial standard errors (z = 4.5: a false alarm about 1 in 150,000)."""
    se = np.sqrt(max(p * (1 - p), 1e-12) / n)
    return abs(k / n - p) <= z * se + 1e-12


# --------------------------------------------------------------------------- digits


def test_embedded_digits_are_mnist_and_split_per_class(embedded):
    d = embedded
    assert d.source == EMBEDDED_SOURCE
    assert d.train_images.shape == (4000, 28, 28) and d.test_images.shape == (1000, 28, 28)
    assert d.train_images.dtype == np.uint8
    assert np.bincount(d.train_labels).tolist() == [400] * 10
    assert np.bincount(d.test_labels).tolist() == [100] * 10
    # train and test are disjoint images
    train_set = {im.tobytes() for im in d.train_images}
    assert not any(im.tobytes() in train_set for im in d.test_images)
    assert load_digits(None).source == EMBEDDED_SOURCE


def _write_mnist(root, embedded, *, gz: bool, sub: str = ""):
    folder = root / sub if sub else root
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    arrays = {"train_images": embedded.train_images[:50], "train_labels": embedded.train_labels[:50],
              "test_images": embedded.test_images[:20], "test_labels": embedded.test_labels[:20]}
    for key, stem in IDX_FILES.items():
        write_idx(folder / (stem + ext), arrays[key])
    return arrays


@pytest.mark.parametrize("gz,sub", [(False, ""), (True, ""), (True, "MNIST/raw")])
def test_idx_roundtrip_plain_gzip_and_torchvision_layout(tmp_path, embedded, gz, sub):
    arrays = _write_mnist(tmp_path, embedded, gz=gz, sub=sub)
    d = load_digits(tmp_path)
    assert d.source == f"mnist-idx:{tmp_path}"
    np.testing.assert_array_equal(d.train_images, arrays["train_images"])
    np.testing.assert_array_equal(d.test_labels, arrays["test_labels"])


def test_idx_header_is_the_standard_one(tmp_path):
    # the IDX format by hand: magic 0x00000803 then big-endian dims, then the bytes
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4]) + arr.tobytes()
    (tmp_path / "x").write_bytes(raw)
    np.testing.assert_array_equal(read_idx(tmp_path / "x"), arr)
    write_idx(tmp_path / "y", arr)
    assert (tmp_path / "y").read_bytes() == raw


def test_missing_idx_file_names_it(tmp_path, embedded):
    _write_mnist(tmp_path, embedded, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as exc:
        load_mnist_idx(tmp_path)
    msg = str(exc.value)
    assert "t10k-labels-idx1-ubyte" in msg and "\n" not in msg


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_idx_file_names_it(tmp_path, embedded, gz):
    _write_mnist(tmp_path, embedded, gz=gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    path = tmp_path / name
    raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    cut = raw[: len(raw) - 100]
    path.write_bytes(gzip.compress(cut) if gz else cut)
    with pytest.raises(DataError) as exc:
        load_mnist_idx(tmp_path)
    msg = str(exc.value)
    assert name in msg and "truncated" in msg and "\n" not in msg


def test_corrupt_gzip_and_missing_root_name_the_path(tmp_path, embedded):
    _write_mnist(tmp_path, embedded, gz=True)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz"):
        load_mnist_idx(tmp_path)
    with pytest.raises(DataError, match="nowhere"):
        load_digits(tmp_path / "nowhere")


# --------------------------------------------------------------------------- construction


def _cfg(**kw) -> ss.SemiSyntheticDataConfig:
    return from_dict(ss.SemiSyntheticDataConfig, kw)


def test_colour_agreement_matches_configured_strength(embedded):
    """Training agreement = spurious_strength; OOD = 1/10 (independent); reversed = 0."""
    cfg = _cfg(spurious_strength=0.8, pi_core=0.7, pi_spu=0.3, pi_style=0.5)
    splits = ss.build_splits(embedded, cfg, seed=3)
    tr = splits["train"]
    n = len(tr)
    k = int((tr.colours == tr.labels).sum())
    assert _binomial_ok(k, n, 0.8), k / n
    # when the colour disagrees it is uniform over the other nine
    off = tr.colours[tr.colours != tr.labels]
    rel = ((off - tr.labels[tr.colours != tr.labels]) % 10).numpy()
    counts = np.bincount(rel, minlength=10)
    assert counts[0] == 0
    for c in counts[1:]:
        assert _binomial_ok(int(c), len(rel), 1 / 9)
    idd = splits["id"]
    assert _binomial_ok(int((idd.colours == idd.labels).sum()), len(idd), 0.8)
    ood = splits["ood"]
    assert _binomial_ok(int((ood.colours == ood.labels).sum()), len(ood), 0.1)
    rev = splits["ood_reversed"]
    assert torch.equal(rev.colours, (rev.labels + 1) % 10)
    # all test splits use the same test digits, in the same order
    assert torch.equal(ood.labels, idd.labels) and torch.equal(rev.labels, idd.labels)


def test_configured_ood_strength(embedded):
    cfg = _cfg(spurious_strength=0.95, ood_spurious_strength=0.3)
    s = ss.build_splits(embedded, cfg, seed=2, splits=["ood", "id"])
    assert _binomial_ok(int((s["ood"].colours == s["ood"].labels).sum()), len(s["ood"]), 0.3)
    assert _binomial_ok(int((s["id"].colours == s["id"].labels).sum()), len(s["id"]), 0.95)
    assert _binomial_ok(int((s["train"].colours == s["train"].labels).sum()), len(s["train"]), 0.95)


def test_caption_detail_frequencies_match_pi(embedded):
    cfg = _cfg(pi_core=0.7, pi_spu=0.3, pi_style=0.5)
    tr = ss.build_splits(embedded, cfg, seed=5, splits=[])["train"]
    n = len(tr)
    tokens = tr.tokens
    digit_ids = torch.tensor(ss.encode(ss.DIGIT_NAMES))
    colour_ids = torch.tensor(ss.encode(ss.COLOUR_NAMES))
    style_ids = torch.tensor(ss.encode(ss.STYLE_NAMES))
    has_digit = torch.isin(tokens, digit_ids).any(1)
    has_colour = torch.isin(tokens, colour_ids).any(1)
    has_style = torch.isin(tokens, style_ids).any(1)
    for has, p in ((has_digit, 0.7), (has_colour, 0.3), (has_style, 0.5)):
        assert _binomial_ok(int(has.sum()), n, p)
    # the masks recorded are the ones written, and each named detail is the true one
    assert torch.equal(has_digit, tr.names_core) and torch.equal(has_colour, tr.names_spu)
    named_digit = (tokens[has_digit].unsqueeze(-1) == digit_ids).any(1).float().argmax(-1)
    assert torch.equal(named_digit, tr.labels[has_digit])
    named_colour = (tokens[has_colour].unsqueeze(-1) == colour_ids).any(1).float().argmax(-1)
    assert torch.equal(named_colour, tr.colours[has_colour])
    # independence of the two masks: P(both) = pi_core * pi_spu
    assert _binomial_ok(int((has_digit & has_colour).sum()), n, 0.7 * 0.3)


def test_hand_checked_image_and_caption(embedded):
    """Seed 0, training item 0 (the first embedded digit, a zero): checked by hand."""
    cfg = _cfg(spurious_strength=0.9, pi_core=1.0, pi_spu=1.0, pi_style=1.0)
    tr = ss.build_splits(embedded, cfg, seed=0, splits=[])["train"]
    grey = embedded.train_images[0]
    assert int(tr.labels[0]) == 0
    colour = int(tr.colours[0])
    # colour draw: default_rng([0, 0, 1]).random() < 0.9 -> the label's colour (red)
    assert np.random.default_rng([0, 0, 1]).random() < 0.9 and colour == 0
    img = tr.images[0].numpy()
    # foreground: each channel = ink * colour / 255, background black
    r, g, b = ss.COLOURS[0][1]
    ink = grey.astype(np.float64) / 255.0
    for ch, c in enumerate((r, g, b)):
        np.testing.assert_array_equal(img[ch], np.clip(np.rint(ink * c), 0, 255).astype(np.uint8))
    assert img[:, 0, 0].tolist() == [0, 0, 0]
    # a fully inked pixel is exactly red (230, 25, 75); a half-inked one half of it, rounded
    y, x = np.argwhere(grey == 255)[0]
    assert img[:, y, x].tolist() == [230, 25, 75]
    y, x = np.argwhere((grey > 100) & (grey < 160))[0]
    v = int(grey[y, x])
    assert img[:, y, x].tolist() == [round(v * 230 / 255), round(v * 25 / 255), round(v * 75 / 255)]
    thick = grey.mean() > ss.ink_threshold(embedded.train_images)
    style = "thick" if thick else "thin"
    assert tr.captions(range(1)) == [f"a photo of the digit zero in red written {style}"]


def test_background_and_patch_renderings():
    grey = np.zeros((1, 28, 28), np.uint8)
    grey[0, 10:18, 12:16] = 255
    bg = ss.render(grey, np.array([2]), "background")[0]  # blue background, white digit
    assert bg[:, 10, 12].tolist() == [255, 255, 255]
    assert bg[:, 0, 0].tolist() == [round(0.6 * v) for v in ss.COLOURS[2][1]]
    patch = ss.render(grey, np.array([3]), "patch")[0]
    assert patch[:, 0, 0].tolist() == list(ss.COLOURS[3][1])
    assert patch[:, 10, 12].tolist() == [255, 255, 255] and patch[:, 27, 27].tolist() == [0, 0, 0]


def test_zero_shot_prompts_are_built_like_captions():
    prompts = ss.zero_shot_prompts()
    assert prompts.shape == (10, ss.MAX_CAPTION_LEN)
    assert ss.decode(prompts[7]) == "a photo of the digit seven"
    assert ss.decode(prompts[0]) == ss.decode(torch.tensor(ss.encode(ss.caption_words(0, None, None))))


def test_images_do_not_depend_on_caption_probabilities(embedded):
    a = ss.build_splits(embedded, _cfg(pi_core=1.0, pi_spu=0.0, n_train=300), seed=1, splits=["ood"])
    b = ss.build_splits(embedded, _cfg(pi_core=0.2, pi_spu=0.9, n_train=300), seed=1, splits=["ood"])
    for s in ("train", "ood"):
        assert torch.equal(a[s].images, b[s].images)
    assert not torch.equal(a["train"].tokens, b["train"].tokens)
    c = ss.build_splits(embedded, _cfg(pi_core=1.0, pi_spu=0.0, n_train=300), seed=1, splits=["ood"])
    assert torch.equal(a["train"].tokens, c["train"].tokens)  # same seed -> same data


@pytest.mark.parametrize("key", ["pi_core", "pi_spu", "pi_style", "spurious_strength",
                                 "ood_spurious_strength"])
@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_probability_outside_unit_interval_names_the_key(key, value):
    with pytest.raises(ConfigError) as exc:
        _cfg(**{key: value})
    assert f"'{key}'" in str(exc.value)


def test_experiment_config_errors_name_dotted_keys():
    from mmclshift.experiments.semisynthetic import SemiSyntheticExperiment

    with pytest.raises(ConfigError, match=r"'data\.pi_core'"):
        from_dict(SemiSyntheticExperiment, {"data": {"pi_core": 2}})
    with pytest.raises(ConfigError, match=r"'grid\.pi_spu\'"):
        from_dict(SemiSyntheticExperiment, {"grid": {"pi_spu": [0.5, 1.2]}})
    with pytest.raises(ConfigError, match="model.image_encoder"):
        from_dict(SemiSyntheticExperiment, {"model": {"image_encoder": "resnet"}})


@given(n=st.integers(1, 6), c=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9),
       shift=st.integers(0, 3), seed=st.integers(0, 10**6))
@settings(max_examples=40, deadline=None)
def test_random_translate_is_a_shifted_crop_of_the_zero_padded_image(n, c, h, w, shift, seed):
    """Each image equals the slice [dy:dy+h, dx:dx+w] of its zero-padded copy, with (dy, dx) the
    generator's draws (all rows' offsets first, then all columns')."""
    import torch.nn.functional as F

    from mmclshift.train.images import random_translate

    x = torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))
    out = random_translate(x, shift, torch.Generator().manual_seed(seed + 1))
    if shift == 0:
        assert out is x
        return
    gen = torch.Generator().manual_seed(seed + 1)
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    padded = F.pad(x, (shift,) * 4)
    for k in range(n):
        a, b = int(dy[k]), int(dx[k])
        assert torch.equal(out[k], padded[k, :, a:a + h, b:b + w])


def _render_direct(digits, colours, kind):
    """The elementwise rendering, written out (float32 ink times float32 colour, rounded)."""
    g = digits.astype(np.float32)[:, None] / 255.0
    rgb = ss.PALETTE[colours][:, :, None, None]
    if kind == "foreground":
        out = g * rgb
    elif kind == "background":
        out = g * 255.0 + (1.0 - g) * 0.6 * rgb
    else:
        out = np.repeat(g * 255.0, 3, axis=1)
        out[:, :, :ss.PATCH_SIZE, :ss.PATCH_SIZE] = rgb
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", ss.SPURIOUS_KINDS)
def test_render_equals_the_direct_elementwise_computation(kind):
    rng = np.random.default_rng(0)
    digits = rng.integers(0, 256, size=(64, 28, 28)).astype(np.uint8)  # every grey value occurs
    colours = rng.integers(0, len(ss.PALETTE), size=64)
    out = ss.render(digits, colours, kind)
    assert out.dtype == np.uint8 and out.shape == (64, 3, 28, 28)
    assert np.array_equal(out, _render_direct(digits, colours, kind))


def test_pad_tokens_pads_with_zeros():
    rows = [[5, 6, 7], [], [1]]
    out = ss.pad_tokens(rows, length=4)
    assert out.dtype == torch.int64
    assert out.tolist() == [[5, 6, 7, 0], [0, 0, 0, 0], [1, 0, 0, 0]]
    with pytest.raises(ValueError, match="more than 2"):
        ss.pad_tokens([[1, 2, 3]], length=2)
