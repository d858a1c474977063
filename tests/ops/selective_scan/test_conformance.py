"""Every selective-scan backend, in every variant this machine runs, against the fp64 oracle:
forward, last state and every gradient, on a shape table with odd sizes, in fp32, bf16 and fp16;
plus closed forms that do not depend on naive.py at all."""
from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from pyneuro.ops.scan import selective_scan, selective_scan_naive
from scan_cases import DTYPES, GRAD_NAMES, assert_matches, interpreted, make_inputs, oracle, run

# L = 1, 7, 63, 65, 256, 2049 (2049 crosses every backend's chunk boundaries); N = 1, 16, 33, 64;
# odd dims, dim > 32 (CUDA channel tiles); variable, grouped and constant B/C; options on and off.
CASES = {
    "L1-N1-all": dict(batch=2, dim=3, L=1, N=1),
    "L7-N16-constC-noz": dict(batch=2, dim=5, L=7, N=16, C_kind="const", z=False),
    "L63-N64-constB-bare": dict(batch=2, dim=3, L=63, N=64, B_kind="const", D=False, bias=False, softplus=False,
                                x0=False),
    "L63-N1-constBC": dict(batch=1, dim=7, L=63, N=1, B_kind="const", C_kind="const", z=False, x0=False),
    "L65-N33-G3-nosoftplus": dict(batch=1, dim=12, L=65, N=33, B_kind=3, softplus=False, bias=False),
    "L70-N4-groups": dict(batch=1, dim=6, L=70, N=4, B_kind=3, C_kind=2),
    "L256-N16-groups": dict(batch=2, dim=6, L=256, N=16, B_kind=2, C_kind=3),
    "L300-N20-G4-40ch": dict(batch=2, dim=40, L=300, N=20, B_kind=4, softplus=False),
    "L2049-N16": dict(batch=1, dim=3, L=2049, N=16, C_kind=1),
}
# The Triton interpreter runs the scan's combine per element in Python: it takes these (chunk
# boundaries, groups, constant operands); a GPU runs the whole table.
INTERPRETER_CASES = ("L1-N1-all", "L7-N16-constC-noz", "L70-N4-groups")


@functools.lru_cache(maxsize=None)
def case_data(name, dtype):
    spec = dict(CASES[name])
    softplus = spec.get("softplus", True)
    inputs, cot = make_inputs(**spec, dtype=dtype)
    return inputs, cot, softplus, oracle(inputs, softplus, cot["dout"], cot["dlast"])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_oracle(target, case, dtype):
    if interpreted(target) and case not in INTERPRETER_CASES:
        pytest.skip("the Triton interpreter is too slow for this case on a CPU; a GPU runs it")
    inputs, cot, softplus, (out_ref, last_ref, grads_ref) = case_data(case, dtype)
    out, last, grads = run(target, inputs, softplus, cot["dout"], cot["dlast"])
    tol = target.tolerance(dtype)
    assert out.dtype == dtype and last.dtype == torch.float32
    assert_matches(out, out_ref, tol, "out")
    assert_matches(last, last_ref, target.tolerance(torch.float32), "last_state")  # fp32 state
    assert set(grads) == set(grads_ref)
    for name, g in grads.items():
        assert g.dtype == inputs[name].dtype, f"d{name} dtype {g.dtype} != {inputs[name].dtype}"
        # fp32 gradients (dA, dD, ...) of low-precision inputs sum rounded terms: the dtype's bound.
        assert_matches(g, grads_ref[name], tol, f"d{name}")


def test_gradient_from_last_state_only(target):
    """out unused: the backward gets a gradient only through last_state."""
    inputs, _ = make_inputs(2, 3, 70, 16, B_kind="var", C_kind="const", device=target.device)
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    _, last = selective_scan(**leaves, delta_softplus=True, return_last_state=True, backend=target.backend)
    grads = torch.autograd.grad(last.square().sum(), [leaves[k] for k in GRAD_NAMES], allow_unused=True)
    ref_leaves = {k: v.detach().double().cpu().requires_grad_() for k, v in inputs.items()}
    _, last_ref = selective_scan_naive(**ref_leaves, delta_softplus=True, return_last_state=True)
    ref = torch.autograd.grad(last_ref.square().sum(), [ref_leaves[k] for k in GRAD_NAMES], allow_unused=True)
    for name, g, r in zip(GRAD_NAMES, grads, ref):
        if r is None:  # C, D and z do not reach the state
            assert g is None or not g.any(), f"d{name} should be zero"
        else:
            assert_matches(g, r, target.tolerance(torch.float32), f"d{name}")


def test_double_backward_raises(target):
    """The compiled backward is not differentiable: say so instead of returning zeros."""
    inputs, _ = make_inputs(1, 2, 5, 3, device=target.device)
    u = inputs["u"].clone().requires_grad_()
    out = selective_scan(**{**inputs, "u": u}, delta_softplus=True, backend=target.backend)
    (du,) = torch.autograd.grad(out.square().sum(), [u], create_graph=True)
    with pytest.raises(RuntimeError, match="no double backward"):
        du.sum().backward()


