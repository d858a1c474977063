"""Triton attention kernels (pyneuro.kernels.attention) against the fp64 contract pair of naive.py.

The launchers are called directly (docs/attention_contract.md's arguments) and compared with
`attention_fwd_contract` / `attention_bwd_contract` run in fp64 on the same (rounded) inputs: out
and lse, then dq, dk, dv for a random dout, the kernel's backward fed its own out and lse (as the
op does). Sizes are tiny (the interpreter runs every tl.dot in numpy) but cover what the kernels
branch on: tails in Lq and Lk, L = 1, Lq != Lk with causal masking (both ways round), grouped
heads, D padded to the tile (8 .. 128), block sizes with BLOCK_M != BLOCK_N, strided inputs, large
scores, and dropout, whose keep mask is also checked bit for bit against naive.dropout_keep_mask.

Errors are normwise, max|got − want| / max|want| per tensor; bounds by dtype (TOL).
"""
from __future__ import annotations

import math

import pytest
import torch

from pyneuro.ops.attn import naive

from triton_support import DEVICE, INTERPRET, kernels  # noqa: F401  (tests/kernels/triton_support.py)

ak = kernels("attention")

pytestmark = pytest.mark.triton

TOL = {
    # fp32 scores and IEEE fp32 dots (no TF32); measured <= 1e-6 over the cases below.
    torch.float32: 5e-6,
    # bf16: P and dS are rounded to bf16 for the dots (FA2's choice), and out/grads once; the
    # interpreter rounds fp32 -> bf16 by truncation (2^-7 relative).
    torch.bfloat16: 3e-2,
    # fp16: the same roundings at 2^-11.
    torch.float16: 5e-3,
}


def make(B, Hq, Hkv, Lq, Lk, D, dtype=torch.float32, seed=0, magnitude=1.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Lq, D, generator=g) * magnitude
    k = torch.randn(B, Hkv, Lk, D, generator=g) * magnitude
    v = torch.randn(B, Hkv, Lk, D, generator=g)
    dout = torch.randn(B, Hq, Lq, D, generator=g)
    return [t.to(dtype) for t in (q, k, v, dout)]


def _close(got, want, what, tol, natural=0.0):
    """Normwise error. `natural` is the size the terms of a gradient have (e.g. scale·|dout||v||k|
    for dq): where the true gradient cancels to almost nothing (a query row that sees one key has
    dS = P (dP − delta) = 0 exactly) the error is measured against it instead, since relative to
    a zero it is undefined."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    got, want = got.detach().cpu().double(), want.detach().cpu().double()
    assert torch.isfinite(got).all(), f"{what}: not finite"
    scale = want.abs().max().item()
    if scale < 1e-3 * natural:
        scale = natural
    err = (got - want).abs().max().item() / scale
    assert err <= tol, f"{what}: normwise error {err:.2e} > {tol:.0e}"
    return err


def check(q, k, v, dout, causal, dropout_p=0.0, rng_state=None, scale=None, tol=None):
    """fwd and bwd of the launchers against the fp64 contract pair; returns the kernels' results."""
    dtype = q.dtype
    tol = tol if tol is not None else TOL[dtype]
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    dev = [t.to(DEVICE) for t in (q, k, v, dout)]
    out, lse = ak.attention_fwd(*dev[:3], causal, scale, dropout_p, rng_state)
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert out.is_contiguous() and lse.is_contiguous() and lse.shape == q.shape[:3]
    want_out, want_lse = naive.attention_fwd_contract(q, k, v, causal, scale, dropout_p, rng_state)
    _close(out, want_out, "out", tol)
    _close(lse, want_lse, "lse", tol)

    grads = ak.attention_bwd(dev[3], *dev[:3], out, lse, causal, scale, dropout_p, rng_state)
    want = naive.attention_bwd_contract(dout, q, k, v, out.cpu(), lse.cpu(), causal, scale, dropout_p, rng_state)
    amax = [t.double().abs().max().item() for t in (q, k, v, dout)]
    naturals = (scale * amax[3] * amax[2] * amax[1], scale * amax[3] * amax[2] * amax[0], amax[3])
    for name, got, w, like, natural in zip(("dq", "dk", "dv"), grads, want, (q, k, v), naturals):
        assert got.dtype == dtype and got.is_contiguous() and got.shape == like.shape, name
        _close(got, w, name, tol, natural)
    ptrs = [t.untyped_storage().data_ptr() for t in (out, lse, *grads)] + \
           [t.untyped_storage().data_ptr() for t in dev]
    assert len(set(ptrs)) == len(ptrs), "outputs must be fresh tensors"
    return out, lse, grads


