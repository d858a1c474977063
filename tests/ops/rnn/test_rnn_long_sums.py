"""The CPU backend's weight and bias gradients of a long sequence (pixel-by-pixel MNIST's T = 784)
against fp64 torch.nn. The backward accumulates them step by step (fused_grad_step): each step's
products are summed from zero and then added to the growing totals (the biases' with Kahan's
compensation), since adding every product straight to them lost 5-10x more."""
from __future__ import annotations

import pytest
import torch

import pyneuro.nn
from pyneuro import _backends

EXT, WHY_NOT = _backends.extension()
# Max relative error (max |error| / max |exact|) per parameter. On an AVX2 EPYC at this size: the
# weights 6-14e-7 now, 5-8e-6 when each product went straight to the total (and up to 1.2e-5 from
# the MKL GEMM over all rows this replaced: dW_ih with I = 1 is one dot product of T·B terms); the
# biases 1-2e-7 (Kahan-summed over the steps), 3e-6 without the compensation.
BOUND = {"weight": 2.5e-6, "bias": 6e-7}


@pytest.mark.skipif(EXT is None, reason=f"the cpu backend needs the C++ extension: {WHY_NOT}")
@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_long_sequence_gradient_sums(cell):
    torch.manual_seed(0)
    T, B, I, H = 784, 128, 1, 32
    exact = getattr(torch.nn, cell)(I, H).double()
    ours = getattr(pyneuro.nn, cell)(I, H, backend="cpu")
    ours.load_state_dict({k: v.float() for k, v in exact.state_dict().items()})
    x = torch.randn(T, B, I, dtype=torch.float64)
    y, _ = exact(x)
    dy = torch.randn_like(y)
    y.backward(dy)
    y32, _ = ours(x.float())
    y32.backward(dy.float())
    for (name, p), q in zip(exact.named_parameters(), ours.parameters()):
        err = ((q.grad.double() - p.grad).abs().max() / p.grad.abs().max()).item()
        assert err < BOUND[name.split("_")[0]], f"{cell} {name}: relative error {err:.2e}"
