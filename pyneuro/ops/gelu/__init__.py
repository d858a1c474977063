"""bias_gelu: a linear layer's bias and the exact GELU after it, in one pass each way.

    out = bias_gelu(x, bias=None, backend="auto")
      out == torch.nn.functional.gelu(x + bias)        (exact, erf-based GELU)

The first half of a transformer MLP: run the linear layer without its bias (``F.linear(h, W)``, a
plain GEMM) and hand its output and the bias here. torch's ``addmm`` first broadcasts the bias into
the GEMM's output, gelu then reads that output back, and the backward sums the bias gradient in a
pass of its own; here the bias is added as x is read, and its gradient summed while dx is written.
x (..., N), bias (N,) or None.

Backends: ``reference`` (naive.py: torch's add and gelu; any float dtype, any device) and ``cpu``
(csrc/cpu/gelu.cpp: fp32; erf by Abramowitz & Stegun 7.1.26, the formula of torch's own
vectorised gelu, |error| <= 1.5e-7, with the negative tail kept to its relative precision). Its
derivative is registered in C++ (csrc/autograd/gelu.cpp), as add_layer_norm's.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ... import _backends
from ..._backends import Backend
from .naive import bias_gelu_backward_naive, bias_gelu_naive

_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

# Normwise tolerance of each backend against the fp64 oracle (tests/ops/bias_gelu): fp32 rounding
# of a few operations plus erf's 1.5e-7 (cpu; torch's gelu, the reference, uses the same formula).
TOLERANCE = {
    "reference": {torch.float32: 1e-6, torch.bfloat16: 2e-2, torch.float16: 4e-3},
    "cpu": {torch.float32: 1e-6},
}


def _fail(exc, msg):
    raise exc(f"bias_gelu: {msg}")


def _check(x, bias) -> None:
    if not isinstance(x, Tensor):
        _fail(TypeError, f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        _fail(TypeError, f"x must be a floating tensor, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] < 1:
        _fail(ValueError, f"x must have a last dimension of at least 1 (the features), got shape {tuple(x.shape)}")
    if bias is None:
        return
    if not isinstance(bias, Tensor):
        _fail(TypeError, f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
    if bias.dtype != x.dtype:
        _fail(TypeError, f"bias must have x's dtype {x.dtype}, got {bias.dtype}")
    if bias.device != x.device:
        _fail(ValueError, f"bias is on {bias.device} but x is on {x.device}; both must be on one device")
    if tuple(bias.shape) != (x.shape[-1],):
        _fail(ValueError, f"bias must have shape (N,) with N = x.shape[-1] = {x.shape[-1]}, got {tuple(bias.shape)}")


# ----------------------------------------------------------------------------------------------
# The compiled pair: fake shapes (the derivative is the extension's, in C++)
# ----------------------------------------------------------------------------------------------
def _fake_fwd(x, bias):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _fake_bwd(dout, x, bias):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            x.new_empty((x.shape[-1],) if bias is not None else (0,)))


if _backends.extension()[0] is not None and hasattr(torch.ops.pyneuro, "bias_gelu_fwd"):
    _backends.register_kernel_pair("bias_gelu", "pyneuro::bias_gelu_fwd", "pyneuro::bias_gelu_bwd",
                                   fake_fwd=_fake_fwd, fake_bwd=_fake_bwd)  # derivative: csrc/autograd/gelu.cpp


# ----------------------------------------------------------------------------------------------
# Backends: each takes the validated arguments and returns out
# ----------------------------------------------------------------------------------------------
def _reference(x, bias):
    return bias_gelu_naive(x, bias)


def _cpu(x, bias):
    return torch.ops.pyneuro.bias_gelu_fwd(x, bias)


def _cpu_supports(x, *_rest) -> Optional[Exception]:
    if x.dtype != torch.float32:
        return TypeError(f"bias_gelu: the cpu backend takes float32 tensors only, got {x.dtype} "
                         f"({x.dtype} runs on backend='reference')")
    return None


def example_arguments(rows: int = 4352, N: int = 192, dtype=torch.float32, device="meta") -> tuple:
    """Arguments of the given sizes (shape only) for ``pyneuro explain bias_gelu``: the transformer
    model's MLP (batch 256 x 17 tokens, 192 hidden features)."""
    return (torch.empty(rows, N, dtype=dtype, device=device), torch.empty(N, dtype=dtype, device=device))


OP = _backends.register_op(
    "bias_gelu",
    {
        "reference": Backend("reference", ("cpu", "cuda"), _reference),
        "cpu": Backend("cpu", ("cpu",), _cpu, _backends.compiled_probe("bias_gelu_fwd"), _cpu_supports),
    },
    example=example_arguments,
)


def bias_gelu(x, bias=None, backend: str = "auto"):
    """gelu(x + bias) in one op; see the module docstring."""
    _check(x, bias)
    return OP(backend, x.device, x, bias)


__all__ = ["bias_gelu", "bias_gelu_naive", "bias_gelu_backward_naive", "OP", "TOLERANCE", "example_arguments"]
