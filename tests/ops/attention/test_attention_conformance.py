"""Every attention backend, in every variant this machine runs, against the fp64 oracle (naive.py's
contract pair on the very inputs the backend saw): out, lse and the gradients of q, k and v, in
fp32, bf16 and fp16, through the registry's autograd wiring; then the public function."""
from __future__ import annotations

import pytest
import torch

from pyneuro.ops import attn as attn_ops
from attention_cases import (DTYPE_IDS, DTYPES, Shape, assert_matches, every_isa, make_cotangent, make_inputs, oracle,
                             rng_for, run_backend, scale_of)

SHAPES = {
    "tiny": Shape(B=1, Hq=2, Lq=5, D=8),
    "L1": Shape(B=2, Hq=1, Lq=1, D=16),                                # one query, one key
    "gqa-causal": Shape(B=2, Hq=4, Hkv=2, Lq=7, Lk=11, D=24, causal=True),  # Lq < Lk, top-left
    "dropout": Shape(B=1, Hq=2, Hkv=1, Lq=9, D=16, dropout_p=0.3),
    "Lq>Lk-causal": Shape(B=1, Hq=3, Hkv=1, Lq=13, Lk=5, D=32, causal=True),
    "mqa-odd": Shape(B=3, Hq=4, Hkv=1, Lq=17, Lk=23, D=40),
    "mnist": Shape(B=4, Hq=4, Lq=17, D=24),
    "mnist-4x4-drop": Shape(B=2, Hq=4, Lq=50, D=24, dropout_p=0.1, causal=True),
    "long-odd": Shape(B=1, Hq=2, Lq=131, Lk=197, D=64, causal=True),
    "D128": Shape(B=1, Hq=2, Hkv=1, Lq=33, D=128, dropout_p=0.5),
    "block-edges": Shape(B=1, Hq=1, Lq=65, Lk=129, D=56),
}


def check(target, shape: Shape, dtype, magnitude=1.0, seed=0, gradients=True):
    q, k, v = make_inputs(shape, dtype, seed=seed, magnitude=magnitude)
    dout = make_cotangent(shape, dtype)
    rng_state = rng_for(shape)
    (out, lse), grads = run_backend(target, shape, q, k, v, dout, rng_state)
    # In fp16/bf16 the compiled backwards read the forward's rounded out (the contract), whose
    # rounding dominates their gradients' error; the reference is autograd through its fp32 math.
    seen = out if target.compiled and dtype != torch.float32 else None
    (out_ref, lse_ref), grads_ref = oracle(shape, q, k, v, dout, rng_state, out_seen=seen)
    tol = target.tolerance(dtype)
    assert out.dtype == dtype and out.device.type == target.device
    assert lse.dtype == torch.float32 and lse.shape == (shape.B, shape.Hq, shape.Lq)
    assert_matches(out, out_ref, tol, "out")
    # lse is compared absolutely-relative to its own size; it is a log, so its error is the
    # relative error of the row sums.
    assert_matches(lse, lse_ref, tol, "lse")
    for name, g, want, t in zip(("dq", "dk", "dv"), grads, grads_ref, (q, k, v)):
        if not gradients:
            break
        assert g.dtype == dtype and g.shape == t.shape, f"{name}: {g.dtype} {tuple(g.shape)}"
        if name in ("dq", "dk") and shape.lk == 1:
            # One key: softmax is constant, dS = 0, so dq = dk = 0 exactly, and a normwise error of
            # rounding noise is meaningless. Bound them by the size of one of their terms instead.
            term = dout.abs().max() * v.abs().max() * (k if name == "dq" else q).abs().max() * shape.D * scale_of(shape)
            assert g.abs().max().item() <= tol * term.item(), f"{name} {g.abs().max().item():.3g} should vanish"
            continue
        assert_matches(g, want, tol, name)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("shape", list(SHAPES))
@every_isa
def test_matches_oracle(any_target, shape, dtype):
    if (any_target.backend == "reference" and any_target.device == "cpu" and dtype != torch.float32
            and shape not in ("tiny", "dropout")):
        # (On a GPU they run: cheap there, and `make gpu-check` fails on a skipped cuda-marked test.)
        pytest.skip("the reference computes in fp32 whatever the dtype: its bf16/fp16 runs repeat fp32's "
                    "(tiny and dropout kept)")
    check(any_target, SHAPES[shape], dtype)


