"""S4D classifier: the image as a sequence (28 rows of 28 pixels by default, or with
``view="pixels"`` 784 single pixels, sequential MNIST), read by a stack of residual pre-norm S4D
blocks, mean-pooled over time (or the last step) and classified.

One block, for h of shape (batch, L, d_model):

    h = h + GLU(Linear_{d -> 2d}(dropout(GELU(S4D(LayerNorm(h))))))

The S4D layer mixes along time within each channel only; the position-wise Linear + GLU mixes the
channels (the gated linear unit halves 2d back to d). The SSM parameters of every block carry the
lower ``ssm_lr`` (no weight decay) for the trainer's optimiser.
"""
from __future__ import annotations

import torch.nn as nn

from .. import nn as pnn
from .recurrent import sequence_input_size
from .registry import register

POOLS = ("mean", "last")


class S4DBlock(nn.Module):
    def __init__(self, d_model, d_state, dropout, dt_min, dt_max, ssm_lr, backend):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.ssm = pnn.S4D(d_model, d_state, dt_min=dt_min, dt_max=dt_max, ssm_lr=ssm_lr, backend=backend)
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.mix = nn.Linear(d_model, 2 * d_model)
        self.glu = nn.GLU(dim=-1)

    def forward(self, h):
        return h + self.glu(self.mix(self.dropout(self.activation(self.ssm(self.norm(h))))))


class S4DClassifier(nn.Module):
    def __init__(self, d_model=128, n_layers=4, d_state=64, dropout=0.1, dt_min=1e-3, dt_max=1e-1, ssm_lr=1e-3,
                 pool="mean", view="rows", backend="auto", num_classes=10):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"s4d: pool must be one of {list(POOLS)}, got {pool!r}")
        self.view, self.pool = view, pool
        self.encoder = nn.Linear(sequence_input_size(view, "s4d"), d_model)
        self.blocks = nn.ModuleList(S4DBlock(d_model, d_state, dropout, dt_min, dt_max, ssm_lr, backend)
                                    for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x):  # x: (B, 28, 28) rows or (B, 784, 1) pixels
        h = self.encoder(x)
        for block in self.blocks:
            h = block(h)
        h = self.norm(h)
        return self.head(h.mean(dim=1) if self.pool == "mean" else h[:, -1])


register("s4d", view="rows",
         description="stack of S4D (diagonal state space) blocks with GLU, pre-norm, row by row (or pixel by pixel)",
         defaults={"d_model": 128, "n_layers": 4, "d_state": 64, "dropout": 0.1, "dt_min": 1e-3, "dt_max": 1e-1,
                   "ssm_lr": 1e-3, "pool": "mean", "view": "rows", "backend": "auto"},
         train_defaults={"epochs": 15, "lr": 4e-3, "weight_decay": 0.05, "grad_clip": 1.0},
         plots="pyneuro.viz.s4d:s4d_pictures")(S4DClassifier)  # kernels.png in the run folder
