"""pyneuro.nn.Mamba: shapes, gradients, wiring, initialisation, causality and the recurrent step."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pyneuro import _backends
from pyneuro.nn.mamba import Mamba
from pyneuro.ops.scan.naive import selective_scan_naive

D_MODEL, D_STATE, D_CONV = 12, 5, 4


def make_layer(seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs = {"d_state": D_STATE, "d_conv": D_CONV, "backend": "reference", **kwargs}
    layer = Mamba(D_MODEL, **kwargs)
    # Larger step sizes than the default init, so the state carries information over the test's
    # short sequences and a wiring mistake in the recurrence cannot hide behind tiny updates.
    with torch.no_grad():
        layer.dt_proj.bias.uniform_(-1.0, 0.5)
        layer.D.uniform_(0.5, 1.5)
        if layer.conv1d.bias is not None:
            layer.conv1d.bias.uniform_(-0.5, 0.5)
    return layer


def inputs(batch=2, L=7, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, L, D_MODEL, generator=g, dtype=dtype)


def run_steps(layer, h, state=None):
    state = state if state is not None else layer.allocate_state(h.shape[0])
    outs = []
    for t in range(h.shape[1]):
        y, state = layer.step(h[:, t], state)
        outs.append(y)
    return torch.stack(outs, dim=1), state


def recompute(layer, h):
    """The block written out from its parameters, with mamba_ssm's conventions: the first half of
    in_proj is the SSM input and the second the gate; conv1d with padding d_conv-1 trimmed to L."""
    L, d_inner, R, N = h.shape[1], layer.d_inner, layer.dt_rank, layer.d_state
    xz = h @ layer.in_proj.weight.T
    x, z = xz[..., :d_inner].transpose(1, 2), xz[..., d_inner:].transpose(1, 2)
    x = F.silu(layer.conv1d(x)[..., :L])
    x_dbl = x.transpose(1, 2) @ layer.x_proj.weight.T
    dt, B, C = x_dbl[..., :R], x_dbl[..., R:R + N], x_dbl[..., R + N:]
    delta = (dt @ layer.dt_proj.weight.T).transpose(1, 2)
    y = selective_scan_naive(x, delta, -torch.exp(layer.A_log), B.transpose(1, 2), C.transpose(1, 2),
                             D=layer.D, z=z, delta_bias=layer.dt_proj.bias, delta_softplus=True)
    return y.transpose(1, 2) @ layer.out_proj.weight.T


def test_shapes_sizes_and_parameter_names():
    layer = Mamba(40, d_state=16, expand=2)
    assert layer.d_inner == 80 and layer.dt_rank == math.ceil(40 / 16) == 3
    names = {n: tuple(p.shape) for n, p in layer.named_parameters()}
    assert names == {
        "in_proj.weight": (160, 40), "conv1d.weight": (80, 1, 4), "conv1d.bias": (80,),
        "x_proj.weight": (3 + 32, 80), "dt_proj.weight": (80, 3), "dt_proj.bias": (80,),
        "A_log": (80, 16), "D": (80,), "out_proj.weight": (40, 80)}
    assert layer(torch.randn(3, 9, 40)).shape == (3, 9, 40)
    assert all(getattr(p, "_no_weight_decay", False) for p in (layer.A_log, layer.D, layer.dt_proj.bias))
    assert not getattr(layer.in_proj.weight, "_no_weight_decay", False)


def test_gradient_reaches_every_parameter():
    layer = make_layer(bias=True)
    h = inputs(L=6).requires_grad_()
    layer(h).square().sum().backward()
    for name, p in list(layer.named_parameters()) + [("input", h)]:
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_matches_independent_recomputation():
    layer = make_layer()
    h = inputs(L=9)
    torch.testing.assert_close(layer(h), recompute(layer, h), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("L", [1, 7, 33])
def test_step_matches_forward(L):
    layer = make_layer()
    h = inputs(L=L)
    full, (conv_state, ssm_state) = layer(h, return_state=True)
    stepped, (step_conv, step_ssm) = run_steps(layer, h)
    torch.testing.assert_close(stepped, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(step_conv, conv_state, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(step_ssm, ssm_state, rtol=1e-5, atol=1e-6)
    assert ssm_state.dtype == torch.float32


def test_step_accepts_a_time_axis_and_leaves_the_state_alone():
    layer = make_layer()
    h = inputs(L=1)
    state = layer.allocate_state(2)
    before = [s.clone() for s in state]
    y3, _ = layer.step(h, state)
    y2, _ = layer.step(h[:, 0], state)
    assert y3.shape == (2, 1, D_MODEL)
    torch.testing.assert_close(y3[:, 0], y2)
    for s, b in zip(state, before):
        assert torch.equal(s, b)


@pytest.mark.parametrize("prefix", [2, 10])  # shorter and longer than d_conv
def test_streaming_continues_from_a_prefix(prefix):
    layer = make_layer()
    h = inputs(L=17)
    full = layer(h)
    head, state = layer(h[:, :prefix], return_state=True)
    tail, _ = run_steps(layer, h[:, prefix:], state)
    torch.testing.assert_close(torch.cat([head, tail], 1), full, rtol=1e-5, atol=1e-6)
    # and chunk by chunk through forward(state=...)
    mid, state = layer(h[:, :prefix], return_state=True)
    rest = layer(h[:, prefix:], state=state)
    torch.testing.assert_close(torch.cat([mid, rest], 1), full, rtol=1e-5, atol=1e-6)


def test_causal():
    layer = make_layer()
    h = inputs(L=12)
    t = 5
    h2 = h.clone()
    h2[:, t] += 1.0
    y, y2 = layer(h), layer(h2)
    torch.testing.assert_close(y2[:, :t], y[:, :t], rtol=0, atol=0)
    assert (y2[:, t:] - y[:, t:]).abs().amax(dim=-1).gt(1e-6).all()  # reaches every later step


def test_dt_and_A_initialisation():
    torch.manual_seed(0)
    layer = Mamba(64, d_state=7, dt_min=0.002, dt_max=0.05)
    dt = F.softplus(layer.dt_proj.bias)
    assert dt.min() >= 0.002 * (1 - 1e-4) and dt.max() <= 0.05 * (1 + 1e-4)
    assert dt.max() / dt.min() > 5  # spread over the range, not a constant
    bound = layer.dt_rank ** -0.5
    assert layer.dt_proj.weight.abs().max() <= bound
    torch.testing.assert_close(-torch.exp(layer.A_log),
                               -torch.arange(1, 8, dtype=torch.float32).expand(layer.d_inner, 7))
    assert layer.A_log.dtype == layer.D.dtype == torch.float32 and torch.equal(layer.D, torch.ones(128))

    floored = Mamba(64, dt_min=1e-6, dt_max=1e-5, dt_init_floor=1e-3, dt_init="constant", dt_scale=2.0)
    torch.testing.assert_close(F.softplus(floored.dt_proj.bias), torch.full((128,), 1e-3))
    torch.testing.assert_close(floored.dt_proj.weight, torch.full((128, 4), 2.0 * 4 ** -0.5))


@pytest.mark.parametrize("make_bad, match", [
    (lambda: torch.randn(2, 5, D_MODEL + 1), "last dim must be d_model=12"),
    (lambda: torch.randn(5, D_MODEL), "must be 3-D"),
    (lambda: [[0.0] * D_MODEL], "must be a torch.Tensor"),
])
def test_forward_rejects_bad_input(make_bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make_layer()(make_bad())


def test_step_and_state_reject_bad_input():
    layer = make_layer()
    state = layer.allocate_state(2)
    with pytest.raises(ValueError, match="x_t's last dim must be d_model"):
        layer.step(torch.randn(2, 3), state)
    with pytest.raises(ValueError, match=r"x_t must be \(batch, d_model\)"):
        layer.step(torch.randn(2, 3, D_MODEL), state)
    with pytest.raises(ValueError, match="conv_state must have shape"):
        layer.step(torch.randn(3, D_MODEL), state)  # batch mismatch
    with pytest.raises(ValueError, match="ssm_state must have shape"):
        layer(inputs(), state=(state[0], torch.zeros(2, layer.d_inner, 3)))
    with pytest.raises(TypeError, match="state must be a"):
        layer.step(torch.randn(2, D_MODEL), state[0])
    with pytest.raises(ValueError, match="d_state must be a positive int"):
        Mamba(8, d_state=0)
    with pytest.raises(ValueError, match="dt_init must be"):
        Mamba(8, dt_init="normal")


def test_cpu_backend_matches_reference():
    reason = _backends.OPS["selective_scan"].status("cpu", torch.device("cpu"))
    if reason is not None:
        pytest.skip(f"selective_scan cpu backend unavailable: {reason}")
    ref, cpu = make_layer(), make_layer()
    cpu.backend = "cpu"
    h = inputs(L=33)
    h_ref, h_cpu = h.clone().requires_grad_(), h.clone().requires_grad_()
    y_ref, y_cpu = ref(h_ref), cpu(h_cpu)
    torch.testing.assert_close(y_cpu, y_ref, rtol=1e-5, atol=1e-6)
    y_ref.square().sum().backward()
    y_cpu.square().sum().backward()
    torch.testing.assert_close(h_cpu.grad, h_ref.grad, rtol=1e-4, atol=1e-5)
    for (name, p_ref), p_cpu in zip(ref.named_parameters(), cpu.parameters()):
        torch.testing.assert_close(p_cpu.grad, p_ref.grad, rtol=1e-4, atol=1e-5, msg=name)
