"""What the batch_norm_relu conformance suite shares: the backends it runs on, the case table, the
inputs, the one fp64 oracle and the error measure. (pytest puts this folder on sys.path; the module
has a name no other suite uses.)

Targets: every backend the op declares, in every variant this machine can execute: the
``reference`` (torch's batch_norm, relu and max_pool2d) and ``cpu`` once per CPU ISA the extension
was built with (baseline, avx2, avx512; switched in-process by ``op_targets.activated``). A target
that cannot run here is still generated and skipped with its reason.

The oracle: naive.py's forward (``batch_norm_relu_naive``, which also updates fp64 copies of the
running statistics) and its backward written out step by step (``batch_norm_relu_backward_naive``),
both in fp64 on fp64 copies of the very inputs the backend saw (already rounded to fp16/bf16), so
the tolerances (pyneuro.ops.norm.TOLERANCE) measure the backend, not the input rounding.
test_batch_norm_relu_oracle.py checks the backward against autograd through the forward.

ReLU's derivative jumps at z = 0 and a 2x2 window's gradient goes to its largest z: a z within
rounding of 0, or two z of a window within rounding of each other, would let a correct fp32 backend
route a gradient elsewhere than the fp64 oracle. ``case_data`` takes the first seed whose inputs
keep every such margin above the fp32 rounding of z (deliberate ties have their own test).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import torch

import pyneuro.ops.norm as norm
from pyneuro.ops.norm import batch_norm_relu, batch_norm_relu_backward_naive, batch_norm_relu_naive

import op_targets
from op_targets import activated, assert_matches, every_isa, normwise_error  # noqa: F401  (re-exported for the suite)

LOW_PRECISION = (torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------------------------
# Targets (tests/op_targets.py)
# ----------------------------------------------------------------------------------------------
class Target(op_targets.Target):
    TOLERANCE = norm.TOLERANCE


TARGETS = op_targets.TargetSet(Target, [norm.OP])  # cpu per ISA and the reference: the backends it declares
compiled_targets = TARGETS.compiled
backend_targets = TARGETS.per_backend
reference_target = TARGETS.reference
all_targets = TARGETS.all


# ----------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    N: int
    C: int
    H: int
    W: int
    pool: int = 2
    # nchw: contiguous; channels_last; transposed: a (N, C, W, H) tensor's transpose(2, 3) view;
    # sliced: every other column of a twice-wider NCHW tensor; sliced_cl: the same of a
    # channels_last one (NHWC strides, not contiguous).
    layout: str = "nchw"
    training: bool = True
    affine: bool = True
    running: bool = True  # running statistics given (always in eval: they are required there)
    momentum: float = 0.1
    eps: float = 1e-5
    offset: float = 0.0  # added to every channel's mean: |mean| >> std (the statistics' pivot)

    @property
    def out_shape(self) -> tuple:
        return (self.N, self.C, self.H // self.pool, self.W // self.pool)


CASES = {
    # odd H/W (a last row/column in the statistics but in no window), both layouts, both pools
    "5x7": Case(2, 3, 5, 7),
    "5x7-cl": Case(2, 3, 5, 7, layout="channels_last"),
    "5x7-pool1": Case(2, 3, 5, 7, pool=1),
    "9x6-cl-pool1": Case(2, 4, 9, 6, pool=1, layout="channels_last"),
    "9x6-eval": Case(2, 4, 9, 6, training=False),
    "9x6-eval-cl": Case(2, 4, 9, 6, layout="channels_last", training=False),
    "9x6-eval-pool1": Case(3, 4, 9, 6, pool=1, training=False, momentum=0.3),
    # C = 1: both layouts hold (the row-major one is used)
    "C1": Case(3, 1, 6, 6),
    "C1-cl-pool1": Case(3, 1, 5, 4, pool=1, layout="channels_last"),
    # C = 70 > 64: the NHWC kernels' channel block and its remainder
    "C70-cl": Case(2, 70, 5, 7, layout="channels_last"),
    "C70-cl-pool1-eval": Case(2, 70, 3, 5, pool=1, layout="channels_last", training=False),
    "C70-nchw-pool1": Case(2, 70, 4, 3, pool=1),
    # N = 1; H = W = 2 with pool 2 (one window per plane)
    "N1": Case(1, 5, 6, 6),
    "N1-cl-pool1": Case(1, 5, 3, 7, pool=1, layout="channels_last"),
    "2x2": Case(4, 3, 2, 2),
    "2x2-cl": Case(4, 3, 2, 2, layout="channels_last"),
    "2x2-eval-cl": Case(3, 3, 2, 2, layout="channels_last", training=False),
    # affine=False (weight and bias None); no running statistics in training; momentum 0 and 0.3
    "noaffine": Case(2, 3, 6, 5, affine=False),
    "noaffine-cl-eval": Case(2, 3, 6, 5, layout="channels_last", affine=False, training=False),
    "no-running": Case(2, 3, 6, 6, running=False),
    "no-running-cl-pool1": Case(2, 3, 5, 5, pool=1, layout="channels_last", running=False),
    "momentum0": Case(2, 3, 6, 6, momentum=0.0),
    "momentum0.3-cl": Case(2, 3, 7, 6, layout="channels_last", momentum=0.3),
    "momentum1-eps0.1": Case(2, 3, 4, 6, momentum=1.0, eps=0.1),
    # non-contiguous x (a transposed or sliced view)
    "transposed": Case(2, 3, 5, 7, layout="transposed"),
    "transposed-eval-pool1": Case(2, 3, 6, 4, pool=1, layout="transposed", training=False),
    "sliced": Case(2, 3, 6, 5, layout="sliced"),
    "sliced-cl": Case(2, 3, 6, 5, layout="sliced_cl"),
    # |mean| = 10 to 40 std: without the pivot, the fp32 sums of E[x^2] - E[x]^2 would cancel to
    # ~1e-4 of the variance. (At 100 std torch's own channels_last batch_norm, the reference, is
    # ~2e-5 off: its fp32 statistics cancel there.)
    "offset": Case(4, 6, 8, 8, offset=20.0),
    "offset-cl": Case(4, 6, 8, 8, layout="channels_last", offset=20.0),
    # more than the kernels' fp32 blocks: 300 positions per NHWC unit, 4550 per NCHW plane
    "wide-cl-pool1": Case(1, 3, 2, 300, pool=1, layout="channels_last"),
    "plane-4550": Case(1, 2, 70, 65),
    # the MNIST CNN's first block (N cut from 128 to 2)
    "mnist-cl": Case(2, 24, 28, 28, layout="channels_last"),
}


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------
def view_of(layout: str):
    """The function that makes the op's x from its base tensor in ``layout`` (identity for the
    dense layouts); applied to the base's gradient it gives the gradient of x's elements."""
    if layout == "transposed":
        return lambda t: t.transpose(2, 3)
    if layout in ("sliced", "sliced_cl"):
        return lambda t: t[..., ::2]
    return lambda t: t


def base_of(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The base tensor whose ``view_of(layout)`` holds x's values (see Case)."""
    if layout == "nchw":
        return x.contiguous()
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "transposed":
        return x.transpose(2, 3).contiguous()
    if layout in ("sliced", "sliced_cl"):  # the skipped columns hold 1e6: read, they would show
        wide = torch.stack([x, torch.full_like(x, 1e6)], dim=-1).flatten(-2)  # (N, C, H, 2W)
        return wide.contiguous(memory_format=torch.channels_last) if layout == "sliced_cl" else wide
    raise AssertionError(layout)


