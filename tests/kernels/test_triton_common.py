"""kernels/_common.py against torch in fp64: max error in fp32 ulps over dense ranges.

Runs on a CUDA GPU when there is one, otherwise in Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before triton is imported). On the GPU the same bounds hold with exp2 lowered
to ex2.approx (≤ 2 ulp on its own), so the bounds keep a margin over the interpreter's figures.

`python tests/kernels/test_triton_common.py` prints the table (run it with TRITON_INTERPRET=1 on a
machine without a GPU).
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
triton = pytest.importorskip("triton", reason="the triton backend needs the triton package")
import triton.language as tl  # noqa: E402

from pyneuro.kernels import _common as tc  # noqa: E402

pytestmark = pytest.mark.triton
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

_FNS = ("exp", "sigmoid", "softplus", "silu", "tanh")


@triton.jit
def _apply_kernel(x_ptr, y_ptr, n, FN: tl.constexpr, BLOCK: tl.constexpr):
    offs, mask = tc.range_mask(tl.program_id(0) * BLOCK, BLOCK, n)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    if FN == 0:
        y = tc.exp(x)
    elif FN == 1:
        y = tc.sigmoid(x)
    elif FN == 2:
        y = tc.softplus(x)
    elif FN == 3:
        y = tc.silu(x)
    else:
        y = tc.tanh(x)
    tl.store(y_ptr + offs, y, mask=mask)


def _apply(name, x):
    y = torch.empty_like(x)
    block = 4096
    _apply_kernel[(triton.cdiv(x.numel(), block),)](x, y, x.numel(), FN=_FNS.index(name), BLOCK=block)
    return y


def _reference(name, x64):
    return {
        "exp": torch.exp,
        "sigmoid": torch.sigmoid,
        "softplus": torch.nn.functional.softplus,  # threshold 20, as the kernel
        "silu": torch.nn.functional.silu,
        "tanh": torch.tanh,
    }[name](x64)


def _grid(lo, hi, dense=200_001):
    """A dense linear grid over [lo, hi] plus ±10^k for k in [-30, log10(max|x|)] (small and huge |x|)."""
    lin = torch.linspace(lo, hi, dense, dtype=torch.float64)
    top = max(abs(lo), abs(hi))
    mags = torch.logspace(-30, torch.log10(torch.tensor(top)).item(), 2001, dtype=torch.float64)
    pts = torch.cat([lin, mags, -mags])
    return pts[(pts >= lo) & (pts <= hi)].float()  # fp32 inputs: the kernel sees exactly these


def _ulp_error(actual, exact):
    """|actual - exact| in units of the fp32 spacing at the exact (fp64) value."""
    spacing = torch.from_numpy(np.spacing(exact.abs().float().numpy())).double()
    return (actual.double().cpu() - exact).abs() / spacing


# Bounds, in fp32 ulp at x, as base + slope·|x|. exp's error comes from rounding its argument:
# x·log2(e) is rounded (relative 2^-24) and LOG2E itself is an fp32 constant (relative 1.3e-8), so
# 2^(x·log2 e) is off by a relative |x|·(2^-24 + 1.3e-8) ≤ 1.22·|x| ulp, plus ~1 ulp of exp2 and
# rounding. sigmoid/silu for x ≪ 0 and softplus for x ≪ 0 are e^x times a factor near 1 and inherit
# it; tanh's exp argument is bounded where it matters (e = e^(−2|x|) vanishes beyond), so flat.
CASES = {  # name: ((lo, hi), base, slope)
    "exp": ((-87.0, 88.0), 2.0, 1.25),
    "sigmoid": ((-80.0, 80.0), 3.0, 1.25),
    "softplus": ((-80.0, 1e4), 3.0, 1.25),
    "silu": ((-80.0, 80.0), 3.0, 1.25),
    "tanh": ((-20.0, 20.0), 4.0, 0.0),
}


def ulp_table():
    """{name: (max ulp for |x| <= 1, max ulp over the range, x at that max, max of err/bound)}."""
    table = {}
    for name, ((lo, hi), base, slope) in CASES.items():
        x = _grid(lo, hi)
        err = _ulp_error(_apply(name, x.to(DEVICE)), _reference(name, x.double()))
        i = int(torch.argmax(err))
        near = err[x.abs() <= 1].max().item()
        worst = (err / (base + slope * x.double().abs())).max().item()
        table[name] = (near, err[i].item(), x[i].item(), worst)
    return table


def format_table(table):
    lines = ["fp32 max error in ulp vs torch fp64     |x|<=1   whole range (at x)          bound",
             "-" * 86]
    for name, (near, err, at, _) in table.items():
        (lo, hi), base, slope = CASES[name]
        bound = f"{base:g} + {slope:g}|x|" if slope else f"{base:g}"
        lines.append(f"{name:9s} on [{lo:g}, {hi:g}]".ljust(38) + f"{near:8.2f}   {err:8.2f} (x = {at:<10.5g})  {bound}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def table():
    t = ulp_table()
    print("\n" + format_table(t))
    return t


@pytest.mark.parametrize("name", list(CASES))
def test_ulp_bound(table, name):
    near, err, at, worst = table[name]
    assert worst <= 1.0, f"{name}: {err:.2f} ulp at x = {at} exceeds base + slope·|x| ({worst:.2f}x)"


def test_small_arguments_keep_relative_precision():
    """The cancellation-prone regimes, bounded separately: tanh and silu near 0 (relative, not
    absolute, precision), softplus far left (log1p of a tiny e)."""
    x = torch.tensor([1e-30, -3e-20, 1e-8, -2e-4, 0.1, -0.124, 0.126], dtype=torch.float32)
    for name in ("tanh", "silu"):
        rel = ((_apply(name, x.to(DEVICE)).double().cpu() - _reference(name, x.double())).abs()
               / _reference(name, x.double()).abs())
        assert rel.max() < 4 * 2.0**-24, (name, rel)
    x = torch.tensor([-80.0, -50.0, -30.0, -17.0], dtype=torch.float32)
    rel = ((_apply("softplus", x.to(DEVICE)).double().cpu() - _reference("softplus", x.double())).abs()
           / _reference("softplus", x.double()))
    assert rel.max() < 64 * 2.0**-24, rel  # e^x's own argument-rounding error, as exp


# x·log2(e) overflows to ±inf for |x| = 1e30 (intended: exp2 of it is then 0 or inf); numpy, which
# runs the interpreter, warns about that overflow.
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_sigmoid_saturates_without_nan():
    x = torch.tensor([-1e30, -1e4, -200.0, 200.0, 1e4, 1e30, float("inf"), float("-inf")])
    y = _apply("sigmoid", x.to(DEVICE)).cpu()
    assert torch.equal(y, (x > 0).float())
    t = _apply("tanh", x.to(DEVICE)).cpu()
    assert torch.equal(t, torch.sign(x))


@triton.jit
def _affine_scan_kernel(a_ptr, b_ptr, oa_ptr, ob_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    a, b = tl.associative_scan((tl.load(a_ptr + offs), tl.load(b_ptr + offs)), axis=0,
                               combine_fn=tc.affine_combine)
    tl.store(oa_ptr + offs, a)
    tl.store(ob_ptr + offs, b)


def test_affine_combine_forward_scan():
    """A forward scan of affine_combine is the recurrence x_t = a_t·x_{t-1} + b_t from x = 0."""
    g = torch.Generator().manual_seed(0)
    n = 64
    a = torch.rand(n, generator=g) * 1.5 + 0.2
    b = torch.randn(n, generator=g)
    a, b = a.to(DEVICE), b.to(DEVICE)
    oa, ob = torch.empty_like(a), torch.empty_like(b)
    _affine_scan_kernel[(1,)](a, b, oa, ob, BLOCK=n)
    x, p = 0.0, 1.0
    xs, ps = [], []
    for t in range(n):
        x = a[t].item() * x + b[t].item()
        p *= a[t].item()
        xs.append(x)
        ps.append(p)
    torch.testing.assert_close(ob.cpu().double(), torch.tensor(xs, dtype=torch.float64), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(oa.cpu().double(), torch.tensor(ps, dtype=torch.float64), rtol=1e-5, atol=0)


@triton.jit
def _ranges_kernel(out_ptr, start, limit, BLOCK: tl.constexpr):
    offs, mask = tc.range_mask(start, BLOCK, limit)
    roffs, rmask = tc.reversed_range_mask(start, BLOCK, limit)
    i = tl.arange(0, BLOCK)
    tl.store(out_ptr + i, offs)
    tl.store(out_ptr + BLOCK + i, mask.to(tl.int32))
    tl.store(out_ptr + 2 * BLOCK + i, roffs)
    tl.store(out_ptr + 3 * BLOCK + i, rmask.to(tl.int32))
    m2 = tc.outer_mask(mask, rmask)
    tl.store(out_ptr + 4 * BLOCK + i[:, None] * BLOCK + i[None, :], m2.to(tl.int32))


def test_index_helpers():
    block, start, limit = 8, 16, 21
    out = torch.zeros(4 * block + block * block, dtype=torch.int32, device=DEVICE)
    _ranges_kernel[(1,)](out, start, limit, BLOCK=block)
    out = out.cpu()
    offs = torch.arange(start, start + block, dtype=torch.int32)
    assert torch.equal(out[:block], offs)
    assert torch.equal(out[block:2 * block], (offs < limit).int())
    assert torch.equal(out[2 * block:3 * block], offs.flip(0))
    assert torch.equal(out[3 * block:4 * block], (offs.flip(0) < limit).int())
    outer = ((offs < limit)[:, None] & (offs.flip(0) < limit)[None, :]).int()
    assert torch.equal(out[4 * block:].view(block, block), outer)


if __name__ == "__main__":
    print(format_table(ulp_table()))
