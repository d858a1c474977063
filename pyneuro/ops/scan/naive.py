"""Selective scan (Mamba's S6 recurrence), written out step by step: the ground truth.

Shapes follow mamba_ssm's ``selective_scan_fn``:
    u, delta, z : (batch, dim, L)
    A           : (dim, N), real
    B, C        : (batch, N, L) variable, (batch, G, N, L) grouped (dim % G == 0), or (dim, N) constant
    D, delta_bias : (dim,)
    initial_state : (batch, dim, N)

    delta_t = softplus(delta_t + delta_bias)            (when delta_softplus)
    x_t     = exp(delta_t * A) * x_{t-1} + delta_t * B_t * u_t       (x: (batch, dim, N))
    y_t     = <x_t, C_t>  (sum over N)
    out     = (y + D * u) * silu(z)

Everything is computed in fp32 (fp64 inputs stay fp64); ``out`` is returned in u's dtype and the
last state in the compute dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _per_dim(M, batch, dim, compute):
    """B or C as (batch, dim, N, L) or (dim, N) broadcastable views, in the compute dtype."""
    M = M.to(compute)
    if M.dim() == 2:  # constant (dim, N)
        return M
    if M.dim() == 3:  # (batch, N, L): shared by every channel
        return M.unsqueeze(1)
    groups = M.shape[1]  # (batch, G, N, L): channel d uses group d // (dim // G)
    return M.repeat_interleave(dim // groups, dim=1)


def selective_scan_naive(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         return_last_state=False, initial_state=None):
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    batch, dim, L = u.shape
    u_c, delta_c, A_c = u.to(compute), delta.to(compute), A.to(compute)
    if delta_bias is not None:
        delta_c = delta_c + delta_bias.to(compute)[:, None]
    if delta_softplus:
        delta_c = F.softplus(delta_c)
    B_c, C_c = _per_dim(B, batch, dim, compute), _per_dim(C, batch, dim, compute)
    x = (initial_state.to(compute) if initial_state is not None
         else u_c.new_zeros(batch, dim, A.shape[1]))
    # Per-step views by unbind, not [..., t] slicing: the backward of L slices writes L full-size
    # zero gradients (O(L^2) memory traffic), the backward of one unbind is one stack.
    B_steps = [B_c] * L if B_c.dim() == 2 else B_c.unbind(-1)
    C_steps = [C_c] * L if C_c.dim() == 2 else C_c.unbind(-1)
    ys = []
    for dt, u_t, B_t, C_t in zip(delta_c.unbind(-1), u_c.unbind(-1), B_steps, C_steps):
        dt = dt[..., None]  # (batch, dim, 1)
        x = torch.exp(dt * A_c) * x + dt * B_t * u_t[..., None]
        ys.append((x * C_t).sum(-1))
    y = torch.stack(ys, dim=-1) if L else u_c.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + D.to(compute)[:, None] * u_c
    if z is not None:
        y = y * F.silu(z.to(compute))
    out = y.to(u.dtype)
    return (out, x) if return_last_state else out


def selective_scan_adjoint(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           initial_state=None, dout=None, dlast_state=None):
    """The backward written out as the compiled kernels compute it, step by step; the gradient
    oracle of the test suites (which check it against autograd through selective_scan_naive).

    With g_t = dL/dx_t for the loss <out, dout> + <x_L, dlast_state> (absent cotangents are zero):
        g_L = dlast_state + C_L dy_L,   g_t = a_{t+1} g_{t+1} + C_t dy_t,   a_t = exp(dt_t A)
        dy = dout * silu(z),  dB_t = g_t dt_t u_t,  dC_t = dy_t x_t,  d(dt_t) = <g_t, A a_t x_{t-1}> + u_t <g_t, B_t>
    Returns (out, states, grads): out (batch, dim, L); states (batch, dim, L + 1, N), x_0 .. x_L;
    grads {name: gradient} for every tensor argument given, d(delta) w.r.t. the raw delta.
    Computed in fp32 (fp64 for fp64 inputs), like selective_scan_naive.
    """
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    c = {name: (t.to(compute) if t is not None else None) for name, t in
         dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, initial_state=initial_state).items()}
    u, A, D, z = c["u"], c["A"], c["D"], c["z"]
    batch, dim, L = u.shape
    N = A.shape[1]

    def per_channel(M):  # (batch | 1, dim, N, L | 1)
        return M[None, :, :, None] if M.dim() == 2 else _per_dim(M, batch, dim, compute)

    def at(M, t):
        return M[..., t if M.shape[-1] > 1 else 0]

    raw = c["delta"] + (c["delta_bias"][:, None] if c["delta_bias"] is not None else 0)
    dt = F.softplus(raw) if delta_softplus else raw
    Bv, Cv = per_channel(c["B"]), per_channel(c["C"])
    xs = [c["initial_state"] if c["initial_state"] is not None else u.new_zeros(batch, dim, N)]
    for t in range(L):
        xs.append(torch.exp(dt[..., t, None] * A) * xs[-1] + (dt[..., t] * u[..., t])[..., None] * at(Bv, t))
    y = torch.stack([(xs[t + 1] * at(Cv, t)).sum(-1) for t in range(L)], -1) if L else u.new_zeros(u.shape)
    pre = y + (D[:, None] * u if D is not None else 0)
    out = pre * (F.silu(z) if z is not None else 1)

    dout = dout.to(compute) if dout is not None else u.new_zeros(u.shape)
    dy = dout * (F.silu(z) if z is not None else 1)
    g = dlast_state.to(compute).clone() if dlast_state is not None else u.new_zeros(batch, dim, N)
    du, ddt, dA = torch.zeros_like(u), torch.zeros_like(dt), torch.zeros_like(A)
    dB_full, dC_full = u.new_zeros(batch, dim, N, L), u.new_zeros(batch, dim, N, L)
    for t in reversed(range(L)):
        g = g + dy[..., t, None] * at(Cv, t)  # now dL/dx_{t+1} in full
        a = torch.exp(dt[..., t, None] * A)
        dC_full[..., t] = dy[..., t, None] * xs[t + 1]
        dB_full[..., t] = g * (dt[..., t] * u[..., t])[..., None]
        w = g * a * xs[t]  # the decay term's gradient, times the decay
        dA += (w * dt[..., t, None]).sum(0)
        gB = (g * at(Bv, t)).sum(-1)
        du[..., t] = dt[..., t] * gB + (D * dy[..., t] if D is not None else 0)
        ddt[..., t] = (w * A).sum(-1) + u[..., t] * gB
        g = g * a
    grads = {"u": du, "delta": ddt * torch.sigmoid(raw) if delta_softplus else ddt, "A": dA}
    for name, full in (("B", dB_full), ("C", dC_full)):  # summed over what B/C is shared across
        M = c[name]
        if M.dim() == 2:
            grads[name] = full.sum((0, 3))
        else:
            G = M.shape[1] if M.dim() == 4 else 1
            grads[name] = full.view(batch, G, dim // G, N, L).sum(2).view(M.shape)
    if D is not None:
        grads["D"] = (dy * u).sum((0, 2))
    if z is not None:
        s = torch.sigmoid(z)
        grads["z"] = dout * pre * s * (1 + z * (1 - s))
    if c["delta_bias"] is not None:
        grads["delta_bias"] = grads["delta"].sum((0, 2))
    if c["initial_state"] is not None:
        grads["initial_state"] = g
    return out, torch.stack(xs, dim=2), grads