@dataclass
class Inputs:
    """The public function's tensor arguments (running statistics as they are before the call)."""
    layout: str
    x_base: torch.Tensor  # x = view_of(layout)(x_base)
    weight: Optional[torch.Tensor]
    bias: Optional[torch.Tensor]
    running_mean: Optional[torch.Tensor]
    running_var: Optional[torch.Tensor]
    dout: torch.Tensor  # the cotangent of out (contiguous NCHW, out's dtype)

    @property
    def x(self) -> torch.Tensor:
        return view_of(self.layout)(self.x_base)


def make_inputs(case: Case, dtype=torch.float32, param_dtype=None, seed: int = 0, device="cpu",
                grid: bool = False) -> Inputs:
    """Values drawn in fp64 then rounded once: x ~ N(m_c, s_c^2) per channel (m_c in [-1, 1] plus
    the case's offset, s_c in [0.5, 2]), weight in +-[0.5, 1.5] (negative ones flip the ReLU's side),
    bias in [-0.5, 0.5], running statistics near the batch's. x in ``dtype``, the (C,) tensors in
    ``param_dtype`` (default: x's dtype). ``grid``: x = m_c + s_c q / 4 with integers q in
    [-8, 8], the four of a 2x2 window distinct (for 16-bit runs, whose rounding of z would make
    near-equal z of a window equal and route their gradient elsewhere than the fp64 oracle)."""
    g = torch.Generator().manual_seed(seed)
    N, C, H, W = case.N, case.C, case.H, case.W
    param_dtype = param_dtype or dtype

    def u(*shape, lo=0.0, hi=1.0):
        return torch.rand(*shape, generator=g, dtype=torch.float64) * (hi - lo) + lo

    m = u(C, lo=-1, hi=1) + case.offset
    s = u(C, lo=0.5, hi=2.0)
    if grid:
        q = torch.randint(-8, 9, (N, C, H, W), generator=g).double()
        Ho, Wo = H // case.pool, W // case.pool
        if case.pool == 2:  # distinct values in each window
            windows = torch.stack([torch.randperm(17, generator=g)[:4] for _ in range(N * C * Ho * Wo)]) - 8
            q[:, :, :2 * Ho, :2 * Wo] = windows.double().reshape(N, C, Ho, Wo, 2, 2).permute(
                0, 1, 2, 4, 3, 5).reshape(N, C, 2 * Ho, 2 * Wo)
        x = q / 4
    else:
        x = torch.randn(N, C, H, W, generator=g, dtype=torch.float64)
    x = x * s.view(1, C, 1, 1) + m.view(1, C, 1, 1)
    sign = torch.where(u(C) < 0.25, -1.0, 1.0).double()
    weight = sign * u(C, lo=0.5, hi=1.5) if case.affine else None
    bias = u(C, lo=-0.5, hi=0.5) if case.affine else None
    given = case.running or not case.training
    running_mean = m + 0.1 * u(C, lo=-1, hi=1) if given else None
    running_var = s * s * u(C, lo=0.8, hi=1.2) if given else None
    dout = torch.randn(case.out_shape, generator=g, dtype=torch.float64)

    def cast(t, dt):
        return None if t is None else t.to(device=device, dtype=dt)

    return Inputs(case.layout, base_of(cast(x, dtype), case.layout), cast(weight, param_dtype),
                  cast(bias, param_dtype), cast(running_mean, param_dtype), cast(running_var, param_dtype),
                  cast(dout, dtype))


