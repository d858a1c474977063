"""Where a patch transformer looks: attention from the class token over the patches, per layer and
head, drawn over the digit."""
from __future__ import annotations

from pathlib import Path

import torch

from ..data import to_view
from .plots import plt  # imported there with the file-only Agg backend

__all__ = ["plot_class_attention", "plots"]


def _patch_model(model: torch.nn.Module):
    found = [m for m in model.modules() if hasattr(m, "class_token_attention")]
    if len(found) != 1:
        raise ValueError(f"model: expected one patch transformer (with class_token_attention) inside, found {len(found)}")
    return found[0]


@torch.no_grad()
def plot_class_attention(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, path,
                         count: int = 4, title: str = "transformer") -> Path:
    """For ``count`` test digits (the first of distinct classes): the digit with the prediction, then
    one panel per (layer, head) with the class token's attention weights over the patches,
    upsampled to the patch grid and laid over the digit. ``images`` uint8 (N, 28, 28). Returns
    the PNG path."""
    net = _patch_model(model)
    if images.dim() != 3 or len(images) != len(labels):
        raise ValueError(f"images: expected uint8 (N, 28, 28) with one label each, got {tuple(images.shape)}")
    picks, seen = [], set()
    for i, label in enumerate(labels.tolist()):
        if label not in seen:
            seen.add(label)
            picks.append(i)
        if len(picks) == count:
            break
    device = next(net.parameters()).device
    chosen = images[picks]
    x = to_view(chosen.to(device), "patches", patch_size=net.patch_size)
    was_training = net.training
    net.eval()
    try:
        weights, logits = net.class_token_attention(x)  # (layers, N, heads, patches), (N, 10)
    finally:
        net.train(was_training)
    layers, n, heads, patches = weights.shape
    grid = int(round(patches ** 0.5))
    maps = weights.reshape(layers, n, heads, grid, grid).float().cpu()
    maps = torch.nn.functional.interpolate(maps.reshape(-1, 1, grid, grid), size=(28, 28), mode="nearest")
    maps = maps.reshape(layers, n, heads, 28, 28)
    cols = 1 + layers * heads
    fig, axes = plt.subplots(n, cols, figsize=(1.1 * cols, 1.25 * n + 0.6), squeeze=False)
    for r in range(n):
        digit = chosen[r].float().cpu() / 255
        axes[r, 0].imshow(digit, cmap="gray_r")
        axes[r, 0].set_title(f"{labels[picks[r]].item()} → {logits[r].argmax().item()}", fontsize=8)
        for layer in range(layers):
            for head in range(heads):
                ax = axes[r, 1 + layer * heads + head]
                ax.imshow(digit, cmap="gray_r")
                ax.imshow(maps[layer, r, head], cmap="inferno", alpha=0.6, vmin=0)
                if r == 0:
                    ax.set_title(f"L{layer + 1} h{head + 1}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{title}: attention of the class token over the {patches} patches (layer L, head h)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plots(model, images, labels, out_dir, title="transformer", view=None) -> list[Path]:
    """The transformer's own pictures after a run (the model registry's ``plots`` hook)."""
    return [plot_class_attention(model, images, labels, Path(out_dir) / "attention.png", title=title)]
