"""The S4D convolution kernel (Gu et al. 2022, "On the Parameterization and Initialization of
Diagonal State Space Models"), written out: the ground truth every s4d_kernel backend matches.

Each channel c is a diagonal linear SSM with N state dimensions that come in complex-conjugate
pairs; only one of each pair, n = 0 .. N/2 - 1, is stored (the other contributes the conjugate, so
the output is twice the real part):

    x_n'(t) = A_cn x_n(t) + B_cn u(t),        y(t) = 2 Re(sum_n C_cn x_n(t))

Zero-order hold with step dt_c (u held constant over each step) gives the discrete system

    Ā = exp(dt A),   B̄ = (exp(dt A) - 1) / A · B,   x_k = Ā x_{k-1} + B̄ u_k,   y_k = 2 Re(C x_k)

and unrolled from x_{-1} = 0 it is a causal convolution y = K * u with

    K[c, l] = 2 Re(sum_n C_cn B̄_cn Ā_cn^l),   Ā^l = exp(dt A l),

i.e. the Vandermonde matrix exp(dt A l) (modes x lags) multiplied by the vector C B̄.
"""
from __future__ import annotations

import torch

# Real dtype -> the complex dtype the modes use (and back).
COMPLEX_OF = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def discretize(dt, A, B):
    """ZOH: (Ā, B̄) of shape (H, N/2) for step sizes dt (H,) and continuous A, B (H, N/2)."""
    dtA = dt.unsqueeze(-1) * A
    return torch.exp(dtA), torch.expm1(dtA) / A * B


def s4d_kernel_naive(dt, A, B, C, L: int):
    """K (H, L), real, in dt's dtype: K[c, l] = 2 Re(sum_n C_cn B̄_cn exp(dt_c A_cn l)).

    dt (H,) float32/float64, A, B, C (H, N/2) of the matching complex dtype."""
    dtA = dt.unsqueeze(-1) * A                                               # (H, N/2)
    weights = C * (torch.expm1(dtA) / A * B)                                 # C B̄
    lags = torch.arange(L, device=dt.device, dtype=dt.dtype)
    vandermonde = torch.exp(dtA.unsqueeze(-1) * lags)                       # (H, N/2, L): Ā^l
    return 2 * torch.einsum("hn,hnl->hl", weights, vandermonde).real
