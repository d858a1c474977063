"""The CPU attention kernels (csrc/cpu/attention.cpp, csrc/cpu/isa/attention_kernels.cpp), called
directly through torch.ops.pyneuro, on what the conformance suite (tests/ops/attention) does not
aim at: scores of large magnitude, sequence lengths at the tile boundaries (64 query rows, 128
keys) in both backward schedules (fused per kv head, split dq / dk-dv), every head dim the kernels
take, the dropout mask bit for bit against naive.dropout_keep_mask in the forward and the backward,
the keep rate, independence from the thread count, and the argument check of
csrc/common/attention_args.h. Every ISA variant this CPU runs."""
from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("pyneuro._C", reason="the compiled extension is not built")
import pyneuro._C as _C  # noqa: E402
from pyneuro.ops.attn import naive  # noqa: E402

FWD = torch.ops.pyneuro.attention_fwd
BWD = torch.ops.pyneuro.attention_bwd
TILE = _C.build_info()["limits"]["attention"]["cpu_tile"]
BQ, BK = TILE["block_q"], TILE["block_k"]
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


@pytest.fixture(params=_C.cpu_isas())
def isa(request):
    before = _C.cpu_isa()
    _C.set_cpu_isa(request.param)
    yield request.param
    _C.set_cpu_isa(before)


def _err(got, want):
    return ((got.double() - want.double()).abs().max() / want.double().abs().max()).item()


