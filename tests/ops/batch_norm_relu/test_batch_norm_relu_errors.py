"""One error contract for batch_norm_relu: each bad input gives the documented exception (TypeError
for a type or dtype, ValueError for a shape, value or device), naming the argument, on every
backend: through the public function (validated in Python before any backend runs) and, for the
C++ backend, through the raw torch.ops.pyneuro.batch_norm_relu_fwd / _bwd, whose own check
(csrc/common/batch_norm_args.h, csrc/cpu/batch_norm.cpp) must raise the same types."""
from __future__ import annotations

import math

import pytest
import torch

from pyneuro import _backends
from pyneuro.ops.norm import batch_norm_relu


def _good(device="cpu", C=3, **over):
    g = torch.Generator().manual_seed(0)
    args = dict(x=torch.randn(2, C, 5, 6, generator=g), running_mean=torch.zeros(C), running_var=torch.ones(C),
                weight=torch.rand(C, generator=g) + 0.5, bias=torch.randn(C, generator=g), training=True,
                momentum=0.1, eps=1e-5, pool=2)
    args = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    args.update(over)
    return args


def _t(*shape, dtype=torch.float32):
    return torch.ones(*shape, dtype=dtype)


# (id, replacements, exception, message pattern): the message names the argument.
PUBLIC_BAD = [
    ("x-3d", dict(x=_t(3, 5, 6)), ValueError, r"x must be 4-D \(N, C, H, W\), got shape \(3, 5, 6\)"),
    ("x-5d", dict(x=_t(1, 2, 3, 5, 6)), ValueError, r"x must be 4-D \(N, C, H, W\)"),
    ("x-N0", dict(x=_t(0, 3, 5, 6)), ValueError, r"x must not be empty, got shape \(0, 3, 5, 6\)"),
    ("x-C0", dict(x=_t(2, 0, 5, 6), running_mean=None, running_var=None, weight=None, bias=None), ValueError,
     r"x must not be empty"),
    ("x-W0", dict(x=_t(2, 3, 5, 0)), ValueError, r"x must not be empty"),
    ("pool-3", dict(pool=3), ValueError, r"pool must be 1 or 2, got 3"),
    ("pool-0", dict(pool=0), ValueError, r"pool must be 1 or 2, got 0"),
    ("pool-True", dict(pool=True), TypeError, r"pool must be an int \(1 or 2\), got bool"),
    ("pool-float", dict(pool=2.0), TypeError, r"pool must be an int \(1 or 2\), got float"),
    ("H-below-pool", dict(x=_t(2, 3, 1, 6)), ValueError, r"x's H and W must be >= pool = 2, got shape \(2, 3, 1, 6\)"),
    ("W-below-pool", dict(x=_t(2, 3, 4, 1)), ValueError, r"x's H and W must be >= pool = 2"),
    ("weight-shape", dict(weight=_t(4)), ValueError,
     r"weight must be \(C,\) = \(3,\) like x's channels, got shape \(4,\)"),
    ("weight-2d", dict(weight=_t(3, 1)), ValueError, r"weight must be \(C,\) = \(3,\)"),
    ("bias-shape", dict(bias=_t(2)), ValueError, r"bias must be \(C,\) = \(3,\)"),
    ("running_mean-shape", dict(running_mean=_t(4)), ValueError, r"running_mean must be \(C,\) = \(3,\)"),
    ("running_var-shape", dict(running_var=_t(1)), ValueError, r"running_var must be \(C,\) = \(3,\)"),
    ("eval-no-running", dict(training=False, running_mean=None, running_var=None), ValueError,
     r"running_mean and running_var are required when training is False"),
    ("only-running_mean", dict(running_var=None), ValueError,
     r"running_mean and running_var must be given together"),
    ("only-running_var", dict(running_mean=None), ValueError,
     r"running_mean and running_var must be given together"),
    ("only-one-eval", dict(training=False, running_mean=None), ValueError,
     r"running_mean and running_var must be given together"),
    ("eps-0", dict(eps=0.0), ValueError, r"eps must be > 0, got 0.0"),
    ("eps-negative", dict(eps=-1e-5), ValueError, r"eps must be > 0"),
    ("eps-nan", dict(eps=math.nan), ValueError, r"eps must be > 0, got nan"),
    ("momentum-negative", dict(momentum=-0.1), ValueError, r"momentum must be in \[0, 1\], got -0.1"),
    ("momentum-above-1", dict(momentum=1.5), ValueError, r"momentum must be in \[0, 1\], got 1.5"),
    ("momentum-nan", dict(momentum=math.nan), ValueError, r"momentum must be in \[0, 1\]"),
    ("one-value-per-channel", dict(x=_t(1, 3, 1, 1), pool=1), ValueError,
     r"x must have more than one value per channel when training, got shape \(1, 3, 1, 1\)"),
    ("weight-meta", dict(weight=_t(3).to("meta")), ValueError,
     r"weight is on meta but x is on (cpu|cuda\S*); all tensors must be on one device"),
    ("running_var-meta", dict(running_var=_t(3).to("meta")), ValueError,
     r"running_var is on meta but x is on (cpu|cuda\S*)"),
]

