"""Triton recurrent-cell kernels (pyneuro.kernels.rnn) against the contract pairs of naive.py.

Each launcher is called directly with normalised inputs (docs/rnn_contract.md) and compared with
`<cell>_fwd_contract` / `<cell>_bwd_contract` run in fp64 on the same (rounded) inputs: forward
outputs, final states and the reserve, then every gradient of the backward (the kernel's backward
fed its own reserve, the reference its fp64 one) for random upstream gradients, dh_n/dc_n/du_n
included or absent.

Both time-loop modes run: the persistent kernel (one launch, weights on chip) at the sizes it
takes, and the per-step mode, forced by emptying PERSISTENT_MAX_H. Sizes are tiny (the
interpreter runs every tl.dot in numpy, every step in Python) but odd: B = 1, T = 1, I = 1, H not
a power of two, H above one 16-wide tile, projections with P < H.

Errors are normwise, max|actual − expected| / max|expected| per tensor, bounds by x's dtype:
"""
from __future__ import annotations


import pytest
import torch

from pyneuro.ops.rnn import naive

from triton_support import DEVICE, INTERPRET, kernels  # noqa: F401  (tests/kernels/triton_support.py)

rk = kernels("rnn")

pytestmark = pytest.mark.triton

TOL = {
    # fp32 state and IEEE fp32 dots (no TF32). Measured ≤ 7.4e-7 over every case below, both modes
    # (interpreter); the shared fp32 bound of the Triton tests.
    torch.float32: 5e-6,
    # bf16: the recurrent dot operands (state, gate gradients) are rounded to bf16 every step, on
    # top of one rounding of the outputs; the interpreter rounds fp32 -> bf16 by truncation (up to
    # 2^-7 = 7.8e-3 relative, not 2^-8). Measured ≤ 8.0e-3 (LSTM h_n, H = 128).
    torch.bfloat16: 2e-2,
    # fp16: the same with 2^-11 (numpy rounds to nearest). Measured ≤ 4.4e-4 (LSTM db_ih).
    torch.float16: 2e-3,
}

