"""pyneuro.ops.selective_scan: every available backend against naive.py in fp64, plus closed forms,
opcheck, torch.compile, determinism, long sequences and bad input.

Backends: ``reference`` (naive.py + autograd; checked against closed forms and an fp64 gradcheck,
since comparing naive with itself would prove nothing), ``cpu`` (pyneuro._C, when built) and
``triton`` (under TRITON_INTERPRET=1 on a CPU-only machine, which tests/conftest.py sets before
triton is imported; few and tiny shapes, the interpreter is slow).

Expected values: naive.py's forward in fp64, and gradients from an explicit fp64 reverse
recurrence (``adjoint_fp64``, itself checked against naive's autograd, which is too slow for the
whole table), both on the very inputs the backend saw (already rounded to bf16 where that is the
dtype), so the tolerances measure the backend, not the input rounding. Errors are normwise:
max |actual - expected| / max |expected| per tensor.
"""
from __future__ import annotations

import functools
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from pyneuro import _backends
from pyneuro.ops import selective_scan
from scan_inputs import make_inputs  # noqa: E402  (tests/ops/scan_inputs.py)
from pyneuro.ops.scan import selective_scan_naive

import pyneuro.ops.scan as ss  # noqa: E402

GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
# Normwise tolerances. fp32: the kernels keep fp32 state and use ~1-ulp polynomial exp/log; the
# observed errors on this table are below 1e-6 (cpu, triton). bf16: outputs and input gradients
# are rounded to bf16 (8 significant bits, relative 2^-8 = 3.9e-3); cpu stays below 3.3e-3,
# triton reaches 5.7e-3, so the bound is two roundings.
TOL = {torch.float32: 5e-6, torch.bfloat16: 8e-3}


# ----------------------------------------------------------------------------------------------
# Which backends run here
# ----------------------------------------------------------------------------------------------
def _triton_ready() -> str | None:
    """None when the triton backend can run in this process, else why not."""
    ok, reason = _backends.triton_status(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if not ok:
        return reason
    ok, reason = ss._triton_probe(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if not ok:
        return reason
    if not torch.cuda.is_available() and "triton" in sys.modules:
        import triton.language as tl  # Triton decided interpret-or-compile when it was imported
        if any(type(v).__name__ == "JITFunction" for v in vars(tl.standard).values()):
            return "triton was imported before TRITON_INTERPRET=1 was set (see tests/conftest.py)"
    return None


CPU_SKIP = ss._compiled_probe(torch.device("cpu"))[1]
TRITON_SKIP = _triton_ready()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

COMPILED = [
    pytest.param("cpu", marks=pytest.mark.skipif(CPU_SKIP is not None, reason=f"cpu backend: {CPU_SKIP}")),
    pytest.param("triton", marks=[pytest.mark.triton,
                                  pytest.mark.skipif(TRITON_SKIP is not None, reason=f"triton backend: {TRITON_SKIP}")]),
]
if torch.cuda.is_available():
    COMPILED.append(pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
        ss._compiled_probe(torch.device("cuda"))[1] is not None, reason="cuda backend not built")]))
CPU_ONLY = pytest.mark.skipif(CPU_SKIP is not None, reason=f"cpu backend: {CPU_SKIP}")


def device_for(backend):
    """Where a backend's inputs live: the GPU when there is one, except for the cpu backend."""
    return "cpu" if backend == "cpu" else DEVICE


@pytest.fixture(autouse=True)
def _no_backend_override(monkeypatch):
    monkeypatch.delenv("PYNEURO_BACKEND", raising=False)


