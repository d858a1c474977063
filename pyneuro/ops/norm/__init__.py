"""batch_norm_relu: batch norm, ReLU and (optionally) a 2x2 max-pool in one op, the epilogue of a
conv block (conv -> BN -> ReLU -> pool) in one pass over the activations each way.

    batch_norm_relu(x, running_mean, running_var, weight=None, bias=None, training=False,
                    momentum=0.1, eps=1e-5, pool=1, backend="auto")
      == max_pool2d(relu(F.batch_norm(x, running_mean, running_var, weight, bias, training,
                                      momentum, eps)), pool)            (pool 1: no pooling)

Arguments follow ``torch.nn.functional.batch_norm``: x (N, C, H, W); running_mean, running_var,
weight, bias (C,) or None; in training the batch statistics normalise and the running ones (when
given) are updated in place, with the unbiased variance; otherwise the running ones normalise
(both required). ``pool`` is 1 or 2 (max-pool with kernel = stride = 2, floor mode).

Backends: ``reference`` (naive.py: torch's batch_norm, relu and max_pool2d; any float dtype, any
device) and ``cpu`` (csrc/cpu/batch_norm.cpp: fp32, NCHW or channels_last; output in x's layout;
the forward keeps only x and the (C,) statistics for the backward, none of the intermediate
tensors or pool indices torch's three ops store). The contract: docs/batch_norm_contract.md.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ... import _backends
from ..._backends import Backend
from .naive import batch_norm_relu_backward_naive, batch_norm_relu_naive

_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

# Normwise tolerance of each backend against the fp64 oracle (tests/op_targets.py).
TOLERANCE = {
    "reference": {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3},
    "cpu": {torch.float32: 1e-5},
}


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------
def _fail(exc, msg):
    raise exc(f"batch_norm_relu: {msg}")


def _check(x, running_mean, running_var, weight, bias, training, momentum, eps, pool) -> None:
    if not isinstance(x, Tensor):
        _fail(TypeError, f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        _fail(TypeError, f"x must be float32, float64, float16 or bfloat16, got {x.dtype}")
    if x.dim() != 4:
        _fail(ValueError, f"x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    N, C, H, W = x.shape
    if isinstance(pool, bool) or not isinstance(pool, int):
        _fail(TypeError, f"pool must be an int (1 or 2), got {type(pool).__name__}")
    if pool not in (1, 2):
        _fail(ValueError, f"pool must be 1 or 2, got {pool!r}")
    if x.numel() == 0:
        _fail(ValueError, f"x must not be empty, got shape {tuple(x.shape)}")
    if H < pool or W < pool:
        _fail(ValueError, f"x's H and W must be >= pool = {pool}, got shape {tuple(x.shape)}")
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                    ("bias", bias)):
        if t is None:
            continue
        if not isinstance(t, Tensor):
            _fail(TypeError, f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
        if t.dtype not in _FLOATS:
            _fail(TypeError, f"{name} must be a float tensor, got {t.dtype}")
        if tuple(t.shape) != (C,):
            _fail(ValueError, f"{name} must be (C,) = ({C},) like x's channels, got shape {tuple(t.shape)}")
        if t.device != x.device:
            _fail(ValueError, f"{name} is on {t.device} but x is on {x.device}; all tensors must be on one device")
    # torch's batch_norm takes (C,) tensors of one dtype: x's, or float32 next to a 16-bit x.
    given = [(n, t) for n, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                                 ("bias", bias)) if t is not None]
    allowed = (x.dtype, torch.float32) if x.dtype in (torch.float16, torch.bfloat16) else (x.dtype,)
    for name, t in given:
        if t.dtype not in allowed or t.dtype != given[0][1].dtype:
            _fail(TypeError, f"{name} must have x's dtype {x.dtype} (or float32 for a 16-bit x), like the other "
                             f"(C,) tensors, got {t.dtype}")
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        if t is None:
            continue
        if t.requires_grad:
            _fail(ValueError, f"{name} must not require grad: running statistics are buffers (pass .detach())")
        if training and C > 1 and t.stride(0) == 0:
            _fail(ValueError, f"{name} is updated in place in training: it must not be an expanded (stride-0) view")
    if (running_mean is None) != (running_var is None):
        _fail(ValueError, "running_mean and running_var must be given together (or both None)")
    if not training and running_mean is None:
        _fail(ValueError, "running_mean and running_var are required when training is False")
    if training and N * H * W < 2:
        _fail(ValueError, f"x must have more than one value per channel when training, got shape {tuple(x.shape)}")
    for name, value in (("momentum", momentum), ("eps", eps)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(TypeError, f"{name} must be a number, got {type(value).__name__}")
    if not 0.0 <= momentum <= 1.0:
        _fail(ValueError, f"momentum must be in [0, 1], got {momentum!r}")
    if not eps > 0:
        _fail(ValueError, f"eps must be > 0, got {eps!r}")


# ----------------------------------------------------------------------------------------------
# The compiled pair: fake shapes and autograd
# ----------------------------------------------------------------------------------------------
def _layout(x: Tensor, pool: int):
    """The layout of out and dx, as csrc/common/batch_norm_args.h decides it: channels_last when x
    is, except where both layouts hold (C = 1, or H = W = 1) and pool is 1."""
    cl = x.is_contiguous(memory_format=torch.channels_last) and (not x.is_contiguous() or pool == 2)
    return torch.channels_last if cl else torch.contiguous_format


def _fake_fwd(x, weight, bias, running_mean, running_var, training, eps, pool):
    N, C, H, W = x.shape
    out = x.new_empty((N, C, H // pool, W // pool)).contiguous(memory_format=_layout(x, pool))
    return out, x.new_empty((C,)), x.new_empty((C,))


def _fake_bwd(dout, x, weight, bias, mean, var, training, eps, pool):
    return torch.empty_like(x), x.new_empty(weight.shape), x.new_empty(bias.shape)


def _setup_context(ctx, inputs, output):
    x, weight, bias, _rm, _rv, training, eps, pool = inputs
    _out, mean, var = output
    ctx.save_for_backward(x, weight, bias, mean, var)
    ctx.training, ctx.eps, ctx.pool = training, eps, pool
    ctx.mark_non_differentiable(mean, var)
    ctx.set_materialize_grads(False)


def _backward(ctx, dout, _dmean, _dvar):
    x, weight, bias, mean, var = ctx.saved_tensors
    if dout is None:
        return (None,) * 8
    dout = dout.to(x.dtype)
    # With pool 2 the CPU kernels run in channels_last (NCHW x through a copy, csrc/cpu/batch_norm.cpp):
    # a channels_last dout (as the next convolution's backward may give) needs no copy there.
    if not (ctx.pool == 2 and dout.is_contiguous(memory_format=torch.channels_last)):
        dout = dout.contiguous(memory_format=_layout(x, ctx.pool))
    dx, dweight, dbias = torch.ops.pyneuro.batch_norm_relu_bwd(dout, x, weight, bias, mean, var, ctx.training,
                                                               ctx.eps, ctx.pool)
    return dx, dweight, dbias, None, None, None, None, None


if _backends.extension()[0] is not None and hasattr(torch.ops.pyneuro, "batch_norm_relu_fwd"):
    _backends.register_kernel_pair("batch_norm_relu", "pyneuro::batch_norm_relu_fwd", "pyneuro::batch_norm_relu_bwd",
                                   fake_fwd=_fake_fwd, fake_bwd=_fake_bwd, setup_context=_setup_context,
                                   backward=_backward)


# ----------------------------------------------------------------------------------------------
# Backends: each takes the validated arguments and returns out (updating the running statistics)
# ----------------------------------------------------------------------------------------------
def _contiguous(t):
    return t.contiguous() if t is not None else None


def _reference(x, running_mean, running_var, weight, bias, training, momentum, eps, pool):
    # torch 2.13's CPU batch_norm backward reads a strided weight (or, in eval, strided running
    # statistics) of a channels_last x as if contiguous. In training the running statistics are
    # written in place, so they are passed as they are (the check refused expanded ones).
    if not training:
        running_mean, running_var = _contiguous(running_mean), _contiguous(running_var)
    return batch_norm_relu_naive(x, running_mean, running_var, _contiguous(weight), _contiguous(bias), training,
                                 momentum, eps, pool)


def _cpu(x, running_mean, running_var, weight, bias, training, momentum, eps, pool):
    C = x.shape[1]
    w = weight.contiguous() if weight is not None else x.new_ones(C)
    b = bias.contiguous() if bias is not None else x.new_zeros(C)
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        x = x.contiguous(memory_format=torch.channels_last if x.dim() == 4 and x.stride(1) == 1 else
                         torch.contiguous_format)
    out, mean, var = torch.ops.pyneuro.batch_norm_relu_fwd(x, w, b, _contiguous(running_mean), _contiguous(running_var),
                                                           bool(training), float(eps), int(pool))
    if training and running_mean is not None:
        count = x.numel() // C
        with torch.no_grad():  # as F.batch_norm: the unbiased variance goes into the running one
            running_mean.lerp_(mean.to(running_mean.dtype), momentum)
            running_var.lerp_((var * (count / (count - 1))).to(running_var.dtype), momentum)
    return out


def _cpu_supports(x, running_mean, running_var, weight, bias, *_rest) -> Optional[Exception]:
    for name, t in (("x", x), ("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                    ("bias", bias)):
        if t is not None and t.dtype != torch.float32:
            return TypeError(f"batch_norm_relu: the cpu backend takes float32 tensors only, got {name} {t.dtype}")
    return None


def example_arguments(N: int = 128, C: int = 24, H: int = 28, W: int = 28, pool: int = 2, dtype=torch.float32,
                      device="meta") -> tuple:
    """Arguments of the given sizes (shape only) for ``pyneuro explain batch_norm_relu``: a training
    call on channels_last activations, as the cnn model makes."""
    x = torch.empty(N, C, H, W, dtype=dtype, device=device).contiguous(memory_format=torch.channels_last)
    stat = lambda: torch.empty(C, dtype=torch.float32, device=device)  # noqa: E731
    return (x, stat(), stat(), stat(), stat(), True, 0.1, 1e-5, pool)


OP = _backends.register_op(
    "batch_norm_relu",
    {
        "reference": Backend("reference", ("cpu", "cuda"), _reference),
        "cpu": Backend("cpu", ("cpu",), _cpu, _backends.compiled_probe("batch_norm_relu_fwd"), _cpu_supports),
    },
    example=example_arguments,
)


def batch_norm_relu(x, running_mean=None, running_var=None, weight=None, bias=None, training=False, momentum=0.1,
                    eps=1e-5, pool=1, backend="auto"):
    """``max_pool2d(relu(batch_norm(x, ...)), pool)`` in one op; see the module docstring."""
    _check(x, running_mean, running_var, weight, bias, training, momentum, eps, pool)
    return OP(backend, x.device, x, running_mean, running_var, weight, bias, bool(training), float(momentum),
              float(eps), int(pool))


__all__ = ["batch_norm_relu", "batch_norm_relu_naive", "batch_norm_relu_backward_naive", "OP", "TOLERANCE",
           "example_arguments"]
