"""Each compiled pair called directly (docs/rnn_contract.md): the forward's outputs and reserve equal
the contract's (naive ``*_fwd_contract``, fp64 on the same inputs) column block by column block,
and the backward fed with that very reserve equals ``*_bwd_contract`` fed with it, the absent
optional inputs getting empty (0,) gradients. The reserve is part of the contract (the backends'
pairs are interchangeable), so the backward is also fed the contract's own reserve."""
from __future__ import annotations

import pytest
import torch

from rnn_cases import (DTYPES, GATES, VARIANTS, assert_matches, backend_targets, every_isa, interpreter_slow,
                       make_args, make_cotangents, oracle_backward, oracle_forward, raw_ops, Size,
                       well_conditioned_args)

SIZES = {
    "tiny": Size(T=3, B=2, I=3, H=5, P=2),
    "odd": Size(T=6, B=3, I=1, H=11, P=7),
    "nobias": Size(T=4, B=1, I=2, H=9, P=4, bias=False),
}
DTYPE_IDS = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def reserve_blocks(variant, H, R):
    """[(name, start, stop)] of one step's reserve columns (the contract's table)."""
    if variant.cell == "lstm":
        return [("i", 0, H), ("f", H, 2 * H), ("g", 2 * H, 3 * H), ("o", 3 * H, 4 * H), ("c_t", 4 * H, 5 * H),
                ("h_t", 5 * H, 5 * H + R)]
    if variant.cell == "gru":
        return [("r", 0, H), ("z", H, 2 * H), ("n", 2 * H, 3 * H), ("s_n", 3 * H, 4 * H), ("h_t", 4 * H, 5 * H)]
    return [("h_t" if variant.cell == "rnn" else "u_t", 0, H)]


def contract_call(variant, args, device):
    return [None if args[n] is None else args[n].to(device) for n in variant.arg_names]


def check_pair(target, variant, size, dtype, mode):
    fwd, bwd = raw_ops(target, variant.cell)
    args = well_conditioned_args(variant, size, dtype)  # the backward is fed the backend's own reserve
    tol = target.tolerance(dtype)
    call = contract_call(variant, args, target.device)
    *outs, reserve = fwd(*call, *variant.flags)
    outs_ref, reserve_ref = oracle_forward(variant, args)

    T, B = args["x"].shape[:2]
    H = args["w_ih"].shape[0] // GATES[variant.cell]
    R = args["w_hr"].shape[0] if variant.proj else H
    assert reserve.dtype == torch.float32 and reserve.is_contiguous()
    assert reserve.shape == reserve_ref.shape, f"reserve shape {tuple(reserve.shape)} != {tuple(reserve_ref.shape)}"
    for name, got, want in zip(variant.out_names, outs, outs_ref):
        assert got.dtype == dtype, f"{name} dtype {got.dtype}"
        assert_matches(got, want, tol, name)
    for name, lo, hi in reserve_blocks(variant, H, R):
        assert_matches(reserve[..., lo:hi], reserve_ref[..., lo:hi], tol, f"reserve block {name}")

    cot = make_cotangents(variant, args, dtype, mode)
    grads_in = [None if cot[n] is None else cot[n].to(target.device) for n in variant.out_names]
    if grads_in[0] is None:  # the contract's dy is always present: zeros when y was not used
        grads_in[0] = torch.zeros_like(outs[0])
    for which, res in (("backend", reserve), ("contract", reserve_ref.float().to(target.device))):
        grads = bwd(*grads_in, *call, res, *variant.flags)
        assert len(grads) == len(variant.arg_names)
        want = oracle_backward(variant, args, cot, res)
        for name, g in zip(variant.arg_names, grads):
            if args[name] is None:
                assert g.shape == (0,) and g.dtype == dtype, f"d{name} of an absent input: {tuple(g.shape)} {g.dtype}"
                continue
            assert g.dtype == dtype and g.shape == args[name].shape, f"d{name}: {tuple(g.shape)} {g.dtype}"
            assert_matches(g, want[name], tol, f"d{name} (fed the {which}'s reserve)")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("variant", list(VARIANTS))
@interpreter_slow
@every_isa
def test_pair_matches_contract(target, variant, size, dtype):
    check_pair(target, VARIANTS[variant], SIZES[size], dtype, "all")


# The CPU's fused LSTM step works on tiles of 6 batch rows by 16 units (forward) and 64 units
# (backward) on AVX-512, 8 and 16 units on AVX2 and SSE: B = 13 and H = 70 give every direction
# several tiles with a short one at each edge.
ACROSS_TILES = Size(T=5, B=13, I=7, H=70, P=9)


@pytest.mark.parametrize("variant", ["lstm", "lstm_proj", "gru", "rnn_tanh", "leaky"])
@interpreter_slow
@every_isa
def test_pair_matches_contract_across_tiles(target, variant):
    check_pair(target, VARIANTS[variant], ACROSS_TILES, torch.float32, "all")


