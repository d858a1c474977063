"""The training loop's batched augmentations against per-pixel definitions."""
from __future__ import annotations

import math

import pytest
import torch

from pyneuro.train.augment import affine_draws, affine_images, random_shift, shift_images, shift_offsets
from pyneuro.train.config import ConfigError, resolve


def _bilinear_reference(image: torch.Tensor, angle: float, scale: float) -> torch.Tensor:
    """Output pixel (i, j) reads the input at its centre rotated by -angle and divided by the scale,
    about the image centre, in pixel units; bilinear between pixel centres, zeros outside."""
    h, w = image.shape
    img = image.double()
    out = torch.zeros(h, w, dtype=torch.float64)
    c, s = math.cos(angle), math.sin(angle)
    for i in range(h):
        for j in range(w):
            x, y = j + 0.5 - w / 2, i + 0.5 - h / 2
            xs, ys = (c * x + s * y) / scale, (-s * x + c * y) / scale
            fx, fy = xs + w / 2 - 0.5, ys + h / 2 - 0.5  # back to pixel indices
            x0, y0 = math.floor(fx), math.floor(fy)
            ax, ay = fx - x0, fy - y0
            total = 0.0
            for dy, wy in ((0, 1 - ay), (1, ay)):
                for dx, wx in ((0, 1 - ax), (1, ax)):
                    yy, xx = y0 + dy, x0 + dx
                    if 0 <= yy < h and 0 <= xx < w:
                        total += wy * wx * img[yy, xx].item()
            out[i, j] = total
    return out


@pytest.mark.parametrize("shape", [(9, 9), (7, 11)])
def test_affine_matches_the_per_pixel_definition(shape):
    gen = torch.Generator().manual_seed(0)
    images = torch.rand((5, *shape), generator=gen) * 255
    draws = affine_draws(5, 30.0, 0.2, gen)
    got = affine_images(images, draws)
    for k in range(5):
        want = _bilinear_reference(images[k], draws[0, k].item(), draws[1, k].item())
        torch.testing.assert_close(got[k].double(), want, atol=1e-3, rtol=0)


def test_affine_identity_and_quarter_turn_are_exact_on_uint8():
    images = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    identity = torch.tensor([[0.0] * 3, [1.0] * 3])
    assert torch.equal(affine_images(images, identity), images)
    quarter = torch.tensor([[math.pi / 2] * 3, [1.0] * 3])
    turned = affine_images(images, quarter)
    assert turned.dtype == torch.uint8
    # Pixel centres map onto pixel centres: a quarter turn is a lossless permutation (clockwise
    # as displayed, row 0 at the top).
    assert torch.equal(turned, torch.rot90(images, -1, dims=(1, 2)))


def test_affine_scale_moves_a_dot_away_from_the_centre():
    image = torch.zeros(1, 28, 28, dtype=torch.uint8)
    image[0, 14 + 4, 14 + 4] = 255  # 4.5 pixels right of and below the centre (14, 14) - 0.5
    zoomed = affine_images(image, torch.tensor([[0.0], [2.0]]))
    # x2 about the centre: the dot's centre moves from +4.5 to +9 pixels, between pixels 22 and 23.
    mass = zoomed[0].double()
    rows = (mass.sum(1) * torch.arange(28)).sum() / mass.sum()
    cols = (mass.sum(0) * torch.arange(28)).sum() / mass.sum()
    assert abs(rows.item() - 22.5) < 0.05 and abs(cols.item() - 22.5) < 0.05


def test_affine_draws_ranges_and_determinism():
    a = affine_draws(1000, 15.0, 0.1, torch.Generator().manual_seed(3), batches=4)
    b = affine_draws(1000, 15.0, 0.1, torch.Generator().manual_seed(3), batches=4)
    assert a.shape == (4, 2, 1000) and torch.equal(a, b)
    assert a[:, 0].abs().max() <= math.radians(15.0) and a[:, 0].abs().max() > math.radians(14.0)
    assert ((a[:, 1] - 1).abs() <= 0.1 + 1e-6).all() and (a[:, 1] - 1).abs().max() > 0.09
    off = affine_draws(8, 0.0, 0.0, torch.Generator())
    assert torch.equal(off, torch.tensor([[0.0] * 8, [1.0] * 8]))


def test_shift_matches_the_per_pixel_definition():
    gen = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (6, 10, 12), dtype=torch.uint8, generator=gen)
    offsets = shift_offsets(6, 3, gen)
    got = shift_images(images, offsets, 3)
    for k in range(6):
        dy, dx = offsets[0, k].item() - 3, offsets[1, k].item() - 3
        want = torch.zeros_like(images[k])
        for i in range(10):
            for j in range(12):
                if 0 <= i + dy < 10 and 0 <= j + dx < 12:
                    want[i, j] = images[k, i + dy, j + dx]
        assert torch.equal(got[k], want)
    assert random_shift(images, 0) is images


def test_config_checks_the_augmentation_ranges():
    settings = resolve("transformer", None, ["train.augment_rotate=12", "train.augment_scale=0.1"])
    assert settings["train"]["augment_rotate"] == 12.0 and settings["train"]["augment_scale"] == 0.1
    with pytest.raises(ConfigError, match="augment_rotate"):
        resolve("transformer", None, ["train.augment_rotate=-1"])
    with pytest.raises(ConfigError, match="augment_scale"):
        resolve("transformer", None, ["train.augment_scale=0.9"])
