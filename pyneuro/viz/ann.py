"""What a multi-layer perceptron's first layer looks for: each hidden unit's 784 input weights laid
out as a 28×28 image, i.e. the pixel template the unit matches against the digit."""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from .plots import _check_images, _save, plt  # plt: imported there with the file-only Agg backend

__all__ = ["plot_weights", "plots"]

PIXELS = 28 * 28


def _first_pixel_layer(model: nn.Module) -> nn.Linear:
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.in_features == PIXELS:
            return module
    raise ValueError(f"model: expected an nn.Linear reading the {PIXELS} pixels (in_features={PIXELS}), found none")


@torch.no_grad()
def plot_weights(model: nn.Module, path, units: int = 64, title: str = "ann") -> Path:
    """The first ``units`` hidden units of the first nn.Linear with 784 inputs, each unit's weights
    as a 28×28 image on a diverging scale centred at 0 (red: ink there excites the unit, blue: it
    inhibits it). Each unit gets its own scale (±its largest |weight|), so that weak units still
    show their pattern. Written as a PNG at ``path``; returns the path."""
    if isinstance(units, bool) or not isinstance(units, int) or units < 1:
        raise ValueError(f"units: must be a positive int, got {units!r}")
    weight = _first_pixel_layer(model).weight.detach().float().cpu()[:units]  # (units, 784)
    n = len(weight)
    cols = min(8, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.05 * cols + 1.0, 1.1 * rows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for u in range(n):
        ax = axes.flat[u]
        limit = weight[u].abs().max().clamp_min(1e-12).item()
        # nn.Flatten lays (1, 28, 28) out row by row, so the 784 weights reshape straight back.
        im = ax.imshow((weight[u] / limit).reshape(28, 28).numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_title(f"unit {u}", fontsize=6, pad=2)
    fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02, label="weight / max |weight| of the unit")
    fig.suptitle(f"{title}: first layer's weights per hidden unit as 28×28 images ({n} units)", fontsize=9)
    return _save(fig, Path(path), tight_layout=False)


def plots(model, images, labels, out_dir, title: str = "ann", view: str | None = None) -> list[Path]:
    """The MLP's own pictures after a run (the model registry's ``plots`` hook): weights.png."""
    _check_images(images, labels)
    return [plot_weights(model, Path(out_dir) / "weights.png", title=title)]
