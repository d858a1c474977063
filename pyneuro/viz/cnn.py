"""What a convolutional network sees: its first layer's filters, and the activation maps each conv
layer produces for one test digit (from strokes and edges in the first layer to coarser, more
abstract parts deeper in)."""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from ..data import to_view
from .plots import _check_images, _save, plt  # plt: imported there with the file-only Agg backend

__all__ = ["plot_filters", "plot_feature_maps", "plots"]

# Modules that belong to a conv layer's stage when they follow it directly: the maps drawn are the
# ones after the normalisation and the non-linearity, what the next layer actually reads.
_STAGE_MODULES = (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.LayerNorm, nn.ReLU, nn.ReLU6, nn.LeakyReLU,
                  nn.GELU, nn.SiLU, nn.ELU, nn.Tanh, nn.Sigmoid, nn.Hardswish, nn.Mish)


def _conv_layers(model: nn.Module) -> list[nn.Conv2d]:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("model: expected at least one nn.Conv2d layer inside, found 0")
    return convs


def _stage_outputs(model: nn.Module, convs: list[nn.Conv2d]) -> dict[nn.Conv2d, nn.Module]:
    """For each conv, the module whose output is that conv's activation map: the last of the
    norm/activation modules that directly follow it in its nn.Sequential, else the conv itself."""
    stage = {conv: conv for conv in convs}
    for seq in (m for m in model.modules() if isinstance(m, nn.Sequential)):
        children = list(seq)
        for i, child in enumerate(children):
            if not isinstance(child, nn.Conv2d):
                continue
            j = i + 1
            while j < len(children) and isinstance(children[j], _STAGE_MODULES):
                j += 1
            stage[child] = children[j - 1]
    return stage


@torch.no_grad()
def plot_filters(model: nn.Module, path, title: str = "cnn", max_filters: int = 64, max_inputs: int = 8) -> Path:
    """The first conv layer's kernels, one small image per output channel (and per input channel
    when it reads several), on one diverging scale centred at 0: red weights respond to ink, blue
    ones to its absence. The first ``max_filters`` output and ``max_inputs`` input channels.
    Written as a PNG at ``path``; returns the path."""
    weight = _conv_layers(model)[0].weight.detach().float().cpu()  # (out, in / groups, kh, kw)
    weight = weight[:max_filters, :max_inputs]
    n_out, n_in = weight.shape[:2]
    limit = weight.abs().max().clamp_min(1e-12).item()
    if n_in == 1:  # one grid of the output channels
        cols = min(8, n_out)
        rows = math.ceil(n_out / cols)
        cells = [(c, 0) for c in range(n_out)]
    else:  # a row per output channel, a column per input channel
        rows, cols = n_out, n_in
        cells = [(c, k) for c in range(n_out) for k in range(n_in)]
    fig, axes = plt.subplots(rows, cols, figsize=(0.85 * cols + 1.2, 0.85 * rows + 0.7), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for n, (c, k) in enumerate(cells):
        ax = axes.flat[n]
        ax.axis("on")
        im = ax.imshow(weight[c, k].numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        label = f"{c}" if n_in == 1 else f"out {c} · in {k}"
        ax.set_title(label, fontsize=6, pad=2)
    fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02, label="weight")
    kh, kw = weight.shape[2:]
    fig.suptitle(f"{title}: first conv layer's {kh}×{kw} filters (one colour scale, 0 = white)", fontsize=9)
    return _save(fig, Path(path), tight_layout=False)


@torch.no_grad()
def plot_feature_maps(model: nn.Module, images: torch.Tensor, path, index: int = 0, channels: int = 12,
                      title: str = "cnn", view: str = "image", labels: torch.Tensor | None = None) -> Path:
    """One test digit (``images[index]``) and, a row per conv layer, the first ``channels`` maps
    it produces there (after the layer's normalisation and non-linearity), each row on its own
    colour scale. Shows how the network trades resolution for features block by block. With
    ``labels`` (N,) the digit's true class is shown beside the prediction. Written as a PNG at
    ``path``; returns the path."""
    images = _check_images(images, labels)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(images):
        raise ValueError(f"index: must be an int in [0, {len(images)}), got {index!r}")
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels: must be a positive int, got {channels!r}")
    convs = _conv_layers(model)
    stage = _stage_outputs(model, convs)
    maps: dict[nn.Conv2d, torch.Tensor] = {}
    handles = [stage[conv].register_forward_hook(
        lambda module, args, output, conv=conv: maps.setdefault(conv, output.detach().float().cpu().clone()))
        for conv in convs]
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        x = to_view(images[index:index + 1].to(param.device), view).to(param.dtype)
        prediction = model(x).argmax(-1).item()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    drawn = [conv for conv in convs if conv in maps]
    if not drawn:
        raise ValueError("model: its conv layers did not run (no activation map was captured)")
    shown = min(channels, max(maps[conv].shape[1] for conv in drawn))
    rows, cols = len(drawn), 1 + shown
    fig, axes = plt.subplots(rows, cols, figsize=(0.95 * cols + 0.6, 1.05 * rows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes[0, 0].axis("on")
    axes[0, 0].imshow(images[index].cpu().numpy(), cmap="gray_r")
    truth = "input" if labels is None else f"digit {labels[index].item()}"
    axes[0, 0].set_title(f"{truth} → {prediction}", fontsize=7,
                         color="red" if labels is not None and labels[index].item() != prediction else "black")
    for r, conv in enumerate(drawn):
        fmap = maps[conv][0]  # (C, H, W)
        c, h, w = fmap.shape
        picked = fmap[:shown]
        low, high = picked.min().item(), picked.max().item()
        # After a ReLU the maps are >= 0: a sequential scale; otherwise diverging around 0.
        if low >= 0:
            cmap, vmin, vmax = "viridis", 0.0, max(high, 1e-12)
        else:
            limit = max(abs(low), abs(high), 1e-12)
            cmap, vmin, vmax = "RdBu_r", -limit, limit
        for k in range(len(picked)):
            ax = axes[r, 1 + k]
            ax.axis("on")
            ax.imshow(picked[k].numpy(), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_ylabel(f"conv {r + 1}\n{c} ch, {h}×{w}", fontsize=7)
            if r == 0:
                ax.set_title(f"ch {k}", fontsize=7)
    axes[0, 0].set_xticks([])
    axes[0, 0].set_yticks([])
    fig.suptitle(f"{title}: activation maps of one digit after each conv layer (first {shown} channels, "
                 f"each row on its own scale)", fontsize=9)
    return _save(fig, Path(path))


def plots(model, images, labels, out_dir, title: str = "cnn", view: str | None = None) -> list[Path]:
    """The CNN's own pictures after a run (the model registry's ``plots`` hook): filters.png and
    feature_maps.png in ``out_dir``."""
    _check_images(images, labels)
    out = Path(out_dir)
    return [plot_filters(model, out / "filters.png", title=title),
            plot_feature_maps(model, images, out / "feature_maps.png", title=title, view=view or "image",
                              labels=labels)]