# ----------------------------------------------------------------------------------------------
# Inputs and the fp64 truth
# ----------------------------------------------------------------------------------------------
def naive_fp64(inputs, softplus, dout, dlast):
    """naive.py in fp64 on the given (already rounded) inputs: out, last and the gradients of
    <out, dout> + <last, dlast>."""
    leaves = {k: (v.detach().double().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    out, last = selective_scan_naive(**leaves, delta_softplus=softplus, return_last_state=True)
    loss = (out * dout.double()).sum() + (last * dlast.double()).sum()
    grads = torch.autograd.grad(loss, [leaves[k] for k in GRAD_NAMES if leaves[k] is not None])
    names = [k for k in GRAD_NAMES if leaves[k] is not None]
    return out.detach(), last.detach(), dict(zip(names, grads))


def run_backend(inputs, softplus, dout, dlast, backend):
    leaves = {k: (v.detach().clone().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    out, last = selective_scan(**leaves, delta_softplus=softplus, return_last_state=True, backend=backend)
    loss = (out.float() * dout).sum() + (last * dlast).sum()
    names = [k for k in GRAD_NAMES if leaves[k] is not None]
    grads = torch.autograd.grad(loss, [leaves[k] for k in names])
    return out.detach(), last.detach(), dict(zip(names, grads))


def normwise_error(actual, expected):
    expected = expected.detach().double().cpu()
    scale = expected.abs().max().item() if expected.numel() else 0.0
    err = (actual.detach().double().cpu() - expected).abs().max().item() if expected.numel() else 0.0
    return err / scale if scale > 0 else err


def assert_matches(actual, expected, tol, what):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = normwise_error(actual, expected)
    assert err <= tol, f"{what}: normwise error {err:.3g} > {tol:.3g}"


# The shape table: L = 1, 7, 63, 256, 2049 (2049 crosses chunk boundaries of every backend),
# N = 1, 16, 64, odd dims; variable, grouped and constant B/C; options on and off.
CASES = {
    "L1-N1-all": dict(batch=2, dim=3, L=1, N=1, B_kind="var", C_kind="var"),
    "L7-N16-constC-noz": dict(batch=2, dim=5, L=7, N=16, B_kind="var", C_kind="const", z=False),
    "L63-N64-constB-bare": dict(batch=2, dim=3, L=63, N=64, B_kind="const", C_kind="var", D=False, bias=False,
                                softplus=False, x0=False),
    "L63-N1-constBC": dict(batch=1, dim=7, L=63, N=1, B_kind="const", C_kind="const", z=False, x0=False),
    "L256-N16-groups": dict(batch=2, dim=6, L=256, N=16, B_kind=2, C_kind=3),
    "L256-N64-G2-nosoftplus": dict(batch=1, dim=6, L=256, N=64, B_kind=2, C_kind="var", softplus=False, bias=True),
    "L2049-N16": dict(batch=1, dim=3, L=2049, N=16, B_kind="var", C_kind=1),
    "L70-N4-groups": dict(batch=1, dim=6, L=70, N=4, B_kind=3, C_kind=2),  # crosses triton's 64-step chunk
}
# Triton under the interpreter runs its scan's combine per element in Python: keep it to these.
TRITON_CASES = ("L1-N1-all", "L7-N16-constC-noz", "L70-N4-groups")


@functools.lru_cache(maxsize=None)
def case_data(name, dtype):
    spec = dict(CASES[name])
    softplus = spec.get("softplus", True)
    inputs, cot = make_inputs(**spec, dtype=dtype)
    return inputs, cot, softplus, reference_fp64(inputs, softplus, cot["dout"], cot["dlast"])


def _table_params():
    """(backend, case, dtype) for every compiled backend; triton gets TRITON_CASES only."""
    out = []
    for backend in COMPILED:
        name = backend.values[0]
        for case in CASES:
            if name == "triton" and case not in TRITON_CASES:
                continue
            for dtype in (torch.float32, torch.bfloat16):
                out.append(pytest.param(name, case, dtype, marks=backend.marks,
                                        id=f"{name}-{case}-{str(dtype)[6:]}"))
    return out


# ----------------------------------------------------------------------------------------------
# Compiled backends against naive (fp64)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend,case,dtype", _table_params())
def test_backend_matches_naive(backend, case, dtype):
    inputs, cot, softplus, (out_ref, last_ref, grads_ref) = case_data(case, dtype)
    dev = lambda d: {k: (v.to(device_for(backend)) if v is not None else None) for k, v in d.items()}  # noqa: E731
    cot_d = dev(cot)
    out, last, grads = run_backend(dev(inputs), softplus, cot_d["dout"], cot_d["dlast"], backend)
    tol = TOL[dtype]
    assert out.dtype == dtype and last.dtype == torch.float32
    assert_matches(out, out_ref, tol, "out")
    assert_matches(last, last_ref, TOL[torch.float32], "last_state")  # fp32 state whatever the dtype
    assert set(grads) == set(grads_ref)
    for name, g in grads.items():
        assert g.dtype == inputs[name].dtype, f"d{name} dtype {g.dtype} != {inputs[name].dtype}"
        assert_matches(g, grads_ref[name], tol, f"d{name}")


@pytest.mark.parametrize("backend", COMPILED)
def test_gradient_from_last_state_only(backend):
    """out unused: the backward gets a gradient only through last_state."""
    inputs, _ = make_inputs(2, 3, 70, 16, B_kind="var", C_kind="const", device=device_for(backend))
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    _, last = selective_scan(**leaves, delta_softplus=True, return_last_state=True, backend=backend)
    names = list(GRAD_NAMES)
    grads = torch.autograd.grad(last.square().sum(), [leaves[k] for k in names], allow_unused=True)
    ref_leaves = {k: v.detach().double().requires_grad_() for k, v in inputs.items()}
    _, last_ref = selective_scan_naive(**ref_leaves, delta_softplus=True, return_last_state=True)
    ref = torch.autograd.grad(last_ref.square().sum(), [ref_leaves[k] for k in names], allow_unused=True)
    for name, g, r in zip(names, grads, ref):
        if r is None:  # C, D and z do not reach the state
            assert g is None or not g.any(), f"d{name} should be zero"
        else:
            assert_matches(g, r, TOL[torch.float32], f"d{name}")


@pytest.mark.parametrize("backend", COMPILED)
def test_double_backward_raises(backend):
    """The compiled backward is not differentiable: say so instead of returning zeros."""
    inputs, _ = make_inputs(1, 2, 5, 3, device=device_for(backend))
    u = inputs["u"].clone().requires_grad_()
    out = selective_scan(**{**inputs, "u": u}, delta_softplus=True, backend=backend)
    (du,) = torch.autograd.grad(out.square().sum(), [u], create_graph=True)
    with pytest.raises(RuntimeError, match="no double backward"):
        du.sum().backward()


@pytest.mark.parametrize("backend", COMPILED)
def test_empty_sequence(backend):
    """L = 0: out is empty, last_state is the initial state, and its gradient passes through."""
    inputs, _ = make_inputs(2, 3, 0, 4, device=device_for(backend))
    x0 = inputs["initial_state"].clone().requires_grad_()
    out, last = selective_scan(**{**inputs, "initial_state": x0}, delta_softplus=True, return_last_state=True,
                               backend=backend)
    assert out.shape == (2, 3, 0)
    torch.testing.assert_close(last, inputs["initial_state"], atol=0, rtol=0)
    (g,) = torch.autograd.grad((last * 3).sum(), [x0])
    torch.testing.assert_close(g, torch.full_like(g, 3.0), atol=0, rtol=0)


# ----------------------------------------------------------------------------------------------
# Closed forms (independent of naive.py): every backend, including the reference
# ----------------------------------------------------------------------------------------------
ALL_BACKENDS = [pytest.param("reference")] + COMPILED


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_one_step_closed_form(backend):
    """L = 1: x_1 = exp(dt A) x_0 + dt B u, out = (<x_1, C> + D u) silu(z), dt = softplus(delta + bias)."""
    inputs, _ = make_inputs(2, 5, 1, 16, B_kind=1, C_kind="const", device=device_for(backend))
    out, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True, backend=backend)
    i = {k: v.double().cpu() for k, v in inputs.items()}
    dt = F.softplus(i["delta"] + i["delta_bias"][:, None])[..., 0]  # (batch, dim)
    x1 = (torch.exp(dt[..., None] * i["A"]) * i["initial_state"]
          + dt[..., None] * i["B"][:, 0, :, 0][:, None, :] * i["u"][..., 0, None])
    y = (x1 * i["C"]).sum(-1)
    expected = ((y + i["D"] * i["u"][..., 0]) * i["z"][..., 0] * torch.sigmoid(i["z"][..., 0]))[..., None]
    assert_matches(last, x1, 1e-6, "last_state")
    assert_matches(out, expected, 1e-6, "out")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_constant_input_converges_to_fixed_point(backend):
    """Constant dt, B, u: x_t -> dt B u / (1 - exp(dt A)) (geometric series); A = -1, C = 1 gives y."""
    batch, dim, L, N = 1, 3, 400, 4
    u = torch.ones(batch, dim, L, device=device_for(backend))
    delta = torch.full((batch, dim, L), 0.1, device=device_for(backend))
    A = -torch.ones(dim, N, device=device_for(backend))
    B = torch.ones(dim, N, device=device_for(backend))
    out, last = selective_scan(u, delta, A, B, B, return_last_state=True, backend=backend)
    fixed = 0.1 / (1 - math.exp(-0.1))
    torch.testing.assert_close(last.cpu(), torch.full((batch, dim, N), fixed), rtol=1e-5, atol=0)
    torch.testing.assert_close(out[..., -1].cpu(), torch.full((batch, dim), N * fixed), rtol=1e-5, atol=0)


def test_reference_gradcheck_fp64():
    """The reference in fp64 against finite differences (every input, both outputs)."""
    inputs, _ = make_inputs(1, 2, 5, 3, B_kind="var", C_kind=2, dtype=torch.float64)
    names = [k for k in GRAD_NAMES if inputs[k] is not None]
    leaves = [inputs[k].double().requires_grad_() for k in names]

    def f(*ts):
        return selective_scan(**dict(zip(names, ts)), delta_softplus=True, return_last_state=True,
                              backend="reference")

    assert torch.autograd.gradcheck(f, leaves)


# ----------------------------------------------------------------------------------------------
# Long sequences: the cpu backend against naive.py in fp64
# ----------------------------------------------------------------------------------------------
def adjoint_fp64(inputs, softplus, dout, dlast):
    """Gradients of <out, dout> + <last, dlast> by an explicit fp64 reverse recurrence.

    naive.py's autograd is the definition but is slow here (each step's B_t/C_t slice back-propagates
    into a full-size zero tensor, O(L^2): minutes at L = 2049 with every input requiring grad), so
    the table and the long-sequence check use this instead; test_adjoint_fp64 checks it against
    naive's autograd on every B/C layout and option."""
    i = {k: (v.double() if v is not None else None) for k, v in inputs.items()}
    u, A = i["u"], i["A"]
    batch, dim, L = u.shape

    def per_channel(M):  # (batch | 1, dim, N, L | 1)
        if M.dim() == 2:
            return M[None, :, :, None]
        return M[:, None] if M.dim() == 3 else M.repeat_interleave(dim // M.shape[1], dim=1)

    def at(M, t):
        return M[..., t if M.shape[-1] > 1 else 0]

    raw = i["delta"] + (i["delta_bias"][:, None] if i["delta_bias"] is not None else 0)
    dt = F.softplus(raw) if softplus else raw
    Bv, Cv = per_channel(i["B"]), per_channel(i["C"])
    x = i["initial_state"] if i["initial_state"] is not None else u.new_zeros(batch, dim, A.shape[1])
    xs = [x]
    for t in range(L):
        x = torch.exp(dt[..., t, None] * A) * x + (dt[..., t] * u[..., t])[..., None] * at(Bv, t)
        xs.append(x)
    y = torch.stack([(xs[t + 1] * at(Cv, t)).sum(-1) for t in range(L)], -1) if L else u.new_zeros(u.shape)
    z = i["z"]
    dy = dout.double() * (z * torch.sigmoid(z) if z is not None else 1)

    g = dlast.double().clone()
    d = {"u": torch.zeros_like(u), "A": torch.zeros_like(A)}
    N = A.shape[1]
    dB_full, dC_full = u.new_zeros(batch, dim, N, L), u.new_zeros(batch, dim, N, L)
    ddt = torch.zeros_like(dt)
    for t in reversed(range(L)):
        g = g + dy[..., t, None] * at(Cv, t)
        a = torch.exp(dt[..., t, None] * A)
        dC_full[..., t] = dy[..., t, None] * xs[t + 1]
        dB_full[..., t] = g * (dt[..., t] * u[..., t])[..., None]
        w = g * a * xs[t]  # gradient of the decay term, times the decay
        d["A"] += (w * dt[..., t, None]).sum(0)
        gB = (g * at(Bv, t)).sum(-1)
        d["u"][..., t] = dt[..., t] * gB + (i["D"] * dy[..., t] if i["D"] is not None else 0)
        ddt[..., t] = (w * A).sum(-1) + u[..., t] * gB
        g = g * a
    d["delta"] = ddt * torch.sigmoid(raw) if softplus else ddt
    for name, full in (("B", dB_full), ("C", dC_full)):  # sum over what B/C is shared across
        M = i[name]
        if M.dim() == 2:
            d[name] = full.sum((0, 3))
        else:
            G = M.shape[1] if M.dim() == 4 else 1
            d[name] = full.view(batch, G, dim // G, N, L).sum(2).view(M.shape)
    if i["D"] is not None:
        d["D"] = (dy * u).sum((0, 2))
    if i["delta_bias"] is not None:
        d["delta_bias"] = d["delta"].sum((0, 2))
    if z is not None:
        s = torch.sigmoid(z)
        Du = i["D"][:, None] * u if i["D"] is not None else 0
        d["z"] = dout.double() * (y + Du) * s * (1 + z * (1 - s))
    if i["initial_state"] is not None:
        d["initial_state"] = g
    return d


def reference_fp64(inputs, softplus, dout, dlast):
    """naive.py's out and last state in fp64 on the given (already rounded) inputs, and the fp64
    gradients of <out, dout> + <last, dlast>."""
    with torch.no_grad():
        out, last = selective_scan_naive(**{k: (v.double() if v is not None else None) for k, v in inputs.items()},
                                         delta_softplus=softplus, return_last_state=True)
    return out, last, adjoint_fp64(inputs, softplus, dout, dlast)


@pytest.mark.parametrize("B_kind,C_kind,options", [
    ("var", 2, dict()),
    ("const", "var", dict(D=False, z=False, bias=False, softplus=False, x0=False)),
    (1, "const", dict(z=False)),
])
def test_adjoint_fp64(B_kind, C_kind, options):
    """The explicit reverse recurrence used as the gradient reference agrees with naive's autograd."""
    inputs, cot = make_inputs(2, 4, 12, 5, B_kind=B_kind, C_kind=C_kind, **options)
    softplus = options.get("softplus", True)
    *_, ref = naive_fp64(inputs, softplus, cot["dout"], cot["dlast"])
    mine = adjoint_fp64(inputs, softplus, cot["dout"], cot["dlast"])
    assert set(mine) == set(ref)
    for name, r in ref.items():
        assert_matches(mine[name], r, 1e-12, f"d{name}")


@CPU_ONLY
def test_long_sequence_cpu_fp64_reference():
    """L = 16384: cpu (fp32 state) against naive.py in fp64 (forward, last state) and the fp64
    adjoint recurrence (gradients): the fp32 recurrence must not drift over long sequences."""
    inputs, cot = make_inputs(1, 2, 16384, 16, B_kind="var", C_kind="var", seed=3)
    out_ref, last_ref, ref = reference_fp64(inputs, True, cot["dout"], cot["dlast"])
    out, last, grads = run_backend(inputs, True, cot["dout"], cot["dlast"], "cpu")
    assert_matches(out, out_ref, 1e-5, "out")
    assert_matches(last, last_ref, 1e-5, "last_state")
    for name, g in grads.items():
        assert_matches(g, ref[name], 1e-5, f"d{name}")


# ----------------------------------------------------------------------------------------------
# Direct op calls: chunk sizes, opcheck, determinism
# ----------------------------------------------------------------------------------------------
def _contract_args(inputs, softplus, chunk_size):
    """Public inputs -> the contract's normalised forward arguments."""
    bc = lambda M: (M.unsqueeze(1) if M.dim() == 3 else M).contiguous()  # noqa: E731
    i = inputs
    return (i["u"], i["delta"], i["A"], bc(i["B"]), bc(i["C"]), i["D"], i["z"], i["delta_bias"],
            i["initial_state"], softplus, chunk_size)


@CPU_ONLY
@pytest.mark.parametrize("chunk_size", [1, 5, 16, 1000])
def test_cpu_chunk_sizes_agree(chunk_size):
    """The result does not depend on chunk_size (chunk_states are x_{k * chunk_size})."""
    inputs, cot = make_inputs(2, 6, 50, 16, B_kind=3, C_kind="var")
    fwd, bwd = torch.ops.pyneuro.selective_scan_fwd, torch.ops.pyneuro.selective_scan_bwd
    out, last, states = fwd(*_contract_args(inputs, True, chunk_size))
    out_ref, last_ref, grads_ref = reference_fp64(inputs, True, cot["dout"], cot["dlast"])
    assert states.shape == (2, 6, math.ceil(50 / chunk_size), 16)
    assert_matches(out, out_ref, TOL[torch.float32], "out")
    assert_matches(last, last_ref, TOL[torch.float32], "last_state")
    x0 = inputs["initial_state"].double()
    assert_matches(states[:, :, 0], x0, 0, "chunk_states[:, :, 0]")  # x_0 is the initial state
    args = _contract_args(inputs, True, chunk_size)
    grads = bwd(cot["dout"], cot["dlast"], *args[:9], states, True, chunk_size)
    for name, g in zip(GRAD_NAMES, grads):
        ref = grads_ref[name]
        assert_matches(g.view(ref.shape), ref, TOL[torch.float32], f"d{name}")


def _opcheck_cases():
    full = make_inputs(2, 4, 20, 5, B_kind="var", C_kind=2)[0]
    bare = make_inputs(1, 3, 9, 3, B_kind="const", C_kind="var", D=False, z=False, bias=False, x0=False,
                       softplus=False)[0]
    half = make_inputs(2, 2, 11, 4, B_kind=1, C_kind="const", dtype=torch.bfloat16)[0]
    return [pytest.param(full, True, id="all-options"), pytest.param(bare, False, id="bare"),
            pytest.param(half, True, id="bf16")]


@CPU_ONLY
@pytest.mark.parametrize("inputs,softplus", _opcheck_cases())
def test_opcheck_cpu(inputs, softplus):
    args = _contract_args({k: (v.clone().requires_grad_() if v is not None else None) for k, v in inputs.items()},
                          softplus, 8)
    torch.library.opcheck(torch.ops.pyneuro.selective_scan_fwd.default, args)
    out, last, states = torch.ops.pyneuro.selective_scan_fwd(*args)
    plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in args[:9]]
    for dlast in (torch.randn_like(last), None):
        bwd_args = (torch.randn_like(out), dlast, *plain, states.detach(), softplus, 8)
        torch.library.opcheck(torch.ops.pyneuro.selective_scan_bwd.default, bwd_args)


@pytest.mark.triton
@pytest.mark.skipif(TRITON_SKIP is not None, reason=f"triton backend: {TRITON_SKIP}")
def test_opcheck_triton():
    inputs = make_inputs(1, 4, 9, 4, B_kind="var", C_kind=2, device=device_for("triton"))[0]
    args = _contract_args({k: v.clone().requires_grad_() for k, v in inputs.items()}, True, 8)
    torch.library.opcheck(torch.ops.pyneuro.selective_scan_fwd_triton.default, args)
    out, last, states = torch.ops.pyneuro.selective_scan_fwd_triton(*args)
    plain = [a.detach() for a in args[:9]]
    torch.library.opcheck(torch.ops.pyneuro.selective_scan_bwd_triton.default,
                          (torch.randn_like(out), torch.randn_like(last), *plain, states.detach(), True, 8))


@pytest.mark.triton
@pytest.mark.skipif(TRITON_SKIP is not None, reason=f"triton backend: {TRITON_SKIP}")
def test_triton_chunk_size_matches_kernel_default():
    import pyneuro.kernels.selective_scan as kernels

    assert ss.chunk_size_for("triton") == kernels.DEFAULT_CHUNK_SIZE


@CPU_ONLY
@pytest.mark.parametrize("B_kind,C_kind,batch", [("var", 2, 2), ("const", 3, 16), (2, "const", 40)])
def test_cpu_backward_is_deterministic(B_kind, C_kind, batch):
    """Bitwise-identical gradients run to run and for 1 or 2 threads (fixed-order reductions;
    batch 2 splits the channels of a group over several tasks, batch 40 does not)."""
    inputs, cot = make_inputs(batch, 6, 300, 16, B_kind=B_kind, C_kind=C_kind)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (threads, threads, 1):
            torch.set_num_threads(n)
            results.append(run_backend(inputs, True, cot["dout"], cot["dlast"], "cpu"))
    finally:
        torch.set_num_threads(threads)
    first = results[0]
    for other in results[1:]:
        assert torch.equal(first[0], other[0]) and torch.equal(first[1], other[1])
        for name in first[2]:
            assert torch.equal(first[2][name], other[2][name]), f"d{name} differs between runs"


# ----------------------------------------------------------------------------------------------
# torch.compile through the public function
# ----------------------------------------------------------------------------------------------
def _compile_check(backend, compiler):
    torch._dynamo.reset()
    inputs, _ = make_inputs(2, 4, 24, 5, B_kind="var", C_kind=2, device=device_for(backend))
    names = list(GRAD_NAMES)

    def loss(*ts):
        out, last = selective_scan(**dict(zip(names, ts)), delta_softplus=True, return_last_state=True,
                                   backend=backend)
        return out.square().sum() + last.sum()

    leaves = [inputs[k].clone().requires_grad_() for k in names]
    compiled = torch.compile(loss, backend=compiler, fullgraph=True)
    got = torch.autograd.grad(compiled(*leaves), leaves)
    expected = torch.autograd.grad(loss(*leaves), leaves)
    for name, g, e in zip(names, got, expected):
        assert_matches(g, e, 1e-6, f"d{name}")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_torch_compile_smoke(backend):
    # aot_eager traces the op through its fake + autograd registrations like inductor does, without
    # inductor's C++ code generation (~20 s on this 2-core machine); see the slow test for inductor.
    _compile_check(backend, "aot_eager")


@pytest.mark.slow
@CPU_ONLY
def test_torch_compile_inductor_cpu():
    _compile_check("cpu", "inductor")


# ----------------------------------------------------------------------------------------------
# Backend choice
# ----------------------------------------------------------------------------------------------
@CPU_ONLY
def test_auto_uses_cpu_and_falls_back_quietly():
    assert _backends.choose("selective_scan", torch.device("cpu")) == "cpu"
    assert ss._resolve_backend("auto", torch.zeros(1, 1, 1, dtype=torch.float64), 4) == "reference"
    assert ss._resolve_backend("auto", torch.zeros(1, 1, 1), ss.MAX_N + 1) == "reference"
    inputs, _ = make_inputs(1, 2, 5, ss.MAX_N + 1)  # N beyond the kernels: auto runs the reference
    torch.testing.assert_close(selective_scan(**inputs, delta_softplus=True),
                               selective_scan_naive(**inputs, delta_softplus=True))


def test_env_override_names_a_backend(monkeypatch):
    monkeypatch.setenv("PYNEURO_BACKEND", "reference")
    assert ss._resolve_backend("auto", torch.zeros(1, 1, 1), 4) == "reference"


# ----------------------------------------------------------------------------------------------
# Bad input: the documented error, before any kernel runs
# ----------------------------------------------------------------------------------------------
def _good(**over):
    inputs, _ = make_inputs(2, 4, 6, 3, B_kind="var", C_kind="var")
    inputs.update(over)
    return inputs


BAD_SHAPES = [
    ("u-rank", dict(u=torch.randn(4, 6)), r"u must be 3-D \(batch, dim, L\)"),
    ("delta", dict(delta=torch.randn(2, 4, 7)), r"delta must have u's shape \(batch, dim, L\) = \(2, 4, 6\)"),
    ("z", dict(z=torch.randn(2, 3, 6)), r"z must have u's shape"),
    ("A-dim", dict(A=-torch.rand(5, 3)), r"A must be \(dim, N\) with dim = 4"),
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
]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("name,over,message", BAD_SHAPES, ids=[c[0] for c in BAD_SHAPES])
def test_bad_shapes(backend, name, over, message):
    with pytest.raises(ValueError, match=message):
        selective_scan(**_good(**over), backend=backend)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("name,over,message", BAD_DTYPES, ids=[c[0] for c in BAD_DTYPES])
def test_bad_dtypes(backend, name, over, message):
    with pytest.raises(TypeError, match=message):
        selective_scan(**_good(**over), backend=backend)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("arg", ["delta", "A", "B", "D", "initial_state"])
def test_mixed_devices(backend, arg):
    inputs = _good()
    inputs[arg] = inputs[arg].to("meta")
    with pytest.raises(ValueError, match=rf"{arg} is on meta but u is on cpu"):
        selective_scan(**inputs, backend=backend)


@pytest.mark.parametrize("backend", COMPILED)
def test_N_above_compiled_limit(backend):
    N = ss.MAX_N + 1
    inputs, _ = make_inputs(1, 2, 3, N, device=device_for(backend))
    with pytest.raises(ValueError, match=rf"N = {N} \(A.shape\[1\]\) exceeds the '{backend}' backend's limit of 256"):
        selective_scan(**inputs, backend=backend)


@pytest.mark.parametrize("backend", COMPILED)
def test_fp64_needs_the_reference(backend):
    inputs, _ = make_inputs(1, 2, 3, 4, dtype=torch.float64, device=device_for(backend))
    inputs = {k: (v.double() if v is not None else None) for k, v in inputs.items()}
    with pytest.raises(TypeError, match=rf"the '{backend}' backend takes float32, float16 or bfloat16"):
        selective_scan(**inputs, backend=backend)


def test_unavailable_backend_raises_with_reason():
    with pytest.raises(_backends.BackendUnavailableError, match="selective_scan: backend 'cuda' is unavailable"):
        selective_scan(**_good(), backend="cuda")  # cpu tensors: the cuda backend never takes them


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        selective_scan(**_good(), backend="fast")


@CPU_ONLY
def test_cpu_op_rejects_bad_arguments_without_crashing():
    """Direct op calls bypass the Python checks; the C++ side still refuses cleanly."""
    args = list(_contract_args(_good(), True, 8))
    with pytest.raises(RuntimeError, match="chunk_size must be positive"):
        torch.ops.pyneuro.selective_scan_fwd(*args[:-1], 0)
    bad = list(args)
    bad[2] = -torch.rand(4, 300)  # N = 300 > 256
    bad[3] = torch.randn(2, 1, 300, 6)
    bad[4] = torch.randn(2, 1, 300, 6)
    bad[8] = None
    with pytest.raises(RuntimeError, match=r"N = 300 is outside \[1, 256\]"):
        torch.ops.pyneuro.selective_scan_fwd(*bad)
    out, last, states = torch.ops.pyneuro.selective_scan_fwd(*args)
    with pytest.raises(RuntimeError, match="chunk_states must be float32"):
        torch.ops.pyneuro.selective_scan_bwd(torch.randn_like(out), None, *args[:9], states[..., :2], True, 8)
