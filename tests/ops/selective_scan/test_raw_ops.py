"""The contract ops called directly (docs/selective_scan_contract.md): any chunk size, the stored
chunk states, empty sequences, the largest N, and bitwise determinism."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pyneuro.ops.scan import max_n
from scan_cases import GRAD_NAMES, assert_matches, contract_args, interpreted, make_inputs, oracle, run


def _ops(target):
    if target.backend == "triton":
        return torch.ops.pyneuro.selective_scan_fwd_triton, torch.ops.pyneuro.selective_scan_bwd_triton
    return torch.ops.pyneuro.selective_scan_fwd, torch.ops.pyneuro.selective_scan_bwd


def _chunk_sizes(target):
    if target.backend == "triton":  # one chunk is one scan tile: powers of two in [4, 256]
        return (4, 16, 64) if not interpreted(target) else (4, 16)
    return (1, 7, 64, 100, 1000)


def test_any_chunk_size(target):
    """chunk_states[:, :, k] is the state before step k * chunk_size; the backward recomputes from
    them, and out, last_state and every gradient match the oracle whatever the chunk size."""
    fwd, bwd = _ops(target)
    L = 131 if not interpreted(target) else 37
    inputs, cot = make_inputs(2, 6, L, 8, B_kind=3, C_kind="var", seed=5, device=target.device)
    out_ref, last_ref, grads_ref = oracle(inputs, True, cot["dout"], cot["dlast"])
    i = {k: (v.double().cpu() if v is not None else None) for k, v in inputs.items()}
    dt = F.softplus(i["delta"] + i["delta_bias"][:, None])
    Bd = i["B"].repeat_interleave(2, dim=1)  # (batch, dim, N, L): 3 groups over 6 channels
    states, x = [], i["initial_state"]
    for t in range(L):
        states.append(x)
        x = torch.exp(dt[..., t, None] * i["A"]) * x + (dt[..., t] * i["u"][..., t])[..., None] * Bd[..., t]
    tol = target.tolerance(torch.float32)
    for chunk in _chunk_sizes(target):
        args = contract_args(inputs, True, chunk)
        out, last, chunk_states = fwd(*args)
        assert chunk_states.shape == (2, 6, math.ceil(L / chunk), 8)
        assert_matches(chunk_states, torch.stack(states[::chunk], 2), tol, f"chunk_states (chunk {chunk})")
        assert torch.equal(chunk_states[:, :, 0], inputs["initial_state"]), "x_0 is the initial state, exactly"
        assert_matches(out, out_ref, tol, f"out (chunk {chunk})")
        assert_matches(last, last_ref, tol, f"last_state (chunk {chunk})")
        grads = bwd(cot["dout"], cot["dlast"], *args[:9], chunk_states, True, chunk)
        for name, g in zip(GRAD_NAMES, grads):
            ref = grads_ref[name]
            assert_matches(g.reshape(ref.shape), ref, tol, f"d{name} (chunk {chunk})")


def test_empty_sequence_raw_ops(target):
    """L = 0: last_state = initial_state and dinitial_state = dlast_state, other gradients zero."""
    fwd, bwd = _ops(target)
    inputs, cot = make_inputs(2, 3, 0, 4, device=target.device)
    args = contract_args(inputs, True, 16)
    out, last, states = fwd(*args)
    assert out.shape == (2, 3, 0) and states.shape == (2, 3, 0, 4)
    assert torch.equal(last, inputs["initial_state"])
    grads = bwd(torch.zeros_like(out), cot["dlast"], *args[:9], states, True, 16)
    assert torch.equal(grads[8], cot["dlast"])
    assert not grads[2].any() and not grads[5].any() and not grads[7].any()  # dA, dD, ddelta_bias


def test_largest_state_size(target):
    """N at the backend's limit runs, forward and backward, and matches the oracle."""
    if interpreted(target):
        pytest.skip("N = 256 tiles take minutes in the Triton interpreter; a GPU runs this")
    N = max_n(target.backend)
    inputs, cot = make_inputs(1, 3, 70, N, B_kind="var", C_kind="const", seed=11, device=target.device)
    out, last, grads = run(target, inputs, True, cot["dout"], cot["dlast"])
    out_ref, last_ref, grads_ref = oracle(inputs, True, cot["dout"], cot["dlast"])
    tol = target.tolerance(torch.float32)
    assert_matches(out, out_ref, tol, "out")
    assert_matches(last, last_ref, tol, "last_state")
    for name, g in grads.items():
        assert_matches(g, grads_ref[name], tol, f"d{name}")


@pytest.mark.parametrize("B_kind,C_kind,batch", [("var", 2, 2), ("const", 3, 16), (2, "const", 40)])
def test_bitwise_deterministic(target, B_kind, C_kind, batch):
    """Identical bits run to run, and for 1 or all threads on the CPU: every reduction has a
    fixed order (batch 2 splits a group's channels over several CPU tasks, batch 40 does not)."""
    if interpreted(target) and batch > 2:
        pytest.skip("the Triton interpreter is slow; one case shows its determinism here, a GPU runs all")
    L = 300 if not interpreted(target) else 16
    inputs, cot = make_inputs(batch, 6, L, 16, B_kind=B_kind, C_kind=C_kind, device=target.device)
    threads = torch.get_num_threads()
    results = []
    # The interpreter runs the kernel's tile operations in Python, where threads change nothing:
    # two runs show its determinism.
    counts = (threads, threads) if interpreted(target) else (threads, threads, 1)
    try:
        for n in counts:
            torch.set_num_threads(n)
            results.append(run(target, inputs, True, cot["dout"], cot["dlast"]))
    finally:
        torch.set_num_threads(threads)
    first = results[0]
    for other in results[1:]:
        assert torch.equal(first[0], other[0]) and torch.equal(first[1], other[1])
        for name in first[2]:
            assert torch.equal(first[2][name], other[2][name]), f"d{name} differs between runs"
