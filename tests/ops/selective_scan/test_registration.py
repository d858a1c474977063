"""The dispatcher side of selective scan: opcheck on every compiled op, torch.compile through the
public function, and how ``auto`` chooses (with its fallbacks and the first-use self-check)."""
from __future__ import annotations

import pytest
import torch

import pyneuro.ops.scan as scan
from pyneuro import _backends
from pyneuro.ops.scan import selective_scan
from scan_cases import GRAD_NAMES, Target, adjoint_fp64, assert_matches, contract_args, interpreted, make_inputs, run


def _raw_ops(target):
    if target.backend == "triton":
        return torch.ops.pyneuro.selective_scan_fwd_triton.default, torch.ops.pyneuro.selective_scan_bwd_triton.default
    return torch.ops.pyneuro.selective_scan_fwd.default, torch.ops.pyneuro.selective_scan_bwd.default


OPCHECK_CASES = {
    "all-options": (dict(batch=2, dim=4, L=20, N=5, B_kind="var", C_kind=2), True),
    "bare": (dict(batch=1, dim=3, L=9, N=3, B_kind="const", D=False, z=False, bias=False, x0=False,
                  softplus=False), False),
    "bf16": (dict(batch=2, dim=2, L=11, N=4, B_kind=1, C_kind="const", dtype=torch.bfloat16), True),
}


@pytest.mark.parametrize("case", list(OPCHECK_CASES))
def test_opcheck(target, case):
    """Schema, fake (meta) shapes, autograd registration and dispatch of both ops."""
    spec, softplus = OPCHECK_CASES[case]
    if interpreted(target):  # opcheck runs the op a dozen times; the interpreter is slow
        spec = dict(spec, L=min(spec["L"], 9), dim=2, C_kind=1 if spec.get("C_kind") == 2 else spec.get("C_kind", "var"))
    inputs = make_inputs(**spec, device=target.device)[0]
    fwd, bwd = _raw_ops(target)
    chunk = 8 if target.backend != "triton" else 4  # triton's chunk is a power of two
    args = contract_args({k: (v.clone().requires_grad_() if v is not None else None) for k, v in inputs.items()},
                         softplus, chunk)
    torch.library.opcheck(fwd, args)
    out, last, states = fwd(*args)
    plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in args[:9]]
    for dlast in (torch.randn_like(last), None):
        torch.library.opcheck(bwd, (torch.randn_like(out), dlast, *plain, states.detach(), softplus, chunk))


def _compile_check(target: Target, compiler: str):
    torch._dynamo.reset()
    inputs, _ = make_inputs(2, 4, 24, 5, B_kind="var", C_kind=2, device=target.device)

    def loss(*ts):
        out, last = selective_scan(**dict(zip(GRAD_NAMES, ts)), delta_softplus=True, return_last_state=True,
                                   backend=target.backend)
        return out.square().sum() + last.sum()

    leaves = [inputs[k].clone().requires_grad_() for k in GRAD_NAMES]
    expected = torch.autograd.grad(loss(*leaves), leaves)  # eager first: probes and self-check run here
    compiled = torch.compile(loss, backend=compiler, fullgraph=True)
    got = torch.autograd.grad(compiled(*leaves), leaves)
    for name, g, e in zip(GRAD_NAMES, got, expected):
        assert_matches(g, e, 1e-6, f"d{name}")


def test_torch_compile_smoke(any_target):
    # aot_eager traces the op through its fake + autograd registrations like inductor does, without
    # inductor's C++ code generation (~20 s on a 2-core machine); the slow test runs inductor.
    _compile_check(any_target, "aot_eager")


@pytest.mark.slow
def test_torch_compile_inductor(target):
    if target.backend == "triton" and target.device == "cpu":
        pytest.skip("inductor does not run interpreted Triton kernels on CPU tensors")
    _compile_check(target, "inductor")


# ----------------------------------------------------------------------------------------------
# Backend choice
# ----------------------------------------------------------------------------------------------
def _chosen(inputs, backend="auto"):
    i = inputs
    return scan.OP.select(backend, i["u"].device, i["u"], i["delta"], i["A"], i["B"], i["C"], i["D"], i["z"],
                          i["delta_bias"], i["initial_state"], True).name


