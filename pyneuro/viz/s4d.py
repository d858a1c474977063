"""What an S4D model learned: the convolution kernels of a few channels per layer, and how fast the
kernels decay over the sequence (28 rows, or 784 pixels for sequential MNIST)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..nn import S4D
from .plots import plt  # imported there with the file-only Agg backend

__all__ = ["plot_kernels", "s4d_pictures"]

# Steps per image in each sequence view (pyneuro.data.to_view).
SEQUENCE_LENGTH = {"rows": 28, "pixels": 784}


def _s4d_layers(model: torch.nn.Module) -> list[S4D]:
    layers = [m for m in model.modules() if isinstance(m, S4D)]
    if not layers:
        raise ValueError("model: expected at least one pyneuro.nn.S4D layer inside, found 0")
    return layers


def _envelope(k: torch.Tensor) -> torch.Tensor:
    """|K| from each lag on: max_{j >= l} |K[c, j]|, normalised to 1 at lag 0 (a decay curve that
    ignores the oscillation)."""
    tail_max = k.abs().flip(-1).cummax(-1).values.flip(-1)
    return tail_max / tail_max[:, :1].clamp_min(1e-30)


@torch.no_grad()
def plot_kernels(model: torch.nn.Module, path, length: int = 784, channels: int = 4, title: str = "s4d") -> Path:
    """One column per S4D layer of ``model``: the kernels K[c, l] of ``channels`` channels (from the
    smallest to the largest learned step size dt, i.e. from the longest memory to the shortest), each
    scaled to its largest |K|; and below, over all the layer's channels, the decay envelope
    max_{j >= l} |K[c, j]| / max |K[c, :]| (median and 10-90% band, log scale), out to ``length``
    steps. Written as a PNG at ``path``; returns the path."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 2:
        raise ValueError(f"length: must be an int >= 2, got {length!r}")
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels: must be a positive int, got {channels!r}")
    layers = _s4d_layers(model)
    n = len(layers)
    fig, axes = plt.subplots(2, n, figsize=(3.2 * n + 0.6, 5.8), squeeze=False, sharex=True)
    lags = torch.arange(length).numpy()
    for j, layer in enumerate(layers):
        k = layer.kernel(length).double().cpu()                      # (H, L)
        dt = layer.log_dt.detach().exp().double().cpu()
        order = dt.argsort()                                         # small dt: slow decay (long memory)
        picks = order[torch.linspace(0, len(order) - 1, min(channels, len(order))).round().long()]
        ax = axes[0, j]
        for rank, c in enumerate(picks.tolist()):
            curve = k[c] / k[c].abs().max().clamp_min(1e-30)
            ax.plot(lags, curve.numpy() + 2.2 * rank, lw=0.9, label=f"ch {c}, dt={dt[c]:.2g}")
        ax.set_title(f"layer {j + 1}: kernels K[c, l]", fontsize=8)
        ax.set_yticks([])
        ax.legend(fontsize=6, loc="upper right")
        ax = axes[1, j]
        env = _envelope(k)
        lo, mid, hi = torch.quantile(env, torch.tensor([0.1, 0.5, 0.9], dtype=env.dtype), dim=0)
        ax.fill_between(lags, lo.clamp_min(1e-8).numpy(), hi.clamp_min(1e-8).numpy(), alpha=0.3,
                        label="10-90% of channels")
        ax.plot(lags, mid.clamp_min(1e-8).numpy(), lw=1.2, label="median")
        ax.set_yscale("log")
        ax.set_ylim(1e-4, 1.5)
        ax.set_xlabel("lag l (steps)", fontsize=8)
        ax.grid(alpha=0.3)
        if j == 0:
            ax.set_ylabel("max_{j≥l} |K| / max |K|", fontsize=8)
            ax.legend(fontsize=7)
        for a in axes[:, j]:
            a.tick_params(labelsize=7)
    fig.suptitle(f"{title}: learned S4D convolution kernels over {length} steps", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")  # atomic, like the run's other plots
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def s4d_pictures(model, images, labels, out_dir, title: str = "s4d", view: str | None = None) -> list[Path]:
    """The run's S4D pictures (the model's plots hook): kernels.png over the view's sequence length."""
    if view is None:
        view = next((m.view for m in model.modules() if isinstance(getattr(m, "view", None), str)), "rows")
    if view not in SEQUENCE_LENGTH:
        raise ValueError(f"view: must be one of {list(SEQUENCE_LENGTH)}, got {view!r}")
    return [plot_kernels(model, Path(out_dir) / "kernels.png", length=SEQUENCE_LENGTH[view], title=title)]
