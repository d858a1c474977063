"""pyneuro.nn.LeakyRNN and MTRNN: layouts and state, the time constants, MTRNN's connectivity masks,
agreement with a leaky loop written out here, and the constructor's errors."""
import pytest
import torch
import torch.nn.functional as F

import pyneuro.nn as pn
from pyneuro.nn import leaky as leaky_module

I, H, B, T = 5, 6, 3, 7
FAST, SLOW = 4, 3
F64 = dict(dtype=torch.float64)


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these small recurrent steps gain nothing from two, and on a busy machine
    each step's thread barrier can stall for a whole scheduler slice."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def leaky_loop(x, u, w_ih, w_hh, bias, tau):
    """The recurrence written out, time-major: u_t = (1 - 1/τ) u_{t-1} + (1/τ)(W x_t + U tanh u_{t-1} + b)."""
    hs = []
    for x_t in x:
        u = (1 - 1 / tau) * u + (1 / tau) * (x_t @ w_ih.T + torch.tanh(u) @ w_hh.T + bias)
        hs.append(torch.tanh(u))
    return torch.stack(hs), u


def test_shapes_time_major_batch_first_and_unbatched():
    torch.manual_seed(0)
    layer = pn.LeakyRNN(I, H, tau=3.0, **F64)
    x = torch.randn(T, B, I, **F64)
    h, u_n = layer(x)
    assert h.shape == (T, B, H) and u_n.shape == (B, H)
    torch.testing.assert_close(h[-1], torch.tanh(u_n))  # the output is tanh of the carried state

    layer.batch_first = True
    h_bf, u_bf = layer(x.transpose(0, 1))
    assert h_bf.shape == (B, T, H)
    torch.testing.assert_close(h_bf, h.transpose(0, 1))
    torch.testing.assert_close(u_bf, u_n)

    h_1, u_1 = layer(x[:, 0])  # unbatched (T, I): batch_first does not apply, as in torch.nn
    assert h_1.shape == (T, H) and u_1.shape == (H,)
    torch.testing.assert_close(h_1, h[:, 0])


def test_initial_state_in_final_state_out():
    """Two calls chained through u_n equal one call over the whole sequence, gradients included."""
    torch.manual_seed(0)
    layer = pn.LeakyRNN(I, H, tau=[1.0, 2, 3, 4, 8, 16], **F64)
    x = torch.randn(T, B, I, **F64)
    u_0 = torch.randn(B, H, **F64, requires_grad=True)
    h, u_n = layer(x, u_0)
    h_a, u_a = layer(x[:3], u_0)
    h_b, u_b = layer(x[3:], u_a)
    torch.testing.assert_close(torch.cat([h_a, h_b]), h)
    torch.testing.assert_close(u_b, u_n)
    (g_full,) = torch.autograd.grad(u_n.sum(), u_0)
    (g_chain,) = torch.autograd.grad(u_b.sum(), u_0)
    torch.testing.assert_close(g_chain, g_full)
    assert g_full.abs().sum() > 0


def test_matches_the_leaky_loop_and_the_op_gets_the_backend(monkeypatch):
    torch.manual_seed(0)
    layer = pn.LeakyRNN(I, H, tau=[1.0, 1.5, 2, 4, 8, 32], backend="reference", **F64)
    x = torch.randn(T, B, I, **F64)
    u_0 = torch.randn(B, H, **F64)
    h, u_n = layer(x, u_0)
    h_ref, u_ref = leaky_loop(x, u_0, layer.weight_ih, layer.weight_hh, layer.bias, layer.tau)
    torch.testing.assert_close(h, h_ref)
    torch.testing.assert_close(u_n, u_ref)

    seen = {}
    op = leaky_module.leaky_sequence

    def spy(*args, backend):
        seen["backend"] = backend
        return op(*args, backend=backend)

    monkeypatch.setattr(leaky_module, "leaky_sequence", spy)
    layer(x)
    assert seen == {"backend": "reference"}


def test_no_bias_and_dtype_device_factory_kwargs():
    layer = pn.LeakyRNN(I, H, tau=2.0, bias=False, **F64)
    assert layer.bias is None and "bias" not in dict(layer.named_parameters())
    assert {p.dtype for p in layer.parameters()} == {torch.float64} and layer.tau.dtype == torch.float64
    h, _ = layer(torch.randn(T, B, I, **F64))
    assert h.dtype == torch.float64
    clone = pn.LeakyRNN(I, H, tau=5.0, bias=False, **F64)  # a scalar τ is stored one value per unit
    clone.load_state_dict(layer.state_dict())
    assert torch.equal(clone.tau, torch.full((H,), 2.0, **F64))