BAD_TYPES = [
    ("x-int", dict(x=_t(2, 3, 5, 6, dtype=torch.int32)), r"x must be float32, float64, float16 or bfloat16, "
                                                          r"got torch.int32"),
    ("x-bool", dict(x=_t(2, 3, 5, 6, dtype=torch.bool)), r"x must be float32, float64, float16 or bfloat16"),
    ("x-complex", dict(x=_t(2, 3, 5, 6, dtype=torch.complex64)), r"x must be float32, float64, float16 or bfloat16"),
    ("x-list", dict(x=[[[[1.0, 2.0]]]]), r"x must be a torch.Tensor, got list"),
    ("weight-int", dict(weight=_t(3, dtype=torch.int64)), r"weight must be a float tensor, got torch.int64"),
    ("bias-bool", dict(bias=_t(3, dtype=torch.bool)), r"bias must be a float tensor, got torch.bool"),
    ("running_mean-list", dict(running_mean=[0.0, 0.0, 0.0]), r"running_mean must be a torch.Tensor or None, got list"),
    ("running_var-int", dict(running_var=_t(3, dtype=torch.int32)), r"running_var must be a float tensor"),
]

# A float dtype torch's batch_norm does not take next to x's: the (C,) tensors share one dtype,
# x's or (for a 16-bit x) float32. A dtype problem: TypeError, naming the tensor.
BAD_MIXES = [
    ("weight-fp64", dict(weight=_t(3, dtype=torch.float64)), "weight"),
    ("bias-fp16", dict(bias=_t(3, dtype=torch.float16)), "bias"),
    ("running_mean-fp64", dict(running_mean=torch.zeros(3, dtype=torch.float64)), "running_mean"),
    ("running_var-bf16-eval", dict(running_var=_t(3, dtype=torch.bfloat16), training=False), "running_var"),
]


def _call(target, args):
    return batch_norm_relu(**{k: (v.to(target.device) if isinstance(v, torch.Tensor) and v.device.type != "meta"
                                  else v) for k, v in args.items()}, backend=target.backend)


@pytest.mark.parametrize("name,over,error,match", PUBLIC_BAD, ids=[c[0] for c in PUBLIC_BAD])
def test_public_bad_value(any_target, name, over, error, match):
    with pytest.raises(error, match=match):
        _call(any_target, _good(**over))


@pytest.mark.parametrize("name,over,match", BAD_TYPES, ids=[c[0] for c in BAD_TYPES])
def test_public_bad_type(any_target, name, over, match):
    with pytest.raises(TypeError, match=match):
        _call(any_target, _good(**over))


@pytest.mark.parametrize("name,over,arg", BAD_MIXES, ids=[c[0] for c in BAD_MIXES])
def test_public_bad_dtype_mix(any_target, name, over, arg):
    with pytest.raises(TypeError, match=rf"batch_norm_relu: .*\b{arg}\b"):
        _call(any_target, _good(**over))


def test_nothing_is_updated_by_a_refused_call(any_target):
    """A call refused for a bad argument leaves the running statistics as they were."""
    args = _good(momentum=1.5)
    before = args["running_mean"].clone(), args["running_var"].clone()
    with pytest.raises(ValueError):
        _call(any_target, args)
    assert torch.equal(args["running_mean"], before[0]) and torch.equal(args["running_var"], before[1])


def test_unknown_and_unavailable_backend():
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        batch_norm_relu(**_good(), backend="fastest")
    with pytest.raises(_backends.BackendUnavailableError, match=r"batch_norm_relu: backend 'cuda' is unavailable"):
        batch_norm_relu(**_good(), backend="cuda")


# ----------------------------------------------------------------------------------------------
# The raw C++ ops check their own arguments with the same exception types
# ----------------------------------------------------------------------------------------------
def _raw_args(device, channels_last=False):
    a = _good(device)
    x = a["x"].contiguous(memory_format=torch.channels_last) if channels_last else a["x"]
    return [x, a["weight"], a["bias"], a["running_mean"], a["running_var"], True, 1e-5, 2]


