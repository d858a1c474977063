"""The real CUDA recurrent-cell kernels (csrc/cuda/rnn.cu, rnn_persistent.cu), compiled with g++
against cuda_emu and run on the CPU, against the fp64 contract pairs of pyneuro/ops/rnn/naive.py.

What runs here: the fused per-step cell kernels, forward and backward, of every cell (LSTM with
and without projection, GRU, RNN tanh/relu, leaky) in fp32/fp16/bf16 at odd sizes, driven by a
Python mirror of csrc/cuda/rnn_glue.cpp's schedule (the GEMMs in torch on the CPU, fp32, as
cuBLAS computes them on the GPU up to summation order); and the persistent forward.

The persistent forward runs on ONE block along the hidden units (max_blocks_x = 1: all unit tiles
of a block loop inside it) and on several independent blocks along the batch: the emulator runs
blocks one after another, so blocks that wait for each other at a grid barrier never meet there
(group_barrier in common.cuh traps instead of hanging). With one x-block the barrier is exact, so
the kernel's tiling, shared-memory staging, the h exchange through the reserve and the cell math
are checked; the cross-block barrier itself (fences, the spinning counter) is not — that needs a
GPU (tests/cuda/test_rnn_cuda.py forces several x-blocks).

Not checked here: the C++ glue itself (it needs a CUDA torch; tests/cuda/), the fast-math error of
the GPU (the emulator evaluates exp2/rcp exactly), timing.

Tolerances (normwise, max |a - e| / max |e|): fp32 4e-6 (T <= 5 steps of fp32 rounding; the
largest error seen is 3.5e-7); fp16 and bf16 add the rounding of the GEMM operand h_{t-1} to the
dtype each step (the contract allows 16-bit GEMM operands) and of every output to the dtype:
2 unit roundoffs (the largest seen: 0.8 for fp16, 0.8 for bf16).
"""
from __future__ import annotations

import ctypes
import math
import os
import subprocess
import zlib

import pytest
import torch

from emu_scan import build_or_fail, normwise_error

from pyneuro.ops.rnn import naive

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
DTYPE_CODE = {F32: 0, F16: 1, BF16: 2}
CELL_CODE = {"lstm": 0, "gru": 1, "rnn_tanh": 2, "rnn_relu": 3, "leaky": 4}
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1, "leaky": 1}
SCHEDULES = {"forward": 0, "reverse": 1, "random": 2}
UNIT = {F32: 0.0, F16: 2.0 ** -11, BF16: 2.0 ** -8}


def tol(dtype) -> float:
    return 4e-6 + 2 * UNIT[dtype]


class EmuRnn:
    def __init__(self, path):
        self.lib = ctypes.CDLL(str(path))
        self.lib.cuda_emu_error_message.restype = ctypes.c_char_p
        self.lib.cuda_emu_configure.argtypes = [ctypes.c_int, ctypes.c_ulonglong, ctypes.c_int, ctypes.c_ulonglong]

    def configure(self, schedule="forward", seed=0):
        self.lib.cuda_emu_configure(SCHEDULES[schedule], seed, 1, 0)

    def check(self, rc, what):
        if rc != 0:
            msg = self.lib.cuda_emu_error_message().decode()
            self.lib.cuda_emu_clear_error()
            raise RuntimeError(f"emulated {what} failed (cudaError {rc}): {msg}")

    @staticmethod
    def p(t):
        return None if t is None else ctypes.c_void_p(t.data_ptr())


@pytest.fixture(scope="module")
def emu() -> EmuRnn:
    return EmuRnn(build_or_fail("rnn"))


