"""Every batch_norm_relu backend, in every variant this machine runs, against the fp64 oracle:
out, dx, dweight, dbias and the running statistics after the call, on a case table with odd H/W,
C = 1 and 70, N = 1, 2x2 planes, both layouts and non-contiguous views, both pools, training and
eval, affine or not, momentum 0 / 0.1 / 0.3 / 1; 16-bit inputs on the reference (which the cpu
backend refuses); ties in a pool window; NaN and infinities; determinism; what the backward keeps."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pyneuro.ops.norm import batch_norm_relu, batch_norm_relu_backward_naive
from batch_norm_relu_cases import (CASES, LOW_PRECISION, Case, assert_matches, case_data, every_isa, fp64,
                                   make_inputs, normwise_error, reference_target, run, well_conditioned)
from batch_norm_relu_cases import oracle as oracle_for

DTYPE_IDS = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def expected_layout(x: torch.Tensor):
    """The layout the output must have: x's (the row-major one when both hold)."""
    if x.is_contiguous():
        return torch.contiguous_format
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else None


def check(target, case: Case, inputs, want, dtype=torch.float32, stats_dtype=None):
    got = run(target, case, inputs)
    tol = target.tolerance(dtype)
    assert got.out.dtype == dtype and got.out.device.type == target.device
    assert_matches(got.out, want.out, tol, "out")
    layout = expected_layout(inputs.x)
    if layout is not None:
        assert got.out.is_contiguous(memory_format=layout), f"out's strides {got.out.stride()} are not x's layout"
    assert set(got.grads) == set(want.grads)
    for name, g in got.grads.items():
        assert g.dtype == (dtype if name == "x" else inputs.weight.dtype), f"d{name} dtype {g.dtype}"
        assert_matches(g, want.grads[name], tol, f"d{name}")
    for name in ("running_mean", "running_var"):
        before, after, expected = getattr(inputs, name), getattr(got, name), getattr(want, name)
        if before is None:
            assert after is None
            continue
        assert after.dtype == before.dtype
        if not case.training or case.momentum == 0:
            assert torch.equal(after, before.to(after.device)), f"{name} changed (training={case.training}, " \
                                                                 f"momentum={case.momentum})"
        else:
            assert_matches(after, expected, target.tolerance(stats_dtype or after.dtype), name)


@pytest.mark.parametrize("case", list(CASES))
@every_isa
def test_matches_oracle(any_target, case):
    case_, inputs, want = case_data(case)
    check(any_target, case_, inputs, want)


# 16-bit x with its (C,) tensors in x's dtype or in fp32 (the two mixes torch's batch_norm takes).
LOW_PRECISION_CASES = ["5x7", "5x7-cl", "9x6-eval", "2x2", "C1", "noaffine", "momentum0.3-cl", "9x6-cl-pool1"]


