"""A tiny random MNIST in IDX form, for tests that need the training path but not real learning."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pyneuro.data import write_idx
from pyneuro.data.sources import IDX_NAMES


def write_tiny_mnist(folder: Path, n_train: int = 300, n_test: int = 60, seed: int = 0) -> Path:
    """Four IDX files in ``folder``: ``n_train`` images (5/6 train, 1/6 val) and ``n_test`` test images."""
    rng = np.random.default_rng(seed)
    sizes = {"train": n_train, "test": n_test}
    for (split, kind), name in IDX_NAMES.items():
        n = sizes[split]
        data = (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) if kind == "images"
                else rng.integers(0, 10, n, dtype=np.uint8))
        write_idx(folder / name, data)
    return folder
