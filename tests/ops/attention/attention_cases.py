"""What the attention conformance suite shares: the targets, the problem shapes, the inputs, the
fp64 oracle and the error measure. (pytest puts this folder on sys.path; the module has a name no
other suite uses.)

Targets: every backend the registry declares for attention, in every variant this machine can
execute (cpu once per CPU ISA, triton on a GPU or under the interpreter, cuda on a GPU, the
reference); one that cannot run here is generated and skipped with its reason.

The oracle: naive.py's contract pair (attention_fwd_contract / attention_bwd_contract) in fp64,
on fp64 copies of the very inputs the backend saw (already rounded to bf16/fp16), so the
tolerances (pyneuro.ops.attn.TOLERANCE, shared with the first-use self-check) measure the
backend, not the input rounding. test_attention_oracle.py checks the pair against autograd through
naive.py and against SDPA's math backend.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pyneuro.ops import attn as attn_ops
from pyneuro.ops.attn import naive

import op_targets
from op_targets import HAS_GPU, activated, every_isa, interpreted  # noqa: F401  (re-exported for the suite)

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
DTYPE_IDS = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}


class Target(op_targets.Target):
    TOLERANCE = attn_ops.TOLERANCE


TARGETS = op_targets.TargetSet(Target, [attn_ops.OP])
compiled_targets = TARGETS.compiled
backend_targets = TARGETS.per_backend
reference_target = TARGETS.reference
all_targets = TARGETS.all


def raw_ops(target: Target):
    """(forward, backward) contract ops of ``target``: the C++ ops (cpu, cuda) or the Triton custom ops."""
    if target.backend == "triton":
        return torch.ops.pyneuro.attention_fwd_triton.default, torch.ops.pyneuro.attention_bwd_triton.default
    return torch.ops.pyneuro.attention_fwd.default, torch.ops.pyneuro.attention_bwd.default


@dataclass(frozen=True)
class Shape:
    B: int
    Hq: int
    Lq: int
    D: int
    Hkv: int = 0   # 0: as Hq
    Lk: int = 0    # 0: as Lq
    causal: bool = False
    dropout_p: float = 0.0

    @property
    def hkv(self) -> int:
        return self.Hkv or self.Hq

    @property
    def lk(self) -> int:
        return self.Lk or self.Lq


def make_inputs(shape: Shape, dtype=torch.float32, device="cpu", seed=0, magnitude=1.0):
    """q, k, v drawn in fp64 then rounded once to ``dtype``; ``magnitude`` scales q and k (scores
    grow with its square: large magnitudes test the online softmax's overflow handling)."""
    gen = torch.Generator().manual_seed(seed)
    s = shape

    def randn(*dims, scale=1.0):
        return (torch.randn(*dims, generator=gen, dtype=torch.float64) * scale).to(dtype).to(device)

    return (randn(s.B, s.Hq, s.Lq, s.D, scale=magnitude), randn(s.B, s.hkv, s.lk, s.D, scale=magnitude),
            randn(s.B, s.hkv, s.lk, s.D))


def make_cotangent(shape: Shape, dtype, device="cpu", seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape.B, shape.Hq, shape.Lq, shape.D, generator=gen, dtype=torch.float64).to(dtype).to(device)


def rng_for(shape: Shape):
    # A negative seed: the kernels must read it as the unsigned 64-bit key of the contract.
    return torch.tensor([-0x1234_5678_9ABC_DEF1, 77], dtype=torch.int64) if shape.dropout_p else None


def scale_of(shape: Shape) -> float:
    return 1.0 / math.sqrt(shape.D)


def oracle(shape: Shape, q, k, v, dout, rng_state, out_seen=None):
    """(out, lse), (dq, dk, dv) in fp64 from the contract pair on the same (rounded) values.

    ``out_seen``: the out the backend's backward read (its forward's, rounded to the input dtype).
    The contract's backward takes delta = rowsum(dout ⊙ out) from that out, so in fp16/bf16 the
    gradients are measured against the oracle given it; None: the oracle's own fp64 out."""
    q64, k64, v64, dout64 = (t.detach().double().cpu() for t in (q, k, v, dout))
    args = (shape.causal, scale_of(shape), shape.dropout_p, rng_state)
    out, lse = naive.attention_fwd_contract(q64, k64, v64, *args)
    seen = out if out_seen is None else out_seen.detach().double().cpu()
    grads = naive.attention_bwd_contract(dout64, q64, k64, v64, seen, lse, *args)
    return (out, lse), grads


def normwise_error(actual, expected) -> float:
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def assert_matches(actual, expected, tol, what):
    assert tuple(actual.shape) == tuple(expected.shape), \
        f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    err = normwise_error(actual, expected)
    assert err <= tol, f"{what}: normwise error {err:.3g} > {tol:.3g}"


def run_backend(target: Target, shape: Shape, q, k, v, dout, rng_state):
    """The backend's forward through the registry (validated form, autograd wiring), then the
    gradients of <out, dout>: ((out, lse), (dq, dk, dv))."""
    leaves = [t.detach().clone().to(target.device).requires_grad_() for t in (q, k, v)]
    impl = attn_ops.OP.backends[target.backend].impl
    out, lse = impl(*leaves, shape.causal, scale_of(shape), shape.dropout_p, rng_state)
    grads = torch.autograd.grad(out, leaves, dout.to(target.device))
    return (out, lse), grads
