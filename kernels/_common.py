"""Triton helpers shared by the kernels: activations, an exp on exp2, the affine combine of linear
recurrences, tile index/mask helpers. Nothing here knows about a particular op.

All functions take and return fp32 tensors (callers upcast half-precision loads first).

Accuracy (fp32 ulp against torch in fp64, measured under the interpreter by
tests/kernels/test_triton_common.py over dense ranges including large |x|, which asserts
base + slope·|x| bounds):

    exp       1.4 ulp for |x| ≤ 1; beyond, the rounding of x·log2(e) adds a relative |x|·2^-24,
              i.e. up to ~|x| ulp (64 ulp at x = 87.3): the error the GPU's own fp32 tl.exp has,
              because Triton lowers it to ex2.approx(x·log2 e)
    sigmoid   1.9 ulp for |x| ≤ 1; for x ≪ 0 it is ≈ e^x and inherits exp's growth (60 at −79)
    softplus  2.1 ulp for |x| ≤ 1; x ≪ 0 as sigmoid (58 at −67); x itself above 20 (torch's rule)
    silu      x·sigmoid(x): 2.4 ulp for |x| ≤ 1, 61 at −79
    tanh      3.0 ulp everywhere: odd polynomial for |x| < 0.55 (no cancellation), exp form beyond

The divisions go through `reciprocal` (a Newton step after the division): on the GPU a plain fp32
`/` is div.full.f32 (up to 2 ulp, PTX checked for sm_90), which the interpreter's numpy division
does not show; and exp2 is ex2.approx.ftz.f32 there, whose error (≤ 2 ulp) no CPU run shows
either: the forms above keep it from being amplified (tanh's crossover), and the bounds keep a
margin for it.

Why exp goes through exp2 here: on the GPU `tl.exp` already is ex2.approx(x·log2 e), while the
interpreter evaluates numpy's correctly rounded exp. Writing it as exp2 makes the interpreter
reproduce the GPU's argument rounding, so a CPU test sees (almost) the error the GPU will have.
"""
from __future__ import annotations

import triton
import triton.language as tl

# Module globals used inside @triton.jit must be constexpr (Triton >= 3.2 rejects plain floats).
LOG2E = tl.constexpr(1.4426950408889634)  # log2(e)
# CUDA's limit on a launch grid's second and third axes (the first allows 2^31 - 1). The interpreter
# has none, so the launchers check it themselves.
MAX_GRID_YZ = 65535


@triton.jit
def exp(x):
    """e^x as 2^(x·log2 e): the GPU lowering of fp32 tl.exp, written out (see the module docstring)."""
    return tl.exp2(x * LOG2E)


@triton.jit
def reciprocal(d):
    """1/d to within an ulp on the GPU too: there fp32 `/` is div.full.f32 (up to 2 ulp off; PTX
    checked for sm_90), so one Newton step refines it (two FMAs). tl.math.div_rn would round
    correctly but costs the kernels registers they do not have (spills at make triton-compile)."""
    r = 1.0 / d
    return tl.fma(r, tl.fma(-d, r, 1.0), r)


@triton.jit
def sigmoid(x):
    """1 / (1 + e^-x), evaluating exp only at -|x| ≤ 0: no overflow for any x."""
    e = exp(-tl.abs(x))
    r = reciprocal(1.0 + e)
    return tl.where(x >= 0, r, e * r)


@triton.jit
def softplus(x):
    """log(1 + e^x), torch's threshold 20 (x itself above).

    log1p(e) as log(w)·e/(w−1) with w = 1 + e (Goldberg): the quotient cancels the rounding of w, so
    small e keeps its precision without a log1p (not available on every Triton version).
    """
    e = exp(tl.minimum(x, 20.0))  # tl.minimum drops a NaN: it is restored below
    w = 1.0 + e
    lp = tl.where(w == 1.0, e, tl.log(w) * (e * reciprocal(tl.where(w == 1.0, 1.0, w - 1.0))))
    return tl.where((x > 20.0) | (x != x), x, lp)


@triton.jit
def silu(x):
    """x · sigmoid(x)."""
    return x * sigmoid(x)


@triton.jit
def tanh(x):
    """tanh(x). |x| < 0.55: its Taylor series to x¹⁹ (truncation < 0.1 ulp); beyond: sign(x)·(2/(1 + e) − 1)
    with e = e^(−2|x|) ≤ 0.33. Why 0.55: the exp form multiplies the relative error of e by
    2e/(1 − e²), 3.9 at |x| = 0.125 but 0.75 from 0.55 on, and on the GPU e comes from ex2.approx
    (≤ 2 ulp), an error the interpreter, whose exp2 is exact, cannot show. (2/(1 + e) − 1 rather than
    (1 − e)/(1 + e): one register less, which the GRU's step kernel needs to stay spill-free.)"""
    ax = tl.abs(x)
    e = exp(-2.0 * ax)
    big = 2.0 * reciprocal(1.0 + e) - 1.0  # 2r ∈ [1.5, 2): the subtraction is exact
    x2 = x * x
    q = -0.00023912911424355248
    q = q * x2 + 0.000590027440945586
    q = q * x2 - 0.0014558343870513183
    q = q * x2 + 0.003592128036572481
    q = q * x2 - 0.008863235529902197
    q = q * x2 + 0.021869488536155203
    q = q * x2 - 0.05396825396825397
    q = q * x2 + 0.13333333333333333
    q = q * x2 - 0.3333333333333333
    small = ax + ax * (x2 * q)  # the leading term exact, the correction (≤ 0.1·|x|) rounded
    r = tl.where(ax < 0.55, small, big)
    return tl.where(x < 0, -r, r)


@triton.jit
def affine_combine(a1, b1, a2, b2):
    """Composition of affine maps x -> a·x + b for tl.associative_scan, (a1, b1) applied first:
    x -> a2·(a1·x + b1) + b2 = (a1·a2)·x + (a2·b1 + b2).

    Associative, not commutative. A forward scan over (a_t, b_t) gives, at t, the map from the
    state before step 0 to the state after step t. With reverse=True Triton passes the accumulated
    *later* elements as (a1, b1) (jax's convention; the interpreter flips, scans, flips), so the
    result at t maps a carry entering after the last step to the adjoint at t.
    """
    return a1 * a2, a2 * b1 + b2


@triton.jit
def range_mask(start, BLOCK: tl.constexpr, limit):
    """(start + [0, BLOCK), mask of those < limit): the offsets and bounds mask of one tile."""
    offs = start + tl.arange(0, BLOCK)
    return offs, offs < limit


@triton.jit
def reversed_range_mask(start, BLOCK: tl.constexpr, limit):
    """Like range_mask, in reverse order: start + BLOCK−1, ..., start. Loading a tile through these
    offsets puts the last step first, so a forward scan runs backwards in time."""
    offs = start + (BLOCK - 1) - tl.arange(0, BLOCK)
    return offs, offs < limit


@triton.jit
def outer_mask(row_mask, col_mask):
    """(R,) and (C,) masks -> the (R, C) mask of their tile."""
    return row_mask[:, None] & col_mask[None, :]
