"""The restricted unpickler and the mnist.pkl.gz conversion, on pickles the tests build."""
from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import pytest

from pyneuro.data import DataError, load_numpy_pickle
from pyneuro.data.sources import read_mnist_pickle


class _RunsShell:
    """Unpickling this calls os.system: the classic malicious pickle."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _CallsEval:
    def __reduce__(self):
        return eval, ("__import__('pathlib').Path('marker').touch()",)


@pytest.mark.parametrize("payload", ["system", "eval", "nested"])
@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, monkeypatch, payload, compress):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "marker"
    evil = {
        "system": _RunsShell(f"touch {marker}"),
        "eval": _CallsEval(),
        # Hidden behind a legitimate array, as a tampered mnist.pkl.gz would be.
        "nested": ((np.zeros(3, np.float32), _RunsShell(f"touch {marker}")),),
    }[payload]
    data = pickle.dumps(evil, protocol=2)
    path = tmp_path / "evil.pkl"
    path.write_bytes(gzip.compress(data) if compress else data)

    refusal = r"evil\.pkl: cannot unpickle: refusing to load global (posix\.system|(__builtin__|builtins)\.eval)"
    with pytest.raises(DataError, match=refusal):
        load_numpy_pickle(path)
    assert not marker.exists()
    # Sanity check of the test itself: the standard unpickler would have run the payload.
    if payload == "system":
        pickle.loads(data)
        assert marker.exists()


@pytest.mark.parametrize("protocol", [2, 4])
def test_numpy_arrays_load(tmp_path, protocol):
    content = ((np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], np.int64)), [np.full(2, 7, np.uint8)])
    path = tmp_path / "ok.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(content, protocol=protocol)))
    (x, y), [z] = load_numpy_pickle(path)
    np.testing.assert_array_equal(x, content[0][0])
    np.testing.assert_array_equal(y, content[0][1])
    assert x.dtype == np.float32 and y.dtype == np.int64 and z.dtype == np.uint8


def write_mnist_style_pickle(path, splits):
    """Mimic mnist.pkl.gz: ((x, y) train, (x, y) validation, (x, y) test), x = uint8 / 256 float32."""
    content = tuple((x.reshape(-1, 784).astype(np.float32) / 256, y.astype(np.int64)) for x, y in splits)
    path.write_bytes(gzip.compress(pickle.dumps(content, protocol=2)))


def test_mnist_pickle_converts_back_to_exact_uint8(tmp_path):
    rng = np.random.default_rng(1)
    splits = [(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n)) for n in (8, 3, 4)]
    splits[0][0][0, 0, :2] = (0, 255)  # both ends of the range
    path = tmp_path / "mnist.pkl.gz"
    write_mnist_style_pickle(path, splits)
    out = read_mnist_pickle(path)
    assert list(out) == ["train", "val", "test"]
    for (images, labels), (got_images, got_labels) in zip(splits, out.values()):
        assert got_images.dtype == np.uint8 and got_images.shape == images.shape
        np.testing.assert_array_equal(got_images, images)
        assert got_labels.dtype == np.int64
        np.testing.assert_array_equal(got_labels, labels)


def test_mnist_pickle_with_inexact_values_is_rejected(tmp_path):
    x = np.full((2, 784), 0.5, np.float32)
    x[1, 3] = 0.5 + 1 / 1024  # between two uint8 levels: the "uint8 / 256" contract is broken
    content = tuple((x, np.zeros(2, np.int64)) for _ in range(3))
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(content, protocol=2)))
    with pytest.raises(DataError, match=r"mnist\.pkl\.gz \[train\]: images are not exact multiples of 1/256"):
        read_mnist_pickle(path)


def test_mnist_pickle_with_wrong_structure_is_rejected(tmp_path):
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps((np.zeros(3),), protocol=2)))
    with pytest.raises(DataError, match=r"mnist\.pkl\.gz: expected \(\(x, y\), \(x, y\), \(x, y\)\)"):
        read_mnist_pickle(path)
