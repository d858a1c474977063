"""Every recurrent-cell backend, in every variant this machine runs, against the fp64 oracle
(naive.py's contract pair on the very inputs the backend saw): outputs, final states and the
gradients of x, of every initial state and of every parameter (tau included), in fp32, bf16 and
fp16, through the public functions and autograd."""
from __future__ import annotations

import pytest
import torch

from rnn_cases import (DTYPES, VARIANTS, assert_matches, case_data, every_isa, interpreter_slow, make_args,
                       make_cotangents, needs_backend_masks, oracle, oracle_at_backend_masks, reference_target,
                       run_public, Size)

# T = 1, batch 1, I = 1; H odd and not a multiple of 8 (vector tails), P < H; no biases; a longer
# sequence with H past one 16- or 32-wide tile; a batch past the CPU tiles' 6 and 8 rows with a short
# last block (13 = 8 + 4 + 1 = 6 + 6 + 1). (P is only used by the lstm_proj variant.)
SIZES = {
    "T1-B1-I1": Size(T=1, B=1, I=1, H=5, P=3),
    "tiny": Size(T=3, B=2, I=3, H=5, P=2),
    "odd": Size(T=7, B=3, I=5, H=13, P=6),
    "nobias": Size(T=4, B=2, I=3, H=9, P=4, bias=False),
    "T28-H37": Size(T=28, B=4, I=11, H=37, P=17),
    "B13": Size(T=3, B=13, I=7, H=19, P=9),
}
DTYPE_IDS = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def check(target, variant, args, cot, outs_ref, grads_ref, dtype):
    if needs_backend_masks(target, variant, dtype):
        grads_ref = oracle_at_backend_masks(target, variant, args, cot)
    outs, grads = run_public(target, variant, args, cot)
    tol = target.tolerance(dtype)
    for name, got, want in zip(variant.out_names, outs, outs_ref):
        assert got.dtype == dtype, f"{name} dtype {got.dtype}, x is {dtype}"
        assert got.device.type == target.device
        assert_matches(got, want, tol, name)
    assert set(grads) == set(grads_ref)
    for name, g in grads.items():
        assert g.dtype == args[name].dtype, f"d{name} dtype {g.dtype} != {args[name].dtype}"
        assert_matches(g, grads_ref[name], tol, f"d{name}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("variant", list(VARIANTS))
@every_isa
def test_matches_oracle(any_target, variant, size, dtype):
    args, cot, outs_ref, grads_ref = case_data(variant, SIZES[size], dtype)
    check(any_target, VARIANTS[variant], args, cot, outs_ref, grads_ref, dtype)


@pytest.mark.parametrize("mode", ["states", "y"], ids=["final-states-only", "y-only"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("variant", list(VARIANTS))
@interpreter_slow
def test_gradient_from_one_output_only(any_target, variant, dtype, mode):
    """Only the final states used (dy never used: the backward gets zeros or nothing for it), or
    only y (no gradient into the final states)."""
    args, cot, outs_ref, grads_ref = case_data(variant, SIZES["odd"], dtype, mode)
    check(any_target, VARIANTS[variant], args, cot, outs_ref, grads_ref, dtype)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_one_output_only_tiny(any_target, variant):
    """The interpreter's fast share of the test above: fp32, tiny sizes, both modes."""
    for mode in ("states", "y"):
        args, cot, outs_ref, grads_ref = case_data(variant, SIZES["tiny"], torch.float32, mode)
        check(any_target, VARIANTS[variant], args, cot, outs_ref, grads_ref, torch.float32)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_absent_initial_states_are_zeros(any_target, variant):
    """h0/c0/u0 of None start from zeros: the same outputs as explicit zeros."""
    v = VARIANTS[variant]
    args = make_args(v, SIZES["tiny"], seed=3)
    states = [n for n in v.arg_names if n in ("h0", "c0", "u0")]
    zeros = {n: (torch.zeros_like(t) if n in states else t) for n, t in args.items()}
    none = {n: (None if n in states else t) for n, t in args.items()}
    dev = lambda a: {n: (None if t is None else t.to(any_target.device)) for n, t in a.items()}  # noqa: E731
    got = v.public(dev(none), any_target.backend)
    want = v.public(dev(zeros), any_target.backend)
    for name, a, b in zip(v.out_names, got, want):
        assert torch.equal(a, b), f"{name}: None initial state differs from explicit zeros"
    outs_ref, _ = oracle(v, zeros, make_cotangents(v, zeros, torch.float32))
    assert_matches(got[0], outs_ref[0], any_target.tolerance(torch.float32), v.out_names[0])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_strided_inputs_match_contiguous(any_target, variant):
    """Transposed, strided and expanded arguments are read by value: the results of the same values
    laid out contiguously, forward and gradients; bitwise on the compiled backends (the op makes
    every argument contiguous before the kernel), within fp32 rounding on the reference (whose
    GEMMs block a transposed operand differently)."""
    v = VARIANTS[variant]
    args = make_args(v, SIZES["tiny"], seed=4)
    args = {n: (None if t is None else t.to(any_target.device)) for n, t in args.items()}
    strided = dict(args)
    strided["x"] = args["x"].transpose(0, 1).contiguous().transpose(0, 1)
    strided["w_ih"] = args["w_ih"].t().contiguous().t()
    strided["w_hh"] = torch.stack([args["w_hh"], torch.zeros_like(args["w_hh"])], -1)[..., 0]
    last = "tau" if v.cell == "leaky" else "b_ih"
    strided[last] = args[last][:1].expand_as(args[last])  # stride 0
    contiguous = dict(args, **{last: strided[last].contiguous()})
    assert not any(strided[n].is_contiguous() for n in ("x", "w_ih", "w_hh", last))
    cot = make_cotangents(v, args, torch.float32)
    got_outs, got_grads = run_public(any_target, v, strided, cot)
    want_outs, want_grads = run_public(any_target, v, contiguous, cot)
    def same(a, b, what):
        if any_target.compiled:
            assert torch.equal(a, b), f"{what} depends on the input strides"
        else:
            assert_matches(a, b, 1e-6, f"{what} (strided vs contiguous)")

    for name, a, b in zip(v.out_names, got_outs, want_outs):
        same(a, b, name)
    for name in want_grads:
        same(got_grads[name], want_grads[name], f"d{name}")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_double_backward_raises(target, variant):
    """The compiled backward is not differentiable: it says so instead of returning zeros."""
    v = VARIANTS[variant]
    args = make_args(v, SIZES["tiny"], device=target.device, seed=5)
    x = args["x"].clone().requires_grad_()
    out = v.public(dict(args, x=x), target.backend)[0]
    (dx,) = torch.autograd.grad(out.square().sum(), [x], create_graph=True)
    with pytest.raises(RuntimeError, match="no double backward"):
        dx.sum().backward()


def test_reference_second_derivatives_work():
    """The reference is plain autograd: double backward works there (what the error above points to)."""
    v = VARIANTS["lstm"]
    args = make_args(v, SIZES["tiny"], dtype=torch.float64, device=reference_target().values[0].device)
    x = args["x"].clone().requires_grad_()
    out = v.public(dict(args, x=x), "reference")[0]
    (dx,) = torch.autograd.grad(out.square().sum(), [x], create_graph=True)
    (ddx,) = torch.autograd.grad(dx.square().sum(), [x])
    assert torch.isfinite(ddx).all() and ddx.abs().sum() > 0


@pytest.mark.parametrize("variant", ["lstm_proj", "gru", "leaky"])
def test_bitwise_deterministic(target, variant):
    """Identical bits run to run (the same thread count: the contract promises nothing across
    thread counts, and the cpu backend's dW_hr GEMM does differ in the last bit between 1 and 2)."""
    v = VARIANTS[variant]
    args, cot, _, _ = case_data(variant, SIZES["odd" if target.backend != "triton" else "tiny"], torch.float32)
    results = [run_public(target, v, args, cot) for _ in range(3)]
    for other in results[1:]:
        for name, a, b in zip(v.out_names, results[0][0], other[0]):
            assert torch.equal(a, b), f"{name} differs between runs"
        for name in results[0][1]:
            assert torch.equal(results[0][1][name], other[1][name]), f"d{name} differs between runs"


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["lstm", "lstm_proj", "gru", "rnn_tanh", "leaky"])
def test_long_sequence_against_fp64(any_target, variant):
    """T = 784 (pixel-by-pixel MNIST, I = 1): the fp32 state does not drift from the fp64 oracle,
    forward or gradients (ReLU's state is unbounded over such a sequence: left to the shorter sizes)."""
    args, cot, outs_ref, grads_ref = case_data(variant, Size(T=784, B=2, I=1, H=32, P=16), torch.float32)
    check(any_target, VARIANTS[variant], args, cot, outs_ref, grads_ref, torch.float32)
