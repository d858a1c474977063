"""Triton selective-scan kernels (pyneuro.kernels.selective_scan) against naive.py.

Runs on a CUDA GPU when there is one; otherwise on the CPU through Triton's interpreter, which
tests/conftest.py switches on (TRITON_INTERPRET=1 must be set before triton is first imported:
Triton reads it when @triton.jit decorates, its own standard library included).

The reference is naive.py in fp64 with torch autograd; the loss also weights the returned last
state, so the gradient flowing into last_state is checked. Both ways of running the backward's
reverse scan are tested (REVERSE_SCAN "native" and "flip", see the kernel module). Shapes are
tiny: the interpreter runs a scan's combine function once per element in Python.

Errors are normwise, max|actual − expected| / max|expected| per tensor, against these bounds:
"""
from __future__ import annotations

import math

import pytest
import torch

from pyneuro.ops.scan.naive import selective_scan_naive
from scan_inputs import make_inputs  # tests/scan_inputs.py

from triton_support import DEVICE, INTERPRET, kernels  # noqa: F401  (tests/kernels/triton_support.py)

ssk = kernels("selective_scan")

pytestmark = pytest.mark.triton

# Bounds by the dtype of the tensor compared (a half-precision run still returns fp32 states and
# fp32 dA/dD/d(bias)/d(initial_state)). Measured maxima over the cases below, interpreter:
TOL = {
    # The shared fp32 bound (tests/ops/test_selective_scan.py). Measured ≤ 7e-7 (d delta_bias,
    # a sum over batch and L), ≤ 3e-7 for everything else, both reverse-scan paths.
    torch.float32: 5e-6,
    # The shared bf16 bound. One rounding of the fp32 result to bf16: ≤ 2^-8 = 3.9e-3 relative
    # rounding to nearest (GPU), but the interpreter converts fp32 -> bf16 by truncation (1 +
    # 2^-8 + 2^-10 becomes 1.0), up to one spacing, 2^-7 = 7.8e-3. Measured 6.0e-3 (out).
    torch.bfloat16: 8e-3,
    # Not in the shared table. One rounding to fp16 (numpy rounds to nearest): ≤ 2^-11 = 4.9e-4,
    # doubled for the fp32 arithmetic before it. Measured 3.3e-4 (d delta).
    torch.float16: 1e-3,
}

GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def _make(batch, dim, L, N, B_kind, C_kind, **options):
    """Normalised inputs (contract shapes): *_kind "const" (dim, N) or an int G (batch, G, N, L)."""
    return make_inputs(batch, dim, L, N, B_kind, C_kind, **options)[0]


def _to(inputs, device):
    return {k: (v.to(device) if v is not None else None) for k, v in inputs.items()}


def _reference(inputs, softplus, dout, dlast):
    """naive.py in fp64: (out, last, {name: grad}) for the loss <out, dout> + <last, dlast>."""
    leaves = {k: (v.detach().double().requires_grad_() if v is not None else None)
              for k, v in inputs.items()}
    out, last = selective_scan_naive(
        leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], D=leaves["D"],
        z=leaves["z"], delta_bias=leaves["delta_bias"], delta_softplus=softplus,
        return_last_state=True, initial_state=leaves["initial_state"])
    loss = (out * dout.double()).sum()
    if dlast is not None:
        loss = loss + (last * dlast.double()).sum()
    loss.backward()
    grads = {k: v.grad for k, v in leaves.items() if v is not None}
    return out.detach(), last.detach(), grads


def _states_at(inputs, softplus, positions):
    """The naive state x_p (before step p) for each p, by running naive on the prefix [:p]."""
    out = []
    for p in positions:
        cut = {k: v for k, v in inputs.items()}
        for k in ("u", "delta", "z"):
            if cut[k] is not None:
                cut[k] = cut[k][..., :p]
        for k in ("B", "C"):
            if cut[k].dim() == 4:
                cut[k] = cut[k][..., :p]
        cut = {k: (v.double() if v is not None else None) for k, v in cut.items()}
        _, x = selective_scan_naive(cut["u"], cut["delta"], cut["A"], cut["B"], cut["C"], D=cut["D"],
                                    z=cut["z"], delta_bias=cut["delta_bias"], delta_softplus=softplus,
                                    return_last_state=True, initial_state=cut["initial_state"])
        out.append(x)
    return torch.stack(out, dim=2)  # (batch, dim, n, N)


def _close(actual, expected, what):
    """Normwise error of actual (any dtype, compared in fp64) against expected, bound by TOL[actual.dtype]."""
    tol = TOL[actual.dtype]
    actual = actual.detach().cpu().double()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if expected.numel() == 0:
        return
    err = ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()
    assert err <= tol, f"{what}: normwise error {err:.2e} > {tol:.0e}"