@pytest.mark.parametrize("params", ["same", "fp32"])
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("case", LOW_PRECISION_CASES)
@pytest.mark.parametrize("ref_target", [reference_target()], ids=str)
def test_low_precision_on_the_reference(ref_target, case, dtype, params):
    param_dtype = torch.float32 if params == "fp32" else dtype
    case_, inputs, want = case_data(case, dtype, param_dtype)
    check(ref_target, case_, inputs, want, dtype, stats_dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_cpu_backend_refuses_other_dtypes(target, dtype):
    """Named explicitly, the cpu backend refuses what it does not take (TypeError, naming the
    tensor), a 16-bit x next to float32 (C,) tensors included; auto runs such calls on the
    reference. A float32 x with a weight of another dtype is refused too."""
    case = CASES["5x7"]
    inputs = make_inputs(case, dtype)
    with pytest.raises(TypeError, match=rf"the cpu backend takes float32 tensors only, got x {dtype}"):
        run(target, case, inputs)
    if dtype != torch.float64:
        mixed = make_inputs(case, dtype, param_dtype=torch.float32)
        with pytest.raises(TypeError, match=rf"the cpu backend takes float32 tensors only, got x {dtype}"):
            run(target, case, mixed)
    inputs32 = make_inputs(case, torch.float32)
    inputs32.weight = inputs32.weight.to(dtype)
    with pytest.raises(TypeError, match=rf"batch_norm_relu: .*\bweight\b.*{dtype}"):
        run(target, case, inputs32)
    auto = run(type(target)("auto", "cpu"), case, inputs)
    ref = run(type(target)("reference", "cpu"), case, inputs)
    assert torch.equal(auto.out, ref.out) and torch.equal(auto.grads["x"], ref.grads["x"])


# ----------------------------------------------------------------------------------------------
# Ties, NaN and infinities
# ----------------------------------------------------------------------------------------------
def tied_input(N=3, C=4, H=6, W=8, seed=0) -> torch.Tensor:
    """x whose 2x2 windows hold their largest value 1 to 4 times, at random positions (first,
    last, both diagonals, all four ...), the other values distinct from it by >= 0.5; equal x give
    equal z (the same arithmetic on the same value), so the ties are exact in every precision."""
    g = torch.Generator().manual_seed(seed)
    Ho, Wo = H // 2, W // 2
    windows = torch.empty(N * C * Ho * Wo, 4, dtype=torch.float64)
    for k in range(windows.shape[0]):
        top = float(torch.randint(2, 5, (), generator=g)) / 2  # 1, 1.5 or 2
        count = int(torch.randint(1, 5, (), generator=g))
        where = torch.randperm(4, generator=g)[:count]
        others = top - 0.5 * torch.randint(1, 6, (4,), generator=g).double()
        others[where] = top
        windows[k] = others
    x = torch.full((N, C, H, W), -3.0, dtype=torch.float64)  # the odd row/column: in no window
    x[:, :, :2 * Ho, :2 * Wo] = windows.reshape(N, C, Ho, Wo, 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(
        N, C, 2 * Ho, 2 * Wo)
    return x


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@every_isa
def test_ties_in_a_window_route_to_the_first_max(any_target, layout, training):
    """The gradient of a window whose largest z is tied goes to the first of them in row-major
    order, as torch's max_pool2d's does: dx and dweight against torch's autograd through
    F.batch_norm, F.relu and F.max_pool2d in fp64 on the same values (a tie routed to another
    element moves dx by weight * invstd * dout at two places, far beyond the tolerance)."""
    x64 = tied_input(H=7, W=8)
    C = x64.shape[1]
    weight = torch.tensor([1.0, 0.7, -1.2, 1.3], dtype=torch.float64)  # a negative one: the least x wins
    bias = torch.tensor([0.3, 0.2, 0.25, -0.1], dtype=torch.float64)
    rm, rv = x64.mean((0, 2, 3)) - 0.1, x64.var((0, 2, 3)) * 1.1
    x = x64.float().contiguous(memory_format=torch.channels_last if layout == "channels_last" else
                               torch.contiguous_format)
    dout = torch.randn(3, C, 3, 4, generator=torch.Generator().manual_seed(1))

    dev = any_target.device
    leaves = [t.to(dev).clone().requires_grad_() for t in (x, weight.float(), bias.float())]
    out = batch_norm_relu(leaves[0], rm.float().to(dev), rv.float().to(dev), leaves[1], leaves[2], training, 0.1,
                          1e-5, 2, backend=any_target.backend)
    got = torch.autograd.grad(out, leaves, dout.to(dev))

    ref_leaves = [x64.clone().requires_grad_(), weight.clone().requires_grad_(), bias.clone().requires_grad_()]
    z = F.batch_norm(ref_leaves[0], rm.clone(), rv.clone(), ref_leaves[1], ref_leaves[2], training, 0.1, 1e-5)
    ref_out = F.max_pool2d(F.relu(z), 2)
    want = torch.autograd.grad(ref_out, ref_leaves, dout.double())
    zw = z.detach()[:, :, :6].reshape(3, C, 3, 2, 4, 2).permute(0, 1, 2, 4, 3, 5).reshape(-1, 4)
    top = zw.max(-1, keepdim=True).values
    tied = ((zw == top).sum(-1) >= 2) & (top.squeeze(-1) > 0)
    assert tied.sum() >= 10, f"only {int(tied.sum())} windows hold a tied positive max"

    tol = any_target.tolerance(torch.float32)
    assert_matches(out, ref_out, tol, "out")
    for name, g, w in zip(("x", "weight", "bias"), got, want):
        assert_matches(g, w, tol, f"d{name}")
    if not training:  # dx = weight * invstd * dz: nonzero exactly where torch routed the gradient
        assert torch.equal(got[0].cpu() != 0, want[0] != 0), "a tied window routed its gradient elsewhere"


def nonfinite_input(layout: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 6, 7, generator=g)
    for pos, value in (((0, 0, 0, 0), float("nan")), ((0, 1, 2, 3), float("inf")), ((1, 2, 5, 6), float("nan")),
                       ((1, 0, 3, 2), float("-inf")), ((0, 2, 4, 4), float("inf")), ((1, 1, 0, 1), float("nan")),
                       ((1, 1, 1, 0), float("-inf"))):
        x[pos] = value
    return x.contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)


@pytest.mark.parametrize("pool", [1, 2])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@every_isa
def test_nan_and_infinities_in_eval(any_target, layout, pool):
    """Eval mode (the statistics are the running ones, so a NaN stays where it is): out holds NaN
    and +-inf exactly where torch's F.max_pool2d(F.relu(F.batch_norm(...))) has them, the same
    values elsewhere. The backward is finite everywhere (dx = weight invstd dz) and agrees with the
    fp64 oracle wherever the gradient did not pass through a non-finite z; there the contract
    (batch_norm_relu_backward_naive) passes nothing for a NaN max, which the compiled backends
    implement, while the reference is torch's autograd (whose relu lets a NaN's gradient through)."""
    x = nonfinite_input(layout)
    C = x.shape[1]
    g = torch.Generator().manual_seed(5)
    weight = torch.tensor([1.0, -0.8, 1.2])
    bias = torch.tensor([0.1, -0.2, 0.3])
    rm, rv = torch.randn(C, generator=g) * 0.1, torch.rand(C, generator=g) + 0.5
    dev = any_target.device
    leaf = x.to(dev).clone().requires_grad_()
    result = batch_norm_relu(leaf, rm.to(dev), rv.to(dev), weight.to(dev), bias.to(dev), False, 0.1, 1e-5, pool,
                             backend=any_target.backend)
    want = F.relu(F.batch_norm(x, rm, rv, weight, bias, False, 0.1, 1e-5))
    want = F.max_pool2d(want, 2) if pool == 2 else want
    out = result.detach().cpu()
    for what, mask in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        assert torch.equal(mask(out), mask(want)), f"{what} at {mask(out).nonzero().tolist()}, torch has them " \
                                                    f"at {mask(want).nonzero().tolist()}"
    assert out.isnan().any() and out.isposinf().any(), "the input puts NaN and +inf in out"
    finite = torch.isfinite(want)
    assert_matches(out[finite], want[finite], any_target.tolerance(torch.float32), "out (finite)")

    dout = torch.randn(want.shape, generator=g)
    (dx,) = torch.autograd.grad(result, [leaf], dout.to(dev))
    dx = dx.cpu()
    assert torch.isfinite(dx).all(), f"dx is not finite at {(~torch.isfinite(dx)).nonzero().tolist()}"
    oracle = batch_norm_relu_backward_naive(dout.double(), x.double(), weight.double(), bias.double(), rm.double(),
                                            rv.double(), False, 1e-5, pool)[0]
    # The elements whose gradient could pass through a non-finite z: those, or their window's.
    bad = ~torch.isfinite(x)
    if pool == 2:
        bad = F.max_pool2d(bad.float(), 2).bool().repeat_interleave(2, 2).repeat_interleave(2, 3)
        bad = F.pad(bad, (0, x.shape[3] % 2, 0, x.shape[2] % 2))
    assert_matches(dx[~bad], oracle[~bad], any_target.tolerance(torch.float32), "dx (away from non-finite z)")
    if any_target.backend != "reference":
        assert_matches(dx, oracle, any_target.tolerance(torch.float32), "dx (the contract's, everywhere)")


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_a_nan_in_training_makes_its_channel_nan(any_target, layout):
    """Training: the batch statistics of a channel holding a NaN are NaN, so is all of its out (as
    in torch); the other channels are untouched by it."""
    x = torch.randn(2, 3, 4, 6, generator=torch.Generator().manual_seed(6))
    x[1, 1, 2, 3] = float("nan")
    x = x.contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
    out = batch_norm_relu(x.to(any_target.device), None, None, None, None, True, 0.1, 1e-5, 2,
                          backend=any_target.backend).cpu()
    assert out[:, 1].isnan().all()
    clean = batch_norm_relu(x[:, [0, 2]].contiguous(), None, None, None, None, True, 0.1, 1e-5, 2, backend="reference")
    assert_matches(out[:, [0, 2]], clean, any_target.tolerance(torch.float32), "out of the other channels")


# ----------------------------------------------------------------------------------------------
# Determinism, inference, what the backward keeps
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["mnist-cl", "9x6-eval", "C70-cl", "plane-4550"])
def test_bitwise_deterministic(target, case):
    """Two calls give identical bits, at one thread and at three (the contract: per-thread fp64
    sums added in thread order, so results depend on the thread count, never on the schedule)."""
    case_, inputs, _ = case_data(case)
    threads = torch.get_num_threads()
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            first, second = run(target, case_, inputs), run(target, case_, inputs)
            assert torch.equal(first.out, second.out), f"out differs between two calls at {n} threads"
            for name in first.grads:
                assert torch.equal(first.grads[name], second.grads[name]), f"d{name} differs at {n} threads"
            for a, b in ((first.running_mean, second.running_mean), (first.running_var, second.running_var)):
                assert (a is None and b is None) or torch.equal(a, b)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_inference_without_autograd(any_target, training):
    """Under torch.no_grad the forward gives the same out and the same running statistics."""
    case_, inputs, want = case_data("momentum0.3-cl" if training else "9x6-eval-cl")
    with torch.no_grad():
        got = run(any_target, case_, inputs, backward=False)
    tol = any_target.tolerance(torch.float32)
    assert_matches(got.out, want.out, tol, "out")
    assert_matches(got.running_mean, want.running_mean, tol, "running_mean")
    assert_matches(got.running_var, want.running_var, tol, "running_var")


