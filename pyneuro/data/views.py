"""The shapes in which the models read an image batch: as an image, row sequence, patch tokens
or pixel sequence. Each is a float32 tensor normalised with the MNIST mean and std."""
from __future__ import annotations

import torch

__all__ = ["VIEWS", "MNIST_MEAN", "MNIST_STD", "to_view", "pixel_permutation"]

VIEWS = ("image", "rows", "patches", "pixels")
MNIST_MEAN = 0.1307  # of the training pixels scaled to [0, 1]
MNIST_STD = 0.3081


def pixel_permutation(seed: int = 0, length: int = 784) -> torch.Tensor:
    """A fixed permutation of the ``length`` pixel positions (for permuted sequential MNIST):
    the same ``seed`` gives the same permutation on every run and device."""
    return torch.randperm(length, generator=torch.Generator().manual_seed(seed))


def to_view(
    images: torch.Tensor,
    view: str,
    *,
    patch_size: int = 7,
    permutation: torch.Tensor | None = None,
    mean: float = MNIST_MEAN,
    std: float = MNIST_STD,
) -> torch.Tensor:
    """Turn uint8 images ``(B, H, W)`` (or ``(B, 1, H, W)``) into a normalised float32 model input.

    ``(x / 255 - mean) / std`` in one of the views:

    - ``"image"``: ``(B, 1, H, W)``, for convolutions.
    - ``"rows"``: ``(B, H, W)``, H time steps of W features (row-by-row recurrent models).
    - ``"patches"``: ``(B, (H/P)*(W/P), P*P)``, non-overlapping P x P patches in raster order,
      each flattened row-major (vision-transformer tokens). ``patch_size`` P must divide H and W.
    - ``"pixels"``: ``(B, H*W, 1)``, one pixel per step (sequential MNIST); with ``permutation``
      (e.g. :func:`pixel_permutation`) the steps are reordered as ``pixels[:, permutation]``.

    The result is on the device of ``images``.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images: expected a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise TypeError(f"images: expected uint8 pixels, got {images.dtype}")
    if images.dim() == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.dim() != 3:
        raise ValueError(f"images: expected shape (B, H, W) or (B, 1, H, W), got {tuple(images.shape)}")
    if view not in VIEWS:
        raise ValueError(f"view: expected one of {VIEWS}, got {view!r}")
    if permutation is not None and view != "pixels":
        raise ValueError(f"permutation: only applies to view='pixels', got view={view!r}")

    b, h, w = images.shape
    x = images.to(torch.float32).div_(255.0).sub_(mean).div_(std)
    if view == "image":
        return x.unsqueeze(1)
    if view == "rows":
        return x
    if view == "patches":
        p = patch_size
        if not isinstance(p, int) or p <= 0 or h % p or w % p:
            raise ValueError(f"patch_size: must be a positive divisor of the image size {h}x{w}, got {p!r}")
        x = x.reshape(b, h // p, p, w // p, p).permute(0, 1, 3, 2, 4)
        return x.reshape(b, (h // p) * (w // p), p * p)
    x = x.reshape(b, h * w, 1)
    if permutation is not None:
        permutation = torch.as_tensor(permutation)
        n = h * w
        if permutation.dtype not in (torch.int64, torch.int32) or permutation.shape != (n,):
            raise ValueError(
                f"permutation: expected an int64 or int32 tensor of shape ({n},), "
                f"got {permutation.dtype} of shape {tuple(permutation.shape)}"
            )
        # Check the contents only on the CPU: on a GPU it would cost a device sync per batch.
        if permutation.device.type == "cpu" and not torch.equal(
            permutation.sort().values, torch.arange(n, dtype=permutation.dtype)
        ):
            raise ValueError(f"permutation: not a permutation of range({n}) (repeated or out-of-range indices)")
        x = x[:, permutation.to(device=x.device, dtype=torch.long)]
    return x
