"""One error contract: each bad input gives the documented exception, naming the argument, on
every backend — through the public function (validated in Python before any kernel runs) and,
for the C++ backends, through the raw ops, whose own checks (csrc/common/selective_scan_args.h)
must raise the same types: ValueError for shapes and values, TypeError for dtypes."""
from __future__ import annotations

import pytest
import torch

from pyneuro import _backends
from pyneuro.ops.scan import max_n, selective_scan
from scan_cases import contract_args, make_inputs


def _good(device="cpu", **over):
    inputs, _ = make_inputs(2, 4, 6, 3, B_kind="var", C_kind="var", device=device)
    inputs.update({k: (v.to(device) if isinstance(v, torch.Tensor) and v.device.type != "meta" else v)
                   for k, v in over.items()})
    return inputs


BAD_SHAPES = [
    ("u-rank", dict(u=torch.randn(4, 6)), r"u must be 3-D \(batch, dim, L\)"),
    ("delta", dict(delta=torch.randn(2, 4, 7)), r"delta must have u's shape \(batch, dim, L\) = \(2, 4, 6\)"),
    ("z", dict(z=torch.randn(2, 3, 6)), r"z must have u's shape"),
    ("A-dim", dict(A=-torch.rand(5, 3)), r"A must be \(dim, N\) with dim = 4"),
    ("A-N0", dict(A=-torch.rand(4, 0)), r"A must be \(dim, N\) with dim = 4 and N >= 1"),
    ("B-L", dict(B=torch.randn(2, 3, 5)), r"variable B must be \(batch, N, L\) = \(2, 3, 6\)"),
    ("C-N", dict(C=torch.randn(2, 4, 6)), r"variable C must be \(batch, N, L\) = \(2, 3, 6\)"),
    ("B-const", dict(B=torch.randn(4, 2)), r"constant B must be \(dim, N\) = \(4, 3\)"),
    ("C-groups", dict(C=torch.randn(2, 3, 3, 6)), r"grouped C has G = 3 groups, which must divide dim = 4"),
    ("B-rank", dict(B=torch.randn(2, 1, 1, 3, 6)), r"B must be \(dim, N\), \(batch, N, L\) or \(batch, G, N, L\)"),
    ("D", dict(D=torch.randn(3)), r"D must be \(dim,\) = \(4,\)"),
    ("delta_bias", dict(delta_bias=torch.randn(4, 1)), r"delta_bias must be \(dim,\)"),
    ("initial_state", dict(initial_state=torch.randn(2, 4, 4)), r"initial_state must be \(batch, dim, N\) = \(2, 4, 3\)"),
]

BAD_DTYPES = [
    ("A-fp16", dict(A=-torch.rand(4, 3).half()), r"A must be float32, got torch.float16"),
    ("A-complex", dict(A=torch.complex(-torch.rand(4, 3), torch.rand(4, 3))), r"A must be real float32; complex A"),
    ("A-fp64", dict(A=-torch.rand(4, 3, dtype=torch.float64)), r"A must be float32, got torch.float64"),
    ("D-bf16", dict(D=torch.randn(4).bfloat16()), r"D must be float32, got torch.bfloat16"),
    ("delta_bias-fp16", dict(delta_bias=torch.randn(4).half()), r"delta_bias must be float32"),
    ("initial_state-fp64", dict(initial_state=torch.randn(2, 4, 3, dtype=torch.float64)), r"initial_state must be float32"),
    ("delta-bf16", dict(delta=torch.randn(2, 4, 6).bfloat16()), r"delta must have u's dtype torch.float32"),
    ("B-var-bf16", dict(B=torch.randn(2, 3, 6).bfloat16()), r"variable B must have u's dtype torch.float32"),
    ("u-int", dict(u=torch.ones(2, 4, 6, dtype=torch.int32)), r"u must be float32, float16 or bfloat16"),
    ("u-list", dict(u=[[1.0]]), r"u must be a torch.Tensor, got list"),
    ("C-none", dict(C=None), r"C is required, got None"),
]


@pytest.mark.parametrize("name,over,message", BAD_SHAPES, ids=[c[0] for c in BAD_SHAPES])
def test_bad_shapes(any_target, name, over, message):
    with pytest.raises(ValueError, match=message):
        selective_scan(**_good(any_target.device, **over), backend=any_target.backend)


@pytest.mark.parametrize("name,over,message", BAD_DTYPES, ids=[c[0] for c in BAD_DTYPES])
def test_bad_dtypes(any_target, name, over, message):
    with pytest.raises(TypeError, match=message):
        selective_scan(**_good(any_target.device, **over), backend=any_target.backend)


