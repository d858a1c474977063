"""The rnn / lstm / gru classifiers: what they read at the end of the sequence, and chrono init."""
from __future__ import annotations

import math

import pytest
import torch

from pyneuro.models import registry
from pyneuro.models.recurrent import RowClassifier, chrono_init_


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_bidirectional_reads_both_directions_after_the_whole_image(cell):
    torch.manual_seed(0)
    model = RowClassifier(cell, hidden_size=8, bidirectional=True, backend="reference").eval()
    x = torch.randn(2, 28, 28)
    with torch.no_grad():
        base = model(x)
        for row in (0, 27):  # the forward direction ends on the last row, the reverse one on the first
            changed = x.clone()
            changed[:, row] += 1.0
            assert (model(changed) - base).abs().max() > 1e-4, f"row {row} does not reach the output"
        out, _ = model.rnn(x)
        features = torch.cat([out[:, -1, :8], out[:, 0, 8:]], dim=-1)
        torch.testing.assert_close(base, model.head(model.norm(features)))


def test_lstm_with_projection_classifies_its_projected_state():
    model = RowClassifier("lstm", hidden_size=16, proj_size=6, backend="reference")
    assert model.norm.normalized_shape == (6,)
    assert model(torch.randn(3, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_chrono_init_spreads_the_retention_gate_over_the_sequence(cell):
    torch.manual_seed(0)
    model = registry.get(cell).build(hidden_size=64, view="pixels", chrono_init=True)
    H = 64
    keep = model.rnn.bias_hh_l0[H:2 * H].detach()
    assert torch.all(keep >= 0) and torch.all(keep <= math.log(783))
    assert keep.max() > math.log(100)  # some units keep their state for hundreds of steps
    assert torch.all(model.rnn.bias_ih_l0[H:2 * H] == 0)
    if cell == "lstm":
        assert torch.equal(model.rnn.bias_hh_l0[:H], -keep) and torch.all(model.rnn.bias_ih_l0[:H] == 0)
    # The other gates keep torch's init.
    default = registry.get(cell).build(hidden_size=64, view="pixels")
    rest = slice(2 * H, None)
    assert model.rnn.bias_hh_l0[rest].abs().max() <= 1 / math.sqrt(H) >= default.rnn.bias_hh_l0[rest].abs().max()


def test_chrono_init_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="chrono_init"):
        chrono_init_(torch.nn.RNN(4, 4), "rnn", 28)
    with pytest.raises(ValueError, match="chrono_init"):
        chrono_init_(torch.nn.LSTM(4, 4), "lstm", 2)