def test_double_backward_raises(target):
    """The compiled backward is not differentiable: it says so instead of returning zeros."""
    case_, inputs, _ = case_data("5x7")
    x = inputs.x.clone().requires_grad_()
    out = batch_norm_relu(x, None, None, inputs.weight, inputs.bias, True, 0.1, 1e-5, 2, backend=target.backend)
    (dx,) = torch.autograd.grad((out * inputs.dout).sum(), [x], create_graph=True)
    with pytest.raises(RuntimeError, match="no double backward"):
        dx.sum().backward()


def test_reference_has_a_second_derivative():
    case_ = CASES["5x7-pool1"]
    inputs = well_conditioned(case_)
    x = fp64(inputs.x).requires_grad_()
    w = fp64(inputs.weight).requires_grad_()
    assert torch.autograd.gradgradcheck(
        lambda a, b: batch_norm_relu(a, None, None, b, fp64(inputs.bias), True, 0.1, 1e-5, 1, backend="reference"),
        (x, w))


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("pool", [1, 2])
def test_backward_keeps_only_x_and_the_statistics(target, layout, pool):
    """The contract: saved for the backward are x, weight, bias, mean and var, nothing else of
    size N C H W (torch's three ops keep the BN output, the ReLU output and the pool's indices)."""
    case_ = Case(4, 8, 10, 12, pool=pool, layout=layout)
    inputs = make_inputs(case_)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run(target, case_, inputs)
    N, C, H, W = 4, 8, 10, 12
    assert sum(n for n in saved if n > C) == N * C * H * W, f"saved tensors of sizes {saved}"
    assert sum(n for n in saved if n <= C) <= 4 * C