# (id, argument index, change, exception, fragment the message must hold)
RAW_FWD_BAD = [
    ("x-rank", 0, lambda a: a[0][0], ValueError, r"x must be 4-D"),
    ("x-int", 0, lambda a: a[0].to(torch.int32), TypeError, r"x must be Float"),
    ("x-fp64", 0, lambda a: a[0].double(), TypeError, r"x must be Float, got Double"),
    ("x-fp16", 0, lambda a: a[0].half(), TypeError, r"x must be Float"),
    ("x-empty", 0, lambda a: a[0][:0], ValueError, r"x must not be empty"),
    ("x-H-below-pool", 0, lambda a: a[0][:, :, :1].contiguous(), ValueError, r"x's H and W must be >= pool = 2"),
    ("x-strided", 0, lambda a: a[0].transpose(2, 3).contiguous().transpose(2, 3), ValueError,
     r"x must be contiguous in NCHW or channels_last layout"),
    ("x-sliced", 0, lambda a: a[0][..., ::2], ValueError, r"x must be contiguous in NCHW or channels_last"),
    ("weight-shape", 1, lambda a: a[1][:-1].contiguous(), ValueError, r"weight must have shape"),
    ("weight-dtype", 1, lambda a: a[1].double(), TypeError, r"weight must be"),
    ("bias-shape", 2, lambda a: torch.zeros(4, device=a[2].device), ValueError, r"bias must have shape"),
    ("bias-dtype", 2, lambda a: a[2].half(), TypeError, r"bias must be"),
    ("pool-3", 7, lambda a: 3, ValueError, r"pool must be 1 or 2, got 3"),
    ("eps-0", 6, lambda a: 0.0, ValueError, r"eps must be > 0"),
]


@pytest.mark.parametrize("name,index,change,error,fragment", RAW_FWD_BAD, ids=[c[0] for c in RAW_FWD_BAD])
def test_raw_forward_rejects_bad_arguments(cxx_target, name, index, change, error, fragment):
    args = _raw_args(cxx_target.device)
    args[index] = change(args)
    with pytest.raises(error, match=rf"batch_norm_relu_fwd \({cxx_target.backend}\): {fragment}"):
        torch.ops.pyneuro.batch_norm_relu_fwd(*args)


RAW_EVAL_BAD = [
    ("running_mean-missing", 3, lambda a: None, ValueError, r"running_mean is required when training is false"),
    ("running_var-missing", 4, lambda a: None, ValueError, r"running_var is required when training is false"),
    ("running_mean-shape", 3, lambda a: a[3][:-1].contiguous(), ValueError, r"running_mean must have shape"),
    ("running_var-dtype", 4, lambda a: a[4].double(), TypeError, r"running_var must be"),
]


@pytest.mark.parametrize("name,index,change,error,fragment", RAW_EVAL_BAD, ids=[c[0] for c in RAW_EVAL_BAD])
def test_raw_forward_eval_needs_running_statistics(cxx_target, name, index, change, error, fragment):
    args = _raw_args(cxx_target.device)
    args[5] = False
    args[index] = change(args)
    with pytest.raises(error, match=fragment):
        torch.ops.pyneuro.batch_norm_relu_fwd(*args)


def test_raw_forward_training_needs_two_values_per_channel(cxx_target):
    args = _raw_args(cxx_target.device)
    args[0], args[7] = torch.ones(1, 3, 1, 1, device=cxx_target.device), 1
    with pytest.raises(ValueError, match="x must have more than one value per channel when training"):
        torch.ops.pyneuro.batch_norm_relu_fwd(*args)


# (id, which backward argument, change, exception, fragment); x channels_last for the layout one
RAW_BWD_BAD = [
    ("dout-shape", "dout", lambda t: t[:, :, :-1].contiguous(), ValueError, r"dout must have shape"),
    ("dout-dtype", "dout", lambda t: t.double(), TypeError, r"dout must be Float"),
    ("dout-layout", "dout", lambda t: t.contiguous(), ValueError, r"dout must be contiguous in x's layout "
                                                                    r"\(channels_last\)"),
    ("mean-shape", "mean", lambda t: t[:-1].contiguous(), ValueError, r"mean must have shape"),
    ("var-dtype", "var", lambda t: t.half(), TypeError, r"var must be"),
    ("weight-shape", "weight", lambda t: t[:-1].contiguous(), ValueError, r"weight must have shape"),
]


@pytest.mark.parametrize("name,which,change,error,fragment", RAW_BWD_BAD, ids=[c[0] for c in RAW_BWD_BAD])
def test_raw_backward_rejects_bad_arguments(cxx_target, name, which, change, error, fragment):
    x, w, b, rm, rv, training, eps, pool = _raw_args(cxx_target.device, channels_last=True)
    out, mean, var = torch.ops.pyneuro.batch_norm_relu_fwd(x, w, b, rm, rv, training, eps, pool)
    bwd = dict(dout=torch.randn_like(out), x=x, weight=w, bias=b, mean=mean, var=var)
    assert bwd["dout"].is_contiguous(memory_format=torch.channels_last) and not bwd["dout"].is_contiguous()
    bwd[which] = change(bwd[which])
    with pytest.raises(error, match=rf"batch_norm_relu_bwd \({cxx_target.backend}\): {fragment}"):
        torch.ops.pyneuro.batch_norm_relu_bwd(*bwd.values(), training, eps, pool)
