"""CNN: conv blocks (conv-BN-ReLU × convs_per_block, then a 2×2 max-pool) and a small classifier
head, on 1×28×28 images. Each conv's BN + ReLU (and the block's pool, after its last conv) is one
fused op, :class:`pyneuro.nn.BatchNormReLU2d`: the same parameters as ``nn.BatchNorm2d``, one pass
over the activations each way instead of three (the CPU kernel: csrc/cpu/isa/batch_norm_kernels.cpp)."""
from __future__ import annotations

import torch.nn as nn

from ..nn import BatchNormReLU2d
from .registry import register


def _conv_block(c_in: int, c_out: int, convs: int, backend: str) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=False),
                   BatchNormReLU2d(c_out, pool=2 if i == convs - 1 else 1, backend=backend)]
    return layers


def _renumber_unfused_features(module, state_dict, prefix, *_args) -> None:
    """Load checkpoints of the earlier layout, whose ``features`` held conv, BatchNorm2d, ReLU (and
    MaxPool2d) as separate layers: the layers with weights come in the same order (conv, norm,
    conv, norm, ...), so the k-th numbered one of the old keys becomes features.k."""
    head = prefix + "features."
    keys = [k for k in state_dict if k.startswith(head)]
    numbers = sorted({int(k[len(head):].split(".", 1)[0]) for k in keys})
    if numbers == list(range(len(numbers))):
        return  # already the fused layout
    renumber = {old: new for new, old in enumerate(numbers)}
    for k in keys:
        index, rest = k[len(head):].split(".", 1)
        state_dict[f"{head}{renumber[int(index)]}.{rest}"] = state_dict.pop(k)


class CNN(nn.Module):
    def __init__(self, channels=(32, 64), convs_per_block=2, hidden=128, dropout=0.25, num_classes=10,
                 backend="auto"):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c in channels:
            layers += _conv_block(c_in, c, convs_per_block, backend)
            c_in = c
        self.features = nn.Sequential(*layers)
        side = 28 // 2 ** len(channels)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout),
            nn.Linear(c_in * side * side, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, num_classes))
        self.register_load_state_dict_pre_hook(_renumber_unfused_features)

    def forward(self, x):  # x: (B, 1, 28, 28)
        return self.classifier(self.features(x))


@register("cnn", view="image", description="convolutional network on 28×28 images",
          defaults={"channels": [32, 64], "convs_per_block": 2, "hidden": 128, "dropout": 0.25, "backend": "auto"},
          train_defaults={"epochs": 8, "lr": 3e-3, "augment_shift": 2, "channels_last": True},
          plots="pyneuro.viz.cnn:plots")  # filters.png, feature_maps.png
def build_cnn(channels, convs_per_block, hidden, dropout, backend):
    return CNN(tuple(channels), convs_per_block, hidden, dropout, backend=backend)
