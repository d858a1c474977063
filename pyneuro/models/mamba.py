"""Mamba classifier: the image read row by row (28 steps of 28 pixels) by a stack of residual
pre-norm Mamba blocks; the normalised outputs of the last block are averaged over the 28 steps
and classified. Each block's selective scan runs on pyneuro's fastest backend for the device (C++ on the CPU, CUDA/Triton on GPUs)."""
from __future__ import annotations

import torch.nn as nn

from .. import nn as pnn
from .registry import register


class MambaClassifier(nn.Module):
    def __init__(self, d_model=64, n_layers=4, d_state=16, d_conv=4, expand=2, dropout=0.1,
                 backend="auto", num_classes=10, input_size=28):
        super().__init__()
        self.embed = nn.Linear(input_size, d_model)
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(n_layers))
        self.blocks = nn.ModuleList(
            pnn.Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand, backend=backend)
            for _ in range(n_layers))
        self.dropout = nn.Dropout(dropout)
        self.norm_out = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x):  # x: (B, 28, 28) rows
        h = self.embed(x)
        for norm, block in zip(self.norms, self.blocks):
            h = h + self.dropout(block(norm(h)))
        return self.head(self.norm_out(h).mean(dim=1))


@register("mamba", view="rows", description="stack of Mamba (selective state space) blocks over rows",
          defaults={"d_model": 64, "n_layers": 4, "d_state": 16, "d_conv": 4, "expand": 2, "dropout": 0.1,
                    "backend": "auto"},
          train_defaults={"epochs": 12, "lr": 3e-3, "augment_shift": 1, "grad_clip": 1.0},
          plots="pyneuro.viz.mamba:plots")  # selectivity.png
def build_mamba(**kw):
    return MambaClassifier(**kw)
