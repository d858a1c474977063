"""The real CUDA selective scan (csrc/cuda/selective_scan.cu), compiled with g++ against cuda_emu
and run on the CPU, against an fp64 oracle: forward outputs, stored chunk states and every
gradient, over a fixed list of shapes and options plus a seeded random draw (deterministic in CI).

What this checks that the compiled-but-never-run GPU path otherwise would not: the kernels' index
math (channel tiles and segments, B/C groups, chunk starts, the 64-step tiles and their tails, the
16-row B/C staging), the block scan's algebra, the backward's partial-sum layout and the fixed-order
reductions, and that every output element is written (outputs and the workspace start as NaN).
Barriers: every case runs under one of three thread schedules, and test_schedules_agree_bitwise
reruns one under several, since a missing __syncthreads shows up as a schedule-dependent result.

Tolerances. The emulator evaluates exp, log1p and the divisions exactly (no MUFU, no fast math),
so an fp32 result differs from fp64 only by fp32 rounding in the scan, the sums over N (<= 256)
and the partial sums; 4e-6 normwise (~70 fp32 ulps of the largest element; the largest error
seen over the fixed and random cases is about 7e-7) bounds that. A result stored in fp16/bf16 (out,
du, ddelta, dz, variable dB/dC) adds one rounding to the dtype, at most its unit roundoff relative
to the largest element (2^-11, 2^-8); the oracle starts from the same rounded inputs. Errors are
normwise: max |actual - expected| / max |expected|.
"""
from __future__ import annotations

import random

import pytest
import torch

from emu_scan import (DEFAULT_CHUNK, GRAD_NAMES, Case, autograd_grads, make_inputs, normwise_error,
                      oracle)

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
COMPUTE_TOL = 4e-6
UNIT_ROUNDOFF = {F32: 0.0, F16: 2.0 ** -11, BF16: 2.0 ** -8}


def tolerance(c: Case, name: str, i) -> float:
    stored_in_dtype = name in ("out", "u", "delta", "z") or (name in ("B", "C") and i[name].dim() == 4)
    u = UNIT_ROUNDOFF[c.dtype] if stored_in_dtype else 0.0
    return u + COMPUTE_TOL * (1 + u)


# Fixed cases: each names what it is there for.
FIXED = [
    Case(1, 1, 1, 1, "const", "const"),                              # the smallest problem
    Case(2, 5, 7, 16, dtype=F16, schedule="reverse"),                  # L < a warp's 16 steps
    Case(1, 3, 63, 17, 1, "const", D=False, z=False, chunk=7),         # N across a 16-row staging block
    Case(2, 32, 64, 16, "const", 1, bias=False, softplus=False, dtype=BF16),  # exactly one tile
    Case(1, 33, 65, 1, 1, 1, x0=False, dlast=False, schedule="random"),       # tile + 1 step, 2 channel tiles
    Case(2, 66, 200, 16, 2, 2, chunk=100, dtype=F16),                  # G = 2 (33-channel groups), 2-tile chunks
    Case(1, 64, 200, 64, 2, "const", chunk=DEFAULT_CHUNK, schedule="reverse"),  # G = 2 B, constant C, N = 64
    Case(2, 7, 65, 16, "const", 1, chunk=1, dtype=BF16),               # one step per chunk
    Case(1, 4, 130, 17, 1, 2, D=False, bias=False, chunk=63, schedule="random"),  # B and C grouped differently
    Case(1, 3, 65, 256, 1, 1, dtype=F16),                              # N at the limit
    Case(1, 96, 70, 16, 3, 1, z=False, x0=False, chunk=65),            # 3 groups of 32: one tile each
    Case(3, 1, 200, 2, 1, 1, softplus=False, chunk=200),               # one chunk of 4 tiles (replay path)
]


