"""RNN, LSTM and GRU classifiers: the image is read row by row (28 steps of 28 pixels) or, for
lstm and gru with ``view="pixels"``, pixel by pixel (sequential MNIST: 784 steps of 1 pixel), and
the last step's output of the top layer is classified. Built on pyneuro.nn's drop-in layers, so the
fused backends speed these up without any change here."""
from __future__ import annotations

import torch.nn as nn

from .. import nn as pnn
from .registry import register


# Features per step of each sequence view of a 28x28 image (pyneuro.data.to_view).
SEQUENCE_VIEWS = {"rows": 28, "pixels": 1}


def sequence_input_size(view: str, model: str) -> int:
    """The input layer's width for a sequence view: 28 for "rows", 1 for "pixels"."""
    if view not in SEQUENCE_VIEWS:
        raise ValueError(f"{model}: view must be one of {list(SEQUENCE_VIEWS)}, got {view!r}")
    return SEQUENCE_VIEWS[view]


class RowClassifier(nn.Module):
    def __init__(self, cell: str, hidden_size=128, num_layers=1, bidirectional=False, dropout=0.0,
                 backend="auto", num_classes=10, view="rows", **cell_kwargs):
        super().__init__()
        self.view = view
        input_size = sequence_input_size(view, cell)
        layer = {"rnn": pnn.RNN, "lstm": pnn.LSTM, "gru": pnn.GRU}[cell]
        self.rnn = layer(input_size, hidden_size, num_layers=num_layers, batch_first=True,
                         dropout=dropout if num_layers > 1 else 0.0, bidirectional=bidirectional,
                         backend=backend, **cell_kwargs)
        width = hidden_size * (2 if bidirectional else 1)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):  # x: (B, 28, 28) rows or (B, 784, 1) pixels
        out, _ = self.rnn(x)
        return self.head(self.norm(out[:, -1]))


_RECURRENT_TRAIN = {"epochs": 12, "lr": 2e-3, "grad_clip": 1.0}

register("rnn", view="rows", description="tanh RNN reading the image row by row",
         defaults={"hidden_size": 128, "num_layers": 2, "bidirectional": False, "dropout": 0.0,
                   "backend": "auto"},
         train_defaults=_RECURRENT_TRAIN)(lambda **kw: RowClassifier("rnn", **kw))
register("lstm", view="rows", description="LSTM reading the image row by row (or pixel by pixel)",
         defaults={"hidden_size": 128, "num_layers": 1, "bidirectional": False, "dropout": 0.0,
                   "backend": "auto", "view": "rows"},
         train_defaults=_RECURRENT_TRAIN)(lambda **kw: RowClassifier("lstm", **kw))
register("gru", view="rows", description="GRU reading the image row by row (or pixel by pixel)",
         defaults={"hidden_size": 128, "num_layers": 1, "bidirectional": False, "dropout": 0.0,
                   "backend": "auto", "view": "rows"},
         train_defaults=_RECURRENT_TRAIN)(lambda **kw: RowClassifier("gru", **kw))
