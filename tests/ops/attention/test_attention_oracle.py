"""The oracle itself: naive.py's contract pair (attention_fwd_contract / attention_bwd_contract,
the hand-written backward every kernel implements) against torch's SDPA math backend in fp64 and
against autograd through attention_naive; then every backend against SDPA directly."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from pyneuro.ops import attn as attn_ops
from pyneuro.ops.attn import naive
from attention_cases import Shape, assert_matches, make_cotangent, make_inputs, rng_for, run_backend, scale_of

SHAPES = {
    "L1": Shape(B=1, Hq=2, Lq=1, D=8),
    "odd": Shape(B=2, Hq=3, Lq=7, Lk=9, D=24),
    "causal-Lq<Lk": Shape(B=1, Hq=2, Lq=5, Lk=12, D=16, causal=True),
    "causal-Lq>Lk": Shape(B=1, Hq=2, Lq=12, Lk=5, D=16, causal=True),
    "gqa": Shape(B=2, Hq=6, Hkv=2, Lq=10, D=32, causal=True),
    "mqa": Shape(B=1, Hq=4, Hkv=1, Lq=3, Lk=8, D=8),
}


def sdpa_fp64(shape: Shape, q, k, v):
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, is_causal=shape.causal, scale=scale_of(shape),
                                              enable_gqa=shape.hkv != shape.Hq)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_contract_pair_matches_sdpa_math_fp64(shape):
    s = SHAPES[shape]
    q, k, v = make_inputs(s, torch.float64, seed=1)
    dout = make_cotangent(s, torch.float64)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    want = sdpa_fp64(s, *leaves)
    want_grads = torch.autograd.grad(want, leaves, dout)
    out, lse = naive.attention_fwd_contract(q, k, v, s.causal, scale_of(s), 0.0, None)
    grads = naive.attention_bwd_contract(dout, q, k, v, out, lse, s.causal, scale_of(s), 0.0, None)
    torch.testing.assert_close(out, want, atol=1e-12, rtol=1e-10)
    for name, g, w in zip("qkv", grads, want_grads):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-10, msg=lambda m: f"d{name}: {m}")
    # lse: log Σ exp of the masked, scaled scores, written out.
    scores = (q @ k.repeat_interleave(s.Hq // s.hkv, 1).transpose(-2, -1)) * scale_of(s)
    if s.causal:
        scores = scores.masked_fill(~torch.ones(s.Lq, s.lk, dtype=torch.bool).tril(), float("-inf"))
    torch.testing.assert_close(lse, scores.exp().sum(-1).log(), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("shape", ["odd", "gqa"])
def test_contract_backward_with_dropout_is_autograd_through_the_reference(shape):
    s = Shape(**{**SHAPES[shape].__dict__, "dropout_p": 0.35})
    q, k, v = make_inputs(s, torch.float64, seed=2)
    dout = make_cotangent(s, torch.float64)
    rng = rng_for(s)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    want, want_lse = naive.attention_naive(*leaves, s.causal, scale_of(s), s.dropout_p, rng, return_lse=True)
    want_grads = torch.autograd.grad(want, leaves, dout)
    out, lse = naive.attention_fwd_contract(q, k, v, s.causal, scale_of(s), s.dropout_p, rng)
    grads = naive.attention_bwd_contract(dout, q, k, v, out, lse, s.causal, scale_of(s), s.dropout_p, rng)
    torch.testing.assert_close(out, want, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(lse, want_lse, atol=1e-12, rtol=1e-12)
    for name, g, w in zip("qkv", grads, want_grads):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-10, msg=lambda m: f"d{name}: {m}")


@pytest.mark.parametrize("shape", ["L1", "causal-Lq<Lk", "gqa"])
def test_every_backend_matches_sdpa(any_target, shape):
    """A second, independent expected value: SDPA's math backend in fp64 on the same fp32 inputs."""
    s = SHAPES[shape]
    q, k, v = make_inputs(s, torch.float32, seed=4)
    dout = make_cotangent(s, torch.float32)
    leaves = [t.double().requires_grad_() for t in (q, k, v)]
    want = sdpa_fp64(s, *leaves)
    want_grads = torch.autograd.grad(want, leaves, dout.double())
    (out, _), grads = run_backend(any_target, s, q, k, v, dout, None)
    tol = any_target.tolerance(torch.float32)
    assert_matches(out, want, tol, "out")
    for name, g, w in zip(("dq", "dk", "dv"), grads, want_grads):
        if s.lk == 1 and name != "dv":  # one key: dq = dk = 0 exactly (see test_attention_conformance)
            assert g.abs().max() < 1e-5
            continue
        assert_matches(g, w, tol, name)