def test_empty_sequence(any_target):
    """L = 0: out is empty, last_state is the initial state, and its gradient passes through."""
    inputs, _ = make_inputs(2, 3, 0, 4, device=any_target.device)
    x0 = inputs["initial_state"].clone().requires_grad_()
    out, last = selective_scan(**{**inputs, "initial_state": x0}, delta_softplus=True, return_last_state=True,
                               backend=any_target.backend)
    assert out.shape == (2, 3, 0)
    torch.testing.assert_close(last, inputs["initial_state"], atol=0, rtol=0)
    (g,) = torch.autograd.grad((last * 3).sum(), [x0])
    torch.testing.assert_close(g, torch.full_like(g, 3.0), atol=0, rtol=0)


def test_one_step_closed_form(any_target):
    """L = 1: x_1 = exp(dt A) x_0 + dt B u, out = (<x_1, C> + D u) silu(z), dt = softplus(delta + bias)."""
    inputs, _ = make_inputs(2, 5, 1, 16, B_kind=1, C_kind="const", device=any_target.device)
    out, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True, backend=any_target.backend)
    i = {k: v.double().cpu() for k, v in inputs.items()}
    dt = F.softplus(i["delta"] + i["delta_bias"][:, None])[..., 0]  # (batch, dim)
    x1 = (torch.exp(dt[..., None] * i["A"]) * i["initial_state"]
          + dt[..., None] * i["B"][:, 0, :, 0][:, None, :] * i["u"][..., 0, None])
    y = (x1 * i["C"]).sum(-1)
    expected = ((y + i["D"] * i["u"][..., 0]) * i["z"][..., 0] * torch.sigmoid(i["z"][..., 0]))[..., None]
    tol = any_target.tolerance(torch.float32)
    assert_matches(last, x1, tol, "last_state")
    assert_matches(out, expected, tol, "out")


def test_constant_input_converges_to_fixed_point(any_target):
    """Constant dt, B, u: x_t -> dt B u / (1 - exp(dt A)) (geometric series); A = -1, C = 1 gives y."""
    batch, dim, L, N = 1, 3, 400, 4
    dev = any_target.device
    u = torch.ones(batch, dim, L, device=dev)
    delta = torch.full((batch, dim, L), 0.1, device=dev)
    A = -torch.ones(dim, N, device=dev)
    B = torch.ones(dim, N, device=dev)
    out, last = selective_scan(u, delta, A, B, B, return_last_state=True, backend=any_target.backend)
    fixed = 0.1 / (1 - math.exp(-0.1))
    rtol = max(1e-5, any_target.tolerance(torch.float32))
    torch.testing.assert_close(last.cpu(), torch.full((batch, dim, N), fixed), rtol=rtol, atol=0)
    torch.testing.assert_close(out[..., -1].cpu(), torch.full((batch, dim), N * fixed), rtol=rtol, atol=0)


def test_long_sequence_against_fp64(target):
    """L = 16384: the fp32 state does not drift from the fp64 oracle (forward and gradients)."""
    if interpreted(target):
        pytest.skip("16384 steps take minutes in the Triton interpreter; a GPU runs this")
    inputs, cot = make_inputs(1, 2, 16384, 16, B_kind="var", C_kind="var", seed=3)
    out_ref, last_ref, ref = oracle(inputs, True, cot["dout"], cot["dlast"])
    out, last, grads = run(target, inputs, True, cot["dout"], cot["dlast"])
    tol = max(1e-5, target.tolerance(torch.float32))
    assert_matches(out, out_ref, tol, "out")
    assert_matches(last, last_ref, tol, "last_state")
    for name, g in grads.items():
        assert_matches(g, ref[name], tol, f"d{name}")


def test_strided_inputs_match_contiguous(target):
    """Transposed, strided and expanded (stride-0) inputs are read by value, not by their layout:
    the results are bitwise those of the same values laid out contiguously."""
    inputs, cot = make_inputs(2, 4, 33, 8, B_kind="var", C_kind="const", device=target.device)
    inputs["delta_bias"] = inputs["delta_bias"][:1].expand(4)  # stride 0
    strided = dict(inputs,
                   u=inputs["u"].transpose(1, 2).contiguous().transpose(1, 2),
                   delta=inputs["delta"].repeat_interleave(2, dim=2)[..., ::2],
                   A=inputs["A"].t().contiguous().t(),
                   B=inputs["B"].transpose(1, 2).contiguous().transpose(1, 2))
    assert not any(strided[k].is_contiguous() for k in ("u", "delta", "A", "B", "delta_bias"))
    contiguous = {k: (v.contiguous() if v is not None else None) for k, v in inputs.items()}
    kwargs = dict(delta_softplus=True, return_last_state=True, backend=target.backend)
    got, want = selective_scan(**strided, **kwargs), selective_scan(**contiguous, **kwargs)
    for a, b, what in zip(got, want, ("out", "last_state")):
        assert torch.equal(a, b), f"{what} depends on the input strides"
    grads = run(target, strided, True, cot["dout"], cot["dlast"])[2]  # clone keeps dense strides
    grads_ref = run(target, contiguous, True, cot["dout"], cot["dlast"])[2]
    for name in grads_ref:
        assert torch.equal(grads[name], grads_ref[name]), f"d{name} depends on the input strides"
