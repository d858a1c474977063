"""The readable definition of ``bias_gelu``, and its backward written out.

    u   = x + bias                 (x when bias is None; bias (N,) along the last dim)
    out = u Φ(u),  Φ(u) = (1 + erf(u / √2)) / 2        (torch.nn.GELU(), approximate="none")

Backward: dx = dout (Φ(u) + u φ(u)) with φ(u) = exp(-u²/2) / √(2π), the normal density;
dbias = the sum of dx over every row.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def bias_gelu_naive(x: Tensor, bias) -> Tensor:
    """gelu(x + bias) with torch's own functions: the ground truth."""
    return F.gelu(x if bias is None else x + bias)


def bias_gelu_backward_naive(dout: Tensor, x: Tensor, bias):
    """(dx, dbias), written out (dbias None without a bias)."""
    u = x if bias is None else x + bias
    cdf = 0.5 * (1 + torch.erf(u / math.sqrt(2)))
    pdf = torch.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)
    dx = dout * (cdf + u * pdf)
    return dx, (None if bias is None else dx.sum(tuple(range(dx.dim() - 1))))
