import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))  # tiny_mnist.py


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A tiny random MNIST (250 train / 50 val / 60 test images) as a train.data_dir."""
    from tiny_mnist import write_tiny_mnist

    return write_tiny_mnist(tmp_path_factory.mktemp("tiny-mnist"))


@pytest.fixture(scope="module")
def micro_data(tmp_path_factory):
    """An even smaller one (50 train / 10 val / 20 test images): at most 50 steps an epoch."""
    from tiny_mnist import write_tiny_mnist

    return write_tiny_mnist(tmp_path_factory.mktemp("micro-mnist"), n_train=60, n_test=20)
