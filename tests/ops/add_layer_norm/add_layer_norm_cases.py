"""What the add_layer_norm conformance suite shares: the targets (the reference, and cpu once per
CPU ISA the extension was built with), the inputs and the fp64 oracle (naive.py's forward with
autograd, and its backward written out, on fp64 copies of the very inputs the backend saw).
(pytest puts this folder on sys.path; the module has a name no other suite uses.)"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import pyneuro.ops.layernorm as ln
from pyneuro.ops.layernorm import add_layer_norm_backward_naive, add_layer_norm_naive

import op_targets
from op_targets import activated, assert_matches, every_isa  # noqa: F401  (re-exported for the suite)


class Target(op_targets.Target):
    TOLERANCE = ln.TOLERANCE


TARGETS = op_targets.TargetSet(Target, [ln.OP])


@dataclass(frozen=True)
class Case:
    shape: tuple
    residual: bool = True
    affine: bool = True
    bias: bool = True
    dtotal: bool = True      # a gradient reaches total too (the residual stream goes on)
    offset: float = 0.0      # added to every x: rows far from zero mean (variance must not cancel)


def make_inputs(case: Case, dtype=torch.float32, seed=0):
    """x, residual, weight, bias (None where absent), dout, dtotal (None where absent)."""
    gen = torch.Generator().manual_seed(seed)
    N = case.shape[-1]

    def randn(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale + shift).to(dtype)

    x = randn(*case.shape, scale=2.0, shift=case.offset)
    residual = randn(*case.shape) if case.residual else None
    weight = randn(N, scale=0.5, shift=1.0) if case.affine else None
    bias = randn(N) if case.bias else None
    dout = randn(*case.shape)
    dtotal = randn(*case.shape) if case.dtotal and case.residual else None
    return x, residual, weight, bias, dout, dtotal


def oracle(x, residual, weight, bias, dout, dtotal, eps=1e-5):
    """(out, total), (dtotal_in, dweight, dbias) in fp64."""
    d = lambda t: None if t is None else t.detach().double()  # noqa: E731
    out, total = add_layer_norm_naive(d(x), d(residual), d(weight), d(bias), eps)
    grads = add_layer_norm_backward_naive(d(dout), d(dtotal), total, d(weight), eps)
    return (out, total), grads
