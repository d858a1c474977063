"""pyneuro.ops.rnn (one layer, one direction) against single-layer torch.nn.LSTM/GRU/RNN."""
import pytest
import torch
from torch import nn

from pyneuro import _backends
from pyneuro.ops.rnn import gru_sequence, lstm_sequence, rnn_sequence

TOL = {
    torch.float64: dict(atol=1e-12, rtol=1e-10),
    torch.float32: dict(atol=1e-5, rtol=1e-4),
}
INPUT, HIDDEN, BATCH = 5, 7, 3


def torch_layer(kind, dtype, bias=True, proj_size=0):
    torch.manual_seed(0)
    if kind == "lstm":
        return nn.LSTM(INPUT, HIDDEN, bias=bias, proj_size=proj_size, dtype=dtype)
    if kind == "gru":
        return nn.GRU(INPUT, HIDDEN, bias=bias, dtype=dtype)
    return nn.RNN(INPUT, HIDDEN, nonlinearity=kind.split("_")[1], bias=bias, dtype=dtype)


def run_ours(kind, layer, x, states):
    """Our op with the torch layer's weights; states are (B, ·) tensors or None."""
    w = (layer.weight_ih_l0, layer.weight_hh_l0,
         getattr(layer, "bias_ih_l0", None), getattr(layer, "bias_hh_l0", None))
    if kind == "lstm":
        return lstm_sequence(x, *states, *w, w_hr=getattr(layer, "weight_hr_l0", None))
    if kind == "gru":
        return gru_sequence(x, states[0], *w)
    return rnn_sequence(x, states[0], *w, nonlinearity=kind.split("_")[1])


def run_torch(kind, layer, x, states):
    if all(s is None for s in states):
        y, hx = layer(x)
    else:
        hx = tuple(s.unsqueeze(0) for s in states)
        y, hx = layer(x, hx if kind == "lstm" else hx[0])
    hx = hx if kind == "lstm" else (hx,)
    return (y, *(s.squeeze(0) for s in hx))


def initial_states(kind, dtype, proj_size=0, given=True):
    g = torch.Generator().manual_seed(2)
    sizes = [proj_size or HIDDEN, HIDDEN] if kind == "lstm" else [HIDDEN]
    if not given:
        return [None] * len(sizes)
    return [torch.randn(BATCH, s, generator=g, dtype=dtype, requires_grad=True) for s in sizes]


KINDS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("seq_len", [1, 9])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("states_given", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_matches_torch_forward_and_backward(kind, states_given, bias, seq_len, dtype):
    layer = torch_layer(kind, dtype, bias)
    x = torch.randn(seq_len, BATCH, INPUT, generator=torch.Generator().manual_seed(1), dtype=dtype, requires_grad=True)
    states = initial_states(kind, dtype, given=states_given)
    ours, theirs = run_ours(kind, layer, x, states), run_torch(kind, layer, x, states)
    assert len(ours) == len(theirs)
    for name, a, b in zip(("y", "h_n", "c_n"), ours, theirs):
        assert a.dtype == dtype
        torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m: f"{kind} {name}: {m}")

    # Random cotangents on every output, so each output's backward path is exercised.
    g = torch.Generator().manual_seed(3)
    cotangents = [torch.randn(t.shape, generator=g, dtype=dtype) for t in theirs]
    leaves = [x, *(s for s in states if s is not None), *layer.parameters()]
    grads_ours = torch.autograd.grad(ours, leaves, cotangents)
    grads_theirs = torch.autograd.grad(theirs, leaves, cotangents)
    names = ["x", *(f"state{i}" for i, s in enumerate(states) if s is not None), *(n for n, _ in layer.named_parameters())]
    for name, a, b in zip(names, grads_ours, grads_theirs):
        torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m: f"{kind} grad of {name}: {m}")


@pytest.mark.parametrize("states_given", [True, False])
def test_lstm_projection_matches_torch(states_given):
    layer = torch_layer("lstm", torch.float64, proj_size=3)
    x = torch.randn(6, BATCH, INPUT, dtype=torch.float64, requires_grad=True)
    states = initial_states("lstm", torch.float64, proj_size=3, given=states_given)
    ours, theirs = run_ours("lstm", layer, x, states), run_torch("lstm", layer, x, states)
    assert ours[0].shape == (6, BATCH, 3) and ours[1].shape == (BATCH, 3) and ours[2].shape == (BATCH, HIDDEN)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
    cot = [torch.randn_like(t) for t in theirs]
    for a, b in zip(torch.autograd.grad(ours, [x, *layer.parameters()], cot),
                    torch.autograd.grad(theirs, [x, *layer.parameters()], cot)):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_low_precision_computes_in_fp32(kind, dtype):
    # Inputs are upcast once and results rounded once: exactly the fp32 run on the same values, rounded.
    layer = torch_layer(kind, torch.float32)
    x = torch.randn(5, BATCH, INPUT).to(dtype)
    low = [p.detach().to(dtype) for p in layer.parameters()]
    states = [s.detach().to(dtype) for s in initial_states(kind, torch.float32)]
    layer_low = torch_layer(kind, dtype)
    with torch.no_grad():
        for p, v in zip(layer_low.parameters(), low):
            p.copy_(v)
        layer_up = torch_layer(kind, torch.float32)
        for p, v in zip(layer_up.parameters(), low):
            p.copy_(v.float())
        out_low = run_ours(kind, layer_low, x, states)
        out_up = run_ours(kind, layer_up, x.float(), [s.float() for s in states])
    for a, b in zip(out_low, out_up):
        assert a.dtype == dtype
        torch.testing.assert_close(a, b.to(dtype), atol=0, rtol=0)