# (B, Hq, Hkv, Lq, Lk, D)
SHAPES = [
    (1, 2, 2, 37, 45, 24),   # tails in both lengths, D padded to 32
    (2, 1, 1, 45, 37, 64),   # Lq > Lk
    (1, 4, 2, 33, 50, 16),   # GQA 2:1, Lk > Lq
    (1, 3, 1, 20, 20, 40),   # GQA 3:1 (multi-query), D padded to 64
    (1, 1, 1, 1, 1, 8),      # one query, one key
    (1, 2, 1, 1, 19, 32),    # one query row
    (1, 1, 1, 23, 1, 16),    # one key
    (1, 1, 1, 64, 64, 128),  # full tiles only (no tail), largest D
]


def _id(s):
    return "B{}H{}x{}Lq{}Lk{}D{}".format(*s)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", SHAPES, ids=[_id(s) for s in SHAPES])
def test_fp32(shape, causal):
    check(*make(*shape), causal)


@pytest.mark.parametrize("D", [8, 56, 72, 96, 120])
def test_head_dims(D):
    """A sample of the other D: padded (56 -> 64, 72 -> 128, 120 -> 128) and 8 (tile 16)."""
    check(*make(1, 2, 1, 21, 26, D, seed=D), True)


@pytest.mark.parametrize("blocks", [(16, 16), (16, 32), (32, 16), (32, 32)], ids=lambda b: "%dx%d" % b)
def test_block_shapes(blocks, monkeypatch):
    """Every kernel at square and oblong tiles: the causal split into unmasked and masked blocks
    depends on how the diagonal crosses them (Lq > Lk and Lq < Lk)."""
    monkeypatch.setattr(ak, "INTERPRET_BLOCKS", {"fwd": blocks, "dkdv": blocks[::-1], "dq": blocks})
    check(*make(1, 2, 1, 70, 41, 16, seed=3), True)
    check(*make(1, 2, 1, 41, 70, 16, seed=4), True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_half(dtype, causal):
    check(*make(1, 2, 1, 39, 53, 64, dtype=dtype), causal)


def test_strided_inputs():
    """(B, L, H, D) storage seen as (B, H, L, D), as attention inside a transformer gets it; the
    outputs are contiguous all the same."""
    q, k, v, dout = make(2, 3, 3, 29, 31, 24)
    q, k, v, dout = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v, dout))
    assert not q.is_contiguous()
    check(q, k, v, dout, True)


# Padded keys (zero rows of k past Lk) get exp2(0 − lse·log2 e) = inf in the backward when lse is
# very negative; those entries are masked (dQ) or land in dk/dv rows never stored (dK/dV), and
# numpy warns about the inf.
@pytest.mark.filterwarnings("ignore:overflow encountered in exp2:RuntimeWarning")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_large_scores(dtype):
    """Scores of order ±1e4 (|q|, |k| ~ 30, scale 1): the running max keeps every exp2 ≤ 1, so
    nothing overflows and lse is exact to fp32; both the forward and the recomputed P."""
    q, k, v, dout = make(1, 2, 1, 30, 35, 16, dtype=dtype, magnitude=30.0)
    max_score = (q.double() @ k.double().transpose(-2, -1)).abs().max().item()
    assert max_score > 5e3  # exp of it overflows fp32 (and fp64) many times over
    # An fp32 score carries at least one rounding, |S|·2^-24 absolute, into the exponent: P, and
    # so dq and dk, are only that accurate (fp32 measured: out 5.4e-6, dq 1.2e-4, bound 6e-4).
    tol = TOL[dtype] + max_score * 2.0**-24
    out, lse, _ = check(q, k, v, dout, True, scale=1.0, tol=tol)
    assert lse.abs().max() > 1e3


def test_dropout_keep_mask_bits():
    """The kernel's keep mask equals naive.dropout_keep_mask bit for bit. With q = 0 every score is
    0, so P = 1/Lk, and with v = the identity (Lk = D) out[i, j] = keep[i, j] / (Lk (1 − p)):
    the mask can be read off out exactly. Seeds over the whole 64 bits (negative as int64 too),
    offsets above 32 bits (only the low word counts), thresholds on both sides of 2^31."""
    B, H, Lq, Lk = 2, 2, 19, 32
    q = torch.zeros(B, H, Lq, Lk)
    k = torch.randn(B, H, Lk, Lk)
    v = torch.eye(Lk).expand(B, H, Lk, Lk).contiguous()
    cases = [(0, 0, 0.5), (1, 1, 0.1), (2**40 + 3, 2**32 + 5, 0.9), (-5, 77, 0.5), (2**63 - 1, 2**31, 0.25)]
    for seed, offset, p in cases:
        rng = torch.tensor([seed, offset], dtype=torch.int64)
        out, _ = ak.attention_fwd(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), False, 1.0, p, rng)
        got = out.cpu() * (Lk * (1 - p)) > 0.5
        want = naive.dropout_keep_mask(rng, B, H, Lq, Lk, p)
        assert torch.equal(got, want), f"seed {seed} offset {offset} p {p}: {(got != want).sum()} bits differ"
        assert 0 < want.float().mean() < 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_dropout(dtype, causal):
    """Forward and backward with dropout against the oracle run with the same rng_state (GQA, tails)."""
    rng = torch.tensor([987654321987, 12], dtype=torch.int64)
    check(*make(2, 2, 1, 37, 45, 32, dtype=dtype, seed=5), causal, dropout_p=0.3, rng_state=rng)