def fp64(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.detach().double().cpu().contiguous()


def statistics(case: Case, inputs: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, biased variance) in fp64 that the forward normalises with."""
    x = fp64(inputs.x)
    if case.training:
        return x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    return fp64(inputs.running_mean), fp64(inputs.running_var)


def margin(case: Case, inputs: Inputs, dtype=torch.float32) -> tuple[float, float, float, float]:
    """(smallest |z| where the ReLU's kink matters, the fp32 rounding bound of z, smallest gap
    between a 2x2 window's two largest z, the bound on what the backend's rounding may move that
    gap). The kink matters at every z for pool 1, at each window's largest for pool 2. The fp32
    bound: 16 ulps of the largest term of z = x a + b (a = w invstd, b = bias - a mean); a 16-bit
    backend rounds z itself: 4 of its ulps of the largest z."""
    x = fp64(inputs.x)
    C = x.shape[1]
    mean, var = statistics(case, inputs)
    w = fp64(inputs.weight) if inputs.weight is not None else torch.ones(C, dtype=torch.float64)
    b = fp64(inputs.bias) if inputs.bias is not None else torch.zeros(C, dtype=torch.float64)
    ch = (1, C, 1, 1)
    a = (w / (var + case.eps).sqrt()).view(ch)
    z = (x - mean.view(ch)) * a + b.view(ch)
    fp32_bound = 16 * 2.0 ** -24 * float((x * a).abs().max() + (a * mean.view(ch)).abs().max() + z.abs().max())
    gap_bound = fp32_bound if dtype == torch.float32 else 4 * torch.finfo(dtype).eps * float(z.abs().max())
    if case.pool == 1:
        return float(z.abs().min()), fp32_bound, float("inf"), gap_bound
    N, _, H, W = z.shape
    Ho, Wo = H // 2, W // 2
    win = z[:, :, :2 * Ho, :2 * Wo].reshape(N, C, Ho, 2, Wo, 2).permute(0, 1, 2, 4, 3, 5).reshape(-1, 4)
    top2 = win.topk(2, dim=-1).values
    return float(top2[:, 0].abs().min()), fp32_bound, float((top2[:, 0] - top2[:, 1]).min()), gap_bound


def well_conditioned(case: Case, dtype=torch.float32, param_dtype=None) -> Inputs:
    """make_inputs with the first seed whose kinks lie beyond the backend's rounding of z (module
    docstring); 16-bit inputs on the grid."""
    grid = dtype != torch.float32
    for seed in range(200):
        inputs = make_inputs(case, dtype, param_dtype, seed=seed, grid=grid)
        kink, kink_bound, gap, gap_bound = margin(case, inputs, dtype)
        if kink > kink_bound and gap > gap_bound:
            return inputs
    raise AssertionError(f"{case}: no seed in [0, 200) keeps z away from its kinks")


# ----------------------------------------------------------------------------------------------
# The fp64 oracle
# ----------------------------------------------------------------------------------------------
@dataclass
class Expected:
    out: torch.Tensor
    grads: dict  # {"x", "weight", "bias"} -> fp64 gradient (weight/bias only when affine)
    running_mean: Optional[torch.Tensor]  # after the call
    running_var: Optional[torch.Tensor]


def oracle(case: Case, inputs: Inputs) -> Expected:
    """naive.py's forward and ``batch_norm_relu_backward_naive`` in fp64 on the same values."""
    x, w, b = fp64(inputs.x), fp64(inputs.weight), fp64(inputs.bias)
    rm, rv = fp64(inputs.running_mean), fp64(inputs.running_var)  # fresh copies: the forward updates them
    mean, var = statistics(case, inputs)
    with torch.no_grad():
        out = batch_norm_relu_naive(x, rm, rv, w, b, case.training, case.momentum, case.eps, case.pool)
    dx, dw, db = batch_norm_relu_backward_naive(fp64(inputs.dout), x, w, b, mean, var, case.training, case.eps,
                                                case.pool)
    grads = {"x": dx}
    if case.affine:
        grads.update(weight=dw, bias=db)
    return Expected(out, grads, rm, rv)