def _rand(*shape, dtype=torch.float32, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def _check_against_oracle(q, k, v, causal, p=0.0, rng=None, scale=None, tol=None, backward=True):
    """Forward and backward of the kernel against the fp64 contract pair, on the same inputs."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    tol = TOL[q.dtype] if tol is None else tol
    out, lse = FWD(q, k, v, causal, scale, p, rng)
    want_out, want_lse = naive.attention_fwd_contract(q, k, v, causal, scale, p, rng)
    assert out.dtype == q.dtype and out.is_contiguous() and lse.dtype == torch.float32
    assert _err(out, want_out) < tol, "out"
    assert _err(lse, want_lse) < 1e-6 if q.dtype == torch.float32 else _err(lse, want_lse) < tol, "lse"
    if not backward:
        return
    dout = _rand(*out.shape, dtype=q.dtype, seed=7)
    grads = BWD(dout, q, k, v, out, lse, causal, scale, p, rng)
    wants = naive.attention_bwd_contract(dout, q, k, v, out, lse, causal, scale, p, rng)
    for name, got, want in zip(("dq", "dk", "dv"), grads, wants):
        assert got.shape == want.shape and got.dtype == q.dtype, name
        assert _err(got, want) < tol, f"{name}: {_err(got, want):.2e}"


@pytest.mark.parametrize("causal", [False, True])
def test_large_magnitude_scores(isa, causal):
    # Scores up to ~150 (softmax one-hot to fp32 precision): exp2 of arguments down to ~-400 must
    # give 0, not overflow, and the online max must rescale across key blocks without inf - inf.
    # (fp32 scores carry an error of ~|S| 2^-24, so the error of P grows with |S|: ~4e-6 here,
    # ~1.5e-5 at |S| ~ 400, in any fp32 kernel.) With unit scale the scores reach ~1e3: finite
    # outputs. The gradients of a one-hot softmax are ~1e-15 (dP - delta cancels in fp64, not in
    # fp32), so the backward is checked at scores of ~50: sharp, with gradients that are not zero.
    B, H, Lq, Lk, D = 1, 2, 70, 300, 32
    v = _rand(B, H, Lk, D, seed=3)
    q, k = _rand(B, H, Lq, D, scale=6, seed=1), _rand(B, H, Lk, D, scale=6, seed=2)
    _check_against_oracle(q, k, v, causal, backward=False)
    out, lse = FWD(q, k, v, causal, 1.0, 0.0, None)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all() and lse.abs().max() > 500
    q, k = _rand(B, H, Lq, D, scale=4, seed=1), _rand(B, H, Lk, D, scale=4, seed=2)
    _check_against_oracle(q, k, v, causal)


# Both schedules of the backward: split (dq over query blocks, then dk/dv over key blocks) runs when
# batch * kv_heads < 2 * threads, fused (one task per (b, kv head)) otherwise. (No single-key or
# single-query causal case: there dq is 0 exactly, and a normwise error against fp64 rounding noise
# means nothing.)
@pytest.mark.parametrize("schedule", ["split", "fused"])
@pytest.mark.parametrize("Lq,Lk", [(BQ - 1, BK + 1), (BQ, BK), (BQ + 1, BK - 1), (2 * BQ + 1, 2 * BK + 1), (2, 3),
                                   (3 * BQ, 5)])
@pytest.mark.parametrize("causal", [False, True])
def test_tile_boundaries(isa, schedule, Lq, Lk, causal):
    B = 1 if schedule == "split" else 2 * torch.get_num_threads()
    Hq, Hkv, D = 2, 1, 16
    q, k, v = _rand(B, Hq, Lq, D, seed=1), _rand(B, Hkv, Lk, D, seed=2), _rand(B, Hkv, Lk, D, seed=3)
    _check_against_oracle(q, k, v, causal)


@pytest.mark.parametrize("D", range(8, 129, 8))
def test_every_head_dim(isa, D):
    q, k, v = _rand(2, 4, 37, D, seed=1), _rand(2, 2, 45, D, seed=2), _rand(2, 2, 45, D, seed=3)
    _check_against_oracle(q, k, v, causal=D % 16 == 0)


@pytest.mark.parametrize("Lq", [1, 2, 3, 4, 5, 7, 9])
@pytest.mark.parametrize("Lk", [17, 50, BK + 50])
def test_odd_vector_counts_and_short_row_strips(isa, Lq, Lk):
    # D = 24 and 17 or 50 keys (padded to 24 and 56 columns) are odd numbers of 8-lane vectors, which
    # AVX2 multiplies in 4-row x 3-vector strips: every short last strip (1..3 rows, and 4 + 1..3),
    # and accumulation over a second key block (Lk > BK).
    q, k, v = _rand(1, 2, Lq, 24, seed=1), _rand(1, 2, Lk, 24, seed=2), _rand(1, 2, Lk, 24, seed=3)
    _check_against_oracle(q, k, v, causal=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_strided(dtype):
    # (B, L, H, D) memory seen as (B, H, L, D): strided rows, unit last stride.
    q = _rand(2, 90, 4, 24, dtype=dtype, seed=1).transpose(1, 2)
    k = _rand(2, 140, 2, 24, dtype=dtype, seed=2).transpose(1, 2)
    v = _rand(2, 140, 2, 24, dtype=dtype, seed=3).transpose(1, 2)
    _check_against_oracle(q, k, v, causal=True, p=0.25, rng=torch.tensor([5, 9]))


def _mask_from_kernel(rng, B, Hq, Hkv, Lq, Lk, p, key0):
    """The kernel's keep mask (B, Hq, Lq, D) of keys [key0, key0 + D), read off the forward and the
    backward: with q = 0 every probability is 1/Lk, and v (forward) picks key key0 + d into column d,
    so out[i, d] · Lk (1 - p) = M[i, key0 + d]; in the backward dout = one-hot rows picks query i into
    column i of dv, so dv[j, i] · Lk (1 - p) = Σ over the group of M[i, j]."""
    D = 128
    q = torch.zeros(B, Hq, Lq, D)
    k = _rand(B, Hkv, Lk, D, seed=4)
    v = torch.zeros(B, Hkv, Lk, D)
    v[:, :, key0:key0 + D, :] = torch.eye(D)[: Lk - key0]
    out, lse = FWD(q, k, v, False, 1.0, p, rng)
    fwd_mask = out * Lk * (1 - p)
    dout = torch.zeros(B, Hq, Lq, D)
    dout[:, :, :, :Lq] = torch.eye(Lq)
    _, _, dv = BWD(dout, q, k, v, out, lse, False, 1.0, p, rng)
    bwd_mask = (dv * Lk * (1 - p))[:, :, :, :Lq].transpose(-2, -1)  # (B, Hkv, Lq, Lk): group sums
    return fwd_mask, bwd_mask


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_mask_bit_for_bit(isa, p):
    B, Hq, Hkv, Lq, Lk = 2, 4, 2, 70, 200  # 70 rows: two query blocks; 200 keys: two key blocks
    rng = torch.tensor([0xF234_5678_9ABC_DEF0 - (1 << 64), 3_000_000_007])  # seed >= 2^63 as uint64, offset > 2^31
    want = naive.dropout_keep_mask(rng, B, Hq, Lq, Lk, p).double()
    for key0 in (0, Lk - 128):
        fwd_mask, bwd_mask = _mask_from_kernel(rng, B, Hq, Hkv, Lq, Lk, p, key0)
        cols = min(128, Lk - key0)
        torch.testing.assert_close(fwd_mask[..., :cols].double(), want[..., key0:key0 + cols], rtol=0, atol=1e-4)
        group = want.view(B, Hkv, Hq // Hkv, Lq, Lk).sum(2)
        torch.testing.assert_close(bwd_mask.double(), group, rtol=0, atol=1e-4)


def test_dropout_keep_rate():
    p, B, H, L = 0.3, 4, 4, 128
    rng = torch.tensor([42, 7])
    fwd_mask, _ = _mask_from_kernel(rng, B, H, H, L, L, p, 0)
    kept = fwd_mask.round().sum().item()
    n = fwd_mask.numel()
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(kept - n * (1 - p)) < 5 * sigma, f"kept {kept} of {n}, expected {n * (1 - p):.0f} +- {sigma:.0f}"
    assert set(fwd_mask.round().unique().tolist()) <= {0.0, 1.0}


def test_results_do_not_depend_on_the_thread_count():
    q, k, v = _rand(3, 4, 150, 40, seed=1), _rand(3, 2, 170, 40, seed=2), _rand(3, 2, 170, 40, seed=3)
    rng = torch.tensor([11, 12])
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, 2, 4):  # 4 threads: the split backward (3 (b, kv head) pairs < 2 * 4), else fused
            torch.set_num_threads(t)
            out, lse = FWD(q, k, v, True, 0.2, 0.1, rng)
            results.append((out, lse) + tuple(BWD(q, q, k, v, out, lse, True, 0.2, 0.1, rng)))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


ERRORS = {
    # dtype -> TypeError
    "q must be float32, float16 or bfloat16, got Double": (TypeError, dict(q=torch.zeros(1, 2, 3, 8).double())),
    "k must have q's dtype Float, got Half": (TypeError, dict(k=torch.zeros(1, 1, 5, 8).half())),
    "rng_state must be Long, got Int": (TypeError, dict(rng_state=torch.zeros(2, dtype=torch.int32))),
    # everything else -> ValueError
    "q must be 4-D": (ValueError, dict(q=torch.zeros(2, 3, 8))),
    r"head_dim = q.shape\[3\] must be a multiple of 8 in \[8, 128\], got 12": (
        ValueError, dict(q=torch.zeros(1, 2, 3, 12), k=torch.zeros(1, 1, 5, 12), v=torch.zeros(1, 1, 5, 12))),
    r"head_dim = q.shape\[3\] must be a multiple of 8 in \[8, 128\], got 136": (
        ValueError, dict(q=torch.zeros(1, 2, 3, 136), k=torch.zeros(1, 1, 5, 136), v=torch.zeros(1, 1, 5, 136))),
    r"the query heads q.shape\[1\] = 2 must be a multiple of the key/value heads k.shape\[1\] = 3": (
        ValueError, dict(k=torch.zeros(1, 3, 5, 8), v=torch.zeros(1, 3, 5, 8))),
    "v must have shape k's shape": (ValueError, dict(v=torch.zeros(1, 1, 6, 8))),
    "k must have a last \\(head_dim\\) stride of 1": (ValueError, dict(k=torch.zeros(1, 1, 8, 5).transpose(2, 3))),
    r"dropout_p must be in \[0, 1\), got 1": (ValueError, dict(dropout_p=1.0)),
    "rng_state .* is required when dropout_p > 0": (ValueError, dict(dropout_p=0.5, rng_state=None)),
    r"rng_state must have shape \[seed, offset\]": (ValueError, dict(rng_state=torch.zeros(3, dtype=torch.long))),
    "scale must be finite": (ValueError, dict(scale=float("nan"))),
}


@pytest.mark.parametrize("message", list(ERRORS))
def test_forward_refuses(message):
    exc, change = ERRORS[message]
    args = dict(q=torch.zeros(1, 2, 3, 8), k=torch.zeros(1, 1, 5, 8), v=torch.zeros(1, 1, 5, 8), causal=False,
                scale=1.0, dropout_p=0.0, rng_state=None)
    args.update(change)
    with pytest.raises(exc, match=f"attention_fwd \\(cpu\\): .*{message}"):
        FWD(*args.values())


def test_backward_refuses_a_wrong_lse():
    q, k, v = torch.zeros(1, 2, 3, 8), torch.zeros(1, 1, 5, 8), torch.zeros(1, 1, 5, 8)
    out, lse = FWD(q, k, v, False, 1.0, 0.0, None)
    with pytest.raises(ValueError, match=r"attention_bwd \(cpu\): lse must have shape"):
        BWD(out, q, k, v, out, lse[..., :2], False, 1.0, 0.0, None)
    with pytest.raises(TypeError, match=r"attention_bwd \(cpu\): lse must be Float"):
        BWD(out, q, k, v, out, lse.double(), False, 1.0, 0.0, None)
    with pytest.raises(ValueError, match=r"attention_bwd \(cpu\): dout must have shape q's shape"):
        BWD(out[:, :1], q, k, v, out, lse, False, 1.0, 0.0, None)
