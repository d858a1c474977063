"""RNN, LSTM and GRU classifiers: the image is read row by row (28 steps of 28 pixels) or, for
lstm and gru with ``view="pixels"``, pixel by pixel (sequential MNIST: 784 steps of 1 pixel), and
the last step's output of the top layer is classified. Built on pyneuro.nn's drop-in layers, so the
fused backends speed these up without any change here."""
from __future__ import annotations

import torch
import torch.nn as nn

from .. import nn as pnn
from .registry import register


# Features per step of each sequence view of a 28x28 image (pyneuro.data.to_view).
SEQUENCE_VIEWS = {"rows": 28, "pixels": 1}
SEQUENCE_LENGTHS = {"rows": 28, "pixels": 784}


@torch.no_grad()
def chrono_init_(layer: nn.Module, cell: str, max_steps: int) -> None:
    """Chrono initialisation (Tallec & Ollivier, ICLR 2018) of an LSTM's or GRU's gate biases: each
    unit's retention gate gets the bias log(u), u ~ U[1, max_steps - 1], so that sigmoid(bias) =
    u / (1 + u) and the unit forgets on a time scale of about 1 + u steps, spread over the
    sequence's range. With torch's default init every gate starts near sigmoid(0) = 1/2, which
    halves a gradient at every step: over the 784 steps of pixel-by-pixel MNIST nothing reaches the
    early pixels and an LSTM stays at chance for epochs.
    LSTM: forget bias log(u), input bias -log(u) (rows H..2H and 0..H of torch's i, f, g, o order);
    GRU: update gate z (rows H..2H of r, z, n; h' = (1 - z) n + z h, so z near 1 keeps h)."""
    if cell not in ("lstm", "gru"):
        raise ValueError(f"chrono_init: only for lstm and gru, not {cell!r}")
    if max_steps < 3:
        raise ValueError(f"chrono_init: needs sequences of at least 3 steps, got {max_steps}")
    hidden = layer.hidden_size
    for name, bias_hh in layer.named_parameters():
        if not name.startswith("bias_hh"):
            continue
        bias_ih = getattr(layer, name.replace("bias_hh", "bias_ih"))
        timescale = torch.log(torch.empty(hidden).uniform_(1.0, max_steps - 1.0)).to(bias_hh)
        bias_ih[hidden:2 * hidden] = 0.0
        bias_hh[hidden:2 * hidden] = timescale
        if cell == "lstm":
            bias_ih[:hidden] = 0.0
            bias_hh[:hidden] = -timescale


def sequence_input_size(view: str, model: str) -> int:
    """The input layer's width for a sequence view: 28 for "rows", 1 for "pixels"."""
    if view not in SEQUENCE_VIEWS:
        raise ValueError(f"{model}: view must be one of {list(SEQUENCE_VIEWS)}, got {view!r}")
    return SEQUENCE_VIEWS[view]


class RowClassifier(nn.Module):
    def __init__(self, cell: str, hidden_size=128, num_layers=1, bidirectional=False, dropout=0.0,
                 backend="auto", num_classes=10, view="rows", chrono_init=False, **cell_kwargs):
        super().__init__()
        self.view = view
        input_size = sequence_input_size(view, cell)
        layer = {"rnn": pnn.RNN, "lstm": pnn.LSTM, "gru": pnn.GRU}[cell]
        self.rnn = layer(input_size, hidden_size, num_layers=num_layers, batch_first=True,
                         dropout=dropout if num_layers > 1 else 0.0, bidirectional=bidirectional,
                         backend=backend, **cell_kwargs)
        if chrono_init:
            chrono_init_(self.rnn, cell, SEQUENCE_LENGTHS[view])
        self.step_width = cell_kwargs.get("proj_size") or hidden_size  # features per step and direction
        self.bidirectional = bidirectional
        width = self.step_width * (2 if bidirectional else 1)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):  # x: (B, 28, 28) rows or (B, 784, 1) pixels
        out, final = self.rnn(x)
        if self.bidirectional:  # each direction's state after it has read the whole image
            features = torch.cat([out[:, -1, :self.step_width], out[:, 0, self.step_width:]], dim=-1)
        else:
            features = (final[0] if isinstance(final, tuple) else final)[-1]
        return self.head(self.norm(features))


_RECURRENT_TRAIN = {"epochs": 12, "lr": 2e-3, "grad_clip": 1.0}
_GATES = "pyneuro.viz.recurrent:plots"  # gates.png: the first layer's state and gates over the steps

register("rnn", view="rows", description="tanh RNN reading the image row by row",
         defaults={"hidden_size": 128, "num_layers": 2, "bidirectional": False, "dropout": 0.0,
                   "backend": "auto", "weight_dropout": 0.0},
         train_defaults=_RECURRENT_TRAIN, plots=_GATES)(lambda **kw: RowClassifier("rnn", **kw))
register("lstm", view="rows", description="LSTM reading the image row by row (or pixel by pixel)",
         defaults={"hidden_size": 128, "num_layers": 1, "bidirectional": False, "dropout": 0.0,
                   "backend": "auto", "view": "rows", "chrono_init": False, "weight_dropout": 0.0},
         train_defaults=_RECURRENT_TRAIN, plots=_GATES)(lambda **kw: RowClassifier("lstm", **kw))
register("gru", view="rows", description="GRU reading the image row by row (or pixel by pixel)",
         defaults={"hidden_size": 128, "num_layers": 1, "bidirectional": False, "dropout": 0.0,
                   "backend": "auto", "view": "rows", "chrono_init": False, "weight_dropout": 0.0},
         train_defaults=_RECURRENT_TRAIN, plots=_GATES)(lambda **kw: RowClassifier("gru", **kw))
