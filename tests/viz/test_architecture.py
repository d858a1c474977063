"""The architecture figure: the layers it finds are the ones the forward pass calls, in order, with
their real output shapes; repeated stretches collapse; every registered model can be drawn."""
from __future__ import annotations

import matplotlib.image as mpimg
import pytest
import torch
import torch.nn as nn

from pyneuro.models import registry
from pyneuro.train.loop import model_input
from pyneuro.viz.architecture import loose_parameters, plot_architecture, trace_calls, trace_layers


class _Twice(nn.Module):
    """A norm and a linear block applied twice, with one dropout module shared by both passes."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(5, 8)
        self.norms = nn.ModuleList(nn.LayerNorm(8) for _ in range(2))
        self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(2))
        self.drop = nn.Dropout(0.1)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x):
        x = self.inp(x)
        for norm, block in zip(self.norms, self.blocks):
            x = self.drop(block(norm(x)))
        return self.head(x)


def test_calls_are_traced_in_order_with_shapes_and_parameters():
    calls = trace_calls(_Twice(), torch.zeros(4, 5))
    assert [c.name for c in calls] == ["inp", "norms.0", "blocks.0", "drop", "norms.1", "blocks.1", "drop",
                                       "head.0", "head.1"]
    assert calls[0].out_shape == "(4, 8)" and calls[0].params == 5 * 8 + 8
    assert calls[-1].out_shape == "(4, 3)" and calls[-1].kind == "Linear"
    assert calls[3].params == 0


def test_repeated_stretch_collapses_with_its_count():
    layers = trace_layers(_Twice(), torch.zeros(4, 5))
    assert [(l.name, l.repeat) for l in layers] == [
        ("inp", 1), ("norms.0 … norms.1", 2), ("blocks.0 … blocks.1", 2), ("drop", 2), ("head.0", 1), ("head.1", 1)]
    assert len({l.group for l in layers if l.repeat == 2}) == 1


def test_a_per_step_layer_is_drawn_once_with_its_call_count():
    class Steps(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = nn.Linear(3, 3)
            self.out = nn.Linear(3, 2)

        def forward(self, x):
            h = x[:, 0]
            for t in range(x.shape[1]):
                h = torch.tanh(self.cell(h) + x[:, t])
            return self.out(h)

    layers = trace_layers(Steps(), torch.zeros(2, 300, 3), longest_sequence=200)
    assert [(l.name, l.calls) for l in layers] == [("cell", 300), ("out", 1)]


def test_tracing_keeps_the_mode_and_the_random_state():
    model = _Twice().train()
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    trace_calls(model, torch.zeros(4, 5))
    assert model.training and torch.equal(torch.rand(3), expected)


def test_not_a_module_is_refused():
    with pytest.raises(ValueError, match="model"):
        trace_calls(lambda x: x, torch.zeros(1))


@pytest.mark.parametrize("name", registry.names())
def test_every_model_draws(name, tmp_path):
    spec = registry.get(name)
    model = spec.build()
    probe = torch.zeros(2, 28, 28, dtype=torch.uint8)
    example = model.prepare(probe, train=False) if spec.generative else model_input(spec, spec.defaults, probe)
    path = plot_architecture(model, example, tmp_path / "architecture.png", title=name, input_note="a note")
    picture = mpimg.imread(path)
    assert picture.shape[0] > 200 and picture.shape[1] > 400


def test_parameters_outside_every_layer_are_listed():
    class WithToken(nn.Module):
        def __init__(self):
            super().__init__()
            self.token = nn.Parameter(torch.zeros(1, 4))
            self.proj = nn.Linear(4, 2)

        def forward(self, x):
            return self.proj(x + self.token)

    from pyneuro.viz.architecture import loose_parameters

    assert loose_parameters(WithToken()) == [("token", (1, 4))]
    assert loose_parameters(_Twice()) == []


def test_a_model_without_submodules_is_one_box(tmp_path):
    class Bare(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.w

    layers = trace_layers(Bare(), torch.zeros(2, 3))
    assert [(l.name, l.out_shape, l.params) for l in layers] == [("Bare", "(2, 3)", 3)]
    assert loose_parameters(Bare()) == []
    plot_architecture(Bare(), torch.zeros(2, 3), tmp_path / "a.png")
