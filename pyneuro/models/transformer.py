"""Vision-Transformer-style classifier: P×P patches become tokens (16 for 7×7, 49 for 4×4), a class
token is prepended, learned position embeddings are added, and pre-norm encoder layers (pyneuro
attention, with its in-kernel attention dropout) mix them. Only the class token is read out, so the
last layer computes only that token's output (its keys and values still from every token; see
pyneuro.nn.run_layers ``rows``): the same logits and gradients, about a third of that layer's work."""
from __future__ import annotations

import torch
import torch.nn as nn

from .. import nn as pnn
from ..nn.attention import add_pending, run_layers
from .registry import register


class PatchTransformer(nn.Module):
    def __init__(self, patch_size=7, d_model=96, nhead=4, num_layers=4, dim_feedforward=192,
                 dropout=0.1, attention_dropout=0.1, num_classes=10, class_token_only_last_layer=True):
        super().__init__()
        if not isinstance(patch_size, int) or patch_size < 1 or 28 % patch_size:
            raise ValueError(f"patch_size must divide 28, got {patch_size!r}")
        self.patch_size = patch_size
        # False runs the last layer on every token and then takes the class token's row, as a model
        # built on torch.nn.TransformerEncoderLayer must (the benchmark times both).
        if not isinstance(class_token_only_last_layer, bool):
            raise TypeError(f"class_token_only_last_layer must be a bool, got {class_token_only_last_layer!r}")
        self.class_token_only_last_layer = class_token_only_last_layer
        tokens = (28 // patch_size) ** 2
        self.embed = nn.Linear(patch_size * patch_size, d_model)
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, d_model) * 0.02)
        self.layers = nn.ModuleList(
            pnn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, activation="gelu",
                                        batch_first=True, norm_first=True, attention_dropout=attention_dropout)
            for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def _tokens(self, x):  # x: (B, tokens, patch_size²)
        h = self.embed(x)
        return torch.cat([self.cls.expand(h.shape[0], -1, -1), h], dim=1) + self.pos

    def forward(self, x):
        # Residual adds inside the next layer norm; the last layer's output at the class token only.
        h, pending = run_layers(self.layers, self._tokens(x), rows=0 if self.class_token_only_last_layer else None)
        cls = add_pending(h[:, 0], pending, (slice(None), 0))
        return self.head(self.norm(cls))

    @torch.no_grad()
    def class_token_attention(self, x):
        """The class token's attention weights over the patches in every layer and head
        (layers, B, heads, patches), and the logits; for pictures (forms the weights, so slower)."""
        h = self._tokens(x)
        maps = []
        for layer in self.layers:
            normed = layer.norm1(h)
            _, weights = layer.self_attn(normed, normed, normed, need_weights=True, average_attn_weights=False)
            maps.append(weights[:, :, 0, 1:])  # row of the class token, columns of the patches
            h = layer(h)
        return torch.stack(maps), self.head(self.norm(h[:, 0]))


@register("transformer", view="patches", description="transformer encoder over 7×7 patches",
          defaults={"patch_size": 7, "d_model": 96, "nhead": 4, "num_layers": 4,
                    "dim_feedforward": 192, "dropout": 0.0, "attention_dropout": 0.0,
                    "class_token_only_last_layer": True},
          # No dropout, rotation/zoom augmentation instead: 99.46% in 40 epochs (docs/models/transformer.md).
          train_defaults={"epochs": 40, "lr": 2e-3, "augment_shift": 2, "augment_rotate": 10.0,
                          "augment_scale": 0.1, "weight_decay": 0.05},
          plots="pyneuro.viz.transformer:plots")
def build_transformer(**kw):
    return PatchTransformer(**kw)
