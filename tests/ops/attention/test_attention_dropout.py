"""Attention dropout: the contract's Philox mask (keep rate, independence, layout), and every
backend applying exactly that mask in its forward and its backward."""
from __future__ import annotations

import math

import pytest
import torch

from pyneuro.ops import attn as attn_ops
from pyneuro.ops.attn import naive
from attention_cases import Shape, assert_matches, interpreted, make_inputs, oracle, run_backend


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_within_binomial_error(p):
    rng = torch.tensor([2024, 3], dtype=torch.int64)
    keep = naive.dropout_keep_mask(rng, 4, 8, 128, 129, p)  # 528,384 draws, Lk not a multiple of 4
    n = keep.numel()
    rate = keep.double().mean().item()
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(rate - (1 - p)) < 5 * sigma, f"keep rate {rate:.5f}, expected {1 - p} ± {5 * sigma:.5f}"
    # Each of the four words of one Philox call, and each (b, h), keeps at the same rate.
    for lane in range(4):
        lane_rate = keep[..., lane::4].double().mean().item()
        assert abs(lane_rate - (1 - p)) < 5 * math.sqrt(p * (1 - p) / keep[..., lane::4].numel())
    per_head = keep.double().mean(dim=(2, 3))
    assert (per_head - (1 - p)).abs().max() < 6 * math.sqrt(p * (1 - p) / (128 * 129))


def test_neighbours_are_uncorrelated():
    """Adjacent keys (words of the same Philox call) and adjacent queries (consecutive counters)."""
    keep = naive.dropout_keep_mask(torch.tensor([5, 0]), 2, 4, 256, 256, 0.5).double() * 2 - 1
    n = keep[..., 1:].numel()
    for a, b in ((keep[..., 1:], keep[..., :-1]), (keep[..., 1:, :], keep[..., :-1, :])):
        corr = (a * b).mean().item()
        assert abs(corr) < 5 / math.sqrt(n), f"correlation {corr:.4f} between neighbours"


def test_mask_depends_on_seed_and_offset_and_position_only():
    full = naive.dropout_keep_mask(torch.tensor([9, 4]), 2, 3, 10, 20, 0.5)
    # A smaller problem with the same (b, h) numbering sees the same bits at the same (i, j).
    part = naive.dropout_keep_mask(torch.tensor([9, 4]), 2, 3, 7, 13, 0.5)
    assert torch.equal(full[..., :7, :13], part)
    assert not torch.equal(full, naive.dropout_keep_mask(torch.tensor([10, 4]), 2, 3, 10, 20, 0.5))
    assert not torch.equal(full, naive.dropout_keep_mask(torch.tensor([9, 5]), 2, 3, 10, 20, 0.5))
    # The seed is one unsigned 64-bit key: its high word matters.
    assert not torch.equal(full, naive.dropout_keep_mask(torch.tensor([9 + 2 ** 40, 4]), 2, 3, 10, 20, 0.5))


def test_threshold_is_floor_p_times_2_to_32():
    assert naive.dropout_threshold(0.0) == 0
    assert naive.dropout_threshold(0.5) == 2 ** 31
    assert naive.dropout_threshold(0.1) == 429496729
    assert naive.dropout_threshold(1 - 2 ** -33) == 2 ** 32 - 1


def test_backend_applies_the_contract_mask(any_target):
    """v = I (Lk = D keys, one-hot values) makes out[i, j] = P[i, j]·M[i, j]/(1−p) with P > 0: the
    zeros of out are the backend's mask, compared bit for bit with the contract's."""
    B, H, L, p = 2, 3, 16, 0.4
    rng = torch.tensor([-77, 12], dtype=torch.int64)
    q, k, _ = make_inputs(Shape(B=B, Hq=H, Lq=L, D=L), seed=8)
    v = torch.eye(L).expand(B, H, L, L).contiguous()
    impl = attn_ops.OP.backends[any_target.backend].impl
    out, _ = impl(*(t.to(any_target.device) for t in (q, k, v)), False, 0.25, p, rng)
    got = (out != 0).cpu()
    want = naive.dropout_keep_mask(rng, B, H, L, L, p)
    assert torch.equal(got, want), f"{(got != want).sum().item()} of {want.numel()} mask bits differ"


def test_backward_uses_the_forward_mask(any_target):
    """The gradients match the oracle run with the forward's mask; with another rng_state in the
    backward they would not (dv = (P∘M/(1−p))ᵀ dout changes with M)."""
    shape = Shape(B=1, Hq=2, Lq=8, Lk=12, D=16, dropout_p=0.5)
    q, k, v = make_inputs(shape, seed=9)
    dout = torch.randn(1, 2, 8, 16, generator=torch.Generator().manual_seed(2))
    rng = torch.tensor([31337, 1], dtype=torch.int64)
    (_, _), grads = run_backend(any_target, shape, q, k, v, dout, rng)
    (_, _), grads_ref = oracle(shape, q, k, v, dout, rng)
    (_, _), grads_other = oracle(shape, q, k, v, dout, torch.tensor([31337, 2], dtype=torch.int64))
    assert_matches(grads[2], grads_ref[2], any_target.tolerance(torch.float32), "dv")
    assert (grads_other[2] - grads_ref[2]).abs().max() > 0.1  # the test can tell masks apart


def test_dropout_is_unbiased(any_target):
    """Averaged over many masks, dropout attention is plain attention (kept probabilities are scaled
    by 1/(1−p)): the mean of 400 draws is within 5 standard errors of the no-dropout output."""
    if interpreted(any_target):
        pytest.skip("400 interpreted Triton launches take minutes; the mask itself is checked above")
    shape = Shape(B=1, Hq=1, Lq=4, Lk=6, D=8)
    q, k, v = (t.to(any_target.device) for t in make_inputs(shape, seed=10))
    p = 0.5
    torch.manual_seed(0)
    draws = torch.stack([attn_ops.attention(q, k, v, dropout_p=p, backend=any_target.backend) for _ in range(400)])
    plain = attn_ops.attention(q, k, v, backend=any_target.backend)
    stderr = draws.std(0) / math.sqrt(draws.shape[0])
    assert ((draws.mean(0) - plain).abs() <= 5 * stderr + 1e-6).all()


def test_same_seed_same_result_other_seed_other_result():
    q, k, v = make_inputs(Shape(B=1, Hq=2, Lq=5, D=8), seed=11)
    torch.manual_seed(3)
    a = attn_ops.attention(q, k, v, dropout_p=0.5)
    torch.manual_seed(3)
    b = attn_ops.attention(q, k, v, dropout_p=0.5)
    c = attn_ops.attention(q, k, v, dropout_p=0.5)
    assert torch.equal(a, b) and not torch.equal(a, c)
