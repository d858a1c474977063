"""pyneuro.nn.S4D: shapes and gradients, the FFT convolution against a direct one, step() against
forward(), the S4D-Lin initialisation, the SSM parameters' optimiser group, and named errors."""
from __future__ import annotations

import math

import pytest
import torch

from pyneuro.nn import S4D
from pyneuro.train.loop import make_optimizer

TRAIN = {"lr": 4e-3, "weight_decay": 0.05, "optimizer": "adamw", "momentum": 0.9}


def _layer(H=6, N=8, seed=0, **kw):
    torch.manual_seed(seed)
    return S4D(H, N, **kw)


def test_forward_backward_shapes_and_every_parameter_gets_a_gradient():
    layer = _layer(learn_B=True)
    u = torch.randn(3, 17, 6, requires_grad=True)
    y = layer(u)
    assert y.shape == u.shape and y.dtype == torch.float32
    (y * torch.randn_like(y)).sum().backward()
    assert torch.isfinite(u.grad).all() and u.grad.abs().sum() > 0
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_fft_convolution_is_the_causal_convolution_with_the_kernel_plus_the_skip():
    layer = _layer().double()
    u = torch.randn(2, 33, 6, dtype=torch.float64)
    K = layer.kernel(33)                                                # (H, L)
    direct = torch.zeros_like(u)
    for t in range(33):
        direct[:, t] = (K[:, :t + 1].flip(-1).t() * u[:, :t + 1]).sum(1)
    direct += layer.D * u
    torch.testing.assert_close(layer(u), direct, rtol=1e-10, atol=1e-10)


def test_the_output_is_causal():
    layer = _layer().double()
    u = torch.randn(1, 20, 6, dtype=torch.float64)
    changed = u.clone()
    changed[:, 12:] = torch.randn(1, 8, 6, dtype=torch.float64)
    torch.testing.assert_close(layer(changed)[:, :12], layer(u)[:, :12], rtol=0, atol=1e-12)
    assert (layer(changed)[:, 12:] - layer(u)[:, 12:]).abs().max() > 1e-3


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_step_by_step_equals_the_convolution_mode(dtype, tol):
    layer = _layer(H=5, N=16, seed=1).to(dtype)
    with torch.no_grad():  # train a little away from the initial values: any A, dt, C, D must agree
        for p in (layer.log_dt, layer.log_A_real, layer.A_imag, layer.C, layer.D):
            p.add_(0.3 * torch.randn_like(p))
    L = 60
    u = torch.randn(3, L, 5, dtype=dtype)
    state = layer.default_state(3)
    assert state.shape == (3, 5, 8) and state.is_complex() and not state.any()
    outs = []
    for t in range(L):
        y_t, state = layer.step(u[:, t], state)
        outs.append(y_t)
    stepped, conv = torch.stack(outs, 1), layer(u)
    assert stepped.dtype == dtype
    err = (stepped - conv).abs().max() / conv.abs().max()
    assert err < tol, f"normwise error {err:.2e}"


def test_s4d_lin_initialisation():
    layer = _layer(H=40, N=64, dt_min=1e-3, dt_max=1e-1)
    dt, A, B, C = layer.ssm()
    n = torch.arange(32, dtype=torch.float32)
    torch.testing.assert_close(A, torch.complex(torch.full((40, 32), -0.5), math.pi * n.expand(40, 32)))
    torch.testing.assert_close(B, torch.ones(40, 32, dtype=torch.complex64))
    assert ((dt >= 1e-3 * (1 - 1e-6)) & (dt <= 1e-1 * (1 + 1e-6))).all()
    assert dt.min() < 3e-3 and dt.max() > 3e-2  # spread over the range, not one value
    assert 0.7 < C.abs().pow(2).mean() < 1.3  # unit-variance complex entries
    assert not isinstance(layer.B, torch.nn.Parameter)  # fixed unless learn_B


def test_ssm_parameters_carry_the_optimiser_hint_and_the_trainer_honours_it():
    model = torch.nn.Sequential(torch.nn.Linear(3, 6), _layer(ssm_lr=5e-4))
    layer = model[1]
    hinted = {name for name, p in model.named_parameters() if hasattr(p, "_optim")}
    assert hinted == {"1.log_dt", "1.log_A_real", "1.A_imag"}
    assert layer.log_dt._optim == {"lr": 5e-4, "weight_decay": 0.0}
    opt = make_optimizer(model, TRAIN)
    group = {id(p): g for g in opt.param_groups for p in g["params"]}
    for p in (layer.log_dt, layer.log_A_real, layer.A_imag):
        assert (group[id(p)]["lr"], group[id(p)]["weight_decay"]) == (5e-4, 0.0)
    assert (group[id(layer.C)]["lr"], group[id(layer.C)]["weight_decay"]) == (4e-3, 0.05)
    assert group[id(model[0].weight)]["lr"] == 4e-3
    # the SSM group really moves at its own rate: one AdamW step moves each entry by about its lr
    before = layer.A_imag.detach().clone()
    model(torch.randn(2, 9, 3)).square().sum().backward()
    opt.step()
    assert (layer.A_imag - before).abs().max().item() == pytest.approx(5e-4, rel=0.05)


def test_learn_b_and_no_hint():
    learned = _layer(learn_B=True)
    assert isinstance(learned.B, torch.nn.Parameter) and learned.B._optim["weight_decay"] == 0.0
    plain = _layer(ssm_lr=None)
    assert not any(hasattr(p, "_optim") for p in plain.parameters())


@pytest.mark.parametrize("kwargs,message", [
    ({"d_model": 0}, "S4D: d_model must be a positive int, got 0"),
    ({"d_state": 7}, "S4D: d_state must be even"),
    ({"dt_min": 0.2, "dt_max": 0.1}, "S4D: need 0 < dt_min <= dt_max"),
    ({"ssm_lr": 0.0}, "S4D: ssm_lr must be positive or None, got 0.0"),
])
def test_bad_construction_raises_named_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        S4D(**{"d_model": 4, "d_state": 8, **kwargs})


def test_bad_inputs_raise_named_errors():
    layer = _layer(H=4)
    with pytest.raises(ValueError, match=r"S4D: u must be \(batch, L, d_model\) with d_model=4, got shape \(2, 5, 3\)"):
        layer(torch.randn(2, 5, 3))
    with pytest.raises(TypeError, match="S4D: u must be a floating tensor, got torch.int64"):
        layer(torch.ones(2, 5, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"S4D: u_t must be \(batch, d_model\)"):
        layer.step(torch.randn(2, 5, 4), layer.default_state(2))
    with pytest.raises(ValueError, match=r"S4D.step: state must be \(2, 4, 4\) torch.complex64"):
        layer.step(torch.randn(2, 4), layer.default_state(3))
    with pytest.raises(ValueError, match="S4D.default_state: batch must be a positive int, got 0"):
        layer.default_state(0)
