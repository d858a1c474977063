"""add_layer_norm: a residual add and the layer norm of its result in one pass each way.

    out, total = add_layer_norm(x, residual=None, weight=None, bias=None, eps=1e-5, backend="auto",
                                x_bias=None)
      total == (x + x_bias) + residual   (either optional: x itself when both are None)
      out   == torch.nn.functional.layer_norm(total, (x.shape[-1],), weight, bias, eps)

The block of a transformer layer where the residual stream meets the next norm (flash-attn's
``dropout_add_layer_norm`` without the dropout; apply one to x first): pre-norm computes
``norm2(x + attn)`` and carries ``x + attn`` on; post-norm keeps only ``out``. Both outputs carry
gradients. x and residual (..., N), weight and bias (N,) or None, normalised over the last dim.
``x_bias`` (N,) is the bias of the linear layer that produced x, folded in: run that layer without
its bias and pass it here, and its broadcast into the GEMM's output and the separate sum for its
gradient (the column sum of the gradient reaching total, formed in the backward's one pass) go.

Backends: ``reference`` (naive.py: torch's add and layer_norm; any float dtype, any device) and
``cpu`` (csrc/cpu/layer_norm.cpp: fp32; one read of x and residual and one write of total and out
forward, one read of dout, dtotal and total and one write of dx backward, where torch's add and
layer_norm make two passes each way and autograd adds the residual stream's gradient in a third).
Its derivative is registered in C++ (csrc/autograd/layer_norm.cpp), as attention's.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ... import _backends
from ..._backends import Backend
from .naive import add_layer_norm_backward_naive, add_layer_norm_naive

_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

# Normwise tolerance of each backend against the fp64 oracle (tests/ops/layernorm).
TOLERANCE = {
    "reference": {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3},
    "cpu": {torch.float32: 1e-5},
}


def _fail(exc, msg):
    raise exc(f"add_layer_norm: {msg}")


def _check(x, residual, weight, bias, eps, x_bias=None) -> None:
    # Written for a few microseconds per call: the op runs in ~10 µs on a transformer's rows.
    if not isinstance(x, Tensor):
        _fail(TypeError, f"x must be a torch.Tensor, got {type(x).__name__}")
    dtype, device, shape = x.dtype, x.device, x.shape
    if dtype not in _FLOATS:
        _fail(TypeError, f"x must be a floating tensor, got {dtype}")
    if len(shape) < 1 or shape[-1] < 1:
        _fail(ValueError, f"x must have a last dimension of at least 1 (the normalised one), got shape {tuple(shape)}")
    N = shape[-1]
    for name, t in (("residual", residual), ("weight", weight), ("bias", bias), ("x_bias", x_bias)):
        if t is None:
            continue
        if not isinstance(t, Tensor):
            _fail(TypeError, f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
        if t.dtype != dtype:
            _fail(TypeError, f"{name} must have x's dtype {dtype}, got {t.dtype}")
        if t.device != device:
            _fail(ValueError, f"{name} is on {t.device} but x is on {device}; all tensors must be on one device")
        want = shape if name == "residual" else (N,)
        if t.shape != want:
            what = "x's shape" if name == "residual" else "(N,) with N = x.shape[-1]"
            _fail(ValueError, f"{name} must have {what} = {tuple(want)}, got {tuple(t.shape)}")
    if not _backends.real_number(eps):
        _fail(TypeError, f"eps must be a number, got {type(eps).__name__}")
    if not (math.isfinite(eps) and eps >= 0):
        _fail(ValueError, f"eps must be a finite number >= 0, got {eps!r}")


# ----------------------------------------------------------------------------------------------
# The compiled pair: fake shapes (the derivative is the extension's, in C++)
# ----------------------------------------------------------------------------------------------
def _fake_fwd(x, residual, weight, bias, eps, x_bias=None):
    rows = x.shape[:-1]
    total = torch.empty_like(x) if residual is not None or x_bias is not None else x.new_empty((0,))
    return torch.empty_like(x), total, x.new_empty(rows), x.new_empty(rows)


def _fake_bwd(dout, dtotal, input, shift, rstd, weight, has_bias, has_x_bias=False):
    N = input.shape[-1]
    return (torch.empty_like(input), input.new_empty((N,) if weight is not None else (0,)),
            input.new_empty((N,) if has_bias else (0,)), input.new_empty((N,) if has_x_bias else (0,)))


if _backends.extension()[0] is not None and hasattr(torch.ops.pyneuro, "add_layer_norm_fwd"):
    _backends.register_kernel_pair("add_layer_norm", "pyneuro::add_layer_norm_fwd", "pyneuro::add_layer_norm_bwd",
                                   fake_fwd=_fake_fwd, fake_bwd=_fake_bwd)  # derivative: csrc/autograd/layer_norm.cpp


# ----------------------------------------------------------------------------------------------
# Backends: each takes the validated arguments and returns (out, total)
# ----------------------------------------------------------------------------------------------
def _reference(x, residual, weight, bias, eps, x_bias=None):
    return add_layer_norm_naive(x, residual, weight, bias, eps, x_bias)


def _cpu(x, residual, weight, bias, eps, x_bias=None):
    out, total, _shift, _rstd = torch.ops.pyneuro.add_layer_norm_fwd(x, residual, weight, bias, eps, x_bias)
    return out, (total if residual is not None or x_bias is not None else x)


def _cpu_supports(x, *_rest) -> Optional[Exception]:
    if x.dtype != torch.float32:
        return TypeError(f"add_layer_norm: the cpu backend takes float32 tensors only, got {x.dtype} "
                         f"({x.dtype} runs on backend='reference')")
    return None


def example_arguments(rows: int = 4352, N: int = 96, dtype=torch.float32, device="meta") -> tuple:
    """Arguments of the given sizes (shape only) for ``pyneuro explain add_layer_norm``: the
    transformer model's (batch 256 x 17 tokens of 96 features)."""
    t = lambda *s: torch.empty(*s, dtype=dtype, device=device)  # noqa: E731
    return (t(rows, N), t(rows, N), t(N), t(N), 1e-5)


OP = _backends.register_op(
    "add_layer_norm",
    {
        "reference": Backend("reference", ("cpu", "cuda"), _reference),
        "cpu": Backend("cpu", ("cpu",), _cpu, _backends.compiled_probe("add_layer_norm_fwd"), _cpu_supports),
    },
    example=example_arguments,
)


def add_layer_norm(x, residual=None, weight=None, bias=None, eps: float = 1e-5, backend: str = "auto", *,
                   x_bias=None):
    """(layer_norm(x + x_bias + residual), x + x_bias + residual) in one op; see the module docstring."""
    _check(x, residual, weight, bias, eps, x_bias)
    if x_bias is None:
        return OP(backend, x.device, x, residual, weight, bias, float(eps))
    return OP(backend, x.device, x, residual, weight, bias, float(eps), x_bias)


__all__ = ["add_layer_norm", "add_layer_norm_naive", "add_layer_norm_backward_naive", "OP", "TOLERANCE",
           "example_arguments"]
