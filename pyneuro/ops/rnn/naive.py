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


def leaky_sequence_naive(x, u0, w_ih, w_hh, bias, tau):
    """Leaky-integrator (continuous-time) RNN over a sequence -> (h (T, B, H), u_T (B, H)).

        a_t = W_ih x_t + W_hh tanh(u_{t-1}) + bias
        u_t = (1 - 1/τ) ⊙ u_{t-1} + (1/τ) ⊙ a_t,   h_t = tanh(u_t)

    τ (H,) is each unit's time constant (≥ 1): τ = 1 is a plain tanh RNN on u, a large τ a unit
    that integrates slowly (MTRNN's slow context units). u is the internal (membrane) state.
    """
    compute = _compute_dtype(x)
    xa = _input_gates(x, w_ih, bias, None, compute)
    w_hh_t = w_hh.to(compute).t()
    alpha = 1.0 / tau.to(compute)
    u = u0.to(compute)
    hs = []
    for t in range(x.shape[0]):
        a = xa[t] + torch.tanh(u) @ w_hh_t
        u = (1 - alpha) * u + alpha * a
        hs.append(torch.tanh(u))
    return torch.stack(hs).to(x.dtype), u.to(x.dtype)


# ------------------------------------------------------------------------------------------------
# The compiled backends' contract (docs/rnn_contract.md) written out in PyTorch: the forward that
# also returns the reserve, and the hand-written backward that consumes it. They define what every
# kernel pair computes, reserve included, and the backward is the fp64 gradient oracle of the
# conformance suite (itself checked against autograd through the *_sequence_naive functions).
# ------------------------------------------------------------------------------------------------
def _empty_grad(x):
    return x.new_empty((0,))


def _grad(value, like):
    """A gradient in its input's dtype; the empty (0,) tensor for an absent input."""
    return value.to(like.dtype) if like is not None else None


def _finish(x, grads: dict):
    return tuple(_empty_grad(x) if g is None else g for g in grads.values())


def _weight_grads(dpre, inputs, x_in, w_ih):
    """dx = dpre W_ih, dW_ih = dpreᵀ x and dW_hh = dpreᵀ inputs as single GEMMs over all T·B."""
    flat = dpre.reshape(-1, dpre.shape[-1])
    dx = dpre @ w_ih
    dw_ih = flat.t() @ x_in.reshape(-1, x_in.shape[-1])
    dw_hh = flat.t() @ inputs.reshape(-1, inputs.shape[-1])
    return dx, dw_ih, dw_hh


def _previous(states, first):
    """(s_{-1} = first, s_0, ..., s_{T-2}): the state each step started from."""
    return torch.cat([first.unsqueeze(0), states[:-1]])


def lstm_fwd_contract(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None):
    """-> (y, h_n, c_n, reserve); reserve (T, B, 5H + R) = [i f g o | c_t | h_t] (fp32, fp64 for fp64)."""
    compute = _compute_dtype(x)
    xg = _input_gates(x, w_ih, b_ih, b_hh, compute)
    H = w_ih.shape[0] // 4
    w_hh_c = w_hh.to(compute)
    w_hr_c = None if w_hr is None else w_hr.to(compute)
    h, c = h0.to(compute), c0.to(compute)
    steps = []
    for t in range(x.shape[0]):
        pre = xg[t] + h @ w_hh_c.t()
        i, f, o = (torch.sigmoid(p) for p in (pre[:, :H], pre[:, H:2 * H], pre[:, 3 * H:]))
        g = torch.tanh(pre[:, 2 * H:3 * H])
        c = f * c + i * g
        h = o * torch.tanh(c)
        if w_hr_c is not None:
            h = h @ w_hr_c.t()
        steps.append(torch.cat([i, f, g, o, c, h], dim=-1))
    reserve = torch.stack(steps)
    return reserve[..., 5 * H:].to(x.dtype), h.to(x.dtype), c.to(x.dtype), reserve