def test_backward_deterministic():
    """dk/dv sum the group's heads in registers in a fixed order: two runs agree bit for bit."""
    q, k, v, dout = (t.to(DEVICE) for t in make(1, 4, 1, 40, 33, 16))
    out, lse = ak.attention_fwd(q, k, v, True, 0.25, 0.0, None)
    first = ak.attention_bwd(dout, q, k, v, out, lse, True, 0.25, 0.0, None)
    second = ak.attention_bwd(dout, q, k, v, out, lse, True, 0.25, 0.0, None)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("D", [4, 12, 136])
def test_rejects_head_dim(D):
    q, k, v, _ = make(1, 1, 1, 4, 4, D)
    with pytest.raises(ValueError, match="head dim"):
        ak.attention_fwd(q, k, v, False, 1.0, 0.0, None)


def test_configs_every_case():
    """The autotuner has configurations for every kernel, dtype, D and architecture, each a valid
    tiling: powers of two >= 16 (tl.dot's minimum; the dropout mask takes keys in fours)."""
    for kernel in ("fwd", "dkdv", "dq"):
        for dtype in ak.DTYPES:
            for D in range(8, 129, 8):
                for arch in (80, 86, 89, 90, 100):
                    kept = ak.configs(kernel, dtype, D, arch)
                    assert kept, (kernel, dtype, D, arch)
                    for bm, bn, warps, stages in kept:
                        for b in (bm, bn):
                            assert b >= 16 and b & (b - 1) == 0, (kernel, dtype, D, arch, b)
                        assert warps in (4, 8) and 1 <= stages <= 4


@pytest.mark.parametrize("shape", [(65536, 1, 4, 8), (1, 65536, 4, 8), (256, 257, 4, 8)], ids=["batch", "heads", "both"])
def test_batch_times_heads_beyond_the_grid_axis_is_refused_by_name(shape):
    """The grids are (blocks of L, B·H), and CUDA caps a grid's second axis at 65,535 (the
    interpreter does not): a direct launch refuses more before allocating anything, and the op's
    supports() names it so that auto passes triton over (meta tensors: no memory)."""
    from pyneuro.ops import attn as attn_op

    assert ak.MAX_BATCH_HEADS == 65535
    q = torch.empty(shape, device="meta")
    with pytest.raises(ValueError, match=f"batch × heads = {shape[0]} × {shape[1]} = {shape[0] * shape[1]} exceeds 65535"):
        ak.attention_fwd(q, q, q, False, 1.0, 0.0, None)
    problem = attn_op._compiled_supports("triton")(q, q, q)
    assert isinstance(problem, ValueError) and f"got q {shape}" in str(problem)
    fits = torch.empty(255, 257, 4, 8, device="meta")
    assert attn_op._compiled_supports("triton")(fits, fits, fits) is None


def test_row_offsets_stay_within_int32():
    """The kernels multiply row numbers by the row stride in int32 (only the (batch, head) base is
    int64), which a GPU wraps and the interpreter's numpy does not. A view whose row stride would
    overflow there (q of a packed qkv projection: stride 3 H D) is copied to contiguous rows first;
    a head too long even contiguous is refused by name, and supports() passes triton over for it
    (meta tensors: no memory)."""
    from pyneuro.ops import attn as attn_op

    qkv = torch.empty(1, 180_000, 3, 32, 128, device="meta", dtype=torch.bfloat16)
    q = qkv[:, :, 0].transpose(1, 2)  # (1, 32, 180000, 128), row stride 3 · 32 · 128
    assert (q.shape[2] + 256) * q.stride(2) > ak.MAX_ROW_OFFSET
    assert ak._last_unit(q).stride() == (32 * 180_000 * 128, 180_000 * 128, 128, 1)
    short = qkv[:, :1000, 0].transpose(1, 2)
    assert ak._last_unit(short) is short  # no copy while the offsets fit

    fits = torch.empty(1, 1, 2**24 - 512, 128, device="meta")
    too_long = torch.empty(1, 1, 2**24, 128, device="meta")
    assert attn_op._compiled_supports("triton")(fits, fits, fits) is None
    problem = attn_op._compiled_supports("triton")(too_long, too_long, too_long)
    assert isinstance(problem, ValueError) and "int32 row offsets" in str(problem)
    with pytest.raises(ValueError, match="exceeds the kernels' int32 row offsets"):
        ak.attention_fwd(too_long, too_long, too_long, False, 1.0, 0.0, None)
    kv_long = torch.empty(1, 1, 2**28, 8, device="meta")  # keys count too, with q short
    with pytest.raises(ValueError, match="int32 row offsets"):
        ak.attention_fwd(fits[..., :2, :8], kv_long, kv_long, False, 1.0, 0.0, None)