def _run(inputs, softplus, chunk_size, dout, dlast):
    dev = _to(inputs, DEVICE)
    args = (dev["u"], dev["delta"], dev["A"], dev["B"], dev["C"], dev["D"], dev["z"],
            dev["delta_bias"], dev["initial_state"])
    out, last, chunk_states = ssk.selective_scan_fwd(*args, softplus, chunk_size)
    grads = ssk.selective_scan_bwd(dout.to(DEVICE), dlast.to(DEVICE) if dlast is not None else None,
                                   *args, chunk_states, softplus, chunk_size)
    return out, last, chunk_states, grads


# (id, batch, dim, L, N, B kind, C kind, options, softplus, chunk_size, dlast)
CASES = [
    ("L1-N1-var", 2, 3, 1, 1, 1, 1, {}, True, 16, True),
    ("L7-N16-grouped-noopts", 2, 3, 7, 16, 3, 1, dict(D=False, z=False, bias=False, x0=False), False, 16, True),
    ("L63-N16-const-4chunks", 1, 5, 63, 16, "const", "const", {}, True, 16, True),
    ("L33-N16-Bvar-Cconst-3chunks", 2, 3, 33, 16, 1, "const", dict(D=False, bias=False), False, 16, True),
    ("L33-N5-Bconst-Cgrouped-nodlast", 1, 3, 33, 5, "const", 3, dict(z=False), True, 16, False),
    ("L20-N8-G2xG3-mixed-groups", 1, 6, 20, 8, 2, 3, dict(x0=False), True, 8, True),
    ("L129-N4-default-chunk", 1, 3, 129, 4, 1, 1, {}, True, ssk.DEFAULT_CHUNK_SIZE, True),
    ("L63-N64-var", 1, 3, 63, 64, 1, 1, dict(D=False), False, ssk.DEFAULT_CHUNK_SIZE, True),
    ("L33-N64-grouped-3chunks", 1, 3, 33, 64, 3, 3, {}, True, 16, True),
    ("L7-N2-min-chunk", 2, 1, 7, 2, 1, "const", dict(bias=False), True, ssk.MIN_CHUNK_SIZE, True),
]


# The flip fallback changes only the backward's adjoint scan: run it on the cases that cover its
# branches (C variable/grouped/constant, with and without z, padded last chunks, no dlast, the
# smallest chunk), not on all.
_FLIP_CASES = ("L7-N16-grouped-noopts", "L33-N16-Bvar-Cconst-3chunks", "L33-N5-Bconst-Cgrouped-nodlast",
               "L20-N8-G2xG3-mixed-groups", "L7-N2-min-chunk")
_FP32_RUNS = [(c, "native") for c in CASES] + [(c, "flip") for c in CASES if c[0] in _FLIP_CASES]


