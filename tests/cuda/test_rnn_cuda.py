"""The CUDA recurrent-cell ops (csrc/cuda/rnn_glue.cpp, rnn.cu, rnn_persistent.cu) on a GPU, called
raw through torch.ops.pyneuro, against naive.py's fp64 contract pairs: every cell variant and
dtype, through each path (the persistent forward and backward with one unit tile per block, with
several tiles per block, and the per-step path they fall back to), the backward on the forward's
reserve, the fallback itself (H above the limit, the projection LSTM), and the paths agreeing.

Marked ``cuda`` and skipped with the reason on a machine without a GPU; ``make gpu-check`` runs them
(and fails on a skip). The forward path is chosen through rnn_glue.cpp's environment switches
(PYNEURO_CUDA_RNN_PATH, PYNEURO_CUDA_RNN_MAX_BLOCKS_X), read per call. Tolerances:
pyneuro.ops.rnn.TOLERANCE["cuda"] (normwise), the first-use self-check's table.
"""
from __future__ import annotations

import math

import pytest
import torch

from pyneuro.ops.rnn import TOLERANCE, naive

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
DTYPES = (F32, BF16, F16)
VARIANTS = ("lstm", "lstm_proj", "gru", "rnn_tanh", "rnn_relu", "leaky")
GATES = {"lstm": 4, "gru": 3, "rnn": 1, "leaky": 1}


def _ops():
    try:
        import pyneuro._C  # noqa: F401  (loads the registrations)
    except ImportError as e:  # pragma: no cover - a GPU machine builds it first
        pytest.skip(f"pyneuro._C is not built: {e}")
    return torch.ops.pyneuro


def cell_of(variant):
    return variant.split("_")[0]


def make(variant, T, B, I, H, dtype, P=3, seed=0, bias=True):
    """(args for the fwd op in schema order, cotangents), on the GPU, in dtype."""
    g = torch.Generator().manual_seed(seed)
    cell = cell_of(variant)
    G = GATES[cell]
    R = P if variant == "lstm_proj" else H
    k = 1 / math.sqrt(H)
    rnd = lambda *s, scale=1.0: ((torch.rand(*s, generator=g) * 2 - 1) * scale).to("cuda", dtype)  # noqa: E731
    x, h0 = rnd(T, B, I), rnd(B, R, scale=0.5)
    w_ih, w_hh = rnd(G * H, I, scale=k), rnd(G * H, R, scale=k)
    b_ih = rnd(G * H, scale=k) if bias else None
    b_hh = rnd(G * H, scale=k) if bias else None
    if cell == "lstm":
        args = (x, h0, rnd(B, H, scale=0.5), w_ih, w_hh, b_ih, b_hh, rnd(P, H, scale=k) if R != H else None)
    elif cell == "gru":
        args = (x, h0, w_ih, w_hh, b_ih, b_hh)
    elif cell == "rnn":
        args = (x, h0, w_ih, w_hh, b_ih, b_hh, variant == "rnn_relu")
    else:
        tau = (1 + torch.rand(H, generator=g) * 7).to("cuda", dtype)
        args = (x, h0, w_ih, w_hh, b_ih, tau)
    cot = dict(dy=rnd(T, B, R), dh_n=rnd(B, R), dc_n=rnd(B, H) if cell == "lstm" else None)
    return args, cot


def d64(v):
    return v.double().cpu() if isinstance(v, torch.Tensor) else v


def forward(variant, args):
    ops = _ops()
    cell = cell_of(variant)
    return {"lstm": ops.lstm_fwd, "gru": ops.gru_fwd, "rnn": ops.rnn_fwd, "leaky": ops.leaky_fwd}[cell](*args)


def oracle_forward(variant, args):
    cell = cell_of(variant)
    a = [d64(v) for v in args]
    return {"lstm": naive.lstm_fwd_contract, "gru": naive.gru_fwd_contract, "rnn": naive.rnn_fwd_contract,
            "leaky": naive.leaky_fwd_contract}[cell](*a)


