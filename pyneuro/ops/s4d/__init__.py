"""s4d_kernel(dt, A, B, C, L, backend="auto"): the convolution kernel of a diagonal state space
layer (S4D) with zero-order-hold discretisation; see naive.py for the definition.

    dt      (H,)      step size per channel, float32 or float64, positive
    A, B, C (H, N/2)  one mode of each complex-conjugate pair, complex64 (with float32 dt) or
                      complex128 (with float64 dt)
    L       int >= 1  kernel length
    returns (H, L)    real, in dt's dtype: K[c, l] = 2 Re(sum_n C_cn B̄_cn exp(dt_c A_cn l))

Backends: ``reference`` (naive.py, differentiated by PyTorch autograd through the complex ops).
A faster backend (a fused Vandermonde kernel that never stores the (H, N/2, L) matrix, or
Cauchy/chunked powers) goes behind this same function. Values (dt > 0, Re A < 0) are not checked:
that would need a host sync on every call.
"""
from __future__ import annotations

import torch

from ... import _backends
from ..._backends import Backend
from .naive import COMPLEX_OF, discretize, s4d_kernel_naive


def _check(dt, A, B, C, L):
    if not isinstance(dt, torch.Tensor):
        raise TypeError(f"s4d_kernel: dt must be a torch.Tensor, got {type(dt).__name__}")
    if dt.dtype not in COMPLEX_OF:
        raise TypeError(f"s4d_kernel: dt must be float32 or float64, got {dt.dtype}")
    if dt.dim() != 1 or dt.shape[0] < 1:
        raise ValueError(f"s4d_kernel: dt must be 1-D (H,) with H >= 1, got shape {tuple(dt.shape)}")
    H = dt.shape[0]
    want = COMPLEX_OF[dt.dtype]
    for name, t in (("A", A), ("B", B), ("C", C)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"s4d_kernel: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != want:
            raise TypeError(f"s4d_kernel: {name} must be {want} (dt is {dt.dtype}), got {t.dtype}")
        if t.dim() != 2 or t.shape[0] != H or t.shape[1] < 1:
            raise ValueError(f"s4d_kernel: {name} must be (H, N/2) = ({H}, >=1) like dt's H, got shape "
                             f"{tuple(t.shape)}")
        if t.device != dt.device:
            raise ValueError(f"s4d_kernel: {name} is on {t.device}, dt on {dt.device}: they must share a device")
    if not (A.shape == B.shape == C.shape):
        raise ValueError(f"s4d_kernel: A, B and C must have one shape, got {tuple(A.shape)}, {tuple(B.shape)}, "
                         f"{tuple(C.shape)}")
    if isinstance(L, bool) or not isinstance(L, int) or L < 1:
        raise ValueError(f"s4d_kernel: L must be an int >= 1, got {L!r}")


def example_arguments(H: int = 128, N: int = 64, L: int = 784, dtype=torch.float32, device="meta") -> tuple:
    """Shape-only arguments for `pyneuro explain s4d_kernel --shape H=..,N=..,L=..` (N: the state
    size, two per stored complex mode)."""
    if dtype not in COMPLEX_OF:
        raise TypeError(f"s4d_kernel takes float32 or float64, got {dtype}")
    modes = max(N // 2, 1)
    cplx = COMPLEX_OF[dtype]
    return (torch.empty(H, dtype=dtype, device=device),
            *(torch.empty(H, modes, dtype=cplx, device=device) for _ in range(3)), L)


OP = _backends.register_op("s4d_kernel", {"reference": Backend("reference", ("cpu", "cuda"), s4d_kernel_naive)},
                           example=example_arguments)


def s4d_kernel(dt, A, B, C, L: int, backend: str = "auto"):
    """The S4D convolution kernel K (H, L); see the module docstring."""
    _check(dt, A, B, C, L)
    return OP(backend, dt.device, dt, A, B, C, L)


__all__ = ["s4d_kernel", "s4d_kernel_naive", "discretize", "example_arguments", "OP"]
