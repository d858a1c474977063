"""Vision-Transformer-style classifier: 7×7 patches become 16 tokens, a class token is prepended,
learned position embeddings are added, and pre-norm encoder layers (pyneuro attention) mix them."""
from __future__ import annotations

import torch
import torch.nn as nn

from .. import nn as pnn
from .registry import register


class PatchTransformer(nn.Module):
    def __init__(self, patch_size=7, d_model=96, nhead=4, num_layers=4, dim_feedforward=192,
                 dropout=0.1, num_classes=10):
        super().__init__()
        if 28 % patch_size:
            raise ValueError(f"patch_size must divide 28, got {patch_size}")
        tokens = (28 // patch_size) ** 2
        self.embed = nn.Linear(patch_size * patch_size, d_model)
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, d_model) * 0.02)
        self.layers = nn.ModuleList(
            # Attention-weight dropout off, so training runs on pyneuro's attention op (which has
            # no dropout); the residual and feed-forward dropout regularise instead.
            pnn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, activation="gelu",
                                        batch_first=True, norm_first=True, attention_dropout=0.0)
            for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x):  # x: (B, tokens, patch_size²)
        h = self.embed(x)
        h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], dim=1) + self.pos
        for layer in self.layers:
            h = layer(h)
        return self.head(self.norm(h[:, 0]))


@register("transformer", view="patches", description="transformer encoder over 7×7 patches",
          defaults={"patch_size": 7, "d_model": 96, "nhead": 4, "num_layers": 4,
                    "dim_feedforward": 192, "dropout": 0.1},
          train_defaults={"epochs": 15, "lr": 2e-3, "augment_shift": 2, "weight_decay": 0.05})
def build_transformer(**kw):
    return PatchTransformer(**kw)
