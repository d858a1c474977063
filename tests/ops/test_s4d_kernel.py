"""The s4d_kernel op: its reference against a direct recurrence and an integral (fp64), its
gradients, its registration and its named errors."""
from __future__ import annotations

import math

import pytest
import torch

from pyneuro import _backends
from pyneuro.ops import s4d_kernel
from pyneuro.ops.s4d import OP, discretize, example_arguments, s4d_kernel_naive


def _inputs(H=5, modes=6, dtype=torch.float64, seed=0, requires_grad=False):
    """Random stable systems: Re A < 0, frequencies up to ~S4D-Lin's, step sizes over two decades."""
    g = torch.Generator().manual_seed(seed)
    cplx = torch.complex128 if dtype == torch.float64 else torch.complex64
    dt = torch.exp(torch.empty(H, dtype=torch.float64).uniform_(math.log(1e-3), math.log(1e-1), generator=g))
    A = torch.complex(-torch.rand(H, modes, generator=g, dtype=torch.float64) - 0.05,
                      math.pi * modes * torch.rand(H, modes, generator=g, dtype=torch.float64))
    B = torch.randn(H, modes, 2, generator=g, dtype=torch.float64)
    C = torch.randn(H, modes, 2, generator=g, dtype=torch.float64)
    args = [dt.to(dtype), A.to(cplx), torch.view_as_complex(B).to(cplx), torch.view_as_complex(C).to(cplx)]
    return [a.requires_grad_(requires_grad) for a in args]


def _recurrence(dt, A, B, C, L):
    """The impulse response of x_k = Ā x_{k-1} + B̄ u_k, y_k = 2 Re(C x_k), one step at a time,
    with Ā = exp(dt A) and B̄ = (Ā - 1) A⁻¹ B (ZOH) written out here."""
    dA = torch.exp(dt[:, None] * A)
    dB = (dA - 1) / A * B
    x = torch.zeros_like(A)
    out = []
    for k in range(L):
        x = dA * x + dB * (1.0 if k == 0 else 0.0)  # u = unit impulse at step 0
        out.append(2 * (C * x).sum(-1).real)
    return torch.stack(out, -1)


@pytest.mark.parametrize("L", [1, 7, 300])
def test_kernel_matches_the_direct_recurrence_in_fp64(L):
    dt, A, B, C = _inputs()
    K = s4d_kernel(dt, A, B, C, L)
    assert K.shape == (5, L) and K.dtype == torch.float64
    expected = _recurrence(dt, A, B, C, L)
    err = (K - expected).abs().max() / expected.abs().max()
    assert err < 1e-12, f"normwise error {err:.2e}"


def test_convolving_with_the_kernel_is_running_the_recurrence_on_any_input():
    dt, A, B, C = _inputs(H=3, modes=4, seed=1)
    L = 40
    u = torch.randn(3, L, dtype=torch.float64)
    K = s4d_kernel(dt, A, B, C, L)
    y_conv = torch.stack([(K[:, :t + 1].flip(-1) * u[:, :t + 1]).sum(-1) for t in range(L)], -1)
    dA, dB = discretize(dt, A, B)
    x, y_rec = torch.zeros_like(A), []
    for t in range(L):
        x = dA * x + dB * u[:, t:t + 1]
        y_rec.append(2 * (C * x).sum(-1).real)
    torch.testing.assert_close(y_conv, torch.stack(y_rec, -1), rtol=1e-12, atol=1e-12)


def test_zoh_b_bar_is_the_integral_of_the_continuous_system_over_one_step():
    """B̄ = ∫_0^dt exp(A s) ds · B: the state a constant unit input adds over one step."""
    dt, A, B, _ = _inputs(H=3, modes=4, seed=2)
    _, dB = discretize(dt, A, B)
    s = torch.linspace(0, 1, 20001, dtype=torch.float64)                   # fraction of the step
    integrand = torch.exp(A[..., None] * dt[:, None, None] * s)            # (H, modes, S)
    integral = torch.trapezoid(integrand, s, dim=-1) * dt[:, None]
    torch.testing.assert_close(dB, integral * B, rtol=1e-7, atol=1e-10)


def test_fp32_is_close_to_fp64_over_784_steps():
    dt, A, B, C = _inputs(H=8, modes=32, seed=3)
    K64 = s4d_kernel(dt, A, B, C, 784)
    K32 = s4d_kernel(dt.float(), A.to(torch.complex64), B.to(torch.complex64), C.to(torch.complex64), 784)
    assert K32.dtype == torch.float32
    err = (K32.double() - K64).abs().max() / K64.abs().max()
    assert err < 1e-4, f"fp32 normwise error {err:.2e}"


def test_gradients_pass_gradcheck_in_fp64():
    args = _inputs(H=2, modes=3, seed=4, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: s4d_kernel(*a, 9), args)


def test_registered_with_its_reference_and_explained_for_any_size():
    assert _backends.OPS["s4d_kernel"] is OP and "reference" in OP.available(torch.device("cpu"))
    assert OP.backends["reference"].impl is s4d_kernel_naive
    rows = dict(OP.explain(torch.device("cpu"), *example_arguments(H=4, N=8, L=16)))
    assert rows["reference"] == "chosen"
    with pytest.raises(_backends.BackendUnavailableError, match="s4d_kernel has no 'cpu' backend"):
        s4d_kernel(*_inputs(), 4, backend="cpu")


def _bad(**change):
    args = dict(zip(("dt", "A", "B", "C"), _inputs(H=3, modes=2)), L=5)
    args.update(change)
    return args


@pytest.mark.parametrize("change,error,message", [
    ({"dt": [0.1, 0.1, 0.1]}, TypeError, "dt must be a torch.Tensor, got list"),
    ({"dt": torch.ones(3, dtype=torch.float16)}, TypeError, "dt must be float32 or float64, got torch.float16"),
    ({"dt": torch.ones(3, 1, dtype=torch.float64)}, ValueError, r"dt must be 1-D \(H,\) with H >= 1, got shape \(3, 1\)"),
    ({"A": torch.ones(3, 2, dtype=torch.float64)}, TypeError, "A must be torch.complex128 \\(dt is torch.float64\\)"),
    ({"B": torch.ones(3, 2, dtype=torch.complex64)}, TypeError, "B must be torch.complex128"),
    ({"C": torch.ones(4, 2, dtype=torch.complex128)}, ValueError, r"C must be \(H, N/2\) = \(3, >=1\)"),
    ({"C": torch.ones(3, 5, dtype=torch.complex128)}, ValueError, "A, B and C must have one shape"),
    ({"A": torch.ones(3, 2, dtype=torch.complex128, device="meta")}, ValueError, "A is on meta, dt on cpu"),
    ({"L": 0}, ValueError, "L must be an int >= 1, got 0"),
    ({"L": 4.0}, ValueError, "L must be an int >= 1, got 4.0"),
    ({"L": True}, ValueError, "L must be an int >= 1, got True"),
])
def test_bad_arguments_raise_named_errors(change, error, message):
    with pytest.raises(error, match="s4d_kernel: " + message):
        s4d_kernel(**_bad(**change))