@pytest.mark.parametrize("arg", ["delta", "A", "B", "D", "initial_state"])
def test_mixed_devices(any_target, arg):
    inputs = _good(any_target.device)
    inputs[arg] = inputs[arg].to("meta")
    with pytest.raises(ValueError, match=rf"{arg} is on meta but u is on {any_target.device}"):
        selective_scan(**inputs, backend=any_target.backend)


def test_N_above_the_backend_limit(target):
    N = max_n(target.backend) + 1
    inputs, _ = make_inputs(1, 2, 3, N, device=target.device)
    with pytest.raises(ValueError, match=rf"N = {N} \(A.shape\[1\]\) exceeds the '{target.backend}' backend's "
                                         rf"limit of {N - 1}"):
        selective_scan(**inputs, backend=target.backend)


def test_fp64_needs_the_reference(target):
    inputs, _ = make_inputs(1, 2, 3, 4, dtype=torch.float64, device=target.device)
    inputs = {k: (v.double() if v is not None else None) for k, v in inputs.items()}
    with pytest.raises(TypeError, match=rf"the '{target.backend}' backend takes float32, float16 or bfloat16"):
        selective_scan(**inputs, backend=target.backend)


def test_unavailable_backend_raises_with_reason():
    with pytest.raises(_backends.BackendUnavailableError, match="selective_scan: backend 'cuda' is unavailable: "):
        selective_scan(**_good(), backend="cuda")  # cpu tensors: the cuda backend never takes them


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        selective_scan(**_good(), backend="fast")


# ----------------------------------------------------------------------------------------------
# The raw C++ ops check their own arguments with the same exception types
# ----------------------------------------------------------------------------------------------
# (argument index in the contract's forward, replacement, exception, fragment the message names)
RAW_BAD = [
    ("u-rank", 0, lambda a: a[0][0], ValueError, "u"),
    ("u-int", 0, lambda a: a[0].to(torch.int32), TypeError, "u"),
    ("delta-shape", 1, lambda a: a[1][..., :-1].contiguous(), ValueError, "delta"),
    ("delta-dtype", 1, lambda a: a[1].half(), TypeError, "delta"),
    ("delta-strided", 1, lambda a: a[1].transpose(0, 1).contiguous().transpose(0, 1), ValueError, "contiguous"),
    ("A-dtype", 2, lambda a: a[2].half(), TypeError, "A"),
    ("A-dim", 2, lambda a: a[2][:-1].contiguous(), ValueError, "A"),
    ("B-groups", 3, lambda a: torch.randn(2, 3, 3, 6, device=a[3].device), ValueError, "B"),
    ("C-dtype", 4, lambda a: a[4].double(), TypeError, "C"),
    ("D-shape", 5, lambda a: a[5][:-1].contiguous(), ValueError, "D"),
    ("initial_state-dtype", 8, lambda a: a[8].double(), TypeError, "initial_state"),
    ("chunk_size-0", 10, lambda a: 0, ValueError, "chunk_size"),
]


@pytest.mark.parametrize("name,index,change,error,fragment", RAW_BAD, ids=[c[0] for c in RAW_BAD])
def test_raw_op_rejects_bad_arguments(cxx_target, name, index, change, error, fragment):
    target = cxx_target  # the Triton wrappers run behind the public function's validation only
    args = list(contract_args(_good(target.device), True, 8))
    args[index] = change(args)
    with pytest.raises(error, match=fragment):
        torch.ops.pyneuro.selective_scan_fwd(*args)


def test_raw_op_rejects_N_above_its_limit(cxx_target):
    target = cxx_target
    N = max_n(target.backend) + 1
    inputs, _ = make_inputs(1, 2, 3, N, device=target.device)
    with pytest.raises(ValueError, match=rf"N.*{N}"):
        torch.ops.pyneuro.selective_scan_fwd(*contract_args(inputs, True, 8))


def test_raw_backward_rejects_wrong_chunk_states(cxx_target):
    target = cxx_target
    args = contract_args(_good(target.device), True, 8)
    out, last, states = torch.ops.pyneuro.selective_scan_fwd(*args)
    with pytest.raises(ValueError, match="chunk_states"):
        torch.ops.pyneuro.selective_scan_bwd(torch.randn_like(out), None, *args[:9], states[..., :2].contiguous(),
                                             True, 8)
    with pytest.raises(TypeError, match="dout"):
        torch.ops.pyneuro.selective_scan_bwd(torch.randn_like(out).double(), None, *args[:9], states, True, 8)
