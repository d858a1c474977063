"""Batched data augmentation on uint8 image tensors (no per-sample Python)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def shift_offsets(n: int, max_shift: int, generator: torch.Generator | None = None,
                  batches: int | None = None) -> torch.Tensor:
    """Random offsets in [0, 2 * max_shift] for ``n`` images: (2, n), or (batches, 2, n) when
    ``batches`` is given (one draw for a whole epoch, so the loop copies them to the device once)."""
    shape = (2, n) if batches is None else (batches, 2, n)
    return torch.randint(0, 2 * max_shift + 1, shape, generator=generator)


def shift_images(images: torch.Tensor, offsets: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Translate image i by (offsets[0, i] - max_shift, offsets[1, i] - max_shift), filling with
    zeros. images: (B, H, W); offsets: (2, B) from :func:`shift_offsets`, on any device."""
    if max_shift <= 0:
        return images
    b, h, w = images.shape
    offsets = offsets.to(images.device, non_blocking=True)
    padded = F.pad(images, (max_shift, max_shift, max_shift, max_shift))
    rows = offsets[0, :, None] + torch.arange(h, device=images.device)  # (B, H)
    cols = offsets[1, :, None] + torch.arange(w, device=images.device)  # (B, W)
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]]


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate each (H, W) image by an independent integer offset in [-max_shift, max_shift],
    filling with zeros. images: (B, H, W) -> same shape and dtype."""
    if max_shift <= 0:
        return images
    return shift_images(images, shift_offsets(len(images), max_shift, generator), max_shift)