# Per cell: the forward's argument names in contract order, the backward's upstream-gradient
# names, the gradient names returned, and the contract pair.
CELLS = {
    "lstm": (("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr"), ("dy", "dh_n", "dc_n"),
             ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr")),
    "gru": (("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh"), ("dy", "dh_n"),
            ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh")),
    "rnn": (("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh"), ("dy", "dh_n"),
            ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh")),
    "leaky": (("x", "u0", "w_ih", "w_hh", "bias", "tau"), ("dh", "du_n"),
              ("x", "u0", "w_ih", "w_hh", "bias", "tau")),
}


def make_inputs(cell, T, B, I, H, P=None, bias=True, dtype=torch.float32, seed=0):
    """Contract inputs with weights at torch.nn's init scale (U(±1/√H)), states ~ N(0, 0.5²)."""
    g = torch.Generator().manual_seed(seed)
    G = rk.GATES[cell]
    R = P if P is not None else H
    k = H ** -0.5

    def u(*shape):
        return (torch.rand(*shape, generator=g) * 2 - 1) * k

    def n(*shape):
        return torch.randn(*shape, generator=g) * 0.5

    t = dict(x=torch.randn(T, B, I, generator=g), w_ih=u(G * H, I), w_hh=u(G * H, R))
    if cell == "leaky":
        t.update(u0=n(B, H), bias=u(H) if bias else None, tau=1.0 + 15.0 * torch.rand(H, generator=g))
    else:
        t.update(h0=n(B, R), b_ih=u(G * H) if bias else None, b_hh=u(G * H) if bias else None)
    if cell == "lstm":
        t.update(c0=n(B, H), w_hr=u(P, H) if P is not None else None)
    return {key: (v.to(dtype) if v is not None else None) for key, v in t.items()}


def upstream(cell, inputs, with_final, seed=1):
    """Random gradients of y and (with_final) of the final states, in x's dtype."""
    g = torch.Generator().manual_seed(seed)
    x = inputs["x"]
    T, B, _ = x.shape
    H = inputs["w_ih"].shape[0] // rk.GATES[cell]
    R = inputs["h0"].shape[1] if "h0" in inputs else H
    names = CELLS[cell][1]
    out = {names[0]: torch.randn(T, B, R, generator=g)}
    out[names[1]] = torch.randn(B, R, generator=g) if with_final else None
    if cell == "lstm":
        out["dc_n"] = torch.randn(B, H, generator=g) if with_final else None
    return {k: (v.to(x.dtype) if v is not None else None) for k, v in out.items()}


def _close(actual, expected, what, tol):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    actual = actual.detach().cpu().double()
    scale = expected.abs().max().clamp_min(1e-30)
    err = ((actual - expected).abs().max() / scale).item()
    assert err <= tol, f"{what}: normwise error {err:.2e} > {tol:.0e}"
    return err


def _relu_kw(cell, relu):
    return {"relu": relu} if cell == "rnn" else {}


def check(cell, T, B, I, H, P=None, bias=True, dtype=torch.float32, with_final=True, relu=False):
    """Forward and backward of the Triton launchers against the fp64 contract pair."""
    fwd_names, up_names, grad_names = CELLS[cell]
    inputs = make_inputs(cell, T, B, I, H, P, bias, dtype)
    ups = upstream(cell, inputs, with_final)
    tol = TOL[dtype]
    extra = (relu,) if cell == "rnn" else ()

    dev = {k: (v.to(DEVICE) if v is not None else None) for k, v in inputs.items()}
    fwd = getattr(rk, f"{cell}_fwd")(*(dev[k] for k in fwd_names), *extra)
    ref_in = {k: (v.double() if v is not None else None) for k, v in inputs.items()}
    ref = getattr(naive, f"{cell}_fwd_contract")(*(ref_in[k] for k in fwd_names), **_relu_kw(cell, relu))

    # outputs in x's dtype, the reserve in fp32
    for j, (a, e) in enumerate(zip(fwd[:-1], ref[:-1])):
        assert a.dtype == dtype, (cell, j, a.dtype)
        _close(a, e, f"{cell} forward output {j}", tol)
    assert fwd[-1].dtype == torch.float32 and fwd[-1].is_contiguous()
    _close(fwd[-1], ref[-1], f"{cell} reserve", tol)

    dev_up = {k: (v.to(DEVICE) if v is not None else None) for k, v in ups.items()}
    grads = getattr(rk, f"{cell}_bwd")(*(dev_up[k] for k in up_names), *(dev[k] for k in fwd_names), fwd[-1],
                                       *extra)
    ref_up = {k: (v.double() if v is not None else None) for k, v in ups.items()}
    ref_grads = getattr(naive, f"{cell}_bwd_contract")(*(ref_up[k] for k in up_names),
                                                       *(ref_in[k] for k in fwd_names), ref[-1],
                                                       **_relu_kw(cell, relu))
    assert len(grads) == len(grad_names)
    for outs in (fwd, grads):  # a custom op's outputs must not alias one another
        ptrs = [t.untyped_storage().data_ptr() for t in outs if t.numel()]
        assert len(set(ptrs)) == len(ptrs), f"{cell}: outputs share storage"
    for name, a, e in zip(grad_names, grads, ref_grads):
        if inputs[name] is None:
            assert a.shape == (0,) and a.dtype == dtype, f"d{name} of an absent input"
            continue
        assert a.dtype == dtype, f"d{name}: {a.dtype}"
        _close(a, e, f"{cell} d{name}", tol)


@pytest.fixture(params=["persistent", "step"])
def mode(request, monkeypatch):
    if request.param == "step":
        monkeypatch.setattr(rk, "PERSISTENT_MAX_H", {})
    return request.param


# (cell, T, B, I, H, P, bias, with_final, relu)
FP32_CASES = [
    ("lstm", 5, 3, 4, 20, None, True, True, False),
    ("lstm", 1, 1, 1, 7, None, False, False, False),
    ("lstm", 4, 2, 3, 20, 5, True, True, False),  # projection, P < 16 < H
    ("gru", 5, 3, 4, 20, None, True, True, False),
    ("gru", 1, 1, 1, 5, None, False, False, False),
    ("gru", 3, 2, 3, 9, None, True, False, False),
    ("rnn", 5, 3, 4, 20, None, True, True, False),
    ("rnn", 4, 2, 1, 9, None, False, True, True),  # relu
    ("rnn", 1, 1, 2, 3, None, True, False, True),
    ("leaky", 5, 3, 4, 20, None, True, True, False),
    ("leaky", 1, 1, 1, 6, None, False, False, False),
]


def _case_id(c):
    cell, T, B, I, H, P, bias, fin, relu = c
    return f"{cell}{'-relu' if relu else ''}-T{T}B{B}I{I}H{H}" + (f"P{P}" if P else "") + \
        ("" if bias else "-nobias") + ("" if fin else "-nofinal")


@pytest.mark.parametrize("case", FP32_CASES, ids=[_case_id(c) for c in FP32_CASES])
def test_fp32(case, mode):
    cell, T, B, I, H, P, bias, fin, relu = case
    check(cell, T, B, I, H, P, bias, torch.float32, fin, relu)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_half(cell, dtype):
    """Persistent kernel with half-precision weights on chip and dot operands (fp32 state)."""
    check(cell, 6, 3, 4, 20, 12 if cell == "lstm" else None, True, dtype)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_half_step(cell, monkeypatch):
    """Step mode in bf16: the GEMMs are the host's fp32 torch.mm, the cell math as the persistent one."""
    monkeypatch.setattr(rk, "PERSISTENT_MAX_H", {})
    check(cell, 4, 2, 3, 20, 6 if cell == "lstm" else None, True, torch.bfloat16)


def test_multi_tile():
    """More than one batch block and more than one 64-wide hidden tile in step mode (B = 17,
    H = 70 > PERSISTENT_MAX_H for fp32 and for the 16-bit LSTM), and a persistent BLOCK_H = 128."""
    check("gru", 2, 17, 3, 70, dtype=torch.float32)
    check("lstm", 2, 17, 2, 70, 33, dtype=torch.float16)
    check("rnn", 2, 17, 3, 70, dtype=torch.float16)  # persistent up to 128 in 16-bit


@pytest.mark.slow
@pytest.mark.parametrize("cell", list(CELLS))
def test_larger(cell):
    """Longer sequences, and each cell's largest persistent size in bf16."""
    check(cell, 16, 20, 8, 48, 24 if cell == "lstm" else None)
    H = rk.PERSISTENT_MAX_H[cell][torch.bfloat16]
    check(cell, 8, 4, 8, H, H // 2 if cell == "lstm" else None, dtype=torch.bfloat16)


def test_persistent_selection():
    """The launchers' choice follows PERSISTENT_MAX_H (state width included for the LSTM)."""
    for cell, limits in rk.PERSISTENT_MAX_H.items():
        for dtype, h in limits.items():
            assert rk.persistent(cell, h, h, dtype) and not rk.persistent(cell, h + 1, h + 1, dtype)
    assert not rk.persistent("lstm", 32, 65, torch.float32)
    assert rk.PERSISTENT_MAX_H["rnn"][torch.bfloat16] == 128


def test_persistent_needs_the_shared_memory_its_limits_were_set_for(monkeypatch):
    """On a CUDA device with less shared memory per block than sm_80's 163 KB (sm_86/89: 99 KB),
    every shape runs step mode; with enough, PERSISTENT_MAX_H decides; CPU tensors (the interpreter)
    are not asked. The device query is replaced: no GPU here."""
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(rk, "_smem_optin", lambda device: 101376)
    assert not rk.persistent("rnn", 16, 16, torch.float32, cuda)
    assert rk.persistent("rnn", 16, 16, torch.float32, torch.device("cpu"))
    monkeypatch.setattr(rk, "_smem_optin", lambda device: 232448)
    assert rk.persistent("rnn", 16, 16, torch.float32, cuda)
    assert not rk.persistent("rnn", 65, 65, torch.float32, cuda)


@pytest.mark.parametrize("args, problem", [
    (("conv", 8, 8, torch.float32), "cell"),
    (("lstm", 8, 8, torch.float64), "float64"),
    (("gru", 8, 4, torch.float32), "state_size"),
    (("rnn", 0, 0, torch.float32), ">= 1"),
])
def test_supports(args, problem):
    reason = rk.supports(*args)
    assert reason is not None and problem in reason, reason
    assert rk.supports("lstm", 300, 100, torch.bfloat16) is None  # any H: step mode


def test_direct_call_refuses_fp64():
    """A direct launcher call checks supports() too, with the error contract's TypeError for a dtype."""
    inputs = make_inputs("rnn", 2, 1, 1, 4, dtype=torch.float64)
    with pytest.raises(TypeError, match="float64"):
        rk.rnn_fwd(*(inputs[k] for k in CELLS["rnn"][0]), False)
