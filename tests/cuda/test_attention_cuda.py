"""The CUDA attention ops (csrc/cuda/attention_glue.cpp, attention.cu) on a GPU, called raw through
torch.ops.pyneuro, against naive.py's fp64 contract pair and against torch SDPA: every dtype, each
head-dim bucket, causal with Lq != Lk, GQA/MQA, dropout (the contract's Philox mask), strided
inputs, the one-launch backward (Lk within one key tile) and the two-launch one (longer Lk), long
sequences, determinism and the CUDA-only argument checks. (The MNIST shapes' speed against SDPA is
the benchmark suite's attention case, never a test's assertion.)

Marked ``cuda`` and skipped with the reason on a machine without a GPU; ``make gpu-check`` runs them
(and fails on a skip). Tolerances: pyneuro.ops.attn.TOLERANCE["cuda"] (normwise), the first-use
self-check's table.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pyneuro.ops.attn import TOLERANCE, naive

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


def _ops():
    try:
        import pyneuro._C  # noqa: F401  (loads the registrations)
    except ImportError as e:  # pragma: no cover - a GPU machine builds it first
        pytest.skip(f"pyneuro._C is not built: {e}")
    if not torch._C._dispatch_has_kernel_for_dispatch_key("pyneuro::attention_fwd", "CUDA"):
        pytest.fail("pyneuro._C has no CUDA kernel for attention_fwd (built without CUDA?)")
    return torch.ops.pyneuro


def operand(g, B, H, L, D, dtype, strided):
    if strided:  # (B, L, H, D + 8) storage: SDPA's head split of a fused projection, padded rows
        return torch.randn(B, L, H, D + 8, generator=g).to("cuda", dtype).transpose(1, 2)[..., :D]
    return torch.randn(B, H, L, D, generator=g).to("cuda", dtype)


def make(B, Hq, Hkv, Lq, Lk, D, dtype, strided=False, p=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v, dout = (operand(g, B, h, L, D, dtype, strided)
                     for h, L in ((Hq, Lq), (Hkv, Lk), (Hkv, Lk), (Hq, Lq)))
    rng = torch.tensor([987654321 + seed, 11 * seed], dtype=torch.int64) if p > 0 else None
    return q, k, v, dout, rng


def normwise(got, want) -> float:
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def check_against_contract(B, Hq, Hkv, Lq, Lk, D, dtype, causal=False, p=0.0, strided=False, seed=0):
    ops = _ops()
    q, k, v, dout, rng = make(B, Hq, Hkv, Lq, Lk, D, dtype, strided, p, seed)
    scale = 1 / math.sqrt(D)
    out, lse = ops.attention_fwd(q, k, v, causal, scale, p, rng)
    dq, dk, dv = ops.attention_bwd(dout, q, k, v, out, lse, causal, scale, p, rng)
    torch.cuda.synchronize()
    c = lambda t: t.cpu()  # noqa: E731
    want_out, want_lse = naive.attention_fwd_contract(c(q).double(), c(k).double(), c(v).double(), causal, scale, p, rng)
    want = naive.attention_bwd_contract(c(dout), c(q), c(k), c(v), c(out), c(lse), causal, scale, p, rng)
    assert out.dtype == dtype and dq.dtype == dtype and lse.dtype == F32
    assert out.is_contiguous() and dq.is_contiguous() and dk.is_contiguous() and dv.is_contiguous()
    tol = TOLERANCE["cuda"][dtype]
    for name, got, w in zip(("out", "lse", "dq", "dk", "dv"), (out, lse, dq, dk, dv), (want_out, want_lse, *want)):
        assert got.shape == w.shape, f"{name}: shape {tuple(got.shape)} != {tuple(w.shape)}"
        err = normwise(got, w)
        limit = TOLERANCE["cuda"][F32] if name == "lse" else tol
        assert err <= limit, f"{name}: normwise error {err:.2e} > {limit:.0e}"


SHAPES = [  # B, Hq, Hkv, Lq, Lk, D, causal
    (256, 4, 4, 17, 17, 24, False),    # the MNIST models
    (64, 4, 4, 50, 50, 24, True),
    (2, 8, 2, 33, 29, 64, True),       # GQA, Lq > Lk
    (2, 4, 1, 7, 131, 32, True),       # MQA, Lq < Lk, two 128-key tiles
    (1, 2, 2, 1, 1, 8, False),         # L = 1
    (2, 4, 4, 200, 200, 128, False),   # D = 128: 64-key tiles, two-launch backward
    (1, 4, 2, 1000, 1000, 72, True),   # long
]


@pytest.mark.parametrize("dtype", [F32, BF16, F16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:6])) + ("-causal" if s[6] else ""))
def test_matches_contract(shape, dtype):
    check_against_contract(*shape[:6], dtype, causal=shape[6])


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
@pytest.mark.parametrize("shape", [(2, 4, 2, 17, 17, 24, True), (1, 2, 2, 40, 300, 64, False)], ids=str)
def test_dropout_matches_the_mask(shape, dtype):
    check_against_contract(*shape[:6], dtype, causal=shape[6], p=0.3, seed=3)


def test_strided_inputs():
    check_against_contract(3, 4, 2, 21, 45, 40, F32, causal=True, strided=True)
    check_against_contract(2, 4, 4, 17, 17, 24, BF16, strided=True)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [F32, BF16, F16], ids=str)
def test_matches_sdpa(dtype, causal):
    """Forward and autograd gradients of SDPA (GQA through enable_gqa's repeat) on the same inputs."""
    ops = _ops()
    q, k, v, dout, _ = make(8, 4, 2, 50, 50, 32, dtype)
    scale = 1 / math.sqrt(32)
    out, lse = ops.attention_fwd(q, k, v, causal, scale, 0.0, None)
    dq, dk, dv = ops.attention_bwd(dout, q, k, v, out, lse, causal, scale, 0.0, None)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    kk, vv = (t.repeat_interleave(2, dim=1) for t in leaves[1:])
    ref = F.scaled_dot_product_attention(leaves[0], kk, vv, is_causal=causal, scale=scale)
    ref.backward(dout)
    # SDPA is itself a 16-bit kernel for fp16/bf16: both sides carry the dtype's error.
    tol = 2 * TOLERANCE["cuda"][dtype]
    for name, got, want in zip(("out", "dq", "dk", "dv"), (out, dq, dk, dv), (ref, *(t.grad for t in leaves))):
        err = normwise(got, want)
        assert err <= tol, f"{name}: {err:.2e} from SDPA > {tol:.0e}"


def test_deterministic():
    """No atomics: two runs are bitwise equal (both backward paths)."""
    ops = _ops()
    for Lk in (50, 300):
        q, k, v, dout, rng = make(2, 4, 2, 50, Lk, 32, F32, p=0.1)
        runs = []
        for _ in range(2):
            out, lse = ops.attention_fwd(q, k, v, True, 0.2, 0.1, rng)
            runs.append((out, lse, *ops.attention_bwd(dout, q, k, v, out, lse, True, 0.2, 0.1, rng)))
        for a, b in zip(*runs):
            assert torch.equal(a, b)


def test_cuda_argument_checks():
    ops = _ops()
    q, k, v, _, _ = make(1, 2, 2, 4, 4, 16, F32)
    with pytest.raises(ValueError, match="device"):
        ops.attention_fwd(q, k.cpu(), v, False, 1.0, 0.0, None)
    with pytest.raises(ValueError, match="rng_state"):
        ops.attention_fwd(q, k, v, False, 1.0, 0.5, torch.tensor([1, 2], device="cuda"))
    with pytest.raises(ValueError, match="head_dim"):
        ops.attention_fwd(q[..., :12], k[..., :12], v[..., :12], False, 1.0, 0.0, None)


def test_public_function():
    """pyneuro.ops.attention(..., backend="cuda") end to end: autograd through the registered pair."""
    _ops()
    from pyneuro.ops.attn import attention
    q, k, v, dout, _ = make(4, 4, 2, 17, 17, 24, F32)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = attention(*leaves, causal=True, backend="cuda")
    grads = torch.autograd.grad(out, leaves, dout)
    ref_leaves = [t.detach().cpu().double().requires_grad_() for t in (q, k, v)]
    ref = naive.attention_naive(*ref_leaves, causal=True)
    ref_grads = torch.autograd.grad(ref, ref_leaves, dout.cpu().double())
    tol = TOLERANCE["cuda"][F32]
    for got, want in zip((out, *grads), (ref, *ref_grads)):
        assert normwise(got, want) <= tol