def backward_pair(variant, args, cot, reserve):
    """(the CUDA op's gradients, the oracle's), both from the CUDA forward's reserve."""
    ops = _ops()
    cell = cell_of(variant)
    dy, dh_n, dc_n = cot["dy"], cot["dh_n"], cot["dc_n"]
    if cell == "lstm":
        got = ops.lstm_bwd(dy, dh_n, dc_n, *args, reserve)
        want = naive.lstm_bwd_contract(d64(dy), d64(dh_n), d64(dc_n), *[d64(v) for v in args], d64(reserve))
    elif cell == "rnn":
        got = ops.rnn_bwd(dy, dh_n, *args[:6], reserve, args[6])
        want = naive.rnn_bwd_contract(d64(dy), d64(dh_n), *[d64(v) for v in args[:6]], d64(reserve), args[6])
    else:
        fn, ref = (ops.gru_bwd, naive.gru_bwd_contract) if cell == "gru" else (ops.leaky_bwd, naive.leaky_bwd_contract)
        got = fn(dy, dh_n, *args, reserve)
        want = ref(d64(dy), d64(dh_n), *[d64(v) for v in args], d64(reserve))
    return got, want


def normwise(got, want) -> float:
    got, want = got.detach().double().cpu(), want.detach().double()
    scale = want.abs().max().item()
    err = (got - want).abs().max().item()
    return err / scale if scale > 0 else err


def assert_all_close(name, got, want, dtype, reserve=False):
    assert len(got) == len(want), name
    tol = TOLERANCE["cuda"][dtype]
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape, f"{name}[{k}]: shape {tuple(g.shape)} != {tuple(w.shape)}"
        if w.numel() == 0:
            continue
        assert g.dtype == (torch.float32 if reserve and k == len(got) - 1 else dtype), f"{name}[{k}] dtype {g.dtype}"
        assert torch.isfinite(g).all(), f"{name}[{k}]: non-finite"
        err = normwise(g, w)
        assert err <= tol, f"{name}[{k}]: normwise error {err:.2e} > {tol:.0e}"


PATHS = {  # name: (PYNEURO_CUDA_RNN_PATH, PYNEURO_CUDA_RNN_MAX_BLOCKS_X)
    "persistent": ("persistent", "0"),       # one unit tile per block, blocks meet at the grid barrier
    "persistent_tiles": ("persistent", "1"), # every unit tile on one block along H
    "stepwise": ("stepwise", "0"),           # the per-step path (cuBLAS + fused cell)
}


def set_path(monkeypatch, path):
    mode, mbx = PATHS[path]
    monkeypatch.setenv("PYNEURO_CUDA_RNN_PATH", mode)
    monkeypatch.setenv("PYNEURO_CUDA_RNN_MAX_BLOCKS_X", mbx)


# The projection LSTM has no persistent forward: stepwise only (test_fallback checks the rest).
FB_CASES = [(v, d, p) for v in VARIANTS for d in DTYPES for p in PATHS if v != "lstm_proj" or p == "stepwise"]


@pytest.mark.parametrize("variant,dtype,path", FB_CASES,
                         ids=[f"{v}-{str(d).split('.')[-1]}-{p}" for v, d, p in FB_CASES])
