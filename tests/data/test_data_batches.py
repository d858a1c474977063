"""TensorBatches: every sample once per epoch, reproducible shuffles, drop_last."""
from __future__ import annotations

import pytest
import torch

from pyneuro.data import TensorBatches

N = 103


@pytest.fixture
def data():
    images = torch.arange(N, dtype=torch.int32).view(N, 1, 1).expand(N, 28, 28).to(torch.uint8).contiguous()
    labels = torch.arange(N, dtype=torch.int64)  # label i belongs to sample i
    return images, labels


def epoch(batches):
    return [(x.clone(), y.clone()) for x, y in batches]


@pytest.mark.parametrize("shuffle", [True, False])
def test_every_index_exactly_once_per_epoch(data, shuffle):
    batches = TensorBatches(*data, batch_size=10, shuffle=shuffle, generator=torch.Generator().manual_seed(0))
    assert len(batches) == 11
    for _ in range(2):
        got = epoch(batches)
        assert len(got) == 11 and [len(y) for _, y in got] == [10] * 10 + [3]
        labels = torch.cat([y for _, y in got])
        assert torch.equal(labels.sort().values, torch.arange(N))
        assert torch.equal(labels, torch.arange(N)) != shuffle  # shuffled, or in order
        for x, y in got:  # images travel with their labels
            assert torch.equal(x[:, 0, 0].long(), y % 256) and x.shape[1:] == (28, 28)


def test_seeded_generator_reproduces_and_epochs_differ(data):
    def run(seed):
        batches = TensorBatches(*data, batch_size=16, generator=torch.Generator().manual_seed(seed))
        return [torch.cat([y for _, y in epoch(batches)]) for _ in range(2)]

    first, second = run(7), run(7)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[0], first[1])  # a new order each epoch
    assert not torch.equal(first[0], run(8)[0])


def test_drop_last(data):
    batches = TensorBatches(*data, batch_size=10, drop_last=True, generator=torch.Generator().manual_seed(0))
    assert len(batches) == 10
    got = epoch(batches)
    assert len(got) == 10 and all(len(y) == 10 for _, y in got)
    assert len(torch.cat([y for _, y in got]).unique()) == 100
    assert len(TensorBatches(*data, batch_size=200, drop_last=True)) == 0
    assert epoch(TensorBatches(*data, batch_size=200, drop_last=True)) == []


def test_bad_arguments(data):
    images, labels = data
    with pytest.raises(ValueError, match="labels: 102 labels for 103 images"):
        TensorBatches(images, labels[:-1], 4)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size: expected a positive int"):
            TensorBatches(images, labels, bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.cuda
def test_device_moves_the_dataset_once(data):
    batches = TensorBatches(*data, batch_size=32, device="cuda", generator=torch.Generator().manual_seed(0))
    assert batches.images.is_cuda and batches.labels.is_cuda
    x, y = next(iter(batches))
    assert x.is_cuda and y.is_cuda and torch.equal(x[:, 0, 0].long().cpu(), y.cpu())
