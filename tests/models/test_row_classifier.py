"""The recurrent classifiers read the last layer's final state h_n (no gradient then flows into the
whole output sequence): the same function, and the same gradients, as reading out[:, -1]."""
from __future__ import annotations

import pytest
import torch

from pyneuro.models.recurrent import RowClassifier


@pytest.mark.parametrize("name, extra", [("rnn", {}), ("gru", {}), ("lstm", {}), ("lstm", {"proj_size": 16}),
                                         ("rnn", {"num_layers": 2})])
def test_final_state_features_equal_the_last_output(name, extra):
    torch.manual_seed(0)
    model = RowClassifier(name, hidden_size=32, **extra)
    x = torch.randn(5, 28, 28)

    def by_last_output():
        out, _ = model.rnn(x)
        return model.head(model.norm(out[:, -1]))

    logits = model(x)
    torch.testing.assert_close(logits, by_last_output(), rtol=0, atol=0)
    grads = []
    for f in (lambda: model(x), by_last_output):
        model.zero_grad()
        (f() * torch.linspace(-1, 1, 10)).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-6, atol=1e-7, msg=n)
