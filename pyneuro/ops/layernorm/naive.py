"""The readable definition of ``add_layer_norm``, and its backward written out.

    total = (x + x_bias) + residual           (either optional: x when both are None)
    out   = (total - mean) / sqrt(var + eps) * weight + bias     over the last dim (N features):
            mean and the biased variance of each row, weight and bias (N,) or None

``out`` is what ``torch.nn.functional.layer_norm(x + residual, (N,), weight, bias, eps)`` returns;
``total`` is the residual stream that goes on (a pre-norm block adds the next sub-layer's output to
it), so both outputs carry gradients: the one reaching total is out's through the normalisation
plus total's own, and x and residual both receive it; x_bias (N,), the bias of the linear layer
that produced x, receives its sum over the rows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def add_layer_norm_naive(x: Tensor, residual, weight, bias, eps: float, x_bias=None) -> tuple[Tensor, Tensor]:
    """(out, total) with torch's own functions: the ground truth."""
    total = x if x_bias is None else x + x_bias
    total = total if residual is None else total + residual
    return F.layer_norm(total, (x.shape[-1],), weight, bias, eps), total


def add_layer_norm_backward_naive(dout: Tensor, dtotal, total: Tensor, weight, eps: float):
    """(dtotal_in, dweight, dbias): the gradient reaching total (= dx = dresidual), and those of
    weight and bias, written out per row (t̂ = (t - mean) rstd, g = dout ⊙ weight):
    dt = rstd (g - mean(g) - t̂ mean(g ⊙ t̂)) + dtotal,  dweight = Σ_rows dout ⊙ t̂,  dbias = Σ_rows dout."""
    mean = total.mean(-1, keepdim=True)
    rstd = torch.rsqrt(total.var(-1, unbiased=False, keepdim=True) + eps)
    t_hat = (total - mean) * rstd
    g = dout * weight if weight is not None else dout
    dt = rstd * (g - g.mean(-1, keepdim=True) - t_hat * (g * t_hat).mean(-1, keepdim=True))
    if dtotal is not None:
        dt = dt + dtotal
    rows = tuple(range(dout.dim() - 1))
    return dt, (dout * t_hat).sum(rows), dout.sum(rows)