def test_fixed_tau_is_a_saved_buffer_not_a_parameter():
    layer = pn.LeakyRNN(I, H, tau=4.0)
    assert "tau_fixed" in layer.state_dict() and "tau_fixed" not in dict(layer.named_parameters())
    assert torch.equal(layer.tau, torch.full((H,), 4.0))
    assert layer.tau.requires_grad is False


def test_learned_tau_gets_gradients_and_stays_at_least_one_under_training():
    torch.manual_seed(0)
    layer = pn.LeakyRNN(I, H, tau=[1.5, 2, 4, 8, 16, 64], learn_tau=True)
    torch.testing.assert_close(layer.tau.detach(), torch.tensor([1.5, 2, 4, 8, 16, 64]))  # softplus⁻¹ is exact
    x = torch.randn(T, B, I)
    # An objective that pays for fast units: it pushes every τ down, hard (large steps).
    opt = torch.optim.SGD(layer.parameters(), lr=50.0)
    for _ in range(20):
        h, u_n = layer(x)
        loss = (h[1:] - h[:-1]).pow(2).sum().neg() + layer.tau.sum()
        opt.zero_grad()
        loss.backward()
        assert layer.tau_raw.grad is not None and layer.tau_raw.grad.abs().sum() > 0
        opt.step()
        assert (layer.tau >= 1).all() and torch.isfinite(layer.tau).all()
    assert layer.tau.max() < 2  # the pressure did move τ, all the way down towards 1

    # The learned τ travels with the state_dict.
    clone = pn.LeakyRNN(I, H, tau=3.0, learn_tau=True)
    clone.load_state_dict(layer.state_dict())
    torch.testing.assert_close(clone(x)[0], layer(x)[0])


def test_mtrnn_units_tau_and_split():
    layer = pn.MTRNN(I, FAST, SLOW, fast_tau=2.0, slow_tau=16.0)
    assert layer.hidden_size == FAST + SLOW
    assert layer.tau.tolist() == [2.0] * FAST + [16.0] * SLOW
    h, u_n = layer(torch.randn(T, B, I))
    fast, slow = layer.split(h)
    assert fast.shape == (T, B, FAST) and slow.shape == (T, B, SLOW)
    assert torch.equal(torch.cat(layer.split(u_n), -1), u_n)


def test_mtrnn_equals_a_hand_written_leaky_loop_forward_and_gradients():
    torch.manual_seed(0)
    layer = pn.MTRNN(I, FAST, SLOW, fast_tau=2.0, slow_tau=16.0, learn_tau=True, batch_first=True, **F64)
    x = torch.randn(B, T, I, **F64)
    u_0 = torch.randn(B, FAST + SLOW, **F64)
    h, u_n = layer(x, u_0)

    # By hand: the input reaches the fast units only; every context unit sees every other one.
    w_ih = torch.cat([layer.weight_ih[:FAST], torch.zeros(SLOW, I, **F64)])
    tau = torch.cat([1 + F.softplus(layer.tau_raw[:FAST]), 1 + F.softplus(layer.tau_raw[FAST:])])
    h_ref, u_ref = leaky_loop(x.transpose(0, 1), u_0, w_ih, layer.weight_hh, layer.bias, tau)
    torch.testing.assert_close(h, h_ref.transpose(0, 1))
    torch.testing.assert_close(u_n, u_ref)

    params = [layer.weight_ih, layer.weight_hh, layer.bias, layer.tau_raw]
    cot = torch.randn_like(h)
    ours = torch.autograd.grad((h * cot).sum() + u_n.sum(), params)
    theirs = torch.autograd.grad((h_ref.transpose(0, 1) * cot).sum() + u_ref.sum(), params)
    for name, a, b in zip(("weight_ih", "weight_hh", "bias", "tau_raw"), ours, theirs):
        torch.testing.assert_close(a, b, msg=lambda m: f"grad of {name}: {m}")


