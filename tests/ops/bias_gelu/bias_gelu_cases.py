"""What the bias_gelu conformance suite shares: the targets (the reference, and cpu once per CPU
ISA the extension was built with), the inputs and the fp64 oracle (naive.py's forward, and its
backward written out, on fp64 copies of the very inputs the backend saw).
(pytest puts this folder on sys.path; the module has a name no other suite uses.)"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import pyneuro.ops.gelu as gelu
from pyneuro.ops.gelu import bias_gelu_backward_naive, bias_gelu_naive

import op_targets
from op_targets import activated, assert_matches, every_isa  # noqa: F401  (re-exported for the suite)


class Target(op_targets.Target):
    TOLERANCE = gelu.TOLERANCE


TARGETS = op_targets.TargetSet(Target, [gelu.OP])


@dataclass(frozen=True)
class Case:
    shape: tuple
    bias: bool = True
    scale: float = 2.0       # spread of x: wide enough to reach both tails of Φ


def make_inputs(case: Case, dtype=torch.float32, seed=0):
    """x, bias (None where absent), dout."""
    gen = torch.Generator().manual_seed(seed)
    N = case.shape[-1]

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)

    return randn(*case.shape, scale=case.scale), (randn(N) if case.bias else None), randn(*case.shape)


def oracle(x, bias, dout):
    """out, (dx, dbias) in fp64."""
    d = lambda t: None if t is None else t.detach().double()  # noqa: E731
    return bias_gelu_naive(d(x), d(bias)), bias_gelu_backward_naive(d(dout), d(x), d(bias))
