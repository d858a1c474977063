"""tl.associative_scan(reverse=True) with a non-commutative combine, against a sequential fp64
reference: the primitive every Triton gradient of the selective scan rests on.

Under the interpreter (no GPU) this checks our reading of the semantics: reverse=True feeds the
accumulation of the *later* elements as the combine's first argument (the interpreter flips,
scans forward, flips). On a GPU it checks the compiled lowering (register/lane/warp reversal in
ScanOpToLLVM), which has had bug reports for non-commutative combines (triton-lang/triton#4362).
If it fails there, set PYNEURO_TRITON_REVERSE_SCAN=flip (see kernels/selective_scan.py); the
"flip" cases below check that fallback's primitive (reversed loads, forward scan, tl.flip).

Tiles: 1-D (L,) and 3-D (2, 4, L) scanned along the last axis like the kernels' (BLOCK_D, BLOCK_N,
BLOCK_L) tiles, with 4 and 16 warps on a GPU (16: the axis spans several warps for long L, the
lowering's shared-memory path); the interpreter ignores num_warps, so it runs 4 only.
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
triton = pytest.importorskip("triton", reason="the triton backend needs the triton package")
import triton.language as tl  # noqa: E402

from pyneuro.kernels._common import affine_combine  # noqa: E402

pytestmark = pytest.mark.triton
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LENGTHS = [1, 2, 4, 8, 16, 32, 64, 128, 256]


@triton.jit
def _affine_combine_swapped(a1, b1, a2, b2):
    # The other argument order: (a2, b2) applied first.
    return a1 * a2, a1 * b2 + b1


@triton.jit
def _scan_kernel(a_ptr, b_ptr, oa_ptr, ob_ptr, R0: tl.constexpr, R1: tl.constexpr, L: tl.constexpr,
                 FLIP: tl.constexpr, SWAP: tl.constexpr):
    """(R0, R1, L) tile, row-major, scanned backwards along L: reverse=True, or (FLIP) a forward
    scan over the tile loaded in reverse order, flipped back with tl.flip."""
    i0 = tl.arange(0, R0)[:, None, None]
    i1 = tl.arange(0, R1)[None, :, None]
    l_idx = tl.arange(0, L)[None, None, :]
    row = (i0 * R1 + i1) * L
    if FLIP:
        src = row + (L - 1 - l_idx)
    else:
        src = row + l_idx
    a = tl.load(a_ptr + src)
    b = tl.load(b_ptr + src)
    if FLIP:
        if SWAP:
            ra, rb = tl.associative_scan((a, b), axis=2, combine_fn=_affine_combine_swapped)
        else:
            ra, rb = tl.associative_scan((a, b), axis=2, combine_fn=affine_combine)
        ra = tl.flip(ra, 2)
        rb = tl.flip(rb, 2)
    else:
        if SWAP:
            ra, rb = tl.associative_scan((a, b), axis=2, combine_fn=_affine_combine_swapped, reverse=True)
        else:
            ra, rb = tl.associative_scan((a, b), axis=2, combine_fn=affine_combine, reverse=True)
    tl.store(oa_ptr + row + l_idx, ra)
    tl.store(ob_ptr + row + l_idx, rb)


@triton.jit
def _scan_kernel_1d(a_ptr, b_ptr, oa_ptr, ob_ptr, L: tl.constexpr, FLIP: tl.constexpr, SWAP: tl.constexpr):
    l_idx = tl.arange(0, L)
    src = (L - 1 - l_idx) if FLIP else l_idx
    a = tl.load(a_ptr + src)
    b = tl.load(b_ptr + src)
    if FLIP:
        if SWAP:
            ra, rb = tl.associative_scan((a, b), axis=0, combine_fn=_affine_combine_swapped)
        else:
            ra, rb = tl.associative_scan((a, b), axis=0, combine_fn=affine_combine)
        ra = tl.flip(ra, 0)
        rb = tl.flip(rb, 0)
    else:
        if SWAP:
            ra, rb = tl.associative_scan((a, b), axis=0, combine_fn=_affine_combine_swapped, reverse=True)
        else:
            ra, rb = tl.associative_scan((a, b), axis=0, combine_fn=affine_combine, reverse=True)
    tl.store(oa_ptr + l_idx, ra)
    tl.store(ob_ptr + l_idx, rb)


def reverse_scan_reference(a, b, swap):
    """Sequential fp64 reverse scan along the last axis, jax/Triton convention:
    out[L-1] = x[L-1], out[t] = combine(out[t+1], x[t])."""
    a, b = a.double(), b.double()
    oa, ob = a.clone(), b.clone()
    for t in range(a.shape[-1] - 2, -1, -1):
        pa, pb = oa[..., t + 1], ob[..., t + 1]
        oa[..., t] = pa * a[..., t]
        # affine_combine(p, x) = (pa·a, a·pb + b); swapped(p, x) = (pa·a, pa·b + pb)
        ob[..., t] = pa * b[..., t] + pb if swap else a[..., t] * pb + b[..., t]
    return oa, ob


def _inputs(shape, seed):
    g = torch.Generator().manual_seed(seed)
    # a = e^{±0.1}: products over 256 steps stay O(1), and the two argument orders differ by O(1).
    a = torch.exp((torch.rand(shape, generator=g) - 0.5) * 0.2)
    b = torch.randn(shape, generator=g)
    return a, b


def _normwise(actual, expected):
    return ((actual.double().cpu() - expected).abs().max() / expected.abs().max()).item()


# fp32 scan vs sequential fp64, products of ≤ 256 factors near 1: measured ≤ 8.8e-7
# normwise under the interpreter (sequential there); 1e-5 leaves room for the GPU's tree order.
TOL = 1e-5


# tl.flip of a 1-D tile of one element reshapes it to a 0-d tensor, which Triton rejects; the
# kernels flip BLOCK_L >= 4, so the flip fallback is not generated for L = 1 (the GPU check fails
# on any skipped triton test, so the case is left out rather than skipped).
CASES_1D = [(L, flip) for L in LENGTHS for flip in (False, True) if not (flip and L == 1)]


@pytest.mark.parametrize("swap", [False, True], ids=["later-first", "earlier-first"])
@pytest.mark.parametrize("L,flip", CASES_1D, ids=[f"{L}-{'flip-fallback' if f else 'reverse=True'}" for L, f in CASES_1D])
def test_reverse_scan_1d(L, flip, swap):
    a, b = _inputs((L,), seed=L)
    oa, ob = torch.empty(L, device=DEVICE), torch.empty(L, device=DEVICE)
    _scan_kernel_1d[(1,)](a.to(DEVICE), b.to(DEVICE), oa, ob, L=L, FLIP=flip, SWAP=swap)
    ea, eb = reverse_scan_reference(a, b, swap)
    assert _normwise(oa, ea) <= TOL and _normwise(ob, eb) <= TOL, (_normwise(oa, ea), _normwise(ob, eb))


@pytest.mark.parametrize("num_warps", [4, 16] if DEVICE == "cuda" else [4])
@pytest.mark.parametrize("swap", [False, True], ids=["later-first", "earlier-first"])
@pytest.mark.parametrize("flip", [False, True], ids=["reverse=True", "flip-fallback"])
@pytest.mark.parametrize("L", LENGTHS)
def test_reverse_scan_3d_tile(L, flip, swap, num_warps):
    shape = (2, 4, L)
    a, b = _inputs(shape, seed=1000 + L)
    oa, ob = torch.empty(shape, device=DEVICE), torch.empty(shape, device=DEVICE)
    _scan_kernel[(1,)](a.to(DEVICE), b.to(DEVICE), oa, ob, R0=2, R1=4, L=L, FLIP=flip, SWAP=swap,
                       num_warps=num_warps)
    ea, eb = reverse_scan_reference(a, b, swap)
    assert _normwise(oa, ea) <= TOL and _normwise(ob, eb) <= TOL, (_normwise(oa, ea), _normwise(ob, eb))


@pytest.mark.parametrize("L", [2, 64, 256])
def test_reference_distinguishes_the_orders(L):
    """The check above can fail: the two argument orders give different answers (by far more
    than TOL), so a lowering that swapped them would be caught."""
    a, b = _inputs((L,), seed=L)
    _, later_first = reverse_scan_reference(a, b, swap=False)
    _, earlier_first = reverse_scan_reference(a, b, swap=True)
    assert _normwise(earlier_first, later_first) > 100 * TOL
