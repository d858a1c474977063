"""The cuda backend of pyneuro.ops.selective_scan (csrc/cuda/selective_scan.cu) against naive.py.

Every test but the first needs a CUDA GPU and pyneuro._C built with CUDA (marked ``cuda``, skipped
with that reason otherwise). They cover what the shared table in test_selective_scan.py does not:
fp16, channel tiles (dim > 32, dim not a multiple of 32, groups narrower than a tile), N across the
16-row B/C staging blocks, L across the 64-step tiles, every chunk_size path of the raw ops,
bitwise determinism, the N limit and the glue's own input checks.

Expected values: naive.py's forward in fp64 and, for gradients, ``adjoint_fp64`` (an explicit fp64
reverse recurrence; naive's autograd is O(L^2) at L = 2049), which the first test checks against
naive's autograd. Both run on the very inputs the kernel saw (already rounded to fp16/bf16), so the
tolerances measure the kernel. Errors are normwise: max |actual - expected| / max |expected|.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pyneuro import _backends
from scan_inputs import make_inputs as _make_inputs
from pyneuro.ops import selective_scan
from pyneuro.ops.scan import selective_scan_naive

GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
SKIP_REASON = "needs a CUDA GPU and pyneuro._C built with CUDA"


def _cuda_backend_missing() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    ok, why = _backends.compiled_op_status("selective_scan_fwd", torch.device("cuda"))
    return None if ok else why


_MISSING = _cuda_backend_missing()


def needs_cuda(test):
    """Mark `cuda`; skip with the reason when there is no GPU or no CUDA build."""
    return pytest.mark.cuda(pytest.mark.skipif(_MISSING is not None, reason=f"{SKIP_REASON} ({_MISSING})")(test))


# Normwise tolerances. fp32: the kernel keeps fp32 state; exp is the MUFU ex2 (<= 2 ulp) and
# --use_fast_math makes silu/softplus's exp and divisions approximate too (a few ulp), and the
# errors of a compound over the recurrence's memory (up to ~1/(δ|A|) = 500 steps here).
# fp16/bf16: outputs and input gradients are rounded to the dtype (2^-11, 2^-8), two roundings.
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 8e-3}


# ----------------------------------------------------------------------------------------------
# Inputs and fp64 references
# ----------------------------------------------------------------------------------------------
def make_inputs(*args, **kwargs):
    """scan_inputs.make_inputs, with the cotangents unpacked: (inputs, dout, dlast)."""
    inputs, cotangents = _make_inputs(*args, **kwargs)
    return inputs, cotangents["dout"], cotangents["dlast"]


def adjoint_fp64(inputs, softplus, dout, dlast):
    """(out, last, grads) in fp64, gradients of <out, dout> + <last, dlast> by the reverse recurrence
    g_t = C_t dy_t + a_{t+1} g_{t+1} (g_L = dlast) written out step by step."""
    i = {k: (v.double() if v is not None else None) for k, v in inputs.items()}
    u, A, D, z = i["u"], i["A"], i["D"], i["z"]
    batch, dim, L = u.shape
    N = A.shape[1]

    def per_dim(M):  # (batch | 1, dim, N, L | 1)
        if M.dim() == 2:
            return M[None, :, :, None]
        return M[:, None] if M.dim() == 3 else M.repeat_interleave(dim // M.shape[1], dim=1)

    def at(M, t):
        return M[..., t if M.shape[-1] > 1 else 0]

    def reduce_like(full, M):  # (batch, dim, N, L) -> M's shape
        if M.dim() == 2:
            return full.sum((0, 3))
        if M.dim() == 3:
            return full.sum(1)
        G = M.shape[1]
        return full.view(batch, G, dim // G, N, L).sum(2)

    v = i["delta"] + (i["delta_bias"][:, None] if i["delta_bias"] is not None else 0)
    dt = F.softplus(v) if softplus else v
    Bd, Cd = per_dim(i["B"]), per_dim(i["C"])
    x = i["initial_state"] if i["initial_state"] is not None else u.new_zeros(batch, dim, N)
    xs = [x]
    for t in range(L):
        x = torch.exp(dt[..., t, None] * A) * x + (dt[..., t] * u[..., t])[..., None] * at(Bd, t)
        xs.append(x)
    y = torch.stack([(xs[t + 1] * at(Cd, t)).sum(-1) for t in range(L)], -1) if L else u.new_zeros(u.shape)
    pre = y + (D[:, None] * u if D is not None else 0)
    sz = torch.sigmoid(z) if z is not None else None
    out = pre * z * sz if z is not None else pre
    dout = dout.double()
    dy = dout * z * sz if z is not None else dout

    H = dlast.double().clone()
    dB_full, dC_full = u.new_zeros(batch, dim, N, L), u.new_zeros(batch, dim, N, L)
    du, ddt, dA = torch.zeros_like(u), torch.zeros_like(u), torch.zeros_like(A)
    for t in reversed(range(L)):
        a = torch.exp(dt[..., t, None] * A)
        g = dy[..., t, None] * at(Cd, t) + H  # dL/dx_t
        dC_full[..., t] = dy[..., t, None] * xs[t + 1]
        dB_full[..., t] = g * (dt[..., t] * u[..., t])[..., None]
        w = g * a * xs[t]
        dA += (w * dt[..., t, None]).sum(0)
        gB = (g * at(Bd, t)).sum(-1)
        du[..., t] = dt[..., t] * gB + (D * dy[..., t] if D is not None else 0)
        ddt[..., t] = (w * A).sum(-1) + u[..., t] * gB
        H = a * g
    ddelta = ddt * torch.sigmoid(v) if softplus else ddt
    grads = dict(u=du, delta=ddelta, A=dA, B=reduce_like(dB_full, i["B"]), C=reduce_like(dC_full, i["C"]))
    if D is not None:
        grads["D"] = (dy * u).sum((0, 2))
    if z is not None:
        grads["z"] = dout * pre * sz * (1 + z * (1 - sz))
    if i["delta_bias"] is not None:
        grads["delta_bias"] = ddelta.sum((0, 2))
    if i["initial_state"] is not None:
        grads["initial_state"] = H
    return out, xs[-1], grads


def normwise_error(actual, expected):
    expected = expected.detach().double().cpu()
    if expected.numel() == 0:
        return 0.0
    scale = expected.abs().max().item()
    err = (actual.detach().double().cpu() - expected).abs().max().item()
    return err / scale if scale > 0 else err


def assert_close(actual, expected, tol, what):
    assert tuple(actual.shape) == tuple(expected.shape), f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    err = normwise_error(actual, expected)
    assert err <= tol, f"{what}: normwise error {err:.3g} > {tol:.3g}"


def run_cuda(inputs, softplus, dout, dlast):
    """The public function on the cuda backend: out, last and the gradients of every input."""
    leaves = {k: (v.detach().cuda().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    out, last = selective_scan(**leaves, delta_softplus=softplus, return_last_state=True, backend="cuda")
    loss = (out.float() * dout.cuda()).sum() + (last * dlast.cuda()).sum()
    names = [k for k in GRAD_NAMES if leaves[k] is not None]
    grads = torch.autograd.grad(loss, [leaves[k] for k in names])
    return out.detach(), last.detach(), dict(zip(names, grads))


def contract_args(inputs, softplus, chunk_size):
    """Arguments of torch.ops.pyneuro.selective_scan_fwd (contract: variable B/C are 4-D)."""
    bc = lambda M: (M.unsqueeze(1) if M.dim() == 3 else M).contiguous()  # noqa: E731
    i = inputs
    return (i["u"], i["delta"], i["A"], bc(i["B"]), bc(i["C"]), i["D"], i["z"], i["delta_bias"],
            i["initial_state"], softplus, chunk_size)


# ----------------------------------------------------------------------------------------------
# The reference itself (CPU, runs everywhere)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("B_kind,C_kind,opts", [
    ("var", 2, {}),
    ("const", 3, dict(z=False, x0=False)),
    (3, "const", dict(softplus=False, bias=False, D=False)),
])
def test_adjoint_fp64_matches_naive_autograd(B_kind, C_kind, opts):
    inputs, dout, dlast = make_inputs(2, 6, 9, 4, B_kind, C_kind, dtype=torch.float64, **opts)
    inputs = {k: (v.double() if v is not None else None) for k, v in inputs.items()}  # fp32 weights too
    softplus = opts.get("softplus", True)
    out, last, grads = adjoint_fp64(inputs, softplus, dout, dlast)
    leaves = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    out_n, last_n = selective_scan_naive(**leaves, delta_softplus=softplus, return_last_state=True)
    names = [k for k in GRAD_NAMES if leaves[k] is not None]
    ref = torch.autograd.grad((out_n * dout.double()).sum() + (last_n * dlast.double()).sum(),
                              [leaves[k] for k in names])
    assert_close(out, out_n, 1e-12, "out")
    assert_close(last, last_n, 1e-12, "last")
    assert set(grads) == set(names)
    for name, r in zip(names, ref):
        assert_close(grads[name], r, 1e-12, f"d{name}")


# ----------------------------------------------------------------------------------------------
# The cuda backend against the fp64 reference
# ----------------------------------------------------------------------------------------------
CASES = {
    "L1-N1": dict(batch=2, dim=3, L=1, N=1),
    "L7-N16-constC-noz": dict(batch=2, dim=5, L=7, N=16, C_kind="const", z=False),
    "L63-N64-G3-nosoftplus": dict(batch=1, dim=12, L=63, N=64, B_kind=3, softplus=False, bias=False, x0=False),
    "L65-N16-constB": dict(batch=2, dim=7, L=65, N=16, B_kind="const"),
    "L129-N33-constBC": dict(batch=1, dim=9, L=129, N=33, B_kind="const", C_kind="const", D=False),
    "L256-N16-2tiles-G2": dict(batch=2, dim=40, L=256, N=16, C_kind=2),
    "L300-N20-G4-narrow": dict(batch=2, dim=64, L=300, N=20, B_kind=4, C_kind="var", softplus=False),
    "L2049-N16-33ch": dict(batch=1, dim=33, L=2049, N=16, C_kind="const"),
}


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(case, dtype):
    spec = dict(CASES[case])
    softplus = spec.get("softplus", True)
    inputs, dout, dlast = make_inputs(**spec, dtype=dtype)
    out_ref, last_ref, grads_ref = adjoint_fp64(inputs, softplus, dout, dlast)
    naive_out, naive_last = selective_scan_naive(
        **{k: (v.double() if v is not None else None) for k, v in inputs.items()},
        delta_softplus=softplus, return_last_state=True)
    assert_close(out_ref, naive_out, 1e-12, "reference out vs naive.py")
    out, last, grads = run_cuda(inputs, softplus, dout, dlast)
    tol = TOL[dtype]
    assert out.dtype == dtype and last.dtype == torch.float32
    assert_close(out, naive_out, tol, "out")
    assert_close(last, naive_last, TOL[torch.float32], "last_state")
    assert set(grads) == set(grads_ref)
    for name, g in grads.items():
        assert g.dtype == inputs[name].dtype, f"d{name}: dtype {g.dtype} != {inputs[name].dtype}"
        # fp32 gradients (dA, dD, ...) of low-precision inputs sum rounded terms: the dtype's bound.
        assert_close(g, grads_ref[name], tol, f"d{name}")


@needs_cuda
def test_long_sequence_fp32_against_fp64():
    """L = 16384: the fp32 state does not drift from the fp64 naive.py (forward and gradients)."""
    inputs, dout, dlast = make_inputs(1, 4, 16384, 16, "var", "const", device="cuda", seed=3)
    out_ref, last_ref, grads_ref = adjoint_fp64(inputs, True, dout, dlast)
    out, last, grads = run_cuda(inputs, True, dout, dlast)
    assert_close(out, out_ref, TOL[torch.float32], "out")
    assert_close(last, last_ref, TOL[torch.float32], "last_state")
    for name, g in grads.items():
        assert_close(g, grads_ref[name], TOL[torch.float32], f"d{name}")


# ----------------------------------------------------------------------------------------------
# The raw ops: chunk_size, determinism, limits, the glue's checks
# ----------------------------------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("chunk_size", [1, 7, 64, 100, 128, 200, 5000])
def test_any_chunk_size(chunk_size):
    """chunk_states[k] is the state before step k·chunk_size; the backward recomputes from them
    (chunks longer than the 64-step tile take the recompute path) and matches the reference."""
    inputs, dout, dlast = make_inputs(2, 35, 257, 8, "var", 5, dtype=torch.float32, seed=5, device="cuda")
    softplus = True
    out, last, states = torch.ops.pyneuro.selective_scan_fwd(*contract_args(inputs, softplus, chunk_size))
    L, cs = 257, chunk_size
    n_chunks = (L + cs - 1) // cs
    assert states.shape == (2, 35, n_chunks, 8)
    # the states at chunk starts, from the fp64 recurrence
    i = {k: (v.double() if v is not None else None) for k, v in inputs.items()}
    dt = F.softplus(i["delta"] + i["delta_bias"][:, None])
    Bd = i["B"][:, None]  # (batch, 1, N, L)
    x = i["initial_state"]
    expect = []
    for t in range(L):
        if t % cs == 0:
            expect.append(x)
        x = torch.exp(dt[..., t, None] * i["A"]) * x + (dt[..., t] * i["u"][..., t])[..., None] * Bd[..., t]
    assert_close(states, torch.stack(expect, 2), TOL[torch.float32], "chunk_states")
    assert_close(last, x, TOL[torch.float32], "last_state")
    out_ref, last_ref, grads_ref = adjoint_fp64(inputs, softplus, dout, dlast)
    assert_close(out, out_ref, TOL[torch.float32], "out")
    args = contract_args(inputs, softplus, chunk_size)
    grads = torch.ops.pyneuro.selective_scan_bwd(dout, dlast, *args[:9], states, softplus, chunk_size)
    for name, g in zip(GRAD_NAMES, grads):
        ref = grads_ref[name]
        assert_close(g.reshape(ref.shape), ref, TOL[torch.float32], f"d{name} (chunk_size {chunk_size})")


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d)[6:])
def test_bitwise_deterministic(dtype):
    """Two runs give identical bits: no atomics, fixed-order reductions over channels and batch."""
    inputs, dout, dlast = make_inputs(3, 100, 300, 16, "var", 2, dtype=dtype, seed=7)

    def once():
        out, last, grads = run_cuda(inputs, True, dout, dlast)
        return [out, last] + [grads[k] for k in sorted(grads)]

    first, second = once(), once()
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@needs_cuda
def test_state_size_limit():
    """N = 256 runs (forward and backward); N = 257 is refused by the glue (ValueError), naming N."""
    inputs, dout, dlast = make_inputs(1, 3, 70, 256, "var", "const", device="cuda", seed=11)
    out, last, grads = run_cuda(inputs, True, dout, dlast)
    out_ref, last_ref, grads_ref = adjoint_fp64(inputs, True, dout, dlast)
    assert_close(out, out_ref, TOL[torch.float32], "out")
    for name, g in grads.items():
        assert_close(g, grads_ref[name], TOL[torch.float32], f"d{name}")
    big, _, _ = make_inputs(1, 3, 5, 257, device="cuda")
    with pytest.raises(ValueError, match=r"N = A.shape\[1\] = 257"):
        torch.ops.pyneuro.selective_scan_fwd(*contract_args(big, True, 64))


@needs_cuda
def test_glue_rejects_bad_tensors():
    """The op itself (not only the Python wrapper) names the wrong argument: TypeError for a
    dtype, ValueError otherwise (DESIGN.md)."""
    inputs, _, _ = make_inputs(2, 4, 9, 3, device="cuda")
    cases = {
        "A must be Float": (TypeError, dict(A=inputs["A"].half())),
        "delta must be a CUDA tensor": (ValueError, dict(delta=inputs["delta"].cpu())),
        "B has 3 groups": (ValueError, dict(B=torch.randn(2, 3, 3, 9, device="cuda"))),
        "D must have shape": (ValueError, dict(D=torch.randn(5, device="cuda"))),
        "z must be contiguous": (ValueError, dict(z=torch.randn(2, 9, 4, device="cuda").transpose(1, 2))),
        "initial_state must be Float": (TypeError, dict(initial_state=inputs["initial_state"].double())),
    }
    for message, (exc, change) in cases.items():
        bad = {**inputs, **change}
        with pytest.raises(exc, match=message):
            torch.ops.pyneuro.selective_scan_fwd(*contract_args(bad, True, 64))
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        torch.ops.pyneuro.selective_scan_fwd(*contract_args(inputs, True, 0))


@needs_cuda
def test_empty_sequence_raw_ops():
    """L = 0: no launch; last_state = initial_state and dinitial_state = dlast_state."""
    inputs, _, dlast = make_inputs(2, 3, 0, 4, device="cuda")
    args = contract_args(inputs, True, 64)
    out, last, states = torch.ops.pyneuro.selective_scan_fwd(*args)
    assert out.shape == (2, 3, 0) and states.shape == (2, 3, 0, 4)
    assert torch.equal(last, inputs["initial_state"])
    grads = torch.ops.pyneuro.selective_scan_bwd(torch.zeros_like(out), dlast, *args[:9], states, True, 64)
    assert torch.equal(grads[8], dlast)
    assert not grads[2].any() and not grads[5].any() and not grads[7].any()  # dA, dD, ddelta_bias


@needs_cuda
def test_opcheck_cuda():
    """torch.library.opcheck on the CUDA kernels of both ops (fake shapes, schema, autograd wiring)."""
    inputs, dout, dlast = make_inputs(2, 5, 70, 4, "var", 5, device="cuda")
    args = contract_args(inputs, True, 64)
    torch.library.opcheck(torch.ops.pyneuro.selective_scan_fwd.default, args)
    _, _, states = torch.ops.pyneuro.selective_scan_fwd(*args)
    bwd_args = (dout, dlast, *args[:9], states, True, 64)
    torch.library.opcheck(torch.ops.pyneuro.selective_scan_bwd.default, bwd_args)
    bare, dout2, _ = make_inputs(1, 3, 9, 2, "const", "var", D=False, z=False, bias=False, x0=False, device="cuda")
    bare_args = contract_args(bare, False, 64)
    torch.library.opcheck(torch.ops.pyneuro.selective_scan_fwd.default, bare_args)
    _, _, states2 = torch.ops.pyneuro.selective_scan_fwd(*bare_args)
    torch.library.opcheck(torch.ops.pyneuro.selective_scan_bwd.default,
                          (dout2, None, *bare_args[:9], states2, False, 64))
