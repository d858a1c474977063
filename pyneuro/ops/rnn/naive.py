"""Recurrent layers written out step by step: the ground truth every fused cell is tested against.

Each function runs **one layer in one direction** over a whole sequence, with torch.nn's
equations and gate order, so torch.nn.LSTM/GRU/RNN weights plug in unchanged:

    x    (T, B, I)  time-major input
    h0   (B, H)     initial hidden state (B, P for an LSTM with a projection)
    w_ih (G*H, I)   input weights, G gates stacked along dim 0 in torch.nn's order
    w_hh (G*H, H)   recurrent weights
    b_ih, b_hh (G*H,) or None

The input projection of every step does not depend on the recurrence, so it is one matmul up
front; only ``h @ w_hhᵀ`` stays inside the time loop. The math runs in fp32 (fp64 stays fp64)
and results come back in the input dtype.
"""
from __future__ import annotations

import torch


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _input_gates(x, w_ih, b_ih, b_hh, compute):
    """x @ w_ihᵀ + b_ih (+ b_hh) for all T steps at once: (T, B, G*H)."""
    gates = x.to(compute) @ w_ih.to(compute).t()
    if b_ih is not None:
        gates = gates + b_ih.to(compute)
    if b_hh is not None:
        gates = gates + b_hh.to(compute)
    return gates


def lstm_sequence_naive(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None):
    """LSTM over a sequence -> (y (T, B, P or H), h_n (B, P or H), c_n (B, H)).

    Gates (i, f, g, o) as torch.nn.LSTM:
        i, f, o = σ(·), g = tanh(·);  c' = f*c + i*g;  h' = o * tanh(c')
    With ``w_hr`` (P, H) the hidden state is projected, h' = (o * tanh(c')) @ w_hrᵀ, as
    torch.nn.LSTM's proj_size; then h0 and w_hh have P columns instead of H.
    """
    compute = _compute_dtype(x)
    xg = _input_gates(x, w_ih, b_ih, b_hh, compute)
    w_hh_t = w_hh.to(compute).t()
    w_hr_t = None if w_hr is None else w_hr.to(compute).t()
    h, c = h0.to(compute), c0.to(compute)
    ys = []
    for t in range(x.shape[0]):
        i, f, g, o = (xg[t] + h @ w_hh_t).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        if w_hr_t is not None:
            h = h @ w_hr_t
        ys.append(h)
    return torch.stack(ys).to(x.dtype), h.to(x.dtype), c.to(x.dtype)


def gru_sequence_naive(x, h0, w_ih, w_hh, b_ih=None, b_hh=None):
    """GRU over a sequence -> (y (T, B, H), h_n (B, H)).

    Gates (r, z, n) as torch.nn.GRU:
        r = σ(W_ir x + b_ir + W_hr h + b_hr),  z = σ(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),  h' = (1 - z) * n + z * h
    b_hn sits inside the reset product, so b_hh stays with the recurrent term instead of being
    folded into the input projection as the LSTM and RNN do.
    """
    compute = _compute_dtype(x)
    xg = _input_gates(x, w_ih, b_ih, None, compute)
    w_hh_t = w_hh.to(compute).t()
    b_hh = None if b_hh is None else b_hh.to(compute)
    h = h0.to(compute)
    ys = []
    for t in range(x.shape[0]):
        hg = h @ w_hh_t
        if b_hh is not None:
            hg = hg + b_hh
        x_r, x_z, x_n = xg[t].chunk(3, dim=-1)
        h_r, h_z, h_n = hg.chunk(3, dim=-1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        h = (1 - z) * n + z * h
        ys.append(h)
    return torch.stack(ys).to(x.dtype), h.to(x.dtype)


def rnn_sequence_naive(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity: str = "tanh"):
    """Elman RNN over a sequence -> (y (T, B, H), h_n (B, H)); h' = act(W_ih x + b_ih + W_hh h + b_hh)."""
    activations = {"tanh": torch.tanh, "relu": torch.relu}
    if nonlinearity not in activations:
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    act = activations[nonlinearity]
    compute = _compute_dtype(x)
    xg = _input_gates(x, w_ih, b_ih, b_hh, compute)
    w_hh_t = w_hh.to(compute).t()
    h = h0.to(compute)
    ys = []
    for t in range(x.shape[0]):
        h = act(xg[t] + h @ w_hh_t)
        ys.append(h)
    return torch.stack(ys).to(x.dtype), h.to(x.dtype)


__all__ = ["lstm_sequence_naive", "gru_sequence_naive", "rnn_sequence_naive"]