def test_scratch_kept_between_calls_never_leaks_into_results(cpu_target):
    """The CPU backend keeps per-call scratch (gate gradients, packed weights, the weight-gradient
    operand) between calls. A large call, then a smaller one, then the large one again: each matches
    the contract, and what the first call returned is not changed by the later ones."""
    target = cpu_target
    variant = VARIANTS["lstm"]
    fwd, bwd = raw_ops(target, "lstm")
    tol = target.tolerance(torch.float32)
    kept = []
    for size in (ACROSS_TILES, SIZES["tiny"], ACROSS_TILES):
        args = well_conditioned_args(variant, size, torch.float32)
        call = contract_call(variant, args, target.device)
        *outs, reserve = fwd(*call, *variant.flags)
        cot = make_cotangents(variant, args, torch.float32, "all")
        grads = bwd(*[cot[n] for n in variant.out_names], *call, reserve, *variant.flags)
        want = oracle_backward(variant, args, cot, reserve)
        for name, g in zip(variant.arg_names, grads):
            if args[name] is not None:
                assert_matches(g, want[name], tol, f"d{name} at {size}")
        kept.append((grads, [g.clone() for g in grads]))
    for returned, copy in kept:
        for g, c in zip(returned, copy):
            assert torch.equal(g, c), "a later call changed gradients an earlier call returned"


@pytest.mark.parametrize("variant", list(VARIANTS))
@every_isa
def test_pair_matches_contract_tiny(target, variant):
    """The interpreter's fast share of the test above: fp32 and bf16 on the tiny size."""
    for dtype in (torch.float32, torch.bfloat16):
        check_pair(target, VARIANTS[variant], SIZES["tiny"], dtype, "all")


@pytest.mark.parametrize("mode", ["states", "y"], ids=["dy-zero", "state-grads-absent"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_pair_with_absent_or_zero_gradients(target, variant, mode):
    """dh_n/dc_n/du_n absent (None: the final states were not used), or dy all zero."""
    check_pair(target, VARIANTS[variant], SIZES["tiny"], torch.float32, mode)


@pytest.mark.parametrize("variant", ["lstm_proj", "gru", "leaky"])
@pytest.mark.parametrize("gpu_target", [p for p in backend_targets() if p.values[0].backend in ("triton", "cuda")],
                         ids=lambda t: str(t))
def test_step_mode_matches_contract(gpu_target, variant, monkeypatch):
    """The Triton and CUDA kernels have a persistent mode (weights on chip) and a per-step mode for
    larger H. Triton: the per-step one forced at a small H (PERSISTENT_MAX_H emptied); CUDA: H = 257,
    past its persistent kernel's H <= 256."""
    v = VARIANTS[variant]
    if gpu_target.backend == "triton":
        import pyneuro.kernels.rnn as kernels

        monkeypatch.setattr(kernels, "PERSISTENT_MAX_H", {})
        assert not kernels.persistent(v.cell, 5, 5, torch.float32)
        check_pair(gpu_target, v, SIZES["tiny"], torch.float32, "all")
    else:
        check_pair(gpu_target, v, Size(T=5, B=3, I=7, H=257, P=129), torch.float32, "all")


def test_reserve_is_the_only_state_the_backward_reads(target):
    """A backward fed a reserve with the gate activations scrambled must change: the backend reads
    them from the reserve (the contract's point) rather than recomputing them."""
    variant = VARIANTS["lstm"]
    fwd, bwd = raw_ops(target, "lstm")
    args = make_args(variant, SIZES["tiny"], device=target.device)
    call = contract_call(variant, args, target.device)
    *outs, reserve = fwd(*call)
    cot = make_cotangents(variant, args, torch.float32)
    grads_in = [cot[n].to(target.device) for n in variant.out_names]
    scrambled = reserve.clone()
    H = args["w_ih"].shape[0] // 4
    scrambled[..., :H] = scrambled[..., :H].flip(-1)  # the input gate i
    good = bwd(*grads_in, *call, reserve)
    bad = bwd(*grads_in, *call, scrambled)
    want_bad = oracle_backward(variant, args, cot, scrambled)
    assert not torch.equal(good[0], bad[0])
    assert_matches(bad[0], want_bad["x"], target.tolerance(torch.float32), "dx from a scrambled reserve")


def test_subnormal_flush_stays_inside_the_call(cpu_target):
    """The CPU kernels flush subnormals on their threads while they run (csrc/cpu/fp_env.h); the
    caller's floating-point mode must be as before afterwards: a subnormal product in this thread
    still comes out subnormal, not zero. Also the gradient of a long, fading recurrence (only the
    last step used) matches the contract."""
    target = cpu_target
    tiny = torch.tensor([1e-39], dtype=torch.float32)
    assert (tiny * 2).item() != 0.0, "subnormals are already flushed before the call"
    variant = VARIANTS["gru"]
    fwd, bwd = raw_ops(target, "gru")
    args = well_conditioned_args(variant, Size(T=200, B=3, I=2, H=8, P=4), torch.float32)
    call = contract_call(variant, args, target.device)
    *outs, reserve = fwd(*call, *variant.flags)
    dy = torch.zeros_like(outs[0])
    dy[-1] = 1.0  # only the last step's output is used: the gradient fades towards t = 0
    grads = bwd(dy, None, *call, reserve, *variant.flags)
    assert (tiny * 2).item() != 0.0, "the call left subnormals flushed in the caller's thread"
    cot = {name: None for name in variant.out_names}
    cot[variant.out_names[0]] = dy
    want = oracle_backward(variant, args, cot, reserve)
    for name, g in zip(variant.arg_names, grads):
        if args[name] is not None:
            assert_matches(g, want[name], target.tolerance(torch.float32), f"d{name}")