@pytest.mark.parametrize("case, reverse_scan", _FP32_RUNS, ids=[f"{c[0]}-{r}" for c, r in _FP32_RUNS])
def test_matches_naive_fp32(case, reverse_scan, monkeypatch):
    monkeypatch.setattr(ssk, "REVERSE_SCAN", reverse_scan)
    _, batch, dim, L, N, bk, ck, opts, softplus, cs, with_dlast = case
    inputs = _make(batch, dim, L, N, bk, ck, softplus=softplus, **opts)
    g = torch.Generator().manual_seed(1)
    dout = torch.randn(batch, dim, L, generator=g)
    dlast = torch.randn(batch, dim, N, generator=g) if with_dlast else None
    out, last, chunk_states, grads = _run(inputs, softplus, cs, dout, dlast)
    ref_out, ref_last, ref_grads = _reference(inputs, softplus, dout, dlast)

    assert out.dtype == torch.float32
    _close(out, ref_out, "out")
    _close(last, ref_last, "last_state")
    n_chunks = math.ceil(L / cs)
    _close(chunk_states, _states_at(inputs, softplus, [k * cs for k in range(n_chunks)]), "chunk_states")
    for name, grad in zip(GRAD_NAMES, grads):
        if inputs[name] is None:
            assert grad.shape == (0,) and grad.dtype == torch.float32, name
            continue
        assert grad.dtype == inputs[name].dtype, name
        _close(grad, ref_grads[name], f"d{name}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_matches_naive_half(dtype):
    """Half-precision u, delta, z, B, C (A, D, bias, states stay fp32 per the contract). The
    reference sees the same rounded inputs, so the difference is the kernel's rounding of its
    half-precision outputs on top of fp32 arithmetic: TOL[dtype] for those, TOL[fp32] for the rest."""
    batch, dim, L, N, cs = 2, 3, 33, 16, 16
    inputs = _make(batch, dim, L, N, 1, 3, dtype=dtype)
    g = torch.Generator().manual_seed(2)
    dout = torch.randn(batch, dim, L, generator=g).to(dtype)
    dlast = torch.randn(batch, dim, N, generator=g)
    out, last, _, grads = _run(inputs, True, cs, dout, dlast)
    ref_out, ref_last, ref_grads = _reference(inputs, True, dout, dlast)
    assert out.dtype == dtype and last.dtype == torch.float32
    _close(out, ref_out, "out")
    _close(last, ref_last, "last_state")
    for name, grad in zip(GRAD_NAMES, grads):
        assert grad.dtype == inputs[name].dtype, name
        _close(grad, ref_grads[name], f"d{name}")


def test_channel_loop_and_determinism(monkeypatch):
    """Several channel sub-blocks per backward program (the dB/dC sum over a group in registers),
    forced on tiny shapes; and two backward runs are bitwise identical."""
    monkeypatch.setattr(ssk, "_MAX_BLOCK_D", 1)
    monkeypatch.setattr(ssk, "_BWD_TARGET_PROGRAMS", 1)  # -> one split per segment, n_sub = seg_dim
    batch, dim, L, N, cs = 2, 6, 19, 4, 8
    inputs = _make(batch, dim, L, N, 2, "const")
    g = torch.Generator().manual_seed(3)
    dout = torch.randn(batch, dim, L, generator=g)
    dlast = torch.randn(batch, dim, N, generator=g)
    out, last, chunk_states, grads = _run(inputs, True, cs, dout, dlast)
    _, _, ref_grads = _reference(inputs, True, dout, dlast)
    for name, grad in zip(GRAD_NAMES, grads):
        _close(grad, ref_grads[name], f"d{name}")
    dev = _to(inputs, DEVICE)
    again = ssk.selective_scan_bwd(dout.to(DEVICE), dlast.to(DEVICE), *dev.values(), chunk_states, True, cs)
    for name, a, b in zip(GRAD_NAMES, grads, again):
        assert torch.equal(a, b), f"d{name} differs between two backward runs"


def test_empty_sequence():
    """L = 0: last_state is the initial state, dinitial_state is dlast_state."""
    inputs = _to(_make(2, 3, 0, 4, 1, 1), DEVICE)
    args = list(inputs.values())
    out, last, chunk_states = ssk.selective_scan_fwd(*args, True, 16)
    assert out.shape == (2, 3, 0) and chunk_states.shape == (2, 3, 0, 4)
    assert torch.equal(last, inputs["initial_state"])
    dlast = torch.randn(2, 3, 4, device=DEVICE)
    grads = ssk.selective_scan_bwd(torch.empty_like(out), dlast, *args, chunk_states, True, 16)
    assert torch.equal(grads[-1], dlast)
    assert torch.count_nonzero(grads[2]) == 0  # dA


@pytest.mark.parametrize("N, chunk_size, problem", [
    (4, 0, "chunk_size"), (4, 3, "chunk_size"), (4, 24, "chunk_size"), (4, 2 * ssk.MAX_CHUNK_SIZE, "chunk_size"),
    (0, 16, "N"), (ssk.MAX_N + 1, 16, "N"),
])
def test_supports_rejects(N, chunk_size, problem):
    """supports() names the problem (the registry shows it), and a direct launch refuses too."""
    reason = ssk.supports(N, chunk_size)
    assert reason is not None and problem in reason, reason
    inputs = _to(_make(1, 2, 5, N, "const", "const", softplus=False), DEVICE)
    with pytest.raises(ValueError, match=problem):
        ssk.selective_scan_fwd(*inputs.values(), False, chunk_size)


def test_supports_rejects_a_batch_beyond_the_grid_axis():
    """The batch is the grids' second axis, which CUDA caps at 65,535 (the interpreter does not):
    supports() names it, the op's auto passes triton over, and a direct launch refuses it before
    allocating anything (meta tensors: no memory)."""
    from pyneuro.ops import scan as scan_op

    assert ssk.MAX_BATCH == 65535
    assert ssk.supports(16, 64, batch=ssk.MAX_BATCH) is None
    reason = ssk.supports(16, 64, batch=ssk.MAX_BATCH + 1)
    assert reason is not None and "batch (u.shape[0]) of at most 65535, got 65536" in reason
    u = torch.empty(ssk.MAX_BATCH + 1, 2, 4, device="meta")
    A = torch.empty(2, 16, device="meta")
    problem = scan_op._compiled_supports("triton")(u, u, A)
    assert isinstance(problem, ValueError) and "batch 65536 (u.shape[0])" in str(problem)
    assert scan_op._compiled_supports("triton")(u[:ssk.MAX_BATCH], u[:ssk.MAX_BATCH], A) is None
    with pytest.raises(ValueError, match="batch"):
        ssk.selective_scan_fwd(u, u, A, A, A, None, None, None, None, False, 64)


@pytest.mark.parametrize("N, chunk_size", [(1, ssk.MIN_CHUNK_SIZE), (16, ssk.DEFAULT_CHUNK_SIZE),
                                           (ssk.MAX_N, ssk.MAX_CHUNK_SIZE), (5, 32)])
def test_supports_accepts(N, chunk_size):
    assert ssk.supports(N, chunk_size) is None


def test_reverse_scan_setting_is_checked(monkeypatch):
    monkeypatch.setattr(ssk, "REVERSE_SCAN", "backwards")
    with pytest.raises(ValueError, match="native.*flip"):
        ssk._reverse_flip()
