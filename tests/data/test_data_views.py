"""Model input views: shapes, normalisation, exact patch layout, fixed pixel permutations."""
from __future__ import annotations

import pytest
import torch

from pyneuro.data import MNIST_MEAN, MNIST_STD, VIEWS, pixel_permutation, to_view


@pytest.fixture
def images():
    return torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def normalised(images):
    return (images.double() / 255 - MNIST_MEAN) / MNIST_STD


@pytest.mark.parametrize(
    "view, kwargs, shape",
    [
        ("image", {}, (5, 1, 28, 28)),
        ("rows", {}, (5, 28, 28)),
        ("patches", {}, (5, 16, 49)),
        ("patches", {"patch_size": 4}, (5, 49, 16)),
        ("patches", {"patch_size": 14}, (5, 4, 196)),
        ("pixels", {}, (5, 784, 1)),
    ],
)
def test_shapes_and_dtype(images, view, kwargs, shape):
    out = to_view(images, view, **kwargs)
    assert out.shape == shape and out.dtype == torch.float32 and out.device == images.device
    assert VIEWS == ("image", "rows", "patches", "pixels")


def test_normalisation_and_channel_dim_input(images):
    expected = normalised(images).float()
    torch.testing.assert_close(to_view(images, "rows"), expected)
    torch.testing.assert_close(to_view(images.unsqueeze(1), "image"), expected.unsqueeze(1))
    torch.testing.assert_close(to_view(images, "pixels").view(5, 28, 28), expected)
    # Black maps to -mean/std, white to (1-mean)/std.
    extremes = to_view(torch.tensor([[[0, 255]]], dtype=torch.uint8).expand(1, 2, 2).contiguous(), "rows")
    torch.testing.assert_close(extremes[0, 0], torch.tensor([-MNIST_MEAN / MNIST_STD, (1 - MNIST_MEAN) / MNIST_STD]))


@pytest.mark.parametrize("p", [1, 2, 4, 7, 14, 28])
def test_patches_are_raster_order_and_reassemble_exactly(images, p):
    tokens = to_view(images, "patches", patch_size=p)
    g = 28 // p
    # Token (i, j) in raster order holds rows i*p..i*p+p-1, columns j*p..j*p+p-1, row-major.
    i, j = g - 1, 0
    block = to_view(images, "rows")[:, i * p : i * p + p, j * p : j * p + p]
    torch.testing.assert_close(tokens[:, i * g + j].view(5, p, p), block)
    reassembled = tokens.view(5, g, g, p, p).permute(0, 1, 3, 2, 4).reshape(5, 28, 28)
    assert torch.equal(reassembled, to_view(images, "rows"))


@pytest.mark.parametrize("p", [0, 3, 5, 29, 2.0])
def test_patch_size_must_divide(images, p):
    with pytest.raises(ValueError, match="patch_size"):
        to_view(images, "patches", patch_size=p)


def test_pixel_permutation_is_fixed_by_seed(images):
    perm = pixel_permutation(0)
    assert perm.dtype == torch.int64 and torch.equal(perm.sort().values, torch.arange(784))
    assert torch.equal(perm, pixel_permutation(0))
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(perm, pixel_permutation(0))
    assert not torch.equal(perm, pixel_permutation(1))
    assert not torch.equal(perm, torch.arange(784))

    plain = to_view(images, "pixels")
    permuted = to_view(images, "pixels", permutation=perm)
    assert torch.equal(permuted, plain[:, perm])
    assert torch.equal(permuted[:, perm.argsort()], plain)  # nothing lost


def test_bad_inputs_name_the_argument(images):
    with pytest.raises(TypeError, match="images: expected uint8"):
        to_view(images.float(), "rows")
    with pytest.raises(ValueError, match="images: expected shape"):
        to_view(images[0], "rows")
    with pytest.raises(ValueError, match="view: expected one of"):
        to_view(images, "columns")
    with pytest.raises(ValueError, match="permutation: only applies to view='pixels'"):
        to_view(images, "rows", permutation=pixel_permutation())
    with pytest.raises(ValueError, match=r"permutation: not a permutation"):
        to_view(images, "pixels", permutation=torch.zeros(784, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"permutation: expected an int64 or int32 tensor of shape \(784,\)"):
        to_view(images, "pixels", permutation=torch.arange(783))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.cuda
def test_views_stay_on_the_input_device(images):
    for view in VIEWS:
        kwargs = {"permutation": pixel_permutation()} if view == "pixels" else {}
        out = to_view(images.cuda(), view, **kwargs)
        assert out.is_cuda
        torch.testing.assert_close(out.cpu(), to_view(images, view, **kwargs))
