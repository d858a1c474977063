"""IDX reading and writing, against files the tests write byte by byte."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from pyneuro.data import DataError, read_idx, write_idx


def idx_bytes(type_code: int, shape: tuple[int, ...], payload: bytes) -> bytes:
    return bytes([0, 0, type_code, len(shape)]) + b"".join(struct.pack(">I", n) for n in shape) + payload


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_reads_hand_written_ubyte_and_int32(tmp_path, compress):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    ints = np.array([-5, 0, 7, 2**31 - 1], dtype=np.int32)
    for name, code, array in (("u8", 0x08, images), ("i4", 0x0C, ints)):
        data = idx_bytes(code, array.shape, array.astype(array.dtype.newbyteorder(">")).tobytes())
        # The file names never say .gz: detection must come from the content.
        path = tmp_path / name
        path.write_bytes(gzip.compress(data) if compress else data)
        out = read_idx(path)
        assert out.dtype == array.dtype and out.dtype.isnative
        np.testing.assert_array_equal(out, array)
        out[...] = 0  # writable copy, not a view of the file buffer


@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_write_read_round_trip(tmp_path, dtype, suffix):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    path = write_idx(tmp_path / f"a{suffix}", array)
    assert path.read_bytes().startswith(b"\x1f\x8b") == (suffix == ".gz")
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, array)


def test_write_idx_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(TypeError, match="int64"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.int64))
    assert list(tmp_path.iterdir()) == []


GOOD_PAYLOAD = bytes(range(6))


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("bad-magic", b"\x01\x02" + idx_bytes(0x08, (6,), GOOD_PAYLOAD)[2:], "bad magic number 0x0102"),
        ("bad-type", idx_bytes(0x0A, (6,), GOOD_PAYLOAD), "bad magic number 0x00000a01"),
        ("zero-dims", bytes([0, 0, 8, 0]), "0 dimensions"),
        ("tiny", b"\x00\x00", "too short"),
        ("short-header", bytes([0, 0, 8, 3]) + struct.pack(">I", 6), "header is truncated"),
        ("truncated", idx_bytes(0x08, (2, 6), GOOD_PAYLOAD), "payload is 6 bytes, header says 12 .*truncated"),
        ("trailing", idx_bytes(0x08, (6,), GOOD_PAYLOAD + b"junk"), "payload is 10 bytes, header says 6 .*trailing"),
        # The header claims 3 dimensions for a 1-D payload: the sizes read past it do not match.
        ("wrong-ndim", bytes([0, 0, 8, 3]) + struct.pack(">I", 6) + GOOD_PAYLOAD + b"\x00" * 2, "payload"),
        ("int32-truncated", idx_bytes(0x0C, (3,), b"\x00" * 10), "payload is 10 bytes, header says 12"),
    ],
)
@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_malformed_files_raise_naming_the_file(tmp_path, name, data, message, compress):
    path = tmp_path / f"{name}-idx1-ubyte"
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(DataError, match=message) as info:
        read_idx(path)
    assert path.name in str(info.value)
    assert isinstance(info.value, ValueError)


def test_truncated_and_corrupt_gzip_streams(tmp_path):
    packed = gzip.compress(idx_bytes(0x08, (1000,), bytes(1000)))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError, match="cut.gz: gzip stream is truncated"):
        read_idx(cut)
    corrupt = tmp_path / "corrupt.gz"
    corrupt.write_bytes(packed[:10] + b"\xff" * 20 + packed[30:])
    with pytest.raises(DataError, match="corrupt.gz: corrupt gzip data"):
        read_idx(corrupt)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "absent")