def nan(*shape, dtype=F32):
    return torch.full(shape, float("nan"), dtype=dtype)


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------
def make_inputs(cell, T, B, I, H, dtype, proj=0, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    G = GATES[cell]
    R = proj or H
    k = 1 / math.sqrt(H)
    rnd = lambda *s, scale=1.0: (torch.rand(*s, generator=g) * 2 - 1) * scale  # noqa: E731
    d = dict(x=rnd(T, B, I), h0=rnd(B, R, scale=0.5), w_ih=rnd(G * H, I, scale=k), w_hh=rnd(G * H, R, scale=k),
             b_ih=rnd(G * H, scale=k) if bias else None,
             b_hh=rnd(G * H, scale=k) if bias and cell != "leaky" else None)
    if cell == "lstm":
        d["c0"] = rnd(B, H, scale=0.5)
        d["w_hr"] = rnd(proj, H, scale=k) if proj else None
    if cell == "leaky":
        d["tau"] = 1 + torch.rand(H, generator=g) * 7
    cot = dict(dy=rnd(T, B, R), dh_n=rnd(B, R), dc_n=rnd(B, H) if cell == "lstm" else None)
    cast = lambda v: None if v is None else v.to(dtype).contiguous()  # noqa: E731
    return {k: cast(v) for k, v in d.items()}, {k: cast(v) for k, v in cot.items()}


# ----------------------------------------------------------------------------------------------
# A Python mirror of rnn_glue.cpp driving the emulated kernels
# ----------------------------------------------------------------------------------------------
def reserve_width(cell, H, R):
    return 5 * H + R if cell == "lstm" else 5 * H if cell == "gru" else H


def state_offset(cell, H):
    return 5 * H if cell == "lstm" else 4 * H if cell == "gru" else 0


def emu_forward(emu, cell, i, persistent=False, max_blocks_x=1):
    x = i["x"]
    X = x.dtype
    T, B, I = x.shape
    G = GATES[cell]
    H = i["w_ih"].shape[0] // G
    w_hr = i.get("w_hr")
    R = w_hr.shape[0] if w_hr is not None else H
    f = lambda t: t.float()  # noqa: E731
    gx = (f(x).reshape(T * B, I) @ f(i["w_ih"]).t()).contiguous()
    y, h_n = nan(T, B, R, dtype=X), nan(B, R, dtype=X)
    c_n = nan(B, H, dtype=X) if cell == "lstm" else None
    reserve = nan(T, B, reserve_width(cell, H, R))
    bias, b_hh = i.get("b_ih"), i.get("b_hh")
    extra = i.get("tau")
    p = emu.p
    if persistent:
        barrier = torch.zeros((B + 15) // 16, dtype=torch.int32)
        plan = (ctypes.c_int * 4)()
        rc = emu.lib.emu_rnn_persistent_fwd(CELL_CODE[cell], DTYPE_CODE[X], B, H, T, max_blocks_x, p(gx),
                                            p(i["w_hh"]), p(bias), p(b_hh), p(extra), p(i["h0"]), p(i.get("c0")),
                                            p(reserve), p(y), p(h_n), p(c_n), p(barrier), plan)
        assert plan[0] == 1, f"persistent plan refused: {list(plan)}"
        emu.check(rc, "persistent forward")
        return y, h_n, c_n, reserve, list(plan)
    first = torch.tanh(f(i["h0"])).to(X) if cell == "leaky" else i["h0"]
    m = nan(B, H, dtype=X) if w_hr is not None else None
    so = state_offset(cell, H)
    for t in range(T):
        gh = (f(first if t == 0 else y[t - 1]) @ f(i["w_hh"]).t()).contiguous()
        rc = emu.lib.emu_rnn_cell_fwd(CELL_CODE[cell], DTYPE_CODE[X], B, H, R, t, T, p(gx[t * B:(t + 1) * B]), p(gh),
                                      p(bias), p(b_hh), p(extra), p(i["h0"]), p(i.get("c0")),
                                      p(reserve[t - 1]) if t > 0 else None, p(reserve[t]),
                                      None if m is not None else p(y[t]), p(m),
                                      None if m is not None else p(h_n), p(c_n))
        emu.check(rc, f"cell forward t={t}")
        if m is not None:
            hp = f(m) @ f(w_hr).t()
            reserve[t, :, so:] = hp
            y[t] = hp.to(X)
    if w_hr is not None:
        h_n.copy_(y[T - 1])
    return y, h_n, c_n, reserve, None


def emu_backward(emu, cell, i, reserve, dy, dh_n, dc_n, persistent=False, max_blocks_x=1):
    x = i["x"]
    X = x.dtype
    T, B, I = x.shape
    G = GATES[cell]
    H = i["w_ih"].shape[0] // G
    w_hr = i.get("w_hr")
    R = w_hr.shape[0] if w_hr is not None else H
    lstm, gru, leaky, proj = cell == "lstm", cell == "gru", cell == "leaky", w_hr is not None
    f = lambda t: t.float()  # noqa: E731
    whh = f(i["w_hh"])
    dA = nan(T, B, G * H)
    dS = nan(T, B, G * H) if gru else dA
    carry = nan(B, H)
    drec = None
    dtau = torch.zeros(B, H) if leaky else None
    DH = nan(T, B, R) if proj else None
    M = nan(T, B, H) if proj else None
    p = emu.p
    if persistent:  # one launch for the reverse loop; leaves step 0's carry and drec = dS_0 W_hh
        assert not proj
        drec = nan(B, H)
        barrier = torch.zeros((B + 15) // 16, dtype=torch.int32)
        plan = (ctypes.c_int * 4)()
        rc = emu.lib.emu_rnn_persistent_bwd(CELL_CODE[cell], DTYPE_CODE[X], B, H, T, max_blocks_x, p(reserve), p(dy),
                                            None if leaky else p(dh_n), p(dc_n) if lstm else p(dh_n) if leaky else None,
                                            p(i["w_hh"]), p(i["h0"]), p(i.get("c0")), p(i.get("tau")), p(carry),
                                            p(drec), p(dA), p(dS), p(dtau), p(barrier), plan)
        assert plan[0] == 1, f"persistent backward plan refused: {list(plan)}"
        emu.check(rc, "persistent backward")
    for t in reversed(range(T)) if not persistent else ():
        if proj:
            dh_t = f(dy[t]) + (drec if t < T - 1 else 0) + (f(dh_n) if t == T - 1 and dh_n is not None else 0)
            DH[t] = dh_t
            dm = (dh_t @ f(w_hr)).contiguous()
            a_dy, a_drec, a_dhn, a_m = None, dm, None, M[t]
        else:
            a_dy, a_drec, a_dhn, a_m = dy[t], drec if t < T - 1 else None, None if leaky else dh_n, None
        a_dcn = dc_n if lstm else dh_n if leaky else None
        rc = emu.lib.emu_rnn_cell_bwd(CELL_CODE[cell], DTYPE_CODE[X], B, H, R, t, T, p(reserve), p(a_dy), p(a_drec),
                                      p(a_dhn), p(a_dcn), p(i["h0"]), p(i.get("c0")), p(i.get("tau")), p(carry),
                                      p(dA[t]), p(dS[t]) if gru else None, p(a_m), p(dtau))
        emu.check(rc, f"cell backward t={t}")
        drec = (dS[t] @ whh).contiguous()
    so = state_offset(cell, H)
    hprev = torch.cat([f(i["h0"]).unsqueeze(0), reserve[:T - 1, :, so:so + R]])
    if leaky:
        hprev = torch.tanh(hprev)
        h0 = torch.tanh(f(i["h0"]))
        dstate0 = carry + drec * (1 - h0 * h0)
    else:
        dstate0 = drec + carry if gru else drec
    dA2, dS2 = dA.reshape(T * B, G * H), dS.reshape(T * B, G * H)
    g = dict(dx=(dA2 @ f(i["w_ih"])).reshape(T, B, I), dh0=dstate0, dw_ih=dA2.t() @ f(x).reshape(T * B, I),
             dw_hh=dS2.t() @ hprev.reshape(T * B, R))
    if lstm:
        g["dc0"] = carry
    g["db_ih"] = dA2.sum(0) if i.get("b_ih") is not None else None
    if not leaky:
        g["db_hh"] = dS2.sum(0) if i.get("b_hh") is not None else None
    if proj:
        g["dw_hr"] = DH.reshape(T * B, R).t() @ M.reshape(T * B, H)
    if leaky:
        g["dtau"] = dtau.sum(0)
    return {k: (None if v is None else v.to(X)) for k, v in g.items()}


# ----------------------------------------------------------------------------------------------
# The fp64 oracle: naive.py's contract pairs
# ----------------------------------------------------------------------------------------------
def d64(v):
    return None if v is None else v.double()


def oracle_forward(cell, i):
    d = {k: d64(v) for k, v in i.items()}
    if cell == "lstm":
        return naive.lstm_fwd_contract(d["x"], d["h0"], d["c0"], d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"], d["w_hr"])
    if cell == "gru":
        y, h_n, res = naive.gru_fwd_contract(d["x"], d["h0"], d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"])
    elif cell == "leaky":
        y, h_n, res = naive.leaky_fwd_contract(d["x"], d["h0"], d["w_ih"], d["w_hh"], d["b_ih"], d["tau"])
    else:
        y, h_n, res = naive.rnn_fwd_contract(d["x"], d["h0"], d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"],
                                             cell == "rnn_relu")
    return y, h_n, None, res


def oracle_backward(cell, i, reserve, cot):
    d = {k: d64(v) for k, v in i.items()}
    c = {k: d64(v) for k, v in cot.items()}
    r = reserve.double()
    if cell == "lstm":
        names = ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh", "dw_hr")
        out = naive.lstm_bwd_contract(c["dy"], c["dh_n"], c["dc_n"], d["x"], d["h0"], d["c0"], d["w_ih"], d["w_hh"],
                                      d["b_ih"], d["b_hh"], d["w_hr"], r)
    elif cell == "gru":
        names = ("dx", "dh0", "dw_ih", "dw_hh", "db_ih", "db_hh")
        out = naive.gru_bwd_contract(c["dy"], c["dh_n"], d["x"], d["h0"], d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"], r)
    elif cell == "leaky":
        names = ("dx", "dh0", "dw_ih", "dw_hh", "db_ih", "dtau")
        out = naive.leaky_bwd_contract(c["dy"], c["dh_n"], d["x"], d["h0"], d["w_ih"], d["w_hh"], d["b_ih"], d["tau"], r)
    else:
        names = ("dx", "dh0", "dw_ih", "dw_hh", "db_ih", "db_hh")
        out = naive.rnn_bwd_contract(c["dy"], c["dh_n"], d["x"], d["h0"], d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"], r,
                                     cell == "rnn_relu")
    return dict(zip(names, out))


def assert_close(name, actual, expected, dtype):
    if expected is None or expected.numel() == 0:
        assert actual is None or actual.numel() == 0, f"{name}: expected no gradient"
        return
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual.float()).all(), f"{name}: non-finite values (an element no thread wrote?)"
    err = normwise_error(actual, expected)
    assert err <= tol(dtype), f"{name}: normwise error {err:.2e} > {tol(dtype):.2e}"


def check_forward(cell, i, out):
    y, h_n, c_n, reserve, _ = out
    X = i["x"].dtype
    ey, eh, ec, er = oracle_forward(cell, i)
    assert_close("reserve", reserve, er, X)
    assert_close("y", y, ey, X)
    assert_close("h_n", h_n, eh, X)
    if cell == "lstm":
        assert_close("c_n", c_n, ec, X)


CASES = [  # (cell, T, B, I, H, proj, bias, dtype, schedule)
    ("lstm", 3, 3, 5, 7, 0, True, F32, "forward"),
    ("lstm", 4, 2, 3, 9, 5, True, F32, "reverse"),       # projection, R = 5 < H
    ("lstm", 2, 3, 4, 6, 0, False, BF16, "random"),
    ("lstm", 3, 1, 2, 5, 3, True, F16, "forward"),
    ("gru", 3, 3, 5, 7, 0, True, F32, "reverse"),
    ("gru", 1, 2, 3, 5, 0, False, F32, "forward"),        # T = 1: the last step is the first
    ("gru", 3, 2, 4, 9, 0, True, BF16, "forward"),
    ("gru", 2, 3, 3, 6, 0, True, F16, "random"),
    ("rnn_tanh", 4, 3, 5, 7, 0, True, F32, "forward"),
    ("rnn_tanh", 3, 2, 3, 5, 0, True, BF16, "reverse"),
    ("rnn_relu", 4, 3, 5, 7, 0, True, F32, "random"),
    ("rnn_relu", 3, 1, 4, 6, 0, False, F16, "forward"),
    ("leaky", 4, 3, 5, 7, 0, True, F32, "forward"),
    ("leaky", 3, 2, 3, 9, 0, False, F32, "reverse"),
    ("leaky", 3, 3, 4, 5, 0, True, BF16, "random"),
    ("leaky", 2, 2, 3, 6, 0, True, F16, "forward"),
]


def case_id(c):
    cell, T, B, I, H, proj, bias, dtype, sched = c
    return f"{cell}-T{T}B{B}I{I}H{H}" + (f"P{proj}" if proj else "") + ("" if bias else "-nobias") + \
        f"-{str(dtype).split('.')[-1]}-{sched}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_cells_forward_backward(emu, case):
    cell, T, B, I, H, proj, bias, dtype, sched = case
    emu.configure(sched, seed=7)
    i, cot = make_inputs(cell, T, B, I, H, dtype, proj=proj, bias=bias, seed=zlib.crc32(case_id(case).encode()) % 1000)
    out = emu_forward(emu, cell, i)
    check_forward(cell, i, out)
    reserve = out[3]
    grads = emu_backward(emu, cell, i, reserve, cot["dy"], cot["dh_n"], cot.get("dc_n"))
    expected = oracle_backward(cell, i, reserve, cot)
    for name, e in expected.items():
        assert_close(name, grads.get(name), e, dtype)


def test_backward_without_final_state_gradients(emu):
    """dh_n / dc_n absent (the final states unused): the last step must read zeros, not the carry."""
    emu.configure("forward")
    for cell in ("lstm", "gru", "leaky"):
        i, cot = make_inputs(cell, 3, 2, 3, 5, F32, seed=3)
        reserve = emu_forward(emu, cell, i)[3]
        grads = emu_backward(emu, cell, i, reserve, cot["dy"], None, None)
        expected = oracle_backward(cell, i, reserve, dict(cot, dh_n=None, dc_n=None))
        for name, e in expected.items():
            assert_close(f"{cell}.{name}", grads.get(name), e, F32)


PERSISTENT = [  # (cell, T, B, I, H, dtype): H = 20: 2 unit tiles (one padded); B = 18: 2 batch tiles
    ("lstm", 4, 18, 3, 20, F32),
    ("lstm", 3, 5, 4, 16, BF16),
    ("gru", 4, 18, 3, 20, F32),
    ("gru", 3, 3, 5, 33, F16),
    ("rnn_tanh", 5, 17, 2, 20, F32),
    ("rnn_relu", 3, 4, 3, 40, BF16),
    ("leaky", 4, 18, 3, 20, F32),
    ("leaky", 3, 2, 4, 7, F16),
]


@pytest.mark.parametrize("case", PERSISTENT, ids=lambda c: f"{c[0]}-T{c[1]}B{c[2]}H{c[4]}-{str(c[5]).split('.')[-1]}")
def test_persistent_forward(emu, case):
    cell, T, B, I, H, dtype = case
    emu.configure("random", seed=11)
    i, _ = make_inputs(cell, T, B, I, H, dtype, seed=5)
    out = emu_forward(emu, cell, i, persistent=True, max_blocks_x=1)
    plan = out[4]
    assert plan[1] == 1 and plan[3] == (H + 15) // 16, plan  # one x-block holding every unit tile
    assert plan[2] == min((B + 15) // 16, 4), plan           # batch tiles on separate blocks (4 emulated SMs)
    check_forward(cell, i, out)


@pytest.mark.parametrize("case", PERSISTENT, ids=lambda c: f"{c[0]}-T{c[1]}B{c[2]}H{c[4]}-{str(c[5]).split('.')[-1]}")
def test_persistent_backward(emu, case):
    """The persistent backward (one x-block, batch tiles on separate blocks) on the per-step
    forward's reserve, against the fp64 contract backward."""
    cell, T, B, I, H, dtype = case
    emu.configure("random", seed=13)
    i, cot = make_inputs(cell, T, B, I, H, dtype, seed=6)
    reserve = emu_forward(emu, cell, i)[3]
    grads = emu_backward(emu, cell, i, reserve, cot["dy"], cot["dh_n"], cot.get("dc_n"), persistent=True)
    for name, e in oracle_backward(cell, i, reserve, cot).items():
        assert_close(name, grads.get(name), e, dtype)


def test_persistent_plan_limits(emu):
    """The plan refuses H above the limit, a grid whose unit tiles cannot be co-resident (the
    emulated device has 4 SMs with one block each: 16 tiles at H = 256, 8 at H = 128 do not fit),
    and a weight slice above the shared memory a block may use (all 16 tiles of H = 256 on one
    block: 1 MiB) — the glue then runs the per-step path."""
    plan = (ctypes.c_int * 4)()
    z = ctypes.c_void_p(0)
    args = [z] * 12
    for H, mbx, ok in ((257, 1, 0), (256, 0, 0), (256, 1, 0), (128, 0, 0), (64, 0, 1), (64, 1, 1)):
        rc = emu.lib.emu_rnn_persistent_fwd(0, 0, 1, H, 0, mbx, *args, plan)  # T = 0: plan only, launch refused
        assert plan[0] == ok, (H, mbx, list(plan))
        if ok:
            assert rc != 0  # T = 0 is rejected by the launcher, nothing ran
    emu.lib.cuda_emu_clear_error()


def test_schedules_agree_bitwise(emu):
    """No kernel here uses atomics on data (only the barrier counter), so the thread and block order
    must not change a single bit: a missing __syncthreads around the shared tiles (the staged h or
    dS tile, the MMA output tile) would make the result schedule-dependent."""
    cases = [("lstm", BF16), ("gru", F32), ("leaky", F16)]
    for cell, dtype in cases:
        i, cot = make_inputs(cell, 3, 18, 3, 20, dtype, seed=9)
        results = []
        for sched, seed in (("forward", 0), ("reverse", 0), ("random", 1), ("random", 2)):
            emu.configure(sched, seed=seed)
            y, h_n, c_n, res, _ = emu_forward(emu, cell, i, persistent=True)
            g = emu_backward(emu, cell, i, res, cot["dy"], cot["dh_n"], cot.get("dc_n"), persistent=True)
            results.append([y, h_n, res] + [v for v in g.values() if v is not None])
        for other in results[1:]:
            for a, b in zip(results[0], other):
                assert torch.equal(a.view(torch.uint8) if a.dtype != F32 else a, b.view(torch.uint8) if b.dtype != F32 else b), cell


# ----------------------------------------------------------------------------------------------
# The glue itself: csrc/cuda/rnn_glue.cpp built for the emulator (target rnn_glue) on CPU tensors
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def glue_ops():
    """torch.ops.pyneuro_emu: rnn_glue.cpp's functions (schemas inferred, positional) over the
    emulated kernels. The build links against the installed torch (~25 s, then cached)."""
    torch.ops.load_library(str(build_or_fail("rnn_glue")))
    return torch.ops.pyneuro_emu


def glue_args(variant, i):
    cell = variant.split("_")[0]
    if cell == "lstm":
        return cell, (i["x"], i["h0"], i["c0"], i["w_ih"], i["w_hh"], i["b_ih"], i["b_hh"], i["w_hr"])
    if cell == "gru":
        return cell, (i["x"], i["h0"], i["w_ih"], i["w_hh"], i["b_ih"], i["b_hh"])
    if cell == "rnn":
        return cell, (i["x"], i["h0"], i["w_ih"], i["w_hh"], i["b_ih"], i["b_hh"], variant == "rnn_relu")
    return cell, (i["x"], i["h0"], i["w_ih"], i["w_hh"], i["b_ih"], i["tau"])


GLUE_CASES = [(v, d, path) for v in ("lstm", "lstm_proj", "gru", "rnn_tanh", "rnn_relu", "leaky")
              for d in (F32, BF16) for path in ("persistent", "stepwise") if v != "lstm_proj" or path == "stepwise"]


@pytest.mark.slow
@pytest.mark.parametrize("variant,dtype,path", GLUE_CASES,
                         ids=[f"{v}-{str(d).split('.')[-1]}-{p}" for v, d, p in GLUE_CASES])
def test_glue_forward_backward(glue_ops, emu, monkeypatch, variant, dtype, path):
    """The real glue (argument check, the input GEMM, path choice, per-step loop or persistent
    launch, the final GEMMs) on the emulated kernels, against the fp64 contract pairs."""
    monkeypatch.setenv("PYNEURO_CUDA_RNN_PATH", path)
    monkeypatch.setenv("PYNEURO_CUDA_RNN_MAX_BLOCKS_X", "1")
    emu.configure("forward")
    kernel_cell = {"lstm_proj": "lstm"}.get(variant, variant)
    i, cot = make_inputs(kernel_cell, 4, 18, 3, 20, dtype, proj=3 if variant == "lstm_proj" else 0, seed=21)
    cell, args = glue_args(variant, i)
    out = getattr(glue_ops, f"{cell}_fwd")(*args)
    reserve = out[-1]
    ey, eh, ec, er = oracle_forward(kernel_cell, i)
    assert_close("y", out[0], ey, dtype)
    assert_close("h_n", out[1], eh, dtype)
    assert_close("reserve", reserve, er, dtype)
    if cell == "lstm":
        assert_close("c_n", out[2], ec, dtype)
    dy, dh_n, dc_n = cot["dy"], cot["dh_n"], cot.get("dc_n")
    def backward(input_grad):
        if cell == "lstm":
            return glue_ops.lstm_bwd(dy, dh_n, dc_n, *args, reserve, input_grad)
        if cell == "rnn":
            return glue_ops.rnn_bwd(dy, dh_n, *args[:6], reserve, args[6], input_grad)
        return getattr(glue_ops, f"{cell}_bwd")(dy, dh_n, *args, reserve, input_grad)

    got = backward(True)
    want = oracle_backward(kernel_cell, i, reserve, cot)
    for (name, e), g in zip(want.items(), got):
        assert_close(name, g, e, dtype)
    # input_grad=False: dx absent (empty), every other gradient as before, bit for bit.
    without = backward(False)
    assert without[0].numel() == 0
    for g, h in zip(got[1:], without[1:]):
        assert torch.equal(g, h)


def glue_fwd_bwd(glue_ops, cell, args, cot, reserve=None):
    """The glue's forward (unless a reserve is given), then its backward with every gradient."""
    out = getattr(glue_ops, f"{cell}_fwd")(*args) if reserve is None else None
    reserve = out[-1] if reserve is None else reserve
    dy, dh_n, dc_n = cot["dy"], cot["dh_n"], cot.get("dc_n")
    if cell == "lstm":
        grads = glue_ops.lstm_bwd(dy, dh_n, dc_n, *args, reserve, True)
    else:
        grads = getattr(glue_ops, f"{cell}_bwd")(dy, dh_n, *args, reserve, True)
    return out, grads


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_glue_runs_per_step_when_the_cooperative_launch_is_refused(glue_ops, emu, monkeypatch, cell):
    """A GPU shared with other work can refuse the cooperative grid its occupancy query admitted
    (emulated: the grid may fill 1 of the 4 SMs, PYNEURO_EMU_COOPERATIVE_SMS). Under auto the glue
    then runs the per-step path, forward and backward, and gives its result bit for bit; with the
    persistent path forced, each direction raises the launch error instead."""
    emu.configure("forward")
    i, cot = make_inputs(cell, 4, 18, 3, 20, F32, seed=21)  # 18 rows: 2 batch tiles, a grid of 2 blocks
    _, args = glue_args(cell, i)
    monkeypatch.setenv("PYNEURO_CUDA_RNN_MAX_BLOCKS_X", "1")
    monkeypatch.setenv("PYNEURO_CUDA_RNN_PATH", "stepwise")
    want_out, want_grads = glue_fwd_bwd(glue_ops, cell, args, cot)

    monkeypatch.setenv("PYNEURO_EMU_COOPERATIVE_SMS", "1")
    monkeypatch.setenv("PYNEURO_CUDA_RNN_PATH", "persistent")
    with pytest.raises(RuntimeError, match="persistent forward launch failed: cudaErrorCooperativeLaunchTooLarge"):
        getattr(glue_ops, f"{cell}_fwd")(*args)
    with pytest.raises(RuntimeError, match="persistent backward launch failed: cudaErrorCooperativeLaunchTooLarge"):
        glue_fwd_bwd(glue_ops, cell, args, cot, reserve=want_out[-1])

    monkeypatch.setenv("PYNEURO_CUDA_RNN_PATH", "auto")
    got_out, got_grads = glue_fwd_bwd(glue_ops, cell, args, cot)
    assert len(got_out) == len(want_out) and len(got_grads) == len(want_grads)
    for k, (got, want) in enumerate(zip(got_out, want_out)):
        assert torch.equal(got, want), f"forward output {k}"
    for k, (got, want) in enumerate(zip(got_grads, want_grads)):
        assert torch.equal(got, want), f"gradient {k}"


@pytest.mark.slow
def test_glue_errors(glue_ops, monkeypatch):
    """The shared argument check runs in the glue (the error contract: TypeError for a dtype,
    ValueError for a shape), and a forced persistent path that cannot run says why."""
    i, _ = make_inputs("gru", 2, 3, 3, 5, F32)
    _, args = glue_args("gru", i)
    with pytest.raises(TypeError, match="gru_fwd"):
        glue_ops.gru_fwd(args[0].double(), *args[1:])
    with pytest.raises(ValueError, match="h0"):
        glue_ops.gru_fwd(args[0], args[1][:, :4].contiguous(), *args[2:])
    j, _ = make_inputs("gru", 2, 3, 3, 300, F32)
    _, big = glue_args("gru", j)
    monkeypatch.setenv("PYNEURO_CUDA_RNN_PATH", "persistent")
    with pytest.raises(RuntimeError, match="persistent forward cannot run"):
        glue_ops.gru_fwd(*big)


# ----------------------------------------------------------------------------------------------
# Sanitizers (opt-in, as tests/cuda_emu/test_emulated_sanitizers.py: PYNEURO_EMU_SANITIZE=
# address,undefined or thread; each sanitized build takes minutes)
# ----------------------------------------------------------------------------------------------
SANITIZE_MODES = [m for m in [os.environ.get("PYNEURO_EMU_SANITIZE", "")] if m]


@pytest.mark.slow
@pytest.mark.skipif(not SANITIZE_MODES, reason="opt-in: set PYNEURO_EMU_SANITIZE=address,undefined or thread")
@pytest.mark.parametrize("mode", SANITIZE_MODES or ["none"])
def test_rnn_kernels_sanitizer_clean(mode):
    """tools/cuda_emu/drivers/rnn_selfcheck.cpp: every cell's per-step and persistent kernels,
    forward and backward, fp32 and bf16, three schedules, exactly sized buffers; no report."""
    from emu_scan import emu_build
    try:
        exe = emu_build.build("rnn_selfcheck", sanitize=mode)
    except emu_build.BuildError as e:
        pytest.fail(f"sanitized build of rnn_selfcheck failed:\n{e}", pytrace=False)
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0:abort_on_error=0", TSAN_OPTIONS="halt_on_error=0")
    r = subprocess.run([str(exe)], capture_output=True, text=True, env=env, timeout=1800)
    log = r.stdout + r.stderr
    assert r.returncode == 0 and "Sanitizer" not in log, log[-6000:]
    assert log.count("ok schedule") == 3, log[-3000:]
