import pytest


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A tiny random MNIST (250 train / 50 val / 60 test images) as a train.data_dir."""
    from tiny_mnist import write_tiny_mnist

    return write_tiny_mnist(tmp_path_factory.mktemp("tiny-mnist"))
