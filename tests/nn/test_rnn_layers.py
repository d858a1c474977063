"""pyneuro.nn.LSTM/GRU/RNN as drop-in torch.nn.LSTM/GRU/RNN: the API (state_dict keys both ways,
init, constructor and forward arguments, errors, repr). The numerical comparisons with torch.nn
(outputs and every gradient, on every backend, dropout masks included) are part of the recurrent
cells' conformance suite: tests/ops/rnn/test_rnn_layers_torch.py."""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_sequence

import pyneuro.nn as pn
from pyneuro import _backends

TOL = {
    torch.float64: dict(atol=1e-12, rtol=1e-10),
    torch.float32: dict(atol=1e-5, rtol=1e-4),
}
INPUT, HIDDEN, BATCH, SEQ = 4, 6, 3, 5


def pair(kind, dtype=torch.float64, ours_only=None, **kwargs):
    """(torch layer, our layer) holding the same weights, copied torch -> ours via load_state_dict;
    ``ours_only``: keyword arguments torch.nn does not take (weight_dropout)."""
    torch_cls, our_cls = {"lstm": (nn.LSTM, pn.LSTM), "gru": (nn.GRU, pn.GRU),
                          "rnn_tanh": (nn.RNN, pn.RNN), "rnn_relu": (nn.RNN, pn.RNN)}[kind]
    if kind.startswith("rnn"):
        kwargs["nonlinearity"] = kind.split("_")[1]
    torch.manual_seed(0)
    theirs = torch_cls(INPUT, HIDDEN, dtype=dtype, **kwargs)
    ours = our_cls(INPUT, HIDDEN, dtype=dtype, **kwargs, **(ours_only or {}))
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def flat(out):
    """(output, h_n) or (output, (h_n, c_n)) -> list of tensors."""
    y, hx = out
    return [y, *(hx if isinstance(hx, tuple) else (hx,))]


KINDS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]


STATE_DICT_CASES = [(kind, name, kwargs) for kind in KINDS for name, kwargs in {
    "1layer": dict(), "3layer-bidir": dict(num_layers=3, bidirectional=True), "nobias": dict(bias=False, num_layers=2),
    "proj": dict(proj_size=3, num_layers=2, bidirectional=True),
}.items() if kind == "lstm" or "proj_size" not in kwargs]  # proj_size exists only for LSTM


@pytest.mark.parametrize("kind,name,kwargs", STATE_DICT_CASES, ids=[f"{k}-{n}" for k, n, _ in STATE_DICT_CASES])
def test_state_dict_keys_identical_and_load_both_ways(kind, name, kwargs):
    theirs, ours = pair(kind, **kwargs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for (name, a), b in zip(theirs.state_dict().items(), ours.state_dict().values()):
        assert a.shape == b.shape, name
    # ours -> torch: fresh random weights of ours make torch's output change to ours.
    torch.manual_seed(5)
    ours.reset_parameters()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(SEQ, BATCH, INPUT, dtype=torch.float64)
    for a, b in zip(flat(ours(x)), flat(theirs(x))):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.parametrize("cls", [pn.LSTM, pn.GRU, pn.RNN])
def test_default_init_is_uniform_over_one_over_sqrt_hidden(cls):
    hidden = 64
    torch.manual_seed(0)
    layer = cls(32, hidden, num_layers=2)
    bound = 1 / math.sqrt(hidden)
    values = torch.cat([p.detach().flatten() for p in layer.parameters()])
    assert values.abs().max() <= bound
    # U(-b, b) has mean 0 and std b/sqrt(3); with >= 8k samples both are within a few percent.
    assert values.numel() > 8000
    assert abs(values.mean().item()) < 0.02 * bound
    assert values.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)


def test_factory_kwargs_and_backend_kwarg():
    layer = pn.GRU(3, 4, dtype=torch.float64, device="cpu", backend="reference")
    assert all(p.dtype == torch.float64 for p in layer.parameters())
    assert layer(torch.randn(2, 1, 3, dtype=torch.float64))[0].dtype == torch.float64


def test_dropout_is_random_in_training_only():
    layer = pn.LSTM(INPUT, HIDDEN, num_layers=2, dropout=0.5)
    x = torch.randn(SEQ, BATCH, INPUT)
    torch.manual_seed(1)
    first = layer(x)[0]
    torch.manual_seed(1)
    assert torch.equal(layer(x)[0], first)
    assert not torch.equal(layer(x)[0], first)
    layer.eval()
    assert torch.equal(layer(x)[0], layer(x)[0])
    assert not torch.allclose(layer(x)[0], first)


