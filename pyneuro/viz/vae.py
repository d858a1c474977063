"""A VAE's pictures: reconstructions beside their inputs, samples from the prior, the latent space
coloured by class and, for a 2-D latent space, the decoded manifold."""
from __future__ import annotations

from pathlib import Path

import torch

from ..data import fixed_binarization
from .plots import _save, plt  # imported there with the file-only Agg backend

__all__ = ["vae_pictures", "reconstructions", "prior_samples", "latent_space", "manifold"]

PICTURE_SEED = 7  # the same samples in every picture of every run


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _grid(ax_rows, pictures, titles=None):
    for i, ax in enumerate(ax_rows):
        ax.axis("off")
        if i < len(pictures):
            ax.imshow(pictures[i].cpu().numpy(), cmap="gray_r", vmin=0, vmax=1)
            if titles:
                ax.set_title(titles[i], fontsize=7)


@torch.no_grad()
def reconstructions(model, images, path: Path, title: str = "vae", count: int = 30, cols: int = 10) -> Path:
    """Rows of (binarised) test inputs, each above the pixel probabilities decoded from its
    posterior mean."""
    x = fixed_binarization(images)[:count].reshape(-1, 1, 28, 28).to(_model_device(model))  # the scored bits
    mu, _ = model.encode(x)
    recon = model.decode(mu).sigmoid().reshape(-1, 28, 28)
    groups = (len(x) + cols - 1) // cols
    fig, axes = plt.subplots(2 * groups, cols, figsize=(cols * 0.9, 2 * groups * 0.95), squeeze=False)
    for g in range(groups):
        part = slice(g * cols, (g + 1) * cols)
        _grid(axes[2 * g], x[part, 0], ["input" if g == 0 and j == 0 else "" for j in range(cols)])
        _grid(axes[2 * g + 1], recon[part], ["reconstruction" if g == 0 and j == 0 else "" for j in range(cols)])
    fig.suptitle(f"{title}: test inputs (binarised) and their reconstructions (from the posterior mean)",
                 fontsize=9)
    return _save(fig, path)


@torch.no_grad()
def prior_samples(model, path: Path, title: str = "vae", rows: int = 8, cols: int = 8) -> Path:
    samples = model.sample(rows * cols, torch.Generator().manual_seed(PICTURE_SEED))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 0.9), squeeze=False)
    _grid(axes.flat, samples)
    fig.suptitle(f"{title}: samples from the prior (pixel probabilities)", fontsize=9)
    return _save(fig, path)


@torch.no_grad()
def latent_space(model, images, labels, path: Path, title: str = "vae", count: int = 5000) -> Path:
    """The posterior means of ``count`` test images, coloured by class: the two latent coordinates
    themselves for a 2-D latent, else their first two principal components."""
    device = _model_device(model)
    x = fixed_binarization(images)[:count].reshape(-1, 1, 28, 28).to(device)
    mu = torch.cat([model.encode(chunk)[0] for chunk in x.split(1000)]).cpu()
    labels = labels[:count]
    if mu.shape[1] == 2:
        points, axis = mu, "z"
    else:
        centred = mu - mu.mean(0)
        _, s, v = torch.linalg.svd(centred, full_matrices=False)
        points, axis = centred @ v[:2].T, "PC"
        explained = (s[:2].square() / s.square().sum()).tolist()
    fig, ax = plt.subplots(figsize=(6, 5.2))
    sc = ax.scatter(points[:, 0], points[:, 1], c=labels.numpy(), cmap="tab10", s=3, alpha=0.7, vmin=-0.5, vmax=9.5)
    fig.colorbar(sc, ax=ax, ticks=range(10), label="digit")
    if axis == "z":
        ax.set(xlabel="z1", ylabel="z2", title=f"{title}: posterior means of {len(mu):,} test images")
    else:
        ax.set(xlabel=f"PC1 ({explained[0]:.0%} of the variance)", ylabel=f"PC2 ({explained[1]:.0%})",
               title=f"{title}: posterior means of {len(mu):,} test images (PCA of {mu.shape[1]} dims)")
    return _save(fig, path)


@torch.no_grad()
def manifold(model, path: Path, title: str = "vae", n: int = 20) -> Path:
    """A 2-D latent model's decoder over an n x n grid of the prior's quantiles (5% to 95%)."""
    if model.latent_dim != 2:
        raise ValueError(f"model: the manifold grid needs latent_dim=2, got {model.latent_dim}")
    q = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, n))
    z = torch.stack(torch.meshgrid(q, q.flip(0), indexing="xy"), -1).reshape(-1, 2)  # rows: z2 from high to low
    pictures = model.decode(z.to(_model_device(model))).sigmoid().reshape(n, n, 28, 28).cpu()
    canvas = pictures.permute(0, 2, 1, 3).reshape(n * 28, n * 28)
    fig, ax = plt.subplots(figsize=(8, 8))
    ax.imshow(canvas.numpy(), cmap="gray_r", vmin=0, vmax=1,
              extent=(q[0].item(), q[-1].item(), q[0].item(), q[-1].item()))
    ax.set(xlabel="z1", ylabel="z2", title=f"{title}: decoded latent grid (prior quantiles 5%-95%)")
    return _save(fig, path)


def vae_pictures(model, images, labels, out_dir, title: str = "vae", view: str | None = None) -> list[Path]:
    """The registry's picture hook for ``vae``: every picture above, into ``out_dir``."""
    out = Path(out_dir)
    was_training = model.training
    model.eval()
    try:
        paths = [reconstructions(model, images, out / "reconstructions.png", title),
                 prior_samples(model, out / "samples.png", title),
                 latent_space(model, images, labels, out / "latent.png", title)]
        if model.latent_dim == 2:
            paths.append(manifold(model, out / "manifold.png", title))
    finally:
        model.train(was_training)
    return paths
