"""The oracle itself: ``batch_norm_relu_backward_naive`` (the written-out backward every suite's
gradients are checked against) equals autograd through ``batch_norm_relu_naive`` in fp64, on inputs
without ties or z at 0 (where the derivative is not defined), in every mode; the naive forward is
torch's three ops; its running-statistics update is F.batch_norm's (the unbiased variance)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pyneuro.ops.norm import batch_norm_relu_backward_naive, batch_norm_relu_naive
from batch_norm_relu_cases import CASES, assert_matches, fp64, statistics, well_conditioned

ORACLE_CASES = ["5x7", "5x7-pool1", "9x6-eval", "9x6-eval-pool1", "C1", "C70-nchw-pool1", "N1", "2x2",
                "noaffine", "noaffine-cl-eval", "offset", "transposed"]


@pytest.mark.parametrize("case", ORACLE_CASES)
def test_backward_naive_is_autograd_through_the_forward(case):
    case_ = CASES[case]
    inputs = well_conditioned(case_)  # no z within rounding of 0, no near-ties in a window
    x, w, b = fp64(inputs.x).requires_grad_(), fp64(inputs.weight), fp64(inputs.bias)
    leaves = [x] + ([w.requires_grad_(), b.requires_grad_()] if case_.affine else [])
    rm, rv = fp64(inputs.running_mean), fp64(inputs.running_var)
    out = batch_norm_relu_naive(x, rm, rv, w, b, case_.training, case_.momentum, case_.eps, case_.pool)
    dout = fp64(inputs.dout)
    want = torch.autograd.grad(out, leaves, dout)
    mean, var = statistics(case_, inputs)
    got = batch_norm_relu_backward_naive(dout, x.detach(), w if w is None else w.detach(),
                                         b if b is None else b.detach(), mean, var, case_.training, case_.eps,
                                         case_.pool)
    for name, g, r in zip(("x", "weight", "bias"), got, want):
        assert g.dtype == torch.float64
        assert_matches(g, r, 1e-12, f"d{name}")
    if not case_.affine:  # dweight and dbias of the implicit ones and zeros: still the sums
        z = (fp64(inputs.x) - mean.view(1, -1, 1, 1)) / (var.view(1, -1, 1, 1) + case_.eps).sqrt()
        zl = z.clone().requires_grad_()
        y = F.relu(zl)
        y = F.max_pool2d(y, 2) if case_.pool == 2 else y
        (dz,) = torch.autograd.grad(y, [zl], dout)
        assert_matches(got[2], dz.sum((0, 2, 3)), 1e-12, "dbias (affine=False)")
        assert_matches(got[1], (dz * z).sum((0, 2, 3)), 1e-12, "dweight (affine=False)")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_backward_naive_gradcheck(training):
    """Against finite differences through the forward (fp64, small, no kinks nearby)."""
    case_ = CASES["5x7"] if training else CASES["9x6-eval"]
    inputs = well_conditioned(case_)
    x, w, b = (fp64(t).requires_grad_() for t in (inputs.x, inputs.weight, inputs.bias))
    rm, rv = fp64(inputs.running_mean), fp64(inputs.running_var)

    def f(x_, w_, b_):
        return batch_norm_relu_naive(x_, rm.clone(), rv.clone(), w_, b_, training, 0.1, case_.eps, case_.pool)

    assert torch.autograd.gradcheck(f, (x, w, b), eps=1e-7, atol=1e-6)
    mean, var = statistics(case_, inputs)
    dout = fp64(inputs.dout)
    mine = batch_norm_relu_backward_naive(dout, x.detach(), w.detach(), b.detach(), mean, var, training, case_.eps,
                                          case_.pool)
    auto = torch.autograd.grad(f(x, w, b), (x, w, b), dout)
    for name, g, r in zip(("x", "weight", "bias"), mine, auto):
        assert_matches(g, r, 1e-12, f"d{name}")


@pytest.mark.parametrize("pool", [1, 2])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_naive_forward_is_torch_and_updates_like_batch_norm(training, pool):
    """out = max_pool2d(relu(batch_norm(x))), and in training the running statistics move by
    momentum towards the batch mean and the unbiased variance n / (n - 1) var."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, 5, 7, generator=g, dtype=torch.float64) * 2 + 1
    w, b = torch.randn(4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    rm, rv = torch.randn(4, generator=g, dtype=torch.float64), torch.rand(4, generator=g, dtype=torch.float64) + 0.5
    rm0, rv0 = rm.clone(), rv.clone()
    out = batch_norm_relu_naive(x, rm, rv, w, b, training, 0.3, 1e-5, pool)
    mean, var = (x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)) if training else (rm0, rv0)
    z = (x - mean.view(1, 4, 1, 1)) / (var.view(1, 4, 1, 1) + 1e-5).sqrt() * w.view(1, 4, 1, 1) + b.view(1, 4, 1, 1)
    want = z.clamp_min(0)
    if pool == 2:  # windows by hand, dropping the odd last row and column
        want = want[:, :, :4, :6].reshape(3, 4, 2, 2, 3, 2).amax((3, 5))
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    if training:
        n = 3 * 5 * 7
        torch.testing.assert_close(rm, 0.7 * rm0 + 0.3 * mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(rv, 0.7 * rv0 + 0.3 * var * n / (n - 1), rtol=1e-12, atol=1e-12)
    else:
        assert torch.equal(rm, rm0) and torch.equal(rv, rv0)
