"""The IDX file format of the MNIST family, read and written with numpy.

An IDX file is a 4-byte magic number ``00 00 <type code> <ndim>``, then ``ndim`` big-endian
uint32 sizes, then the array in C order, big-endian. The files usually ship gzipped; the
reader tells the two apart by the gzip magic bytes, never by the file name.
"""
from __future__ import annotations

import contextlib
import gzip
import math
import os
import tempfile
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

__all__ = ["DataError", "DataWarning", "read_idx", "write_idx", "atomic_writer", "IDX_TYPES"]

# IDX type code -> numpy dtype (big-endian, as stored on disk).
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


class DataError(ValueError):
    """A data file or cache is missing, malformed or fails verification.

    The message names the file and what is wrong with it.
    """


class DataWarning(UserWarning):
    """Something was wrong but recoverable (e.g. a stale cache that is being rebuilt)."""


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(_GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except EOFError as e:  # the gzip stream stops before its end marker
        raise DataError(f"{path}: gzip stream is truncated ({e})") from None
    except (OSError, zlib.error) as e:
        raise DataError(f"{path}: corrupt gzip data ({e})") from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (raw or gzipped) into a native-endian, writable numpy array.

    Raises:
        DataError: bad magic number, unknown type code, header or payload that does not match
            the declared dimensions (truncated file or trailing data), or corrupt gzip data.
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: {len(data)} bytes is too short for an IDX header")
    zero, type_code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or type_code not in IDX_TYPES:
        raise DataError(
            f"{path}: bad magic number 0x{data[:4].hex()}, not an IDX file "
            f"(expected 0x0000 + type code in {{{', '.join(f'0x{c:02X}' for c in IDX_TYPES)}}} + ndim)"
        )
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares 0 dimensions")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DataError(
            f"{path}: header is truncated ({len(data)} bytes, {ndim} dimensions need {header_size})"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = IDX_TYPES[type_code]
    expected = math.prod(shape) * dtype.itemsize
    payload = len(data) - header_size
    if payload != expected:
        hint = "truncated?" if payload < expected else "trailing data?"
        raise DataError(
            f"{path}: payload is {payload} bytes, header says {expected} "
            f"(shape {shape} of {dtype.name}; {hint})"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # a copy: native byte order and writable


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file, gzipped when ``path`` ends in ``.gz``.

    The file appears atomically (written to a temporary file beside it, then renamed), so a
    reader never sees half of it. Returns the path.
    """
    path = Path(path)
    array = np.asarray(array)
    code = next(
        (c for c, dt in IDX_TYPES.items() if dt.kind == array.dtype.kind and dt.itemsize == array.dtype.itemsize),
        None,
    )
    if code is None:
        supported = ", ".join(dt.name for dt in IDX_TYPES.values())
        raise TypeError(f"write_idx: array dtype {array.dtype} has no IDX type code (supported: {supported})")
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"write_idx: array must have 1 to 255 dimensions, got {array.ndim}")
    header = bytes([0, 0, code, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    data = header + np.ascontiguousarray(array, dtype=IDX_TYPES[code]).tobytes()
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)  # mtime=0: identical input gives identical bytes
    atomic_write_bytes(path, data)
    return path


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` for writing; rename it to ``path`` on success.

    On any exception (KeyboardInterrupt included) the temporary file is deleted, so ``path``
    holds either its old content or the complete new one, never a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_writer(path) as f:
        f.write(data)
