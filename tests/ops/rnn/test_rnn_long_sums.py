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


@pytest.mark.skipif(EXT is None, reason=f"the cpu backend needs the C++ extension: {WHY_NOT}")
def test_long_sequence_gradient_sums_leaky():
    """The leaky cell (no torch.nn twin) against its own reference run in fp64, τ's gradient too
    (per unit a sum over the rows of per-row totals over the steps). On the AVX2 EPYC: w_ih 1.1e-6,
    w_hh 8e-7, bias 3e-7, tau 5e-7; the MKL GEMMs over all rows that the step-by-step sums replaced
    gave w_ih 2.8e-6."""
    from pyneuro.ops.rnn import leaky_sequence

    torch.manual_seed(0)
    T, B, I, H = 784, 128, 1, 32
    args = {
        "x": torch.randn(T, B, I, dtype=torch.float64),
        "u0": 0.5 * torch.randn(B, H, dtype=torch.float64),
        "w_ih": torch.randn(H, I, dtype=torch.float64),
        "w_hh": torch.randn(H, H, dtype=torch.float64) / H**0.5,
        "bias": 0.1 * torch.randn(H, dtype=torch.float64),
        "tau": 1 + 15 * torch.rand(H, dtype=torch.float64),
    }
    dh = torch.randn(T, B, H, dtype=torch.float64)
    grads = {}
    for backend, dtype in (("reference", torch.float64), ("cpu", torch.float32)):
        leaves = {k: v.detach().to(dtype).requires_grad_() for k, v in args.items()}
        h, _ = leaky_sequence(*leaves.values(), backend=backend)
        h.backward(dh.to(dtype))
        grads[backend] = {k: v.grad.double() for k, v in leaves.items()}
    for name, exact in grads["reference"].items():
        if name in ("x", "u0"):
            continue
        err = ((grads["cpu"][name] - exact).abs().max() / exact.abs().max()).item()
        bound = BOUND["bias"] if name == "bias" else BOUND["weight"]
        assert err < bound, f"leaky {name}: relative error {err:.2e}"
