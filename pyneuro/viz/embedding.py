"""What a classifier's last layer gets to work with: the penultimate features of test digits (the
input of the final nn.Linear that produces the 10 logits), projected to 2-D. Well separated class
clusters mean the linear head has an easy job; overlapping ones show which digits the features
confuse. Works for every classifier in the registry, as it only needs that final layer.

PCA is computed here with torch (an SVD of the centred features). A t-SNE panel is added when
scikit-learn is installed (it is not a dependency; without it only the PCA panel is drawn).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..data import VIEWS, to_view
from .plots import _check_images, _save, plt  # plt: imported there with the file-only Agg backend

__all__ = ["penultimate_features", "pca_2d", "plot_embedding"]

NUM_CLASSES = 10


def _classifier_head(model: nn.Module) -> nn.Linear:
    """The last nn.Linear (in module order) with one output per class: the classification layer."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == NUM_CLASSES]
    if not heads:
        raise ValueError(f"model: expected a final nn.Linear with out_features={NUM_CLASSES} (the classifier "
                         "head), found none")
    return heads[-1]


def _view_and_patch_size(model: nn.Module, view: str | None) -> tuple[str, int]:
    """The view the model reads and the patch size for the "patches" view: ``view`` or the model's
    ``view`` attribute, else "patches" for a model with a ``patch_size``."""
    patch_size = next((m.patch_size for m in model.modules() if isinstance(getattr(m, "patch_size", None), int)), 7)
    if view is None:
        view = next((m.view for m in model.modules() if isinstance(getattr(m, "view", None), str)), None)
    if view is None and any(isinstance(getattr(m, "patch_size", None), int) for m in model.modules()):
        view = "patches"
    if view not in VIEWS:
        raise ValueError(f"view: expected one of {VIEWS} (or None for a model with a view attribute), got {view!r}")
    return view, patch_size


@torch.no_grad()
def penultimate_features(model: nn.Module, images: torch.Tensor, view: str | None = None,
                         batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """The classifier head's input for each image, and the predicted classes: float32
    (N, features) and int64 (N,), on the CPU. ``images`` uint8 (N, 28, 28); ``view`` as the model
    reads them (None: from the model, see :func:`plot_embedding`). The model runs in eval mode
    (its mode is restored after)."""
    images = _check_images(images)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: must be a positive int, got {batch_size!r}")
    head = _classifier_head(model)
    view, patch_size = _view_and_patch_size(model, view)
    param = next(model.parameters())
    seen: list[torch.Tensor] = []
    # A pre-hook sees the head's input whatever the model computes before it (pooling, norms...).
    handle = head.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().float().cpu()))
    features, predictions = [], []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(images), batch_size):
            x = to_view(images[start:start + batch_size].to(param.device), view, patch_size=patch_size)
            seen.clear()
            logits = model(x.to(param.dtype))
            if len(seen) != 1:
                raise ValueError(f"model: its classifier head ran {len(seen)} times in one forward pass, expected once")
            features.append(seen[0].reshape(len(x), -1))
            predictions.append(logits.argmax(-1).cpu())
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(features), torch.cat(predictions)


def pca_2d(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Project (N, D) ``features`` onto their first two principal axes.

    Returns the coordinates (N, 2) float32, centred, with the first column along the direction
    of largest variance, and the fraction of the total variance each axis explains (2,). The
    sign of each axis is fixed so that its largest loading is positive (SVD signs are arbitrary,
    and a picture should not flip between runs). With D == 1 the second axis is all zeros.
    """
    if not isinstance(features, torch.Tensor) or features.dim() != 2 or len(features) < 2:
        raise ValueError(f"features: expected a (N, D) tensor with N >= 2, got "
                         f"{tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__}")
    centred = features.double() - features.double().mean(0)
    _, singular, axes_t = torch.linalg.svd(centred, full_matrices=False)  # rows of axes_t: principal axes
    axes_t = axes_t[:2]
    signs = axes_t.gather(1, axes_t.abs().argmax(1, keepdim=True)).sign()
    signs[signs == 0] = 1
    axes_t = axes_t * signs
    coords = centred @ axes_t.t()
    variance = singular.pow(2)
    explained = variance[:2] / variance.sum().clamp_min(1e-300)
    if coords.shape[1] < 2:
        coords = torch.cat([coords, coords.new_zeros(len(coords), 2 - coords.shape[1])], dim=1)
        explained = torch.cat([explained, explained.new_zeros(2 - len(explained))])
    return coords.float(), explained.float()


def _tsne_2d(features: torch.Tensor) -> torch.Tensor | None:
    """t-SNE coordinates (N, 2) if scikit-learn is installed, else None."""
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        return None
    perplexity = float(min(30, max(2, (len(features) - 1) // 3)))
    coords = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=0).fit_transform(features.numpy())
    return torch.as_tensor(coords, dtype=torch.float32)


def _scatter(ax, coords: torch.Tensor, labels: torch.Tensor) -> None:
    for digit in range(NUM_CLASSES):
        chosen = labels == digit
        if chosen.any():
            ax.scatter(coords[chosen, 0].numpy(), coords[chosen, 1].numpy(), s=5, alpha=0.7, color=f"C{digit}",
                       label=str(digit), linewidths=0)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=7)


def plot_embedding(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, path, title: str = "model",
                   view: str | None = None, count: int = 2000) -> Path:
    """Scatter of the penultimate features of the first ``count`` test images in 2-D, coloured by
    true class: their PCA projection (axes labelled with the share of variance they explain), and
    beside it a t-SNE map when scikit-learn is installed.

    ``view``: how the model reads an image, one of pyneuro.data.VIEWS (None: the model's ``view``
    attribute, else "patches" for a model with a ``patch_size``; the run evaluation passes it).
    ``images`` uint8 (N, 28, 28), ``labels`` int (N,). Written as a PNG at ``path``; returns it.
    """
    images = _check_images(images, labels)
    if isinstance(count, bool) or not isinstance(count, int) or count < 2:
        raise ValueError(f"count: must be an int >= 2, got {count!r}")
    if len(images) < 2:
        raise ValueError(f"images: need at least 2 images for a projection, got {len(images)}")
    images, labels = images[:count], labels[:count].cpu()
    features, predictions = penultimate_features(model, images, view)
    pca, explained = pca_2d(features)
    tsne = _tsne_2d(features)
    panels = 1 if tsne is None else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.4 * panels + 0.9, 5.0), squeeze=False)
    ax = axes[0, 0]
    _scatter(ax, pca, labels)
    ax.set_xlabel(f"PC 1 ({100 * explained[0]:.0f}% of variance)", fontsize=8)
    ax.set_ylabel(f"PC 2 ({100 * explained[1]:.0f}% of variance)", fontsize=8)
    ax.set_title("PCA", fontsize=9)
    if tsne is not None:
        _scatter(axes[0, 1], tsne, labels)
        axes[0, 1].set_title("t-SNE", fontsize=9)
        axes[0, 1].set_xticks([])
        axes[0, 1].set_yticks([])
    axes[0, -1].legend(title="class", fontsize=7, title_fontsize=8, markerscale=2.5, loc="center left",
                       bbox_to_anchor=(1.01, 0.5), frameon=False)
    accuracy = (predictions == labels).float().mean().item()
    fig.suptitle(f"{title}: penultimate features ({features.shape[1]}-D) of {len(images)} test digits\n"
                 f"coloured by true class; the model's accuracy on them {100 * accuracy:.1f}%", fontsize=9)
    return _save(fig, Path(path))
