"""The oracle itself. naive.py's sequence functions (the reference backend) against single-layer
torch.nn.LSTM/GRU/RNN with the same weights, in fp64 and fp32; the contract pair
(``*_fwd_contract`` / ``*_bwd_contract``, the suite's fp64 gradient oracle) against autograd through
naive.py; the reserve's columns against what the contract's table says they hold; and the
reference's low-precision runs being exactly its fp32 run, rounded."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pyneuro.ops.rnn import gru_sequence, lstm_sequence, rnn_sequence
from pyneuro.ops.rnn import naive
from rnn_cases import GATES, VARIANTS, Size, fp64, make_args, make_cotangents, oracle

TOL = {
    torch.float64: dict(atol=1e-12, rtol=1e-10),
    torch.float32: dict(atol=1e-5, rtol=1e-4),
}
INPUT, HIDDEN, BATCH = 5, 7, 3
KINDS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]


def torch_layer(kind, dtype, bias=True, proj_size=0):
    torch.manual_seed(0)
    if kind == "lstm":
        return nn.LSTM(INPUT, HIDDEN, bias=bias, proj_size=proj_size, dtype=dtype)
    if kind == "gru":
        return nn.GRU(INPUT, HIDDEN, bias=bias, dtype=dtype)
    return nn.RNN(INPUT, HIDDEN, nonlinearity=kind.split("_")[1], bias=bias, dtype=dtype)


def run_ours(kind, layer, x, states):
    """The reference op with the torch layer's weights; states are (B, ·) tensors or None."""
    w = (layer.weight_ih_l0, layer.weight_hh_l0,
         getattr(layer, "bias_ih_l0", None), getattr(layer, "bias_hh_l0", None))
    if kind == "lstm":
        return lstm_sequence(x, *states, *w, w_hr=getattr(layer, "weight_hr_l0", None), backend="reference")
    if kind == "gru":
        return gru_sequence(x, states[0], *w, backend="reference")
    return rnn_sequence(x, states[0], *w, nonlinearity=kind.split("_")[1], backend="reference")


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


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("seq_len", [1, 9])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("states_given", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_reference_matches_torch_forward_and_backward(kind, states_given, bias, seq_len, dtype):
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
def test_reference_lstm_projection_matches_torch(states_given):
    layer = torch_layer("lstm", torch.float64, proj_size=3)
    x = torch.randn(6, BATCH, INPUT, dtype=torch.float64, requires_grad=True)
    states = initial_states("lstm", torch.float64, proj_size=3, given=states_given)
    ours, theirs = run_ours("lstm", layer, x, states), run_torch("lstm", layer, x, states)
    assert ours[0].shape == (6, BATCH, 3) and ours[1].shape == (BATCH, 3) and ours[2].shape == (BATCH, HIDDEN)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
    cot = [torch.randn_like(t) for t in theirs]
    leaves = [x, *(s for s in states if s is not None), *layer.parameters()]
    for a, b in zip(torch.autograd.grad(ours, leaves, cot), torch.autograd.grad(theirs, leaves, cot)):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_reference_low_precision_computes_in_fp32(kind, dtype):
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


# ----------------------------------------------------------------------------------------------
# The contract pair (the fp64 gradient oracle) against autograd through naive.py
# ----------------------------------------------------------------------------------------------
NAIVE = {"lstm": naive.lstm_sequence_naive, "gru": naive.gru_sequence_naive, "leaky": naive.leaky_sequence_naive}


def naive_autograd(variant, args, cot):
    """(outputs, {arg: gradient}) of naive.py's sequence function in fp64, by autograd."""
    leaves = {n: (None if t is None else t.detach().double().requires_grad_()) for n, t in fp64(args).items()}
    positional = [leaves[n] for n in variant.arg_names]
    if variant.cell == "rnn":
        outs = naive.rnn_sequence_naive(*positional, "relu" if variant.relu else "tanh")
    else:
        outs = NAIVE[variant.cell](*positional)
    used = [(o, cot[n].double()) for o, n in zip(outs, variant.out_names) if cot[n] is not None]
    names = [n for n, t in leaves.items() if t is not None]
    grads = torch.autograd.grad([o for o, _ in used], [leaves[n] for n in names], [c for _, c in used])
    return tuple(o.detach() for o in outs), dict(zip(names, grads))


@pytest.mark.parametrize("mode", ["all", "states", "y"])
@pytest.mark.parametrize("size", [Size(T=1, B=1, I=1, H=3, P=2), Size(T=6, B=3, I=4, H=7, P=5),
                                  Size(T=5, B=2, I=3, H=6, P=4, bias=False)], ids=["T1", "T6", "nobias"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_contract_pair_matches_autograd(variant, size, mode):
    v = VARIANTS[variant]
    args = make_args(v, size, dtype=torch.float64, seed=7)
    cot = make_cotangents(v, args, torch.float64, mode)
    outs, grads = oracle(v, args, cot)
    outs_ad, grads_ad = naive_autograd(v, args, cot)
    for name, a, b in zip(v.out_names, outs, outs_ad):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10, msg=lambda m: f"{name}: {m}")
    assert set(grads) == set(grads_ad)
    for name in grads:
        torch.testing.assert_close(grads[name], grads_ad[name], atol=1e-12, rtol=1e-10,
                                   msg=lambda m: f"d{name}: {m}")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_contract_reserve_holds_what_the_table_says(variant):
    """The reserve's columns recomputed independently from the outputs and from one step by hand."""
    v = VARIANTS[variant]
    args = fp64(make_args(v, Size(T=4, B=2, I=3, H=5, P=3), dtype=torch.float64, seed=8))
    *outs, reserve = v.fwd_contract()(*(args[n] for n in v.arg_names), *v.flags)
    H = args["w_ih"].shape[0] // GATES[v.cell]
    x0 = args["x"][0]
    if v.cell == "lstm":
        R = reserve.shape[-1] - 5 * H
        torch.testing.assert_close(reserve[..., 5 * H:], outs[0], atol=0, rtol=0)  # h_t = y
        torch.testing.assert_close(reserve[-1, :, 4 * H:5 * H], outs[2], atol=0, rtol=0)  # c_T = c_n
        pre = x0 @ args["w_ih"].t() + args["b_ih"] + args["b_hh"] + args["h0"] @ args["w_hh"].t()
        i, f, g, o = pre.chunk(4, -1)
        step0 = torch.cat([i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()], -1)
        torch.testing.assert_close(reserve[0, :, :4 * H], step0, atol=1e-14, rtol=0)
        assert R == (args["w_hr"].shape[0] if v.proj else H)
    elif v.cell == "gru":
        torch.testing.assert_close(reserve[..., 4 * H:], outs[0], atol=0, rtol=0)
        s = args["h0"] @ args["w_hh"].t() + args["b_hh"]
        torch.testing.assert_close(reserve[0, :, 3 * H:4 * H], s[:, 2 * H:], atol=1e-14, rtol=0)  # s_n
    elif v.cell == "rnn":
        torch.testing.assert_close(reserve, outs[0], atol=0, rtol=0)
    else:
        torch.testing.assert_close(reserve.tanh(), outs[0], atol=0, rtol=0)  # h_t = tanh(u_t)
        torch.testing.assert_close(reserve[-1], outs[1], atol=0, rtol=0)