def test_mtrnn_input_reaches_slow_units_only_through_fast_ones():
    torch.manual_seed(0)
    layer = pn.MTRNN(I, FAST, SLOW, bias=False)
    x1, x2 = torch.randn(2, 1, B, I)
    # One step from rest: the slow units have seen nothing yet, whatever the input.
    _, u1 = layer(x1)
    _, u2 = layer(x2)
    assert torch.equal(layer.split(u1)[1], torch.zeros(B, SLOW))
    assert not torch.equal(layer.split(u1)[0], layer.split(u2)[0])
    # From the second step on, they have heard from the fast units.
    _, u3 = layer(torch.cat([x1, x1]))
    assert layer.split(u3)[1].abs().min() > 0


def test_mtrnn_masked_weights_get_zero_gradients_and_stay_zero_under_training():
    torch.manual_seed(0)
    layer = pn.MTRNN(I, FAST, SLOW)
    assert torch.equal(layer.weight_ih_mask, torch.cat([torch.ones(FAST, I), torch.zeros(SLOW, I)]))
    assert "weight_ih_mask" in layer.state_dict() and "weight_ih_mask" not in dict(layer.named_parameters())
    assert torch.equal(layer.weight_ih[FAST:], torch.zeros(SLOW, I))
    assert layer.weight_ih[:FAST].abs().min() > 0
    fast_before = layer.weight_ih[:FAST].detach().clone()

    opt = torch.optim.AdamW(layer.parameters(), lr=1e-2, weight_decay=0.1)
    x, target = torch.randn(T, B, I), torch.randn(B, FAST + SLOW)
    for _ in range(5):
        h, u_n = layer(x)
        loss = (h[-1] - target).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        assert torch.equal(layer.weight_ih.grad[FAST:], torch.zeros(SLOW, I))
        assert layer.weight_ih.grad[:FAST].abs().sum() > 0
        opt.step()
    assert torch.equal(layer.weight_ih[FAST:], torch.zeros(SLOW, I))
    assert not torch.equal(layer.weight_ih[:FAST], fast_before)
    layer.reset_parameters()  # re-initialising keeps the connectivity too
    assert torch.equal(layer.weight_ih[FAST:], torch.zeros(SLOW, I))


