"""Binary MNIST for likelihood models: each pixel is a Bernoulli draw with its intensity as the
probability (Salakhutdinov & Murray 2008). Training redraws the images at every step (dynamic
binarisation); evaluation draws the test set once from a fixed seed, so every run and every
batching of it scores the same binary images."""
from __future__ import annotations

import torch

__all__ = ["binarize", "fixed_binarization", "TEST_BINARIZATION_SEED"]

TEST_BINARIZATION_SEED = 1234


def _intensities(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images: expected a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise TypeError(f"images: expected uint8 pixels, got {images.dtype}")
    return images.to(torch.float32).div_(255.0)


def binarize(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 images -> float32 tensor of 0/1, same shape and device, pixel = 1 with probability
    intensity/255. ``generator`` (on the images' device) makes the draw repeatable; without it the
    global RNG is used (saved in the training checkpoints, so a resumed run redraws the same)."""
    p = _intensities(images)
    return torch.bernoulli(p, generator=generator)


def fixed_binarization(images: torch.Tensor, seed: int = TEST_BINARIZATION_SEED) -> torch.Tensor:
    """One binarisation of ``images`` that depends only on ``seed`` and the images: drawn on the CPU
    (the same bits on every device), returned on the images' device. The draw depends on the whole
    tensor: binarise a split at once, then slice it (a slice binarised alone gets other bits)."""
    p = _intensities(images.cpu())
    u = torch.rand(p.shape, generator=torch.Generator().manual_seed(seed))
    return (u < p).to(torch.float32).to(images.device)
