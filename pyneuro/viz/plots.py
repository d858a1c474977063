"""Run plots: training curves, confusion matrix, and a grid of test predictions (classifiers); the
loss curves of a generative model's terms (its own pictures come from its registry entry)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: works on machines with no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def _save(fig, path: Path, tight_layout: bool = True) -> Path:
    """Write ``fig`` as a PNG atomically and close it. ``tight_layout=False`` for figures laid out
    by matplotlib's constrained layout (tight_layout would undo it and cannot place a colour bar
    shared by several axes): they are cropped to their contents instead."""
    tmp = path.with_name(f".{path.name}.tmp.png")
    if tight_layout:
        fig.tight_layout()
        fig.savefig(tmp, dpi=110)
    else:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


# -- shared by the models' own pictures (viz/<model>.py) ----------------------------------------
def _check_images(images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 (N, 28, 28) (or (N, 1, 28, 28)) -> (N, 28, 28); ValueError naming the bad argument."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise ValueError(f"images: expected a uint8 tensor (N, 28, 28), got "
                         f"{getattr(images, 'dtype', type(images).__name__)}")
    if images.dim() == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.dim() != 3 or images.shape[1:] != (28, 28) or len(images) == 0:
        raise ValueError(f"images: expected uint8 (N, 28, 28) with N >= 1, got shape {tuple(images.shape)}")
    if labels is not None and (not isinstance(labels, torch.Tensor) or labels.shape != (len(images),)):
        raise ValueError(f"labels: expected one label per image, shape ({len(images)},), got "
                         f"{tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__}")
    return images


def _one_per_class(labels: torch.Tensor, count: int) -> list[int]:
    """Indices of the first image of each of the first ``count`` distinct labels, in label order."""
    first: dict[int, int] = {}
    for i, label in enumerate(labels.tolist()):
        first.setdefault(label, i)
        if len(first) == count:
            break
    return [first[label] for label in sorted(first)]


def _digit_panel(ax, image: torch.Tensor, label: int, prediction: int) -> None:
    """A test digit with "label → prediction" above it (red when wrong), no ticks."""
    ax.imshow(image.cpu().numpy(), cmap="gray_r")
    ax.set_title(f"digit {label} → {prediction}", fontsize=8, color="black" if label == prediction else "red")
    ax.set_xticks([])
    ax.set_yticks([])


def training_curves(records: list[dict], path: Path, title: str = "") -> Path:
    epochs = [r["epoch"] for r in records]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(epochs, [r["train_loss"] for r in records], "o-", label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in records], "s-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title=f"{title} loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [100 * r["train_acc"] for r in records], "o-", label="train")
    ax_acc.plot(epochs, [100 * r["val_acc"] for r in records], "s-", label="validation")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title=f"{title} accuracy")
    ax_acc.legend()
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    return _save(fig, path)


def confusion(cm: torch.Tensor, path: Path, title: str = "") -> Path:
    cm = cm.to(torch.long)
    fig, ax = plt.subplots(figsize=(5.6, 5))
    # Log-scaled colours: the diagonal holds ~1000 per class, the errors only a handful.
    shade = torch.log1p(cm.double())
    im = ax.imshow(shade.numpy(), cmap="Blues")
    n = cm.shape[0]
    threshold = shade.max().item() * 0.6
    for i in range(n):
        for j in range(n):
            v = cm[i, j].item()
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                        color="white" if shade[i, j] > threshold else "black")
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true",
           title=f"{title} confusion matrix (test)")
    fig.colorbar(im, ax=ax, fraction=0.046, label="log(1 + count)")
    return _save(fig, path)


def prediction_grid(images: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor, probs: torch.Tensor,
                    path: Path, title: str = "", rows: int = 6, cols: int = 10) -> Path:
    """The first test images mixed with misclassified ones; wrong predictions are framed in red."""
    wrong = (preds != labels).nonzero().flatten()
    n = rows * cols
    n_wrong = min(len(wrong), n // 2)
    right = (preds == labels).nonzero().flatten()[: n - n_wrong]
    order = torch.cat([right, wrong[:n_wrong]])
    order = order[torch.argsort(order)]
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.05, rows * 1.25))
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, order.tolist()):
        ok = preds[i] == labels[i]
        ax.imshow(images[i].cpu().numpy(), cmap="gray_r")
        ax.set_title(f"{preds[i].item()} ({probs[i, preds[i]].item():.2f})" + ("" if ok else f" ≠{labels[i].item()}"),
                     fontsize=7, color="black" if ok else "red")
        if not ok:
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor("red")
                spine.set_linewidth(2)
    fig.suptitle(f"{title}: test predictions (confidence); red = misclassified "
                 f"({len(wrong)} of {len(labels)} wrong)", fontsize=9)
    return _save(fig, path)


def run_plots(out_dir, records, cm, images, labels, preds, probs, title="") -> list[Path]:
    out = Path(out_dir)
    paths = []
    if records:
        paths.append(training_curves(records, out / "curves.png", title))
    paths.append(confusion(cm, out / "confusion.png", title))
    paths.append(prediction_grid(images, labels, preds, probs, out / "predictions.png", title))
    return paths


def generative_curves(records: list[dict], path: Path, title: str = "") -> Path:
    """The loss and each of its named terms (train and, where measured, validation) per epoch."""
    epochs = [r["epoch"] for r in records]
    names = ["loss", *dict.fromkeys(k[len("train_"):] for r in records for k in r
                                    if k.startswith("train_") and k != "train_loss")]
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        for split, marker in (("train", "o-"), ("val", "s-")):
            points = [(e, r[f"{split}_{name}"]) for e, r in zip(epochs, records) if f"{split}_{name}" in r]
            if points:
                ax.plot(*zip(*points), marker, ms=3, label="validation" if split == "val" else split)
        ax.set(xlabel="epoch", ylabel="nats per image" if name.endswith("_nats") or name == "loss" else name,
               title=f"{title} {name}")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def generative_run_plots(out_dir, records, title="") -> list[Path]:
    return [generative_curves(records, Path(out_dir) / "curves.png", title)] if records else []