@functools.lru_cache(maxsize=None)
def case_data(name: str, dtype=torch.float32, param_dtype=None) -> tuple[Case, Inputs, Expected]:
    """(case, inputs on the CPU, the oracle's results), cached: every target of a test sees the
    same inputs, so the oracle runs once."""
    case = CASES[name]
    inputs = well_conditioned(case, dtype, param_dtype)
    return case, inputs, oracle(case, inputs)


# ----------------------------------------------------------------------------------------------
# Running the public function
# ----------------------------------------------------------------------------------------------
@dataclass
class Result:
    out: torch.Tensor
    grads: dict
    running_mean: Optional[torch.Tensor]
    running_var: Optional[torch.Tensor]


def run(target: Target, case: Case, inputs: Inputs, backward: bool = True, **over) -> Result:
    """The public function on ``target`` with fresh copies of the running statistics (the call
    updates them in training); with ``backward``, the gradients of <out, dout> with respect to x
    (through its view when the layout is one) and the affine parameters. ``over``: keyword
    arguments replacing the case's."""
    dev = target.device
    base = inputs.x_base.detach().to(dev).clone().requires_grad_(backward)  # clone keeps dense strides
    x = view_of(inputs.layout)(base)
    params = {n: (None if t is None else t.detach().to(dev).clone().requires_grad_(backward))
              for n, t in (("weight", inputs.weight), ("bias", inputs.bias))}
    rm = None if inputs.running_mean is None else inputs.running_mean.detach().to(dev).clone()
    rv = None if inputs.running_var is None else inputs.running_var.detach().to(dev).clone()
    kwargs = dict(training=case.training, momentum=case.momentum, eps=case.eps, pool=case.pool)
    kwargs.update(over)
    out = batch_norm_relu(x, rm, rv, params["weight"], params["bias"], backend=target.backend, **kwargs)
    grads = {}
    if backward:
        wrt = {"x": base, **{n: p for n, p in params.items() if p is not None}}
        got = torch.autograd.grad(out, list(wrt.values()), inputs.dout.to(dev))
        grads = dict(zip(wrt, got))
        grads["x"] = view_of(inputs.layout)(grads["x"])
    return Result(out.detach(), grads, rm, rv)