def test_dropout_with_one_layer_warns():
    with pytest.warns(UserWarning, match="dropout=0.3 has no effect with num_layers=1"):
        pn.GRU(3, 4, dropout=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pn.GRU(3, 4, num_layers=2, dropout=0.3)


def test_packed_sequence_is_rejected():
    packed = pack_sequence([torch.randn(3, INPUT), torch.randn(2, INPUT)])
    with pytest.raises(TypeError, match="PackedSequence"):
        pn.LSTM(INPUT, HIDDEN)(packed)


@pytest.mark.parametrize(
    "build,args,error,match",
    [
        (lambda: pn.LSTM(4, 6), (torch.randn(5, 3),), ValueError, "input's last dim must be input_size=4"),
        (lambda: pn.LSTM(4, 6), (torch.randn(1, 5, 3, 4),), ValueError, "input must be 3-D"),
        (lambda: pn.LSTM(4, 6), (torch.randn(5, 3, 4, dtype=torch.float64),), TypeError, "does not match the parameters'"),
        (lambda: pn.LSTM(4, 6), ("text",), TypeError, "input must be a torch.Tensor"),
        (lambda: pn.LSTM(4, 6), (torch.randn(5, 3, 4), torch.zeros(1, 3, 6)), TypeError, r"hx must be a tuple \(h_0, c_0\)"),
        (lambda: pn.LSTM(4, 6, 2), (torch.randn(5, 3, 4), (torch.zeros(1, 3, 6), torch.zeros(2, 3, 6))),
         ValueError, r"h_0 must have shape \(num_layers \* num_directions, batch, hidden_size\) = \(2, 3, 6\)"),
        (lambda: pn.LSTM(4, 6, proj_size=2), (torch.randn(5, 3, 4), (torch.zeros(1, 3, 6), torch.zeros(1, 3, 6))),
         ValueError, r"h_0 must have shape .*proj_size\) = \(1, 3, 2\)"),
        (lambda: pn.GRU(4, 6), (torch.randn(5, 4), torch.zeros(1, 3, 6)), ValueError, "for unbatched input"),
        (lambda: pn.GRU(4, 6), (torch.randn(5, 3, 4), torch.zeros(1, 6)), ValueError, "for batched input"),
        (lambda: pn.RNN(4, 6), (torch.randn(5, 3, 4), torch.zeros(1, 3, 6, dtype=torch.float64)), TypeError,
         "h_0 must have the input's dtype"),
        (lambda: pn.RNN(4, 6, backend="cuda"), (torch.randn(5, 3, 4),), _backends.BackendUnavailableError,
         r"backend 'cuda' is unavailable: \S+"),
    ],
    ids=["input-size", "input-rank", "input-dtype", "input-type", "lstm-hx-type", "h0-layers", "h0-proj",
         "unbatched-hx", "batched-hx", "hx-dtype", "backend-unavailable"],
)
def test_bad_forward_input(build, args, error, match):
    with pytest.raises(error, match=match):
        build()(*args)


@pytest.mark.parametrize(
    "build,error,match",
    [
        (lambda: pn.LSTM(4, 0), ValueError, "hidden_size must be >= 1"),
        (lambda: pn.LSTM(4.0, 6), TypeError, "input_size must be an int"),
        (lambda: pn.GRU(4, 6, num_layers=0), ValueError, "num_layers must be >= 1"),
        (lambda: pn.LSTM(4, 6, proj_size=6), ValueError, r"proj_size must be smaller than hidden_size \(6\)"),
        (lambda: pn.LSTM(4, 6, proj_size=-1), ValueError, "proj_size must be >= 0"),
        (lambda: pn.GRU(4, 6, dropout=1.5), ValueError, r"dropout must be a probability in \[0, 1\]"),
        (lambda: pn.GRU(4, 6, bidirectional=1), TypeError, "bidirectional must be a bool"),
        (lambda: pn.RNN(4, 6, nonlinearity="sigmoid"), ValueError, "nonlinearity must be 'tanh' or 'relu'"),
        (lambda: pn.GRU(4, 6, backend="fastest"), ValueError, "backend must be 'auto' or one of"),
        (lambda: pn.GRU(4, 6, proj_size=2), TypeError, "proj_size"),  # not a GRU argument, as in torch
    ],
    ids=["hidden", "input-type", "layers", "proj-too-big", "proj-negative", "dropout", "bidir-type", "nonlinearity",
         "backend-name", "gru-proj"],
)
def test_bad_constructor_arguments(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_repr_and_compat_methods():
    layer = pn.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=3)
    assert repr(layer) == "LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=3)"
    assert repr(pn.RNN(4, 6, nonlinearity="relu")) == "RNN(4, 6, nonlinearity='relu')"
    layer.flatten_parameters()  # torch API: a no-op here
    assert [[p.shape for p in w] for w in layer.all_weights] == \
        [[p.shape for p in w] for w in nn.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=3).all_weights]


