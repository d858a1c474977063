"""The readable definition of ``batch_norm_relu`` and its backward written out step by step.

    z   = (x - mean_c) / sqrt(var_c + eps) * weight_c + bias_c     (per channel c of x (N, C, H, W))
    out = max_pool2d(relu(z), pool)                                 (pool 1: relu(z) alone)

In training the statistics are the batch's (mean and biased variance over N, H, W) and the running
ones are updated with ``momentum`` and the unbiased variance, as in ``torch.nn.functional.batch_norm``;
otherwise the running statistics are used. The max-pool takes 2x2 windows with stride 2 and drops
an odd last row or column (which still count in the statistics).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def batch_norm_relu_naive(x: Tensor, running_mean, running_var, weight, bias, training: bool, momentum: float,
                          eps: float, pool: int) -> Tensor:
    """``max_pool2d(relu(batch_norm(x)), pool)`` with torch's own functions: the ground truth."""
    y = F.relu(F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps))
    return F.max_pool2d(y, pool) if pool > 1 else y


def batch_norm_relu_backward_naive(dout: Tensor, x: Tensor, weight, bias, mean: Tensor, var: Tensor,
                                   training: bool, eps: float, pool: int) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight, dbias) given the statistics the forward normalised with: the gradient every
    backend's backward implements (docs/batch_norm_contract.md), in x's dtype (use fp64 for an oracle).

    The pool sends each window's gradient to the first of its largest z (row-major order; a NaN
    counts as largest, as in max_pool2d), the ReLU lets it through where that z > 0; then
    dbias = sum dz, dweight = sum dz xhat, and dx = w invstd (dz - mean(dz) - xhat mean(dz xhat))
    in training (the batch statistics depend on x), w invstd dz otherwise."""
    N, C, H, W = x.shape
    ch = (1, C, 1, 1)
    w = weight.to(x.dtype) if weight is not None else x.new_ones(C)
    b = bias.to(x.dtype) if bias is not None else x.new_zeros(C)
    invstd = (var.to(x.dtype) + eps).rsqrt()
    xhat = (x - mean.to(x.dtype).view(ch)) * invstd.view(ch)
    z = xhat * w.view(ch) + b.view(ch)
    dout = dout.to(x.dtype)
    if pool == 1:
        dz = torch.where(z > 0, dout, torch.zeros_like(dout))
    else:
        Ho, Wo = H // pool, W // pool
        # (N, C, Ho, Wo, 4) windows in row-major order within each window.
        win = z[:, :, :2 * Ho, :2 * Wo].reshape(N, C, Ho, 2, Wo, 2).permute(0, 1, 2, 4, 3, 5).reshape(N, C, Ho, Wo, 4)
        nan_first = torch.where(win.isnan(), torch.full_like(win, float("inf")), win)  # argmax: first max, NaN wins
        which = nan_first.argmax(-1, keepdim=True)
        top = win.gather(-1, which).squeeze(-1)
        g = torch.where((top > 0) & ~win.isnan().any(-1), dout, torch.zeros_like(dout))  # a NaN max passes nothing
        routed = torch.zeros_like(win).scatter_(-1, which, g.unsqueeze(-1))
        dz = torch.zeros_like(z)
        dz[:, :, :2 * Ho, :2 * Wo] = routed.reshape(N, C, Ho, Wo, 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(
            N, C, 2 * Ho, 2 * Wo)
    dbias = dz.sum((0, 2, 3))
    dweight = (dz * xhat).sum((0, 2, 3))
    k = (w * invstd).view(ch)
    if training:
        count = N * H * W
        dx = k * (dz - dbias.view(ch) / count - xhat * dweight.view(ch) / count)
    else:
        dx = k * dz
    return dx, dweight, dbias
