"""ANN: a multi-layer perceptron on the flattened 784 pixels."""
from __future__ import annotations

import torch.nn as nn

from .registry import register


class MLP(nn.Module):
    def __init__(self, hidden=(1024, 1024), dropout=0.2, num_classes=10):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = 28 * 28
        for h in hidden:
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):  # x: (B, 1, 28, 28)
        return self.net(x)


@register("ann", view="image", description="multi-layer perceptron on the 784 pixels",
          defaults={"hidden": [1024, 1024], "dropout": 0.2},
          train_defaults={"epochs": 15, "lr": 2e-3, "augment_shift": 1},
          plots="pyneuro.viz.ann:plots")  # weights.png
def build_ann(hidden, dropout):
    return MLP(tuple(hidden), dropout)