def lstm_bwd_contract(dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reserve):
    """-> (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr); absent inputs get empty (0,) tensors."""
    compute = reserve.dtype
    H = w_ih.shape[0] // 4
    i, f, g, o = (reserve[..., k * H:(k + 1) * H] for k in range(4))
    cs, hs = reserve[..., 4 * H:5 * H], reserve[..., 5 * H:]
    c_prev = _previous(cs, c0.to(compute))
    w_hh_c = w_hh.to(compute)
    w_hr_c = None if w_hr is None else w_hr.to(compute)
    dy = dy.to(compute)
    dh = torch.zeros_like(hs[0]) if dh_n is None else dh_n.to(compute)
    dc = torch.zeros_like(cs[0]) if dc_n is None else dc_n.to(compute)
    dpre = torch.empty_like(reserve[..., :4 * H])
    dh_out = torch.empty_like(hs)            # gradient of each step's output state h_t
    for t in reversed(range(x.shape[0])):
        dh = dh_out[t] = dy[t] + dh
        dm = dh if w_hr_c is None else dh @ w_hr_c
        tanh_c = torch.tanh(cs[t])
        dc = dc + dm * o[t] * (1 - tanh_c ** 2)
        dpre[t] = torch.cat([dc * g[t] * i[t] * (1 - i[t]), dc * c_prev[t] * f[t] * (1 - f[t]),
                             dc * i[t] * (1 - g[t] ** 2), dm * tanh_c * o[t] * (1 - o[t])], dim=-1)
        dc = dc * f[t]
        dh = dpre[t] @ w_hh_c
    x_c = x.to(compute)
    dx, dw_ih, dw_hh = _weight_grads(dpre, _previous(hs, h0.to(compute)), x_c, w_ih.to(compute))
    db = dpre.sum((0, 1))
    dw_hr = None
    if w_hr is not None:  # dW_hr = Σ_t dh_tᵀ m_t with m_t = o ⊙ tanh(c_t), recomputed
        m = o * torch.tanh(cs)
        dw_hr = dh_out.reshape(-1, dh_out.shape[-1]).t() @ m.reshape(-1, H)
    return _finish(x, {"dx": _grad(dx, x), "dh0": _grad(dh, h0), "dc0": _grad(dc, c0),
                       "dw_ih": _grad(dw_ih, w_ih), "dw_hh": _grad(dw_hh, w_hh), "db_ih": _grad(db, b_ih),
                       "db_hh": _grad(db, b_hh), "dw_hr": None if w_hr is None else _grad(dw_hr, w_hr)})


def gru_fwd_contract(x, h0, w_ih, w_hh, b_ih=None, b_hh=None):
    """-> (y, h_n, reserve); reserve (T, B, 5H) = [r z n | s_n | h_t]."""
    compute = _compute_dtype(x)
    xg = _input_gates(x, w_ih, b_ih, None, compute)
    H = w_ih.shape[0] // 3
    w_hh_c = w_hh.to(compute)
    h = h0.to(compute)
    steps = []
    for t in range(x.shape[0]):
        s = h @ w_hh_c.t()
        if b_hh is not None:
            s = s + b_hh.to(compute)
        r = torch.sigmoid(xg[t, :, :H] + s[:, :H])
        z = torch.sigmoid(xg[t, :, H:2 * H] + s[:, H:2 * H])
        n = torch.tanh(xg[t, :, 2 * H:] + r * s[:, 2 * H:])
        h = (1 - z) * n + z * h
        steps.append(torch.cat([r, z, n, s[:, 2 * H:], h], dim=-1))
    reserve = torch.stack(steps)
    return reserve[..., 4 * H:].to(x.dtype), h.to(x.dtype), reserve


def gru_bwd_contract(dy, dh_n, x, h0, w_ih, w_hh, b_ih, b_hh, reserve):
    """-> (dx, dh0, dw_ih, dw_hh, db_ih, db_hh)."""
    compute = reserve.dtype
    H = w_ih.shape[0] // 3
    r, z, n, s_n, hs = (reserve[..., k * H:(k + 1) * H] for k in range(5))
    h_prev = _previous(hs, h0.to(compute))
    w_hh_c = w_hh.to(compute)
    dy = dy.to(compute)
    dh = torch.zeros_like(hs[0]) if dh_n is None else dh_n.to(compute)
    d_input = torch.empty_like(reserve[..., :3 * H])      # gradients of x W_ihᵀ + b_ih, per gate
    d_recurrent = torch.empty_like(d_input)              # gradients of h W_hhᵀ + b_hh, per gate
    for t in reversed(range(x.shape[0])):
        dh = dy[t] + dh
        da_n = dh * (1 - z[t]) * (1 - n[t] ** 2)
        da_r = da_n * s_n[t] * r[t] * (1 - r[t])
        da_z = dh * (h_prev[t] - n[t]) * z[t] * (1 - z[t])
        d_input[t] = torch.cat([da_r, da_z, da_n], dim=-1)
        d_recurrent[t] = torch.cat([da_r, da_z, da_n * r[t]], dim=-1)
        dh = dh * z[t] + d_recurrent[t] @ w_hh_c
    x_c = x.to(compute)
    dx = d_input @ w_ih.to(compute)
    dw_ih = d_input.reshape(-1, 3 * H).t() @ x_c.reshape(-1, x.shape[-1])
    dw_hh = d_recurrent.reshape(-1, 3 * H).t() @ h_prev.reshape(-1, H)
    return _finish(x, {"dx": _grad(dx, x), "dh0": _grad(dh, h0), "dw_ih": _grad(dw_ih, w_ih),
                       "dw_hh": _grad(dw_hh, w_hh), "db_ih": _grad(d_input.sum((0, 1)), b_ih),
                       "db_hh": _grad(d_recurrent.sum((0, 1)), b_hh)})


