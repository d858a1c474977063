"""One recurrent layer, one direction, over a whole sequence: lstm_sequence, gru_sequence, rnn_sequence.

Shapes and gate orders are torch.nn.LSTM/GRU/RNN's (see naive.py), time-major. Stacking layers,
bidirectionality, batch_first and dropout belong to :mod:`pyneuro.nn.rnn`, which calls these once
per layer and direction; a fused kernel therefore only has to implement the single-direction cell
loop.

Backends: ``reference`` (naive.py, autograd through PyTorch). Fused CPU/CUDA/Triton cells are
added behind these same functions.
"""
from __future__ import annotations

import torch

from ... import _backends
from .naive import gru_sequence_naive, lstm_sequence_naive, rnn_sequence_naive

LSTM_OP = _backends.reference_only("lstm", lstm_sequence_naive)
GRU_OP = _backends.reference_only("gru", gru_sequence_naive)
RNN_OP = _backends.reference_only("rnn", rnn_sequence_naive)

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_NONLINEARITIES = ("tanh", "relu")


def _require_float_tensor(op: str, name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOATS:
        raise TypeError(f"{op}: {name} must be a floating tensor, got {t.dtype}")


def _check(op: str, gates: int, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr=None) -> tuple[int, int]:
    """Validate one layer's arguments; returns (hidden_size, output_size).

    hidden_size comes from w_ih's rows (gates * hidden_size); output_size is hidden_size, or
    w_hr's rows when an LSTM projects its hidden state.
    """
    _require_float_tensor(op, "x", x)
    if x.dim() != 3:
        raise ValueError(f"{op}: x must be 3-D (seq_len, batch, input_size), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{op}: x must hold at least one time step, got seq_len 0")
    _require_float_tensor(op, "w_ih", w_ih)
    _require_float_tensor(op, "w_hh", w_hh)  # required; the loop below skips the optional ones
    if w_ih.dim() != 2 or w_ih.shape[0] == 0 or w_ih.shape[0] % gates:
        raise ValueError(
            f"{op}: w_ih must be 2-D ({gates}*hidden_size, input_size), got shape {tuple(w_ih.shape)}")
    hidden = w_ih.shape[0] // gates
    out_size = hidden
    if w_hr is not None:
        _require_float_tensor(op, "w_hr", w_hr)
        if w_hr.dim() != 2:
            raise ValueError(f"{op}: w_hr must be 2-D (proj_size, hidden_size), got shape {tuple(w_hr.shape)}")
        out_size = w_hr.shape[0]
    seq_len, batch, input_size = x.shape
    g = f"{gates}*hidden_size" if gates > 1 else "hidden_size"
    state = "proj_size" if w_hr is not None else "hidden_size"
    expected = (
        ("w_ih", w_ih, (gates * hidden, input_size), f"({g}, input_size)"),
        ("w_hh", w_hh, (gates * hidden, out_size), f"({g}, {state})"),
        ("b_ih", b_ih, (gates * hidden,), f"({g},)"),
        ("b_hh", b_hh, (gates * hidden,), f"({g},)"),
        ("w_hr", w_hr, (out_size, hidden), "(proj_size, hidden_size)"),
        ("h0", h0, (batch, out_size), f"(batch, {state})"),
        ("c0", c0, (batch, hidden), "(batch, hidden_size)"),
    )
    for name, t, shape, described in expected:
        if t is None:
            continue
        _require_float_tensor(op, name, t)
        if tuple(t.shape) != shape:
            raise ValueError(f"{op}: {name} must have shape {described} = {shape}, got {tuple(t.shape)}")
        if t.dtype != x.dtype:
            raise TypeError(f"{op}: {name} must have x's dtype {x.dtype}, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{op}: {name} must be on x's device {x.device}, got {t.device}")
    return hidden, out_size


def lstm_sequence(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, backend: str = "auto"):
    """One LSTM layer over x (T, B, I) -> (y (T, B, H_out), h_n (B, H_out), c_n (B, H)).

    Weights as torch.nn.LSTM's ``weight_ih_l0`` etc. (gates i, f, g, o). ``h0``/``c0`` of None
    start from zeros. ``w_hr`` (P, H) projects the hidden state (torch's proj_size); then
    H_out = P, else H_out = H.
    """
    hidden, out_size = _check("lstm_sequence", 4, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    h0 = x.new_zeros(x.shape[1], out_size) if h0 is None else h0
    c0 = x.new_zeros(x.shape[1], hidden) if c0 is None else c0
    return LSTM_OP(backend, x.device, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)


def gru_sequence(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, backend: str = "auto"):
    """One GRU layer over x (T, B, I) -> (y (T, B, H), h_n (B, H)); torch.nn.GRU's gates (r, z, n).

    ``h0`` of None starts from zeros.
    """
    hidden, _ = _check("gru_sequence", 3, x, h0, None, w_ih, w_hh, b_ih, b_hh)
    h0 = x.new_zeros(x.shape[1], hidden) if h0 is None else h0
    return GRU_OP(backend, x.device, x, h0, w_ih, w_hh, b_ih, b_hh)


def rnn_sequence(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity: str = "tanh", backend: str = "auto"):
    """One Elman RNN layer over x (T, B, I) -> (y (T, B, H), h_n (B, H)); nonlinearity "tanh" or "relu".

    ``h0`` of None starts from zeros.
    """
    if nonlinearity not in _NONLINEARITIES:
        raise ValueError(f"rnn_sequence: nonlinearity must be one of {_NONLINEARITIES}, got {nonlinearity!r}")
    hidden, _ = _check("rnn_sequence", 1, x, h0, None, w_ih, w_hh, b_ih, b_hh)
    h0 = x.new_zeros(x.shape[1], hidden) if h0 is None else h0
    return RNN_OP(backend, x.device, x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity)


__all__ = [
    "lstm_sequence", "gru_sequence", "rnn_sequence",
    "lstm_sequence_naive", "gru_sequence_naive", "rnn_sequence_naive",
]
