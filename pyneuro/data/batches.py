"""Mini-batches gathered from tensors that hold the whole dataset (MNIST fits in memory)."""
from __future__ import annotations

from typing import Iterator

import torch

__all__ = ["TensorBatches"]


class TensorBatches:
    """Iterate over ``(images[idx], labels[idx])`` batches, one pass per ``iter()``.

    Unlike a DataLoader there is no per-sample Python: each batch is one ``index_select`` (or a
    slice when not shuffling), which matters for small MNIST models where loading would
    otherwise dominate.

    Args:
        images, labels: tensors with the samples along dim 0 (same length).
        batch_size: samples per batch; the last batch may be smaller unless ``drop_last``.
        shuffle: draw a new order every epoch with ``torch.randperm``.
        drop_last: skip the final incomplete batch.
        generator: ``torch.Generator`` for the shuffle; seed it to make epochs reproducible.
            Default: the global torch RNG.
        device: if given, both tensors are moved there once, here.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ):
        for name, t in (("images", images), ("labels", labels)):
            if not isinstance(t, torch.Tensor) or t.dim() == 0:
                raise TypeError(f"{name}: expected a tensor with samples along dim 0, got {type(t).__name__}")
        if len(images) != len(labels):
            raise ValueError(f"labels: {len(labels)} labels for {len(images)} images")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        if device is not None:
            images, labels = images.to(device), labels.to(device)
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.drop_last, self.generator = batch_size, shuffle, drop_last, generator

    @property
    def num_samples(self) -> int:
        return len(self.images)

    def __len__(self) -> int:
        """Number of batches per epoch."""
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, b = self.num_samples, self.batch_size
        order = None
        if self.shuffle:
            rng_device = self.generator.device if self.generator is not None else "cpu"
            order = torch.randperm(n, generator=self.generator, device=rng_device).to(self.images.device)
        for i in range(len(self)):
            if order is None:
                yield self.images[i * b : (i + 1) * b], self.labels[i * b : (i + 1) * b]
            else:
                idx = order[i * b : (i + 1) * b]
                yield self.images.index_select(0, idx), self.labels.index_select(0, idx.to(self.labels.device))
