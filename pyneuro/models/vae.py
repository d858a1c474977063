"""VAE (Kingma & Welling 2014) on dynamically binarised MNIST: a Gaussian posterior q(z|x) with a
diagonal covariance, a standard normal prior and a Bernoulli likelihood p(x|z) over the 784 pixels.

Two variants share everything but the networks: ``mlp`` (the default) and ``conv`` (two stride-2
convolutions down to 7x7, two transposed ones back up). All the reported numbers are nats per image:
``recon_nats`` = -E_q[log p(x|z)] (one sample of z while training), ``kl_nats`` = KL(q(z|x) || p(z))
(closed form), ``neg_elbo_nats`` = their sum, and at the end ``iw_nll_nats``, the importance-weighted
bound -log (1/k) sum_i p(x, z_i) / q(z_i|x) of Burda et al. 2016 with k samples, which tightens
towards -log p(x) as k grows.

The generative-model interface the trainer uses (see pyneuro/models/registry.py): ``prepare`` turns
uint8 images into the training batch, ``forward`` returns (loss, terms), ``evaluate`` adds the
test-set figures to eval.json.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import data as pdata
from .registry import register

VARIANTS = ("mlp", "conv")
LOG_2PI = math.log(2 * math.pi)
EVAL_NOISE_SEED = 4321  # the posterior samples of the final evaluation: the same on every run


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class VAE(nn.Module):
    def __init__(self, variant="mlp", latent_dim=50, hidden=(512, 512), channels=(32, 64), kl_warmup_steps=0,
                 iw_samples=1000, iw_batch=16):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
        if latent_dim < 1:
            raise ValueError(f"latent_dim: must be at least 1, got {latent_dim}")
        if kl_warmup_steps < 0:
            raise ValueError(f"kl_warmup_steps: must be >= 0, got {kl_warmup_steps}")
        if iw_samples < 1 or iw_batch < 1:
            raise ValueError(f"iw_samples and iw_batch: must be at least 1, got {iw_samples} and {iw_batch}")
        self.variant, self.latent_dim = variant, latent_dim
        self.kl_warmup_steps, self.iw_samples, self.iw_batch = kl_warmup_steps, iw_samples, iw_batch
        hidden = list(hidden)
        if variant == "mlp":
            self.encoder = nn.Sequential(nn.Flatten(), _mlp([784, *hidden]), nn.ReLU()) if hidden else nn.Flatten()
            width = hidden[-1] if hidden else 784
            self.decoder = _mlp([latent_dim, *reversed(hidden), 784])
        else:
            if len(channels) != 2:
                raise ValueError(f"channels: the conv variant takes two widths (28->14->7), got {list(channels)}")
            c1, c2 = channels
            width = hidden[0] if hidden else c2 * 49
            self.encoder = nn.Sequential(
                nn.Conv2d(1, c1, 4, 2, 1), nn.ReLU(), nn.Conv2d(c1, c2, 4, 2, 1), nn.ReLU(), nn.Flatten(),
                *([nn.Linear(c2 * 49, width), nn.ReLU()] if hidden else []))
            self.decoder = nn.Sequential(
                *([nn.Linear(latent_dim, width), nn.ReLU(), nn.Linear(width, c2 * 49)] if hidden
                  else [nn.Linear(latent_dim, c2 * 49)]),
                nn.ReLU(), nn.Unflatten(-1, (c2, 7, 7)),
                nn.ConvTranspose2d(c2, c1, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(c1, 1, 4, 2, 1), nn.Flatten())
        self.posterior = nn.Linear(width, 2 * latent_dim)
        # Training steps taken, for the KL warm-up: a buffer, so a checkpoint carries it.
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    # -- the generative-model interface ---------------------------------------------------------
    def prepare(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        """uint8 (B, 28, 28) -> binary float (B, 1, 28, 28): a fresh draw while training, the fixed
        one (pyneuro.data.fixed_binarization) for evaluation."""
        x = pdata.binarize(images) if train else pdata.fixed_binarization(images)
        return x.reshape(-1, 1, 28, 28)

    def forward(self, x: torch.Tensor):
        """One-sample ELBO of the binary images ``x`` (B, 1, 28, 28): (loss, terms). The loss is the
        mean -ELBO, with the KL scaled by the warm-up factor while training; the terms are nats per image."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        recon = self.recon_nats(self.decode(z), x)
        kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(-1)
        recon, kl = recon.mean(), kl.mean()
        weight = 1.0
        if self.training:
            if self.kl_warmup_steps:
                weight = (self.steps.double() / self.kl_warmup_steps).clamp(max=1.0).float()
            self.steps += 1
        return recon + weight * kl, {"neg_elbo_nats": recon + kl, "recon_nats": recon, "kl_nats": kl}

    # -- pieces ------------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor):
        """(B, 1, 28, 28) -> the posterior's mean and log-variance, (B, latent_dim) each."""
        mu, logvar = self.posterior(self.encoder(x)).chunk(2, -1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(..., latent_dim) -> Bernoulli logits (..., 784)."""
        lead = z.shape[:-1]
        return self.decoder(z.reshape(-1, self.latent_dim)).reshape(*lead, 784)

    @staticmethod
    def recon_nats(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x|z) per image: logits (..., 784) against binary x broadcast to them."""
        x = x.reshape(x.shape[0], 784) if x.dim() == 4 else x
        return F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)

    def log_weights(self, x: torch.Tensor, k: int, generator: torch.Generator | None = None):
        """log p(x, z_i) - log q(z_i|x) for k posterior samples z_i of each image: (k, B); also the
        per-image reconstruction (mean over the k samples) and closed-form KL terms, (B,) each."""
        mu, logvar = self.encode(x)
        eps = torch.randn((k, *mu.shape), generator=generator, device=generator.device if generator else mu.device)
        eps = eps.to(mu.device)
        z = mu + eps * (0.5 * logvar).exp()
        recon = self.recon_nats(self.decode(z), x.reshape(len(x), 784))  # (k, B)
        log_prior = -0.5 * (z.square() + LOG_2PI).sum(-1)
        log_posterior = -0.5 * (eps.square() + LOG_2PI + logvar).sum(-1)
        kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(-1)
        return -recon + log_prior - log_posterior, recon.mean(0), kl

    @torch.no_grad()
    def evaluate(self, images: torch.Tensor, labels: torch.Tensor, progress=None) -> dict:
        """The test figures: -ELBO, its reconstruction and KL terms, and the importance-weighted
        -log p(x) with ``iw_samples`` samples, nats per image over the fixed binarisation of
        ``images``. ``iw_batch`` images (x iw_samples decoder rows) go through at a time;
        ``progress(total_batches)`` may return a bar with ``update(n_images, fields)`` and ``close()``."""
        was_training = self.training
        self.eval()
        device = self.posterior.weight.device
        generator = torch.Generator(device=device).manual_seed(EVAL_NOISE_SEED)
        k = self.iw_samples
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # recon, kl, iw log-likelihood
        bar = progress(math.ceil(len(images) / self.iw_batch)) if progress else None
        seen = 0
        binary = self.prepare(images, train=False)  # the whole split at once: the trainer's test draw
        for start in range(0, len(images), self.iw_batch):
            x = binary[start:start + self.iw_batch].to(device=device, dtype=self.posterior.weight.dtype)
            lw, recon, kl = self.log_weights(x, k, generator)
            iw = lw.double().logsumexp(0) - math.log(k)
            sums += torch.stack([recon.double().sum(), kl.double().sum(), iw.sum()])
            seen += len(x)
            if bar:
                bar.update(len(x), lambda: {"iw_nll_nats": -sums[2].item() / seen})
        if bar:
            bar.close()
        self.train(was_training)
        recon, kl, iw = (sums / max(len(images), 1)).tolist()
        return {"neg_elbo_nats": recon + kl, "iw_nll_nats": -iw, "kl_nats": kl, "recon_nats": recon,
                "iw_samples": k}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixel probabilities (n, 28, 28) of images decoded from prior samples."""
        device = self.posterior.weight.device
        z = torch.randn(n, self.latent_dim, generator=generator, device=generator.device if generator else device)
        return self.decode(z.to(device)).sigmoid().reshape(n, 28, 28)


register("vae", view="image", task="generate", plots="pyneuro.viz.vae:vae_pictures",
         description="variational autoencoder (Gaussian posterior, Bernoulli pixels; MLP or conv)",
         defaults={"variant": "mlp", "latent_dim": 50, "hidden": [512, 512], "channels": [32, 64],
                   "kl_warmup_steps": 0, "iw_samples": 1000, "iw_batch": 16},
         train_defaults={"epochs": 30, "lr": 1e-3, "weight_decay": 0.0})(VAE)
