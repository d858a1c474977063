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
