"""What the recurrent cells' conformance suite shares: the backends it runs on, the cell variants,
the inputs, the one fp64 oracle and the error measure. (pytest puts this folder on sys.path; the
module has a name no other suite uses.)

Targets: every backend the registry declares for the cells, in every variant this machine can
execute: ``cpu`` once per CPU ISA the machine runs (baseline, avx2, avx512; switched in-process by
pyneuro._C.set_cpu_isa), ``triton`` on a GPU or under the interpreter, ``cuda`` on a GPU, and the
``reference``. A target that cannot run here is still generated and skipped with its reason.

The oracle: naive.py's contract pair (``*_fwd_contract`` / ``*_bwd_contract``) in fp64, on fp64
copies of the very inputs the backend saw (already rounded to fp16/bf16) and of the very
cotangents autograd handed it, so the tolerances (pyneuro.ops.rnn.TOLERANCE, the table the
first-use self-check uses too) measure the backend, not the input rounding. test_rnn_oracle.py
checks the pair against autograd through naive.py and against torch.nn.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from pyneuro.ops import rnn as rnn_ops
from pyneuro.ops.rnn import naive

import op_targets
from op_targets import COMPILED, HAS_GPU, activated, assert_matches, every_isa, interpreted, normwise_error  # noqa: F401  (re-exported for the suite)

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------------------------
# Cell variants: the six ways the four ops are used
# ----------------------------------------------------------------------------------------------
ARG_NAMES = {
    "lstm": ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr"),
    "gru": ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh"),
    "rnn": ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh"),
    "leaky": ("x", "u0", "w_ih", "w_hh", "bias", "tau"),
}
OUT_NAMES = {"lstm": ("y", "h_n", "c_n"), "gru": ("y", "h_n"), "rnn": ("y", "h_n"), "leaky": ("h", "u_n")}
GATES = {"lstm": 4, "gru": 3, "rnn": 1, "leaky": 1}
PUBLIC = {"lstm": rnn_ops.lstm_sequence, "gru": rnn_ops.gru_sequence, "rnn": rnn_ops.rnn_sequence,
          "leaky": rnn_ops.leaky_sequence}


@dataclass(frozen=True)
class Variant:
    name: str
    cell: str  # the registry's op name and the contract's cell
    proj: bool = False  # LSTM with w_hr
    relu: bool = False  # RNN with ReLU

    def __str__(self) -> str:
        return self.name

    @property
    def flags(self) -> tuple:
        """The contract ops' non-tensor arguments."""
        return (self.relu,) if self.cell == "rnn" else ()

    @property
    def arg_names(self) -> tuple:
        return ARG_NAMES[self.cell]

    @property
    def out_names(self) -> tuple:
        return OUT_NAMES[self.cell]

    def public(self, args: dict, backend: str):
        """The public function (pyneuro.ops.<cell>_sequence) on ``args`` ({name: tensor or None})."""
        fn = PUBLIC[self.cell]
        positional = [args[n] for n in self.arg_names]
        if self.cell == "rnn":
            return fn(*positional, nonlinearity="relu" if self.relu else "tanh", backend=backend)
        return fn(*positional, backend=backend)

    def fwd_contract(self):
        return getattr(naive, f"{self.cell}_fwd_contract")

    def bwd_contract(self):
        return getattr(naive, f"{self.cell}_bwd_contract")


VARIANTS = {v.name: v for v in (
    Variant("lstm", "lstm"), Variant("lstm_proj", "lstm", proj=True), Variant("gru", "gru"),
    Variant("rnn_tanh", "rnn"), Variant("rnn_relu", "rnn", relu=True), Variant("leaky", "leaky"))}


# ----------------------------------------------------------------------------------------------
# Targets (tests/op_targets.py)
# ----------------------------------------------------------------------------------------------
class Target(op_targets.Target):
    TOLERANCE = rnn_ops.TOLERANCE


TARGETS = op_targets.TargetSet(Target, list(rnn_ops.OPS.values()))
compiled_targets = TARGETS.compiled
backend_targets = TARGETS.per_backend
reference_target = TARGETS.reference
all_targets = TARGETS.all


# Sizes the Triton interpreter runs in `make test`; under it, other sizes and the tests decorated
# with interpreter_slow are marked slow (conftest.py).
INTERPRETER_FAST = {"T1-B1-I1", "tiny"}


def interpreter_slow(fn):
    """Mark a test slow for the interpreted Triton target (it stays fast for the others)."""
    fn.interpreter_slow = True
    return fn


