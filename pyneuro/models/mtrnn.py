"""MTRNN classifier (Yamashita & Tani 2008): fast and slow leaky-integrator context units read the
image row by row (or, with ``view="pixels"``, pixel by pixel) and the final activity is classified.

Why the final state: MTRNN's point is that the slow units integrate over the whole sequence, fed
only through the fast ones, while the fast units follow the last few steps. At the last step the
slow units hold a summary of the entire digit and the fast units its last strokes; reading both
there (h_T = tanh(u_T), layer-normalised) classifies what the dynamics built up. Pooling over
time instead would let the read-out do the integrating and bypass the two timescales.
"""
from __future__ import annotations

import torch.nn as nn

from .. import nn as pnn
from .recurrent import sequence_input_size
from .registry import register


class MTRNNClassifier(nn.Module):
    def __init__(self, fast_size=128, slow_size=64, fast_tau=2.0, slow_tau=16.0, learn_tau=False,
                 view="rows", backend="auto", weight_dropout=0.0, num_classes=10):
        super().__init__()
        self.view = view
        self.rnn = pnn.MTRNN(sequence_input_size(view, "mtrnn"), fast_size, slow_size, fast_tau, slow_tau,
                             learn_tau=learn_tau, batch_first=True, backend=backend, weight_dropout=weight_dropout)
        width = fast_size + slow_size
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):  # x: (B, 28, 28) rows or (B, 784, 1) pixels
        h, _ = self.rnn(x)
        return self.head(self.norm(h[:, -1]))


register("mtrnn", view="rows",
         description="multiple-timescale RNN: fast (tau 2) and slow (tau 16) leaky units, row by row",
         defaults={"fast_size": 128, "slow_size": 64, "fast_tau": 2.0, "slow_tau": 16.0, "learn_tau": False,
                   "view": "rows", "backend": "auto", "weight_dropout": 0.0},
         train_defaults={"epochs": 15, "lr": 5e-3, "grad_clip": 1.0})(MTRNNClassifier)
