"""CNN: two conv blocks (conv-BN-ReLU ×2, max-pool) and a small classifier head, on 1×28×28 images."""
from __future__ import annotations

import torch.nn as nn

from .registry import register


def _conv_block(c_in: int, c_out: int, convs: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=False),
                   nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return layers + [nn.MaxPool2d(2)]


class CNN(nn.Module):
    def __init__(self, channels=(32, 64), convs_per_block=2, hidden=128, dropout=0.25, num_classes=10):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c in channels:
            layers += _conv_block(c_in, c, convs_per_block)
            c_in = c
        self.features = nn.Sequential(*layers)
        side = 28 // 2 ** len(channels)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout),
            nn.Linear(c_in * side * side, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    def forward(self, x):  # x: (B, 1, 28, 28)
        return self.classifier(self.features(x))


@register("cnn", view="image", description="convolutional network on 28×28 images",
          defaults={"channels": [32, 64], "convs_per_block": 2, "hidden": 128, "dropout": 0.25},
          train_defaults={"epochs": 8, "lr": 3e-3, "augment_shift": 2},
          plots="pyneuro.viz.cnn:plots")  # filters.png, feature_maps.png
def build_cnn(channels, convs_per_block, hidden, dropout):
    return CNN(tuple(channels), convs_per_block, hidden, dropout)
