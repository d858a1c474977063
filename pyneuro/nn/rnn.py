"""LSTM, GRU and RNN layers that stand in for torch.nn.LSTM/GRU/RNN.

Same constructor arguments, parameter names and shapes (``weight_ih_l0``, ``bias_hh_l1_reverse``,
``weight_hr_l0`` ...), default init, forward signature and return values, so a torch.nn
state_dict loads in either direction. The recurrence itself runs in :mod:`pyneuro.ops.rnn`, one
call per layer and direction: the reverse direction is the forward op over the time-flipped
sequence. The extra keyword-only ``backend`` is passed to those ops.

Extra keyword-only ``weight_dropout`` (default 0, off): DropConnect on the recurrent weights
(``weight_hh_l*``), the "weight-dropped LSTM" of Merity et al. (ICLR 2018). In training, every
forward call zeroes each recurrent weight with that probability (scaling the rest by 1/(1 - p))
and runs the whole sequence on that one matrix, the same for every time step and sample. It
regularises the recurrence, which dropout between layers does not touch, without a mask inside
the time loop, so it runs unchanged on every fused backend: the kernels see an ordinary weight
matrix and its gradient flows back through the mask.

Not supported: PackedSequence input (pad it instead).
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from .. import _backends
from ..ops.rnn import gru_sequence, lstm_sequence, rnn_sequence


def _require_int(owner: str, name: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value}")


def _require_bool(owner: str, name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be a bool, got {type(value).__name__}")


def _require_probability(owner: str, name: str, value) -> None:
    """A drop probability in [0, 1): p = 1 would drop everything and scale by 1/0."""
    if not _backends.real_number(value) or not 0 <= value < 1:
        raise ValueError(f"{owner}: {name} must be a probability in [0, 1), got {value!r}")


class _RecurrentLayers(nn.Module):
    """Stacked, optionally bidirectional recurrent layers; subclasses supply the cell (``_run``)."""

    _gates: int  # gate blocks stacked in weight_ih / weight_hh
    _num_states: int  # 2 for the LSTM's (h, c), else 1

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None, *,
                 backend="auto", weight_dropout=0.0):
        super().__init__()
        owner = type(self).__name__
        _require_int(owner, "input_size", input_size, 1)
        _require_int(owner, "hidden_size", hidden_size, 1)
        _require_int(owner, "num_layers", num_layers, 1)
        _require_int(owner, "proj_size", proj_size, 0)
        if proj_size >= hidden_size and proj_size > 0:
            raise ValueError(f"{owner}: proj_size must be smaller than hidden_size ({hidden_size}), got {proj_size}")
        _require_bool(owner, "bias", bias)
        _require_bool(owner, "batch_first", batch_first)
        _require_bool(owner, "bidirectional", bidirectional)
        if not _backends.real_number(dropout) or not 0 <= dropout <= 1:
            raise ValueError(f"{owner}: dropout must be a probability in [0, 1], got {dropout!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                f"{owner}: dropout={dropout} has no effect with num_layers=1; it applies between "
                "stacked layers, to the output of every layer but the last", stacklevel=3)
        _require_probability(owner, "weight_dropout", weight_dropout)
        if not isinstance(backend, str) or backend not in ("auto", *_backends.BACKENDS):
            raise ValueError(f"{owner}: backend must be 'auto' or one of {_backends.BACKENDS}, got {backend!r}")

        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self.backend = backend
        self.weight_dropout = float(weight_dropout)

        # Registered in torch.nn's order, so state_dict keys match it key for key and in order.
        factory = {"device": device, "dtype": dtype}
        gate_rows = self._gates * hidden_size
        out_size = proj_size or hidden_size
        self._weight_names: list[list[tuple[str | None, ...]]] = []
        for layer in range(num_layers):
            layer_in = input_size if layer == 0 else out_size * self.num_directions
            per_direction = []
            for direction in range(self.num_directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                shapes = {
                    "weight_ih": (gate_rows, layer_in),
                    "weight_hh": (gate_rows, out_size),
                    "bias_ih": (gate_rows,) if bias else None,
                    "bias_hh": (gate_rows,) if bias else None,
                    "weight_hr": (proj_size, hidden_size) if proj_size else None,
                }
                names = []
                for stem, shape in shapes.items():
                    if shape is None:
                        names.append(None)
                        continue
                    self.register_parameter(stem + suffix, nn.Parameter(torch.empty(shape, **factory)))
                    names.append(stem + suffix)
                per_direction.append(tuple(names))
            self._weight_names.append(per_direction)
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def reset_parameters(self) -> None:
        """torch.nn's default: every parameter ~ U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def flatten_parameters(self) -> None:
        """No-op, for torch.nn API compatibility: there is no cuDNN weight buffer to compact."""

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """Per layer and direction, its parameters in torch.nn's order."""
        return [[getattr(self, n) for n in names if n is not None]
                for per_direction in self._weight_names for names in per_direction]

    def _weights(self, layer: int, direction: int) -> tuple:
        """(w_ih, w_hh, b_ih, b_hh, w_hr) with None for absent ones; in training with weight_dropout,
        w_hh with a fresh DropConnect mask (one (gates*H, H) mask per call, cheap next to the sequence)."""
        weights = tuple(None if n is None else getattr(self, n) for n in self._weight_names[layer][direction])
        if self.weight_dropout > 0 and self.training:
            w_ih, w_hh, *rest = weights
            weights = (w_ih, F.dropout(w_hh, p=self.weight_dropout, training=True), *rest)
        return weights

    def _state_sizes(self) -> tuple[int, ...]:
        return (self.proj_size or self.hidden_size,)

    def _run(self, x, states, weights):
        """One layer, one direction over time-major x -> (y, *final_states)."""
        raise NotImplementedError

    def _split_hx(self, hx) -> tuple:
        """hx as the subclass accepts it -> a tuple of state tensors."""
        return (hx,)

    def _join_states(self, states: tuple):
        return states[0]

    def _check_states(self, hx, x, batched: bool) -> tuple:
        owner = type(self).__name__
        states = self._split_hx(hx)
        names = ("h_0", "c_0")
        batch = x.shape[1]
        for name, state, size in zip(names, states, self._state_sizes()):
            if not isinstance(state, torch.Tensor):
                raise TypeError(f"{owner}: {name} must be a torch.Tensor, got {type(state).__name__}")
            layers = self.num_layers * self.num_directions
            expected = (layers, batch, size) if batched else (layers, size)
            if tuple(state.shape) != expected:
                layout = "(num_layers * num_directions, batch, " if batched else "(num_layers * num_directions, "
                size_name = "proj_size)" if self.proj_size and name == "h_0" else "hidden_size)"
                raise ValueError(
                    f"{owner}: {name} must have shape {layout}{size_name} = {expected} for "
                    f"{'batched' if batched else 'unbatched'} input, got {tuple(state.shape)}")
            if state.dtype != x.dtype:
                raise TypeError(f"{owner}: {name} must have the input's dtype {x.dtype}, got {state.dtype}")
            if state.device != x.device:
                raise ValueError(f"{owner}: {name} must be on the input's device {x.device}, got {state.device}")
        return tuple(s if batched else s.unsqueeze(1) for s in states)

    def forward(self, input, hx=None):
        owner = type(self).__name__
        if isinstance(input, PackedSequence):
            raise TypeError(
                f"{owner} does not take a PackedSequence; pad it (torch.nn.utils.rnn.pad_packed_sequence) "
                "and pass the padded tensor")
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"{owner}: input must be a torch.Tensor, got {type(input).__name__}")
        if input.dim() not in (2, 3):
            raise ValueError(
                f"{owner}: input must be 3-D (seq_len, batch, input_size), batch-first 3-D, or 2-D "
                f"unbatched (seq_len, input_size), got shape {tuple(input.shape)}")
        if input.shape[-1] != self.input_size:
            raise ValueError(f"{owner}: input's last dim must be input_size={self.input_size}, got {input.shape[-1]}")
        weight = self.weight_ih_l0
        if input.dtype != weight.dtype:
            raise TypeError(
                f"{owner}: input dtype {input.dtype} does not match the parameters' {weight.dtype}; "
                "convert one of them (e.g. module.to(dtype))")

        batched = input.dim() == 3
        # Time-major throughout; torch ignores batch_first for unbatched input, and so do we.
        x = input if not batched else (input.transpose(0, 1) if self.batch_first else input)
        x = x if batched else x.unsqueeze(1)
        states = None if hx is None else self._check_states(hx, x, batched)

        finals: list[list[torch.Tensor]] = [[] for _ in range(self._num_states)]
        layer_input = x
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.num_directions):
                index = layer * self.num_directions + direction
                initial = (None,) * self._num_states if states is None else tuple(s[index] for s in states)
                # The reverse direction is the same recurrence run over the time-flipped sequence.
                seq = layer_input.flip(0) if direction else layer_input
                y, *last = self._run(seq, initial, self._weights(layer, direction))
                outputs.append(y.flip(0) if direction else y)
                for collected, state in zip(finals, last):
                    collected.append(state)
            layer_input = torch.cat(outputs, dim=-1) if len(outputs) > 1 else outputs[0]
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, p=self.dropout, training=True)

        output = layer_input
        final_states = tuple(torch.stack(collected) for collected in finals)
        if not batched:
            output = output.squeeze(1)
            final_states = tuple(s.squeeze(1) for s in final_states)
        elif self.batch_first:
            output = output.transpose(0, 1)
        return output, self._join_states(final_states)

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        defaults = {"num_layers": 1, "bias": True, "batch_first": False, "dropout": 0.0,
                    "bidirectional": False, "proj_size": 0, "backend": "auto", "weight_dropout": 0.0}
        for name, default in defaults.items():
            value = getattr(self, name)
            if value != default:
                text += f", {name}={value!r}"
        return text