def Z(*shape, dtype=torch.float32):
    return torch.zeros(shape, dtype=dtype)


def _lstm_args(**override):
    args = dict(x=Z(4, 2, 3), h0=Z(2, 5), c0=Z(2, 5), w_ih=Z(20, 3), w_hh=Z(20, 5), b_ih=Z(20), b_hh=Z(20))
    args.update(override)
    return args


@pytest.mark.parametrize(
    "override,error,match",
    [
        (dict(x=Z(2, 3)), ValueError, r"x must be 3-D \(seq_len, batch, input_size\)"),
        (dict(x=Z(0, 2, 3)), ValueError, "at least one time step"),
        (dict(x=Z(4, 2, 3, dtype=torch.int32)), TypeError, "x must be a floating tensor"),
        (dict(x=[[[0.0]]]), TypeError, "x must be a torch.Tensor"),
        (dict(w_ih=Z(18, 3)), ValueError, r"w_ih must be 2-D \(4\*hidden_size, input_size\)"),
        (dict(w_ih=Z(20, 4)), ValueError, r"w_ih must have shape \(4\*hidden_size, input_size\) = \(20, 3\)"),
        (dict(w_hh=Z(20, 4)), ValueError, r"w_hh must have shape .* = \(20, 5\), got \(20, 4\)"),
        (dict(b_ih=Z(21)), ValueError, r"b_ih must have shape"),
        (dict(h0=Z(3, 5)), ValueError, r"h0 must have shape \(batch, hidden_size\) = \(2, 5\)"),
        (dict(c0=Z(2, 4)), ValueError, r"c0 must have shape"),
        (dict(w_hr=Z(2, 4), w_hh=Z(20, 2), h0=Z(2, 2)), ValueError, r"w_hr must have shape \(proj_size, hidden_size\) = \(2, 5\)"),
        (dict(w_hh=Z(20, 5, dtype=torch.float64)), TypeError, "w_hh must have x's dtype torch.float32"),
        (dict(h0=Z(2, 5).to("meta")), ValueError, "h0 must be on x's device"),
        (dict(backend="fastest"), ValueError, "backend must be 'auto' or one of"),
    ],
    ids=["x-rank", "x-empty", "x-int", "x-list", "w_ih-gates", "w_ih-input", "w_hh", "b_ih", "h0-batch", "c0",
         "w_hr", "dtype-mix", "device-mix", "backend-name"],
)
def test_lstm_bad_input(override, error, match):
    with pytest.raises(error, match=match):
        lstm_sequence(**_lstm_args(**override))


def test_gru_and_rnn_bad_input():
    x, h0 = Z(4, 2, 3), Z(2, 5)
    with pytest.raises(ValueError, match=r"w_ih must be 2-D \(3\*hidden_size, input_size\)"):
        gru_sequence(x, h0, Z(20, 3), Z(20, 5))
    with pytest.raises(ValueError, match=r"h0 must have shape \(batch, hidden_size\) = \(2, 4\)"):
        rnn_sequence(x, h0, Z(4, 3), Z(4, 4))
    with pytest.raises(ValueError, match="nonlinearity must be one of"):
        rnn_sequence(x, h0, Z(5, 3), Z(5, 5), nonlinearity="sigmoid")


@pytest.mark.parametrize("call", [
    lambda b: lstm_sequence(**_lstm_args(backend=b)),
    lambda b: gru_sequence(Z(4, 2, 3), None, Z(15, 3), Z(15, 5), backend=b),
    lambda b: rnn_sequence(Z(4, 2, 3), None, Z(5, 3), Z(5, 5), backend=b),
], ids=["lstm", "gru", "rnn"])
def test_named_backend_unavailable_on_cpu_says_why(call):
    with pytest.raises(_backends.BackendUnavailableError, match=r"backend 'triton' is unavailable: \S+"):
        call("triton")
    y = call("reference")[0]  # and the reference is always there
    assert y.shape[:2] == (4, 2)
