"""Fuzz pyneuro.ops.lstm_sequence, gru_sequence, rnn_sequence and leaky_sequence on every backend
the registry reports (see fuzz_support)."""
from __future__ import annotations

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the fuzz suite needs hypothesis (`make setup` installs it)")

import torch  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fuzz_support import SEEDS, Call, check_call, fuzz_settings, mutations, tensor_arg  # noqa: E402
from pyneuro.ops.rnn import gru_sequence, leaky_sequence, lstm_sequence, rnn_sequence  # noqa: E402

FUZZ_OPS = ("lstm", "gru", "rnn", "leaky")  # the registry's op names (pyneuro._backends.OPS)
FUNCTIONS = {"lstm": lstm_sequence, "gru": gru_sequence, "rnn": rnn_sequence, "leaky": leaky_sequence}
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
EXAMPLES = {"triton": 60, "reference": 500, "default": 1000}  # reference: half, as in test_fuzz_selective_scan
DTYPES = st.sampled_from((torch.float32, torch.float16, torch.bfloat16, torch.float64))
# rnn_sequence's nonlinearity: the two valid names, or a hostile value (documented ValueError).
NONLINEARITIES = st.sampled_from(("tanh", "relu", "tanh", "relu", "sigmoid", None))


@st.composite
def recurrent_calls(draw, op: str, backend: str, device: str):
    steps, batch = draw(st.integers(0, 4)), draw(st.integers(0, 3))
    inputs, hidden, gates = draw(st.integers(0, 4)), draw(st.integers(1, 4)), GATES[op]
    proj = draw(st.sampled_from((None, None, 0, 1, 3))) if op == "lstm" else None
    state = hidden if proj is None else proj
    dtype = draw(DTYPES)
    gen = torch.Generator().manual_seed(draw(SEEDS))

    def tensor(shape, low=-1.0, high=1.0):
        return tensor_arg(draw, gen, shape, dtype, low, high)

    def maybe(shape):
        return tensor(shape) if draw(st.booleans()) else None

    tensors = {"x": tensor((steps, batch, inputs)), "h0": maybe((batch, state))}
    if op == "lstm":
        tensors["c0"] = maybe((batch, hidden))
    tensors.update(w_ih=tensor((gates * hidden, inputs), -0.7, 0.7), w_hh=tensor((gates * hidden, state), -0.7, 0.7),
                   b_ih=maybe((gates * hidden,)), b_hh=maybe((gates * hidden,)))
    if op == "lstm":
        tensors["w_hr"] = None if proj is None else tensor((proj, hidden), -0.7, 0.7)
    options = {}
    invalid = ValueError if steps == 0 else None  # documented: at least one time step
    if op == "rnn":
        options["nonlinearity"] = draw(NONLINEARITIES)
        if options["nonlinearity"] not in ("tanh", "relu"):
            invalid = ValueError
    sizes = (steps, batch, inputs, hidden) + ((proj,) if proj is not None else ())
    return Call(
        op, FUNCTIONS[op], tensors, options=options,
        mutations=draw(mutations(tensors, ["x", "w_ih", "w_hh"], device)), invalid=invalid,
        # A backend other than the reference may refuse (documented) anything but fp32 at sizes >= 1.
        refusable=backend != "reference" and (dtype != torch.float32 or 0 in sizes),
        backward=draw(st.integers(0, 3)) == 0, grad_seed=draw(SEEDS))


@st.composite
def leaky_calls(draw, backend: str, device: str):
    """leaky_sequence(x, u0, w_ih, w_hh, bias, tau): tau drawn in [1, 8] (its documented range,
    not checked per call), u0 and bias sometimes absent; w_hh and tau are required."""
    steps, batch = draw(st.integers(0, 4)), draw(st.integers(0, 3))
    inputs, hidden = draw(st.integers(0, 4)), draw(st.integers(1, 4))
    dtype = draw(DTYPES)
    gen = torch.Generator().manual_seed(draw(SEEDS))

    def tensor(shape, low=-1.0, high=1.0):
        return tensor_arg(draw, gen, shape, dtype, low, high)

    tensors = {"x": tensor((steps, batch, inputs)),
               "u0": tensor((batch, hidden), -2.0, 2.0) if draw(st.booleans()) else None,
               "w_ih": tensor((hidden, inputs), -0.7, 0.7), "w_hh": tensor((hidden, hidden), -0.7, 0.7),
               "bias": tensor((hidden,)) if draw(st.booleans()) else None,
               "tau": tensor((hidden,), 1.0, 8.0)}
    sizes = (steps, batch, inputs, hidden)
    return Call(
        "leaky", leaky_sequence, tensors,
        mutations=draw(mutations(tensors, ["x", "w_ih", "w_hh", "tau"], device)),
        invalid=ValueError if steps == 0 else None,  # documented: at least one time step
        refusable=backend != "reference" and (dtype != torch.float32 or 0 in sizes),
        backward=draw(st.integers(0, 3)) == 0, grad_seed=draw(SEEDS))


def test_fuzz_recurrent(op_name, backend, device, fuzz_calls):
    strategy = leaky_calls(backend, device) if op_name == "leaky" else recurrent_calls(op_name, backend, device)

    @fuzz_settings(backend, EXAMPLES)
    @given(call=strategy)
    def fuzz(call):
        check_call(call, backend, device, fuzz_calls)

    fuzz()