def raw_ops(target: Target, cell: str):
    """(forward, backward) contract ops of ``target``: the C++ ops (cpu, cuda) or the Triton custom ops."""
    suffix = "_triton" if target.backend == "triton" else ""
    return (getattr(torch.ops.pyneuro, f"{cell}_fwd{suffix}").default,
            getattr(torch.ops.pyneuro, f"{cell}_bwd{suffix}").default)


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Size:
    T: int
    B: int
    I: int
    H: int
    P: int = 0  # LSTM projection width (used by the proj variant only)
    bias: bool = True


def make_args(variant: Variant, size: Size, dtype=torch.float32, device="cpu", seed=0) -> dict:
    """Validated-form arguments ({name: tensor or None}, contiguous, in ``dtype``): values drawn in
    fp64 then rounded once to ``dtype``. Weights ~ U(-k, k), k = 1.5/sqrt(H) (a little above
    torch.nn's init, so the gates leave their linear range); tau in [1, 8] with one unit at
    exactly 1 (alpha = 1)."""
    gen = torch.Generator().manual_seed(seed)
    T, B, I, H = size.T, size.B, size.I, size.H
    G = GATES[variant.cell]
    R = size.P if variant.proj else H
    k = 1.5 / H ** 0.5

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale

    def uniform(*shape, bound=k):
        return (torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound

    args = {"x": randn(T, B, I)}
    if variant.cell == "leaky":
        tau = 1 + 7 * torch.rand(H, generator=gen, dtype=torch.float64)
        tau[0] = 1.0
        args.update(u0=randn(B, H), w_ih=uniform(H, I), w_hh=uniform(H, H),
                    bias=uniform(H) if size.bias else None, tau=tau)
    else:
        args["h0"] = randn(B, R, scale=0.5)
        if variant.cell == "lstm":
            args["c0"] = randn(B, H, scale=0.5)
        args.update(w_ih=uniform(G * H, I), w_hh=uniform(G * H, R),
                    b_ih=uniform(G * H) if size.bias else None, b_hh=uniform(G * H) if size.bias else None)
        if variant.cell == "lstm":
            args["w_hr"] = uniform(R, H, bound=1.5 / H ** 0.5) if variant.proj else None
    return {n: (None if args[n] is None else args[n].to(dtype).to(device).contiguous()) for n in variant.arg_names}


def make_cotangents(variant: Variant, args: dict, dtype, mode: str = "all", seed: int = 1) -> dict:
    """Gradients of the outputs ({out name: tensor or None}) in the outputs' dtype: the values
    autograd hands the backend. mode: "all", "states" (y unused), "y" (final states unused)."""
    gen = torch.Generator().manual_seed(seed)
    x = args["x"]
    T, B = x.shape[:2]
    H = args["w_ih"].shape[0] // GATES[variant.cell]
    R = args["w_hr"].shape[0] if variant.proj else H
    shapes = {"y": (T, B, R), "h": (T, B, H), "h_n": (B, R), "c_n": (B, H), "u_n": (B, H)}
    cot = {}
    for k, name in enumerate(variant.out_names):
        used = mode == "all" or (mode == "y") == (k == 0)
        cot[name] = torch.randn(shapes[name], generator=gen, dtype=torch.float64).to(dtype) if used else None
    return cot


def fp64(args: dict) -> dict:
    return {n: (None if t is None else t.detach().double().cpu()) for n, t in args.items()}


def relu_margin(args: dict) -> float:
    """min |pre-activation| of an RNN-ReLU forward in fp64: ReLU's derivative jumps at 0, so a
    pre-activation within rounding of 0 would let a correct backend disagree with the oracle."""
    a = fp64(args)
    h = a["h0"]
    pre_min = float("inf")
    for t in range(a["x"].shape[0]):
        pre = a["x"][t] @ a["w_ih"].t() + h @ a["w_hh"].t()
        if a["b_ih"] is not None:
            pre = pre + a["b_ih"] + a["b_hh"]
        pre_min = min(pre_min, pre.abs().min().item())
        h = pre.clamp_min(0)
    return pre_min


def well_conditioned_args(variant: Variant, size: Size, dtype, seed: int = 0, margin: float = 1e-4) -> dict:
    """make_args with the first seed from ``seed`` on whose ReLU pre-activations keep ``margin``
    from 0 (every seed for the smooth cells). 1e-4 is far above the forward error in them of a
    backend that keeps its state in fp32 (the reference, cpu, and every backend in fp32); see
    needs_backend_masks for the others."""
    for s in range(seed, seed + 200):
        args = make_args(variant, size, dtype, seed=s)
        if not variant.relu or relu_margin(args) >= margin:
            return args
    raise AssertionError(f"no seed in [{seed}, {seed + 200}) keeps the ReLU pre-activations {margin} from 0")


# ----------------------------------------------------------------------------------------------
# The fp64 oracle
# ----------------------------------------------------------------------------------------------
def oracle_forward(variant: Variant, args: dict):
    """(outputs, reserve) of the contract forward in fp64 on the same values."""
    a = fp64(args)
    *outs, reserve = variant.fwd_contract()(*(a[n] for n in variant.arg_names), *variant.flags)
    return tuple(outs), reserve


def oracle_backward(variant: Variant, args: dict, cot: dict, reserve) -> dict:
    """{arg name: fp64 gradient} of every argument present, from the contract backward fed with
    ``reserve`` (fp64 for the oracle itself, or a backend's reserve) and the cotangents
    (an unused output's as absent; y's as zeros, since the contract has it always present)."""
    a = fp64(args)
    c = {n: (None if t is None else t.double().cpu()) for n, t in cot.items()}
    y_name = variant.out_names[0]
    if c[y_name] is None:
        x = a["x"]
        H = a["w_ih"].shape[0] // GATES[variant.cell]
        width = a["w_hr"].shape[0] if variant.proj else H
        c[y_name] = torch.zeros(x.shape[0], x.shape[1], width, dtype=torch.float64)
    grads = variant.bwd_contract()(*(c[n] for n in variant.out_names), *(a[n] for n in variant.arg_names),
                                   reserve.double().cpu(), *variant.flags)
    return {n: g for n, g in zip(variant.arg_names, grads) if a[n] is not None}


def oracle(variant: Variant, args: dict, cot: dict):
    """(outputs, {arg: gradient}) in fp64: the contract pair on the very inputs and cotangents."""
    outs, reserve = oracle_forward(variant, args)
    return outs, oracle_backward(variant, args, cot, reserve)


def needs_backend_masks(target: "Target", variant: Variant, dtype) -> bool:
    """GPU kernels may round h to bf16/fp16 for the recurrent GEMM each step (the contract allows
    it): a ReLU pre-activation within that rounding (~2^-8 relative) of 0 may then take the other
    side of the kink, where the derivative jumps, and no seed keeps thousands of pre-activations
    that far from 0. There the oracle differentiates at the backend's own ReLU masks: the contract
    backward fed the reserve (h_t) of the backend's forward on the same inputs, which is what the
    contract says its backward uses."""
    return variant.relu and dtype != torch.float32 and target.backend in ("triton", "cuda")


def oracle_at_backend_masks(target: "Target", variant: Variant, args: dict, cot: dict) -> dict:
    fwd, _ = raw_ops(target, variant.cell)
    call = [None if args[n] is None else args[n].to(target.device) for n in variant.arg_names]
    reserve = fwd(*call, *variant.flags)[-1]
    return oracle_backward(variant, args, cot, reserve)


@functools.lru_cache(maxsize=None)
def case_data(variant_name: str, size: Size, dtype, mode: str = "all", seed: int = 0):
    """(args on CPU, cotangents, oracle outputs, oracle gradients), cached: every target of a test
    sees the same inputs, so the oracle runs once."""
    variant = VARIANTS[variant_name]
    args = well_conditioned_args(variant, size, dtype, seed)
    cot = make_cotangents(variant, args, dtype, mode, seed + 1)
    outs, grads = oracle(variant, args, cot)
    return args, cot, outs, grads


def run_public(target: Target, variant: Variant, args: dict, cot: dict):
    """The public function on ``target``: (outputs, {arg: gradient}) of <outputs, cotangents>
    with respect to every tensor argument present (tau included)."""
    leaves = {n: (None if t is None else t.detach().to(target.device).clone().requires_grad_())
              for n, t in args.items()}
    outs = variant.public(leaves, target.backend)
    assert len(outs) == len(variant.out_names)
    used = [(o, cot[n].to(target.device)) for o, n in zip(outs, variant.out_names) if cot[n] is not None]
    names = [n for n, t in leaves.items() if t is not None]
    grads = torch.autograd.grad([o for o, _ in used], [leaves[n] for n in names], [c for _, c in used])
    return tuple(o.detach() for o in outs), dict(zip(names, grads))