def rnn_fwd_contract(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, relu=False):
    """-> (y, h_n, reserve); reserve (T, B, H) = h_t."""
    compute = _compute_dtype(x)
    xg = _input_gates(x, w_ih, b_ih, b_hh, compute)
    w_hh_c = w_hh.to(compute)
    act = torch.relu if relu else torch.tanh
    h = h0.to(compute)
    steps = []
    for t in range(x.shape[0]):
        h = act(xg[t] + h @ w_hh_c.t())
        steps.append(h)
    reserve = torch.stack(steps)
    return reserve.to(x.dtype), h.to(x.dtype), reserve


def rnn_bwd_contract(dy, dh_n, x, h0, w_ih, w_hh, b_ih, b_hh, reserve, relu=False):
    """-> (dx, dh0, dw_ih, dw_hh, db_ih, db_hh)."""
    compute = reserve.dtype
    w_hh_c = w_hh.to(compute)
    dy = dy.to(compute)
    dh = torch.zeros_like(reserve[0]) if dh_n is None else dh_n.to(compute)
    dpre = torch.empty_like(reserve)
    for t in reversed(range(x.shape[0])):
        dh = dy[t] + dh
        h = reserve[t]
        dpre[t] = dh * (h > 0).to(compute) if relu else dh * (1 - h ** 2)
        dh = dpre[t] @ w_hh_c
    dx, dw_ih, dw_hh = _weight_grads(dpre, _previous(reserve, h0.to(compute)), x.to(compute), w_ih.to(compute))
    db = dpre.sum((0, 1))
    return _finish(x, {"dx": _grad(dx, x), "dh0": _grad(dh, h0), "dw_ih": _grad(dw_ih, w_ih),
                       "dw_hh": _grad(dw_hh, w_hh), "db_ih": _grad(db, b_ih), "db_hh": _grad(db, b_hh)})


def leaky_fwd_contract(x, u0, w_ih, w_hh, bias, tau):
    """-> (h, u_n, reserve); reserve (T, B, H) = u_t."""
    compute = _compute_dtype(x)
    xa = _input_gates(x, w_ih, bias, None, compute)
    w_hh_c = w_hh.to(compute)
    alpha = 1.0 / tau.to(compute)
    u = u0.to(compute)
    steps = []
    for t in range(x.shape[0]):
        u = (1 - alpha) * u + alpha * (xa[t] + torch.tanh(u) @ w_hh_c.t())
        steps.append(u)
    reserve = torch.stack(steps)
    return torch.tanh(reserve).to(x.dtype), u.to(x.dtype), reserve


def leaky_bwd_contract(dh, du_n, x, u0, w_ih, w_hh, bias, tau, reserve):
    """-> (dx, du0, dw_ih, dw_hh, dbias, dtau)."""
    compute = reserve.dtype
    w_hh_c = w_hh.to(compute)
    tau_c = tau.to(compute)
    alpha = 1.0 / tau_c
    u_prev = _previous(reserve, u0.to(compute))
    h_prev = torch.tanh(u_prev)
    dh = dh.to(compute)
    g = torch.zeros_like(reserve[0]) if du_n is None else du_n.to(compute)
    da = torch.empty_like(reserve)
    dtau = torch.zeros_like(reserve[0])
    for t in reversed(range(x.shape[0])):
        h_t = torch.tanh(reserve[t])
        g = g + dh[t] * (1 - h_t ** 2)               # total gradient of u_t
        da[t] = alpha * g
        dtau = dtau + g * (u_prev[t] - reserve[t]) / tau_c
        g = (1 - alpha) * g + (da[t] @ w_hh_c) * (1 - h_prev[t] ** 2)
    dx, dw_ih, dw_hh = _weight_grads(da, h_prev, x.to(compute), w_ih.to(compute))
    return _finish(x, {"dx": _grad(dx, x), "du0": _grad(g, u0), "dw_ih": _grad(dw_ih, w_ih),
                       "dw_hh": _grad(dw_hh, w_hh), "dbias": _grad(da.sum((0, 1)), bias),
                       "dtau": _grad(dtau.sum(0), tau)})


__all__ = ["lstm_sequence_naive", "gru_sequence_naive", "rnn_sequence_naive", "leaky_sequence_naive",
           "lstm_fwd_contract", "lstm_bwd_contract", "gru_fwd_contract", "gru_bwd_contract",
           "rnn_fwd_contract", "rnn_bwd_contract", "leaky_fwd_contract", "leaky_bwd_contract"]