def random_cases(n: int, seed: int, max_L=200, max_N=64, max_dim=70):
    """A seeded draw over the same axes (shapes, kinds, flags, dtype, chunk, schedule)."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        dim = rng.choice([1, 2, 5, 16, 31, 32, 33, 40, 48, 66, 67, max_dim])
        L = rng.choice([1, 2, 7, 16, 63, 64, 65, 100, 129, max_L])
        N = rng.choice([1, 3, 16, 17, 32, max_N])
        kinds = ["const", 1] + [g for g in (2, 3, 4, 6) if dim % g == 0]
        chunk = rng.choice([DEFAULT_CHUNK, DEFAULT_CHUNK, 7, 63, 65, 100, 128] + ([1] if L * N <= 1100 else []))
        flags = {k: rng.random() < 0.7 for k in ("D", "z", "bias", "softplus", "x0", "dlast")}
        out.append(Case(rng.choice([1, 2, 3]), dim, L, N, rng.choice(kinds), rng.choice(kinds), **flags,
                        dtype=rng.choice([F32, F16, BF16]), chunk=chunk,
                        schedule=rng.choice(["forward", "reverse", "random"]), seed=rng.randrange(1 << 30)))
    return out


RANDOM = random_cases(16, seed=20261202)


def run_and_compare(emu, c: Case):
    i, dout, dlast = make_inputs(c)
    emu.configure(c.schedule, seed=c.seed)
    out, last, chunk_states = emu.forward(c, i)
    grads = emu.backward(c, i, chunk_states, dout, dlast)
    ref_out, ref_last, ref_chunks, ref_grads = oracle(c, i, dout, dlast)

    results = {"out": (out, ref_out), "last_state": (last, ref_last), "chunk_states": (chunk_states, ref_chunks)}
    results.update({f"d{k}": (grads[k], ref_grads[k]) for k in GRAD_NAMES if k in ref_grads})
    assert set(grads) == set(ref_grads), f"gradients returned for {sorted(grads)}, expected {sorted(ref_grads)}"
    failures = []
    for name, (actual, expected) in results.items():
        assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
        if not torch.isfinite(actual).all():
            bad = (~torch.isfinite(actual)).nonzero()[:5].tolist()
            failures.append(f"{name}: {int((~torch.isfinite(actual)).sum())} non-finite elements (never written?), first at {bad}")
            continue
        tol = tolerance(c, name[1:] if name.startswith("d") else name, i)
        err = normwise_error(actual, expected)
        if err > tol:
            failures.append(f"{name}: normwise error {err:.3g} > {tol:.3g}")
    assert not failures, f"{c}:\n  " + "\n  ".join(failures)


@pytest.mark.parametrize("case", FIXED + RANDOM, ids=str)
def test_matches_fp64_oracle(emu_scan, case):
    run_and_compare(emu_scan, case)


@pytest.mark.parametrize("case", [Case(2, 6, 9, 3, 2, "const"), Case(1, 4, 5, 2, "const", 1, softplus=False, chunk=2)],
                         ids=str)
def test_oracle_matches_autograd(case):
    """The oracle's hand-written adjoint against autograd through naive.py (fp64)."""
    i, dout, dlast = make_inputs(case)
    _, _, _, grads = oracle(case, i, dout, dlast)
    expected = autograd_grads(case, i, dout, dlast)
    assert set(grads) == set(expected)
    for k in expected:
        torch.testing.assert_close(grads[k], expected[k], rtol=1e-10, atol=1e-12, msg=lambda m: f"d{k}: {m}")


def test_schedules_agree_bitwise(emu_scan):
    """No atomics and fixed-order sums: every output must be bitwise the same whatever order the
    emulator runs the threads (forward, reversed, shuffled) and blocks in (and with 2 OS workers).
    A difference means a thread read shared memory before the barrier that publishes it."""
    c = Case(2, 66, 130, 17, 2, 1, chunk=100, dtype=F16)
    i, dout, dlast = make_inputs(c)
    runs = {}
    for schedule, seed, workers in [("forward", 0, 1), ("reverse", 0, 1), ("random", 1, 1), ("random", 2, 2)]:
        emu_scan.configure(schedule, seed=seed, workers=workers)
        out, last, chunk_states = emu_scan.forward(c, i)
        grads = emu_scan.backward(c, i, chunk_states, dout, dlast)
        runs[f"{schedule}/{seed}/{workers}"] = dict(out=out, last=last, chunk_states=chunk_states, **grads)
    emu_scan.configure()
    ref_name, ref = next(iter(runs.items()))
    for name, run in runs.items():
        for k, v in run.items():
            assert torch.equal(v, ref[k]), f"{k} differs between schedules {ref_name} and {name}"


@pytest.mark.slow
@pytest.mark.parametrize("case", random_cases(60, seed=7, max_L=300, max_N=256, max_dim=100), ids=str)
def test_sweep(emu_scan, case):
    run_and_compare(emu_scan, case)
