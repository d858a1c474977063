"""leaky_sequence beyond the shared conformance tests: torch.autograd.gradcheck in fp64 on the
reference (tau's gradient included), and closed forms that do not go through naive.py, on every
backend: tau = 1 is a tanh RNN on h = tanh(u), and one step is u_1 = u_0 + (a_1 - u_0) / tau."""
from __future__ import annotations

import pytest
import torch

from pyneuro.ops.rnn import leaky_sequence, rnn_sequence
from rnn_cases import VARIANTS, Size, assert_matches, make_args

LEAKY = VARIANTS["leaky"]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("T", [1, 5])
def test_gradcheck_fp64_reference(T, bias):
    args = make_args(LEAKY, Size(T=T, B=2, I=3, H=4, bias=bias), dtype=torch.float64, seed=11)
    names = [n for n in LEAKY.arg_names if args[n] is not None]
    leaves = [args[n].clone().requires_grad_() for n in names]

    def fn(*ts):
        a = dict(zip(names, ts), **{n: None for n in LEAKY.arg_names if args[n] is None})
        return leaky_sequence(a["x"], a["u0"], a["w_ih"], a["w_hh"], a["bias"], a["tau"], backend="reference")

    assert "tau" in names
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-8, rtol=1e-6)


def test_tau_gradient_is_not_zero_and_moves_the_loss():
    """A learned tau gets a real gradient: the central difference of the loss along it is <g, step>."""
    args = make_args(LEAKY, Size(T=6, B=2, I=3, H=4), dtype=torch.float64, seed=12)
    tau = args["tau"].clone().requires_grad_()

    def loss(t):
        h, u = leaky_sequence(args["x"], args["u0"], args["w_ih"], args["w_hh"], args["bias"], t, backend="reference")
        return h.square().sum() + u.sum()

    (g,) = torch.autograd.grad(loss(tau), [tau])
    assert g.abs().max() > 1e-3
    step = 1e-4 * g / g.norm()
    with torch.no_grad():
        central = (loss(tau + step) - loss(tau - step)) / 2
        torch.testing.assert_close(central, (g * step).sum(), atol=1e-11, rtol=0)


def test_tau_one_is_a_tanh_rnn(any_target):
    """tau = 1: u_t = W_ih x_t + W_hh tanh(u_{t-1}) + b, i.e. h_t = tanh(u_t) follows the Elman RNN
    h_t = tanh(W_ih x_t + W_hh h_{t-1} + b) from h_0 = tanh(u_0) (rnn_sequence, the same backend)."""
    args = make_args(LEAKY, Size(T=5, B=2, I=3, H=6), device=any_target.device, seed=13)
    ones = torch.ones_like(args["tau"])
    h, u = leaky_sequence(args["x"], args["u0"], args["w_ih"], args["w_hh"], args["bias"], ones,
                          backend=any_target.backend)
    y, h_n = rnn_sequence(args["x"], args["u0"].tanh(), args["w_ih"], args["w_hh"], args["bias"], None,
                          backend=any_target.backend)
    tol = any_target.tolerance(torch.float32)
    assert_matches(h, y, tol, "h vs the tanh RNN's y")
    assert_matches(u.tanh(), h_n, tol, "tanh(u_T) vs the tanh RNN's h_n")


def test_one_step_closed_form(any_target):
    """T = 1: u_1 = u_0 + (W_ih x + W_hh tanh(u_0) + b - u_0) / tau, h_1 = tanh(u_1); and the
    gradients of u_1's sum: du_0 = 1 - 1/tau + (1/tau) W_hh-column sums * (1 - tanh(u_0)^2),
    dtau = (u_0 - a) / tau^2 summed over the batch."""
    args = make_args(LEAKY, Size(T=1, B=3, I=2, H=5), device=any_target.device, seed=14)
    leaves = {n: args[n].clone().requires_grad_() for n in ("u0", "tau")}
    h, u = leaky_sequence(args["x"], leaves["u0"], args["w_ih"], args["w_hh"], args["bias"], leaves["tau"],
                          backend=any_target.backend)
    du0, dtau = torch.autograd.grad(u.sum(), [leaves["u0"], leaves["tau"]])
    a64 = {n: t.double().cpu() for n, t in args.items()}
    a = a64["x"][0] @ a64["w_ih"].t() + a64["u0"].tanh() @ a64["w_hh"].t() + a64["bias"]
    u1 = a64["u0"] + (a - a64["u0"]) / a64["tau"]
    tol = any_target.tolerance(torch.float32)
    assert_matches(u, u1, tol, "u_1")
    assert_matches(h[0], u1.tanh(), tol, "h_1")
    alpha = 1 / a64["tau"]
    du0_ref = (1 - alpha) + (alpha @ a64["w_hh"]) * (1 - a64["u0"].tanh() ** 2)
    assert_matches(du0, du0_ref, tol, "du_0")
    assert_matches(dtau, ((a64["u0"] - a) / a64["tau"] ** 2).sum(0), tol, "dtau")


def test_infinite_state_stays_infinite_as_in_the_contract(any_target):
    """u_t = (1 - 1/tau) u_{t-1} + (1/tau) a_t with u_{t-1} = a_t = -inf is -inf (h = -1), as the
    reference computes it; the rearranged u + (a - u)/tau would give -inf + NaN = NaN. (Found by the
    fuzz suite: a non-finite recurrent weight.)"""
    x = torch.tensor([[[-0.0075]], [[0.5364]]], device=any_target.device)
    u0 = torch.tensor([[-1.646]], device=any_target.device)
    w_ih = torch.tensor([[-0.515]], device=any_target.device)
    w_hh = torch.tensor([[float("inf")]], device=any_target.device)
    tau = torch.tensor([3.15], device=any_target.device)
    h, u = leaky_sequence(x, u0, w_ih, w_hh, None, tau, backend=any_target.backend)
    assert torch.equal(h.cpu().flatten(), torch.tensor([-1.0, -1.0])), h.flatten().tolist()
    assert u.item() == float("-inf")