class LSTM(_RecurrentLayers):
    """Drop-in torch.nn.LSTM: ``forward(input, (h_0, c_0)=None) -> (output, (h_n, c_n))``.

    ``proj_size > 0`` projects the hidden state to proj_size features (``weight_hr_l*``), as torch.
    """

    _gates = 4
    _num_states = 2

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None, *,
                 backend="auto", weight_dropout=0.0):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device, dtype, backend=backend,
                         weight_dropout=weight_dropout)

    def _state_sizes(self):
        return (self.proj_size or self.hidden_size, self.hidden_size)

    def _split_hx(self, hx):
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(f"LSTM: hx must be a tuple (h_0, c_0), got {type(hx).__name__}")
        return tuple(hx)

    def _join_states(self, states):
        return states

    def _run(self, x, states, weights):
        return lstm_sequence(x, *states, *weights, backend=self.backend)


class GRU(_RecurrentLayers):
    """Drop-in torch.nn.GRU: ``forward(input, h_0=None) -> (output, h_n)``."""

    _gates = 3
    _num_states = 1

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None, *, backend="auto",
                 weight_dropout=0.0):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, backend=backend, weight_dropout=weight_dropout)

    def _run(self, x, states, weights):
        w_ih, w_hh, b_ih, b_hh, _ = weights
        return gru_sequence(x, states[0], w_ih, w_hh, b_ih, b_hh, backend=self.backend)


class RNN(_RecurrentLayers):
    """Drop-in torch.nn.RNN (Elman, ``nonlinearity`` "tanh" or "relu"): ``forward(input, h_0=None) -> (output, h_n)``."""

    _gates = 1
    _num_states = 1

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None, *,
                 backend="auto", weight_dropout=0.0):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, backend=backend, weight_dropout=weight_dropout)
        self.nonlinearity = nonlinearity

    def _run(self, x, states, weights):
        w_ih, w_hh, b_ih, b_hh, _ = weights
        return rnn_sequence(x, states[0], w_ih, w_hh, b_ih, b_hh, self.nonlinearity, backend=self.backend)

    def extra_repr(self) -> str:
        text = super().extra_repr()
        return text if self.nonlinearity == "tanh" else f"{text}, nonlinearity={self.nonlinearity!r}"


__all__ = ["LSTM", "GRU", "RNN"]