@pytest.mark.parametrize("build,error,match", [
    (lambda: pn.LeakyRNN(0, H), ValueError, "LeakyRNN: input_size must be >= 1"),
    (lambda: pn.LeakyRNN(I, 4.0), TypeError, "LeakyRNN: hidden_size must be an int"),
    (lambda: pn.LeakyRNN(I, H, tau=0.5), ValueError, "LeakyRNN: tau must be >= 1"),
    (lambda: pn.LeakyRNN(I, H, tau=[2.0, 3.0]), ValueError, r"LeakyRNN: tau must be a number or hold one value per unit \(6\)"),
    (lambda: pn.LeakyRNN(I, H, tau=float("nan")), ValueError, "LeakyRNN: tau must be finite"),
    (lambda: pn.LeakyRNN(I, H, tau="2"), TypeError, "LeakyRNN: tau must be a number"),
    (lambda: pn.LeakyRNN(I, H, tau=1.0, learn_tau=True), ValueError, "LeakyRNN: tau must be > 1 when learned"),
    (lambda: pn.LeakyRNN(I, H, learn_tau=1), TypeError, "LeakyRNN: learn_tau must be a bool"),
    (lambda: pn.LeakyRNN(I, H, batch_first="yes"), TypeError, "LeakyRNN: batch_first must be a bool"),
    (lambda: pn.LeakyRNN(I, H, backend="gpu"), ValueError, "LeakyRNN: backend must be 'auto' or one of"),
    (lambda: pn.MTRNN(I, 0, SLOW), ValueError, "MTRNN: fast_size must be >= 1"),
    (lambda: pn.MTRNN(I, FAST, "3"), TypeError, "MTRNN: slow_size must be an int"),
    (lambda: pn.MTRNN(I, FAST, SLOW, fast_tau=0.9), ValueError, "MTRNN: fast_tau must be >= 1"),
    (lambda: pn.MTRNN(I, FAST, SLOW, slow_tau=[16.0]), TypeError, "MTRNN: slow_tau must be a number"),
    (lambda: pn.MTRNN(I, FAST, SLOW, fast_tau=1.0, learn_tau=True), ValueError, "MTRNN: fast_tau must be > 1 when learned"),
    (lambda: pn.MTRNN(I, FAST, SLOW, fast_tau=8.0, slow_tau=4.0), ValueError, r"MTRNN: slow_tau must be >= fast_tau \(8.0\)"),
    (lambda: pn.LeakyRNN(I, H, weight_dropout=1.0), ValueError, r"LeakyRNN: weight_dropout must be a probability in \[0, 1\)"),
    (lambda: pn.MTRNN(I, FAST, SLOW, weight_dropout=-0.1), ValueError, r"MTRNN: weight_dropout must be a probability"),
])
def test_bad_constructor_arguments_name_the_argument(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_bad_forward_arguments_name_the_argument():
    layer = pn.LeakyRNN(I, H)
    with pytest.raises(ValueError, match="LeakyRNN: input's last dim must be input_size=5, got 4"):
        layer(torch.randn(T, B, 4))
    with pytest.raises(ValueError, match="LeakyRNN: input must be 3-D"):
        layer(torch.randn(1, T, B, I))
    with pytest.raises(TypeError, match="LeakyRNN: input dtype torch.float64 does not match"):
        layer(torch.randn(T, B, I, **F64))
    with pytest.raises(ValueError, match=r"LeakyRNN: u_0 must have shape \(batch, hidden_size\) = \(3, 6\), got \(6,\)"):
        layer(torch.randn(T, B, I), torch.randn(H))
    with pytest.raises(TypeError, match="MTRNN: u_0 must be a torch.Tensor"):
        pn.MTRNN(I, FAST, SLOW)(torch.randn(T, B, I), [0.0] * (FAST + SLOW))


def test_repr_names_the_configuration():
    assert repr(pn.LeakyRNN(I, H, tau=2.0, batch_first=True)) == "LeakyRNN(5, 6, tau=2, batch_first=True)"
    assert repr(pn.MTRNN(I, FAST, SLOW, learn_tau=True)) == (
        "MTRNN(5, fast_size=4, slow_size=3, fast_tau=2, slow_tau=16, learn_tau=True)")
    assert repr(pn.LeakyRNN(I, H, weight_dropout=0.25)) == "LeakyRNN(5, 6, tau=1, weight_dropout=0.25)"
    from pyneuro.models import get
    assert get("mtrnn").build(weight_dropout=0.2).rnn.weight_dropout == 0.2


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_mtrnn_weight_dropout_is_the_leaky_loop_on_a_masked_weight_hh(dtype):
    """In training, weight_dropout=p runs the recurrence on weight_hh * mask / (1 - p) with one mask
    per call (drawn as F.dropout draws it), keeps MTRNN's input mask, and the gradients reach the
    stored weight_hh through the mask: a dropped entry gets none. float64 runs the reference
    backend, float32 the fused cpu one where it is built (auto). In eval it is the plain layer."""
    p = 0.3
    torch.manual_seed(0)
    layer = pn.MTRNN(I, FAST, SLOW, learn_tau=True, weight_dropout=p, dtype=dtype)
    x = torch.randn(T, B, I, dtype=dtype)
    torch.manual_seed(7)
    h, u_n = layer(x)
    torch.manual_seed(7)
    w_hh = F.dropout(layer.weight_hh, p=p, training=True)
    dropped = w_hh == 0
    assert dropped.any() and not dropped.all()
    h_ref, u_ref = leaky_loop(x, torch.zeros(B, FAST + SLOW, dtype=dtype), layer.weight_ih * layer.weight_ih_mask,
                              w_hh, layer.bias, layer.tau)
    tol = {} if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_ref, **tol)
    torch.testing.assert_close(u_n, u_ref, **tol)

    params = [layer.weight_ih, layer.weight_hh, layer.bias, layer.tau_raw]
    cot = torch.randn_like(h)
    ours = torch.autograd.grad((h * cot).sum() + u_n.sum(), params)
    theirs = torch.autograd.grad((h_ref * cot).sum() + u_ref.sum(), params)
    for name, a, b in zip(("weight_ih", "weight_hh", "bias", "tau_raw"), ours, theirs):
        torch.testing.assert_close(a, b, msg=lambda m: f"grad of {name}: {m}", **tol)
    assert torch.all(ours[1][dropped] == 0)
    assert torch.all(ours[0][FAST:] == 0)  # the input mask still holds

    assert not torch.equal(layer(x)[0], layer(x)[0])  # a fresh mask every call
    layer.eval()
    h_eval, _ = layer(x)
    h_plain, _ = leaky_loop(x, torch.zeros(B, FAST + SLOW, dtype=dtype), layer.weight_ih * layer.weight_ih_mask,
                            layer.weight_hh, layer.bias, layer.tau)
    torch.testing.assert_close(h_eval, h_plain, **tol)