def test_auto_prefers_the_compiled_cpu_backend():
    if scan.OP.status("cpu", torch.device("cpu")) is not None:
        pytest.skip(f"cpu backend: {scan.OP.status('cpu', torch.device('cpu'))}")
    inputs, cot = make_inputs(2, 3, 40, 8)
    assert _chosen(inputs) == "cpu"
    auto = run(Target("auto", "cpu"), inputs, True, cot["dout"], cot["dlast"])
    explicit = run(Target("cpu", "cpu"), inputs, True, cot["dout"], cot["dlast"])
    assert torch.equal(auto[0], explicit[0]) and torch.equal(auto[1], explicit[1])


@pytest.mark.parametrize("why", ["fp64", "N above the compiled limit"])
def test_auto_falls_back_to_the_reference(why):
    """What the compiled backends cannot take runs on the reference, and is right (against the
    explicit fp64 recurrence, which shares no code with the reference)."""
    if why == "fp64":
        inputs, cot = make_inputs(1, 2, 9, 4, dtype=torch.float64)
        inputs = {k: (v.double() if v is not None else None) for k, v in inputs.items()}
    else:
        inputs, cot = make_inputs(1, 2, 9, max(scan.LIMITS.get("cpu", {}).get("max_n", 256), 256) + 1)
    assert _chosen(inputs) == "reference"
    out, last, grads = run(Target("auto", "cpu"), inputs, True, cot["dout"], cot["dlast"])
    # The explicit fp64 recurrence, not naive.py (which is what the reference backend runs).
    out_ref, last_ref, grads_ref = adjoint_fp64(inputs, True, cot["dout"], cot["dlast"])
    tol = 1e-12 if why == "fp64" else 1e-5
    assert_matches(out, out_ref, tol, "out")
    assert_matches(last, last_ref, tol, "last_state")
    for name in grads_ref:
        assert_matches(grads[name], grads_ref[name], tol, f"d{name}")


def test_env_variable_names_the_backend(monkeypatch):
    inputs, _ = make_inputs(1, 2, 5, 4)
    monkeypatch.setenv("PYNEURO_BACKEND", "reference")
    assert _chosen(inputs) == "reference"
    if scan.OP.status("cpu", torch.device("cpu")) is None:
        assert _chosen(inputs, backend="cpu") == "cpu"  # an argument naming a backend wins over the variable
    monkeypatch.setenv("PYNEURO_BACKEND", "cuda")  # named: raises instead of falling back
    with pytest.raises(_backends.BackendUnavailableError, match="backend 'cuda' is unavailable"):
        _chosen(inputs)
    monkeypatch.setenv("PYNEURO_BACKEND", "fastest")
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        _chosen(inputs)


def test_explain_names_the_choice_and_the_reasons():
    rows = dict(scan.OP.explain(torch.device("cpu"), *scan.OP.example(N=4096)))
    assert rows["reference"] == "chosen"
    if scan.OP.status("cpu", torch.device("cpu")) is None:
        assert "exceeds the 'cpu' backend's limit" in rows["cpu"]
    assert "does not run on cpu tensors" in rows["cuda"]
    rows = dict(scan.OP.explain(torch.device("cpu"), *scan.OP.example(dtype=torch.float64)))
    assert rows["reference"] == "chosen"


# ----------------------------------------------------------------------------------------------
# First-use self-check (GPU backends): the op's check itself
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d)[6:])
def test_self_check_passes_a_correct_backend(target, dtype):
    assert scan._self_check(target.backend, torch.device(target.device), dtype) is None


def test_self_check_catches_a_wrong_gradient(monkeypatch):
    """A backend whose forward is right but whose backward is off by 1% fails the check."""
    real = scan.OP.backends["reference"].impl

    class ScaleGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return g * 1.01

    def broken(u, *rest):
        return real(ScaleGrad.apply(u), *rest)

    monkeypatch.setitem(scan.OP.backends, "cpu", _backends.Backend("cpu", ("cpu",), broken))
    failure = scan._self_check("cpu", torch.device("cpu"), torch.float32)
    assert failure is not None and failure.startswith("du differs from the reference")