WEIGHT_DROPOUT_CASES = [("lstm", dict(proj_size=3)), ("gru", dict()), ("rnn_tanh", dict()), ("rnn_relu", dict())]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("kind,extra", WEIGHT_DROPOUT_CASES, ids=[k for k, _ in WEIGHT_DROPOUT_CASES])
def test_weight_dropout_is_torch_nn_on_masked_recurrent_weights(kind, extra, dtype):
    """In training, weight_dropout=p must equal torch.nn run on weight_hh_l* * mask / (1 - p), with
    one Bernoulli mask per layer and direction drawn in that order, and the gradients must flow
    through the mask to the stored weights. float64 runs the reference backend, float32 the fused cpu
    one where it is built (auto)."""
    p = 0.3
    theirs, ours = pair(kind, dtype, ours_only={"weight_dropout": p}, num_layers=2, bidirectional=True, **extra)
    assert list(ours.state_dict()) == list(theirs.state_dict())  # no new parameters or buffers
    x = torch.randn(SEQ, BATCH, INPUT, dtype=dtype, requires_grad=True)

    torch.manual_seed(7)
    out = flat(ours(x))
    torch.manual_seed(7)
    params = dict(theirs.named_parameters())
    dropped = {name: F.dropout(params[name], p=p, training=True)
               for name in [f"weight_hh_l{layer}{sfx}" for layer in range(2) for sfx in ("", "_reverse")]}
    assert all((w == 0).any() for w in dropped.values())  # the masks are not empty at this p and size
    expected = flat(torch.func.functional_call(theirs, {**params, **dropped}, (x,)))
    for got, want in zip(out, expected):
        torch.testing.assert_close(got, want, **TOL[dtype])

    weights = [torch.randn_like(t) for t in out]
    ours_grads = torch.autograd.grad(out, [x, *ours.parameters()], weights)
    theirs_grads = torch.autograd.grad(expected, [x, *theirs.parameters()], weights)
    for got, want in zip(ours_grads, theirs_grads):
        torch.testing.assert_close(got, want, **TOL[dtype])
    # A dropped recurrent weight gets no gradient.
    grad_of = dict(zip([name for name, _ in ours.named_parameters()], ours_grads[1:]))
    assert torch.all(grad_of["weight_hh_l0"][dropped["weight_hh_l0"] == 0] == 0)


def test_weight_dropout_is_off_in_eval_and_fresh_per_call():
    theirs, ours = pair("gru", ours_only={"weight_dropout": 0.5})
    x = torch.randn(SEQ, BATCH, INPUT, dtype=torch.float64)
    first, second = ours(x)[0], ours(x)[0]
    assert not torch.allclose(first, second)  # a new mask every forward call
    ours.eval()
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], **TOL[torch.float64])


@pytest.mark.parametrize("value", [1.0, -0.1, "0.2", float("nan")])
def test_weight_dropout_must_be_a_probability_below_one(value):
    with pytest.raises(ValueError, match=r"GRU: weight_dropout must be a probability in \[0, 1\)"):
        pn.GRU(4, 6, weight_dropout=value)


def test_weight_dropout_in_repr_and_model_config():
    assert repr(pn.LSTM(4, 6, weight_dropout=0.25)) == "LSTM(4, 6, weight_dropout=0.25)"
    from pyneuro.models import get
    model = get("gru").build(weight_dropout=0.2)
    assert model.rnn.weight_dropout == 0.2