@pytest.mark.parametrize("d", list(range(8, 129, 8)))
def test_every_head_dim(target, d):
    """Every head dim the compiled kernels take (multiples of 8 up to 128), fp32 and bf16."""
    shape = Shape(B=1, Hq=2, Hkv=1, Lq=6, Lk=9, D=d, causal=d % 16 == 0)
    for dtype in (torch.float32, torch.bfloat16):
        check(target, shape, dtype, seed=d)


@pytest.mark.parametrize("magnitude", [8.0, 30.0])
def test_large_scores_do_not_overflow(any_target, magnitude):
    """Scores of ~±magnitude² (exp overflows fp32 above 88): the online softmax must subtract its
    running maximum before exponentiating, and the lse stay exact. At 30 the softmax is one-hot to
    fp32 precision and the gradients are rounding noise, so only out and lse are compared there."""
    shape = Shape(B=1, Hq=2, Lq=9, Lk=21, D=16, causal=True)
    check(any_target, shape, torch.float32, magnitude=magnitude, seed=3, gradients=magnitude < 10)


def test_public_function_matches_oracle(any_target):
    """attention() end to end: scale default, dropout rng drawn from torch's generator."""
    shape = Shape(B=2, Hq=4, Hkv=2, Lq=6, Lk=10, D=16, dropout_p=0.2)
    q, k, v = make_inputs(shape, torch.float32, device=any_target.device, seed=5)
    dout = make_cotangent(shape, torch.float32, device=any_target.device)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    torch.manual_seed(11)
    out, lse = attn_ops.attention(*leaves, dropout_p=shape.dropout_p, return_lse=True, backend=any_target.backend)
    grads = torch.autograd.grad(out, leaves, dout)
    torch.manual_seed(11)
    rng_state = attn_ops.draw_rng_state()  # the very draw attention() made
    (out_ref, lse_ref), grads_ref = oracle(shape, q, k, v, dout, rng_state)
    tol = any_target.tolerance(torch.float32)
    assert_matches(out, out_ref, tol, "out")
    assert_matches(lse, lse_ref, tol, "lse")
    for name, g, want in zip(("dq", "dk", "dv"), grads, grads_ref):
        assert_matches(g, want, tol, name)


def test_strided_inputs_match_contiguous(any_target):
    """q, k, v as SDPA's head split leaves them ((B, L, H, D) memory seen as (B, H, L, D)), and dout
    transposed in memory: read by value, the same results as contiguous copies."""
    shape = Shape(B=2, Hq=3, Lq=7, D=16, causal=True)
    q, k, v = make_inputs(shape, torch.float32, device=any_target.device, seed=6)
    dout = make_cotangent(shape, torch.float32, device=any_target.device)
    strided = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v)]
    dout_strided = dout.transpose(1, 2).contiguous().transpose(1, 2)
    assert not any(t.is_contiguous() for t in strided)
    results = []
    for inputs, cot in ((strided, dout_strided), ((q, k, v), dout)):
        leaves = [t.clone() if t.is_contiguous() else t.detach() for t in inputs]
        leaves = [t.requires_grad_() for t in leaves]
        out = attn_ops.attention(*leaves, causal=True, backend=any_target.backend)
        results.append([out, *torch.autograd.grad(out, leaves, cot)])
    for name, a, b in zip(("out", "dq", "dk", "dv"), *results):
        assert_matches(a, b, any_target.tolerance(torch.float32), f"{name} (strided vs contiguous)")


def test_bitwise_deterministic(target):
    shape = Shape(B=2, Hq=4, Hkv=2, Lq=9, Lk=12, D=24, dropout_p=0.25)
    q, k, v = make_inputs(shape, torch.float32, seed=7)
    dout = make_cotangent(shape, torch.float32)
    runs = [run_backend(target, shape, q, k, v, dout, rng_for(shape)) for _ in range(3)]
    for (fwd, grads) in runs[1:]:
        for a, b in zip((*fwd, *grads), (*runs[0][0], *runs[0][1])):
            assert torch.equal(a, b), "results differ between identical runs"


def test_double_backward_raises(target):
    shape = SHAPES["tiny"]
    q, k, v = (t.to(target.device).requires_grad_() for t in make_inputs(shape))
    out = attn_ops.attention(q, k, v, backend=target.backend)
    (dq,) = torch.autograd.grad(out.square().sum(), [q], create_graph=True)
    with pytest.raises(RuntimeError, match="no double backward"):
        dq.sum().backward()
