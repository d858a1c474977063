"""Batched data augmentation on uint8 image tensors (no per-sample Python)."""
from __future__ import annotations

import math

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


def affine_draws(n: int, max_degrees: float, max_scale: float, generator: torch.Generator | None = None,
                 batches: int | None = None) -> torch.Tensor:
    """Random (angle in radians, scale factor) pairs for ``n`` images: (2, n), or (batches, 2, n) when
    ``batches`` is given. Angles are uniform in [-max_degrees, max_degrees], scales uniform in
    [1 - max_scale, 1 + max_scale]; both are drawn even when one range is zero, so the generator
    advances the same way whichever is switched on."""
    shape = (2, n) if batches is None else (batches, 2, n)
    u = torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1  # uniform in [-1, 1)
    draws = torch.empty(shape, dtype=torch.float32)
    draws[..., 0, :] = u[..., 0, :] * math.radians(max_degrees)
    draws[..., 1, :] = 1 + u[..., 1, :] * max_scale
    return draws


def affine_images(images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """Rotate image i by draws[0, i] radians (clockwise as displayed, row 0 at the top) and scale it
    by draws[1, i] about its centre (bilinear, zeros outside), keeping the dtype: uint8 images are
    rounded back to uint8.
    images: (B, H, W); draws: (2, B) from :func:`affine_draws`, on any device.
    Cost: one grid_sample, about 4 reads and 1 write per output pixel; negligible next to any model."""
    b, h, w = images.shape
    angle, scale = draws.to(images.device, non_blocking=True).float()
    # grid_sample maps each output position to the input position it reads, so the matrix is the
    # inverse of the wanted transform: rotate by -angle and divide by the scale.
    # affine_grid works in coordinates normalised to [-1, 1] on each axis; the H/W and W/H factors
    # keep the rotation a rotation in pixels when the image is not square.
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, sin * (h / w), zero], -1),
                         torch.stack([-sin * (w / h), cos, zero], -1)], 1)
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
    out = F.grid_sample(images[:, None].float(), grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False)[:, 0]
    if images.dtype == torch.uint8:
        return out.round_().clamp_(0, 255).to(torch.uint8)
    return out.to(images.dtype)
