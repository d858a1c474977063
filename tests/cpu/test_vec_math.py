"""csrc/cpu/vec_math.h against torch, on every CPU ISA variant this machine runs.

Each function is evaluated through pyneuro._C._vec_math (the vectorised loop of the ISA variant
named) on dense sweeps: a stride through every fp32 bit pattern (so subnormals, +-0, huge values,
+-inf and NaNs are all in), dense grids over the ranges where the functions change shape, and the
edges the code special-cases. The reference is torch in float64, rounded to fp32; the error is the
distance in ulp between the two fp32 values (0 = correctly rounded). Where the exact result is
below FLT_MIN the functions flush, so there only the absolute error is bounded.

`pytest -s tests/cpu/test_vec_math.py` prints the table of measured maxima
(docs/kernels/selective_scan.md, "CPU vector math", holds a copy).
"""
from __future__ import annotations

import math

import pytest
import torch

C = pytest.importorskip("pyneuro._C", reason="the compiled extension is not built")

FLT_MIN = 2.0 ** -126

# Documented bounds (csrc/cpu/vec_math.h): max ulp where the exact result is a normal fp32, and
# the absolute error allowed where it is not (flushed results).
BOUNDS = {
    "exp": (1, FLT_MIN),
    "exp2": (1, FLT_MIN),
    "exp2_clamped": (1, 0.0),
    "log1p": (2, 0.0),
    "softplus": (3, FLT_MIN),
    "sigmoid": (2, FLT_MIN),
    "tanh": (1, 0.0),
    "silu": (3, 88 * FLT_MIN),
}
# silu(x) = x * sigmoid(x) is flushed to -0 where sigmoid is (x <= ln FLT_MIN), although the
# exact result is still a (tiny) normal there: that region is held to the absolute bound.
FLUSHED_BELOW = {"silu": -87.33654}