def test_error_measure_catches_nan():
    """The suite's error measure: NaN anywhere fails the comparison."""
    assert normwise_error(torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 2.0])) == float("inf")


@pytest.mark.parametrize("case", ["5x7-cl", "9x6-eval", "9x6-eval-cl", "N1"])
def test_strided_and_expanded_channel_tensors(any_target, case):
    """weight, bias and the running statistics as non-contiguous views (every other element of a
    longer tensor; weight also stride 0, one value for every channel): read by value, and the
    running statistics updated in place through the view. Against the oracle on the same values."""
    case_ = CASES[case]
    inputs = well_conditioned(case_)

    def strided(t):
        return torch.stack([t, torch.full_like(t, 1e6)], dim=-1)[:, 0]

    inputs.weight = inputs.weight[:1].expand(case_.C)  # stride 0
    inputs.bias = strided(inputs.bias)
    want = oracle_for(case_, inputs)
    dev = any_target.device
    rm, rv = strided(inputs.running_mean.to(dev)), strided(inputs.running_var.to(dev))
    assert not any(t.is_contiguous() for t in (inputs.weight, inputs.bias, rm, rv))
    x = inputs.x.to(dev).clone().requires_grad_()
    b = inputs.bias.detach().to(dev).clone().requires_grad_()
    w_leaf = inputs.weight.detach()[:1].to(dev).clone().requires_grad_()
    w = w_leaf.expand(case_.C)  # stride 0
    out = batch_norm_relu(x, rm, rv, w, b, case_.training, case_.momentum, case_.eps, case_.pool,
                          backend=any_target.backend)
    dx, dw, db = torch.autograd.grad(out, [x, w_leaf, b], inputs.dout.to(dev))
    tol = any_target.tolerance(torch.float32)
    assert_matches(out, want.out, tol, "out")
    assert_matches(dx, want.grads["x"], tol, "dx")
    assert_matches(dw, want.grads["weight"].sum(0, keepdim=True), tol, "dweight (of the one expanded value)")
    assert_matches(db, want.grads["bias"], tol, "dbias")
    assert_matches(rm, want.running_mean, tol, "running_mean (updated through the view)")
    assert_matches(rv, want.running_var, tol, "running_var (updated through the view)")