def test_forward_backward(monkeypatch, variant, dtype, path):
    set_path(monkeypatch, path)
    # H = 37: three unit tiles, one padded; B = 19: two batch tiles; T = 9.
    args, cot = make(variant, 9, 19, 5, 37, dtype, seed=1)
    out = forward(variant, args)
    torch.cuda.synchronize()
    assert_all_close("forward", out, oracle_forward(variant, args), dtype, reserve=True)
    got, want = backward_pair(variant, args, cot, out[-1])
    assert_all_close("backward", got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("variant", ("lstm", "gru", "leaky"))
def test_persistent_at_the_limit(monkeypatch, variant, dtype):
    """H = kRnnPersistentMaxH = 256 (16 blocks along H meeting at the barrier every step), B = 40."""
    set_path(monkeypatch, "persistent")
    args, _ = make(variant, 12, 40, 16, 256, dtype, seed=2)
    out = forward(variant, args)
    assert_all_close("forward", out, oracle_forward(variant, args), dtype, reserve=True)


def test_paths_agree(monkeypatch):
    """The persistent and the per-step forward of one problem agree to fp32 rounding."""
    args, _ = make("lstm", 20, 33, 8, 64, F32, seed=3)
    set_path(monkeypatch, "persistent")
    a = forward("lstm", args)
    set_path(monkeypatch, "stepwise")
    b = forward("lstm", args)
    for x, y in zip(a, b):
        assert normwise(x, y.double().cpu()) <= 2e-5


@pytest.mark.parametrize("variant", ("lstm", "gru", "rnn_relu", "leaky"))
def test_backward_paths_agree(monkeypatch, variant):
    """The persistent and the per-step backward, on one reserve, agree to fp32 rounding."""
    args, cot = make(variant, 16, 21, 6, 48, F32, seed=6)
    set_path(monkeypatch, "stepwise")
    reserve = forward(variant, args)[-1]
    a, _ = backward_pair(variant, args, cot, reserve)
    set_path(monkeypatch, "persistent")
    b, _ = backward_pair(variant, args, cot, reserve)
    for k, (x, y) in enumerate(zip(a, b)):
        if x.numel():
            assert normwise(x, y.double().cpu()) <= 2e-5, k


def test_fallback(monkeypatch):
    """auto falls back to the per-step path where the persistent kernels cannot run (H above the
    limit, the projection LSTM); forcing the persistent path there raises, naming the reason."""
    ops = _ops()
    for variant, H in (("gru", 257), ("lstm_proj", 16)):
        args, _ = make(variant, 3, 4, 3, H, F32, seed=4)
        monkeypatch.setenv("PYNEURO_CUDA_RNN_PATH", "auto")
        out = forward(variant, args)
        assert_all_close("forward", out, oracle_forward(variant, args), F32, reserve=True)
        monkeypatch.setenv("PYNEURO_CUDA_RNN_PATH", "persistent")
        with pytest.raises(RuntimeError, match="persistent forward cannot run"):
            forward(variant, args)
        monkeypatch.setenv("PYNEURO_CUDA_RNN_PATH", "persistent")
        _, cot = make(variant, 3, 4, 3, H, F32, seed=4)
        with pytest.raises(RuntimeError, match="persistent backward cannot run"):
            backward_pair(variant, args, cot, out[-1])
    monkeypatch.setenv("PYNEURO_CUDA_RNN_PATH", "nonsense")
    args, _ = make("rnn_tanh", 2, 2, 2, 4, F32)
    with pytest.raises(ValueError, match="PYNEURO_CUDA_RNN_PATH"):
        ops.rnn_fwd(*args)


def test_no_final_state_gradients():
    """dh_n / dc_n absent: the gradients equal the oracle's with zeros there."""
    for variant in ("lstm", "gru", "leaky", "rnn_relu"):
        args, cot = make(variant, 5, 3, 4, 20, F32, seed=5)
        reserve = forward(variant, args)[-1]
        cot = dict(cot, dh_n=None, dc_n=None)
        got, want = backward_pair(variant, args, cot, reserve)
        assert_all_close(f"{variant} backward", got, want, F32)


def test_absent_biases_and_wrong_device():
    ops = _ops()
    args, cot = make("gru", 4, 3, 3, 10, F32, bias=False)
    out = forward("gru", args)
    got, want = backward_pair("gru", args, cot, out[-1])
    assert got[4].shape == (0,) and got[5].shape == (0,)
    assert_all_close("backward", got, want, F32)
    cpu_args = [a.cpu() if isinstance(a, torch.Tensor) else a for a in args]
    with pytest.raises(ValueError):
        ops.gru_fwd(cpu_args[0].cuda(), *cpu_args[1:])  # mixed devices: the shared check names the argument