def _reference(name: str, x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return {
        "exp": torch.exp,
        "exp2": torch.exp2,
        "exp2_clamped": lambda v: torch.exp2(v.clamp(-126, 127)),  # the kernels' decay: clamped, no inf/0
        "log1p": torch.log1p,
        "softplus": lambda v: torch.logaddexp(v, torch.zeros_like(v)),  # no overflow for large v
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "silu": torch.nn.functional.silu,
    }[name](x)


# Exact results at special inputs, as (x, expected) pairs (None: NaN); zeros are compared by sign too.
SPECIALS = {
    "exp": [(0.0, 1.0), (-0.0, 1.0), (math.inf, math.inf), (-math.inf, 0.0), (89.0, math.inf), (-104.0, 0.0)],
    "exp2": [(0.0, 1.0), (-0.0, 1.0), (math.inf, math.inf), (-math.inf, 0.0), (128.0, math.inf), (1.0, 2.0),
             (-126.0, FLT_MIN)],
    "exp2_clamped": [(0.0, 1.0), (1.0, 2.0), (-126.0, FLT_MIN), (-1000.0, FLT_MIN), (-math.inf, FLT_MIN),
                     (127.0, 2.0 ** 127), (math.inf, 2.0 ** 127)],
    "log1p": [(0.0, 0.0), (-0.0, -0.0), (-1.0, -math.inf), (-2.0, None), (-math.inf, None), (math.inf, math.inf)],
    "softplus": [(math.inf, math.inf), (-math.inf, 0.0), (0.0, math.log(2.0))],
    "sigmoid": [(0.0, 0.5), (-0.0, 0.5), (math.inf, 1.0), (-math.inf, 0.0)],
    "tanh": [(0.0, 0.0), (-0.0, -0.0), (math.inf, 1.0), (-math.inf, -1.0), (20.0, 1.0)],
    "silu": [(0.0, 0.0), (-0.0, -0.0), (math.inf, math.inf), (-math.inf, None)],  # -inf * 0, as torch
}
for _name in SPECIALS:
    SPECIALS[_name].append((math.nan, None))


def _inputs() -> torch.Tensor:
    every_bits = torch.arange(0, 2**32, 1021, dtype=torch.int64)  # ~4.2M patterns, all exponents
    strided = (every_bits - (every_bits >= 2**31).long() * 2**32).to(torch.int32).view(torch.float32)
    grids = [torch.linspace(lo, hi, n) for lo, hi, n in
             ((-1.0, 1.0, 1_000_001), (-20.0, 20.0, 1_000_001), (-130.0, 130.0, 500_001))]
    edges = torch.tensor([0.0, -0.0, 1.0, -1.0, math.inf, -math.inf, math.nan, -math.nan,
                          FLT_MIN, -FLT_MIN, 2.0 ** -149, -(2.0 ** -149), 3.4028234663852886e38,
                          -3.4028234663852886e38, 0.625, -0.625, 88.72283935546875, -87.33654022216797,
                          -126.0, 127.99999237060547, -0.9999999403953552, 16.0, -16.0])
    near = [torch.nextafter(edges, torch.full_like(edges, d)) for d in (math.inf, -math.inf)]
    return torch.cat([strided, *grids, edges, *near]).float().contiguous()


def _run(name: str, x: torch.Tensor, isa: str) -> torch.Tensor:
    out = torch.empty_like(x)
    C._vec_math(name, x.numpy(), out.numpy(), isa)
    return out


def _ordered(t: torch.Tensor) -> torch.Tensor:
    """fp32 bits as integers that order like the floats (adjacent floats differ by 1)."""
    i = t.view(torch.int32).long()
    return torch.where(i < 0, -(i & 0x7FFFFFFF), i)


def _measure(name: str, isa: str, x: torch.Tensor):
    y = _run(name, x, isa)
    ref64 = _reference(name, x)
    ref = ref64.float()
    nan = torch.isnan(ref)
    assert torch.equal(torch.isnan(y), nan), f"{name} ({isa}): NaN where torch has none, or the reverse"
    normal = ~nan & (ref.abs() >= FLT_MIN) & ~(x <= FLUSHED_BELOW.get(name, -math.inf))
    ulp = (_ordered(y[normal]) - _ordered(ref[normal])).abs()
    worst = int(ulp.max()) if ulp.numel() else 0
    where = float(x[normal][ulp.argmax()]) if ulp.numel() else math.nan
    tiny = ~nan & ~normal
    abs_err = float((y[tiny].double() - ref64[tiny]).abs().max()) if tiny.any() else 0.0
    return worst, where, abs_err


ISAS = C.cpu_isas()
NAMES = list(BOUNDS)
_TABLE: dict = {}


@pytest.fixture(scope="module")
def inputs():
    return _inputs()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", NAMES)
def test_within_documented_bound(name, isa, inputs):
    worst, where, abs_err = _measure(name, isa, inputs)
    _TABLE[(name, isa)] = (worst, where, abs_err)
    max_ulp, max_abs = BOUNDS[name]
    assert worst <= max_ulp, f"{name} ({isa}): {worst} ulp at x = {where!r} (documented: <= {max_ulp})"
    assert abs_err <= max_abs, f"{name} ({isa}): absolute error {abs_err:.3g} where the result is below FLT_MIN"


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", NAMES)
def test_special_values(name, isa):
    xs = torch.tensor([x for x, _ in SPECIALS[name]], dtype=torch.float32)
    y = _run(name, xs, isa)
    for x, got, (_, want) in zip(xs.tolist(), y.tolist(), SPECIALS[name]):
        if want is None:
            assert math.isnan(got), f"{name}({x}) = {got}, expected NaN"
        else:
            exact = got == want or (want == math.log(2.0) and abs(got - want) <= 6e-8)
            assert exact and math.copysign(1, got) == math.copysign(1, want), f"{name}({x}) = {got}, expected {want}"


def test_unknown_function_and_isa_are_refused():
    x = torch.zeros(4)
    with pytest.raises(ValueError, match="unknown function 'cosh'"):
        C._vec_math("cosh", x.numpy(), x.numpy(), "baseline")
    with pytest.raises(ValueError, match="unknown CPU ISA 'sse9'"):
        C._vec_math("exp", x.numpy(), x.numpy(), "sse9")


def teardown_module(module):
    if not _TABLE:
        return
    print("\n\nvec_math max error vs torch float64 (ulp where the result is normal; abs error below FLT_MIN)")
    print(f"{'function':<10}" + "".join(f"{isa:>30}" for isa in ISAS))
    for name in NAMES:
        cells = []
        for isa in ISAS:
            if (name, isa) in _TABLE:
                worst, where, abs_err = _TABLE[(name, isa)]
                cells.append(f"{worst} ulp @ {where:.4g}" + (f" / {abs_err:.1g}" if abs_err else ""))
            else:
                cells.append("-")
        print(f"{name:<10}" + "".join(f"{c:>30}" for c in cells))
