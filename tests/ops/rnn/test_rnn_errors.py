"""One error contract for the recurrent cells: each bad input gives the documented exception
(TypeError for a dtype, ValueError for a shape, value or device), naming the argument, on every
backend: through the public functions (validated in Python before any backend runs) and, for
the C++ backends, through the raw torch.ops.pyneuro.<cell>_fwd/_bwd ops, whose own check
(csrc/common/rnn_args.h) must raise the same types."""
from __future__ import annotations

import pytest
import torch

from pyneuro import _backends
from rnn_cases import GATES, VARIANTS, Size, assert_matches, compiled_targets, make_args, make_cotangents, raw_ops, run_public

SIZE = Size(T=3, B=2, I=3, H=5, P=2)


def _args(variant, device, dtype=torch.float32):
    return make_args(VARIANTS[variant], SIZE, dtype=dtype, device=device)


def _meta(t):
    return t.to("meta")


# (id, variant, argument, replacement (from the good args), exception, message pattern)
PUBLIC_BAD = [
    ("x-rank", "lstm", "x", lambda a: a["x"][0], ValueError, r"x must be 3-D \(seq_len, batch, input_size\)"),
    ("x-T0", "gru", "x", lambda a: a["x"][:0], ValueError, "x must hold at least one time step"),
    ("x-int", "rnn_tanh", "x", lambda a: a["x"].to(torch.int32), TypeError, "x must be a floating tensor"),
    ("x-list", "leaky", "x", lambda a: a["x"].tolist(), TypeError, "x must be a torch.Tensor, got list"),
    ("w_ih-gates", "lstm", "w_ih", lambda a: a["w_ih"][:-1], ValueError, r"w_ih must be 2-D \(4\*hidden_size"),
    ("w_ih-input", "gru", "w_ih", lambda a: a["w_ih"][:, :-1], ValueError,
     r"w_ih must have shape \(3\*hidden_size, input_size\) = \(15, 3\)"),
    ("w_hh", "rnn_relu", "w_hh", lambda a: a["w_hh"][:, :-1], ValueError, r"w_hh must have shape .* = \(5, 5\)"),
    ("w_hh-proj", "lstm_proj", "w_hh", lambda a: torch.zeros(20, 5, device=a["x"].device), ValueError,
     r"w_hh must have shape \(4\*hidden_size, proj_size\) = \(20, 2\)"),
    ("b_ih", "lstm", "b_ih", lambda a: a["b_ih"][:-1], ValueError, r"b_ih must have shape \(4\*hidden_size,\)"),
    ("b_hh-dtype", "gru", "b_hh", lambda a: a["b_hh"].double(), TypeError, "b_hh must have x's dtype torch.float32"),
    ("h0-batch", "gru", "h0", lambda a: a["h0"][:1], ValueError, r"h0 must have shape \(batch, hidden_size\) = \(2, 5\)"),
    ("h0-proj", "lstm_proj", "h0", lambda a: torch.zeros(2, 5, device=a["x"].device), ValueError,
     r"h0 must have shape \(batch, proj_size\) = \(2, 2\)"),
    ("c0", "lstm", "c0", lambda a: a["c0"][:, :-1], ValueError, r"c0 must have shape \(batch, hidden_size\)"),
    ("w_hr", "lstm_proj", "w_hr", lambda a: a["w_hr"][:, :-1], ValueError,
     r"w_hr must have shape \(proj_size, hidden_size\) = \(2, 5\)"),
    ("w_hr-rank", "lstm_proj", "w_hr", lambda a: a["w_hr"][0], ValueError, r"w_hr must be 2-D"),
    ("w_hh-dtype", "rnn_tanh", "w_hh", lambda a: a["w_hh"].half(), TypeError, "w_hh must have x's dtype"),
    ("h0-device", "lstm", "h0", lambda a: _meta(a["h0"]), ValueError, "h0 must be on x's device"),
    ("w_ih-device", "gru", "w_ih", lambda a: _meta(a["w_ih"]), ValueError, "w_ih must be on x's device"),
    ("u0", "leaky", "u0", lambda a: a["u0"][:, :-1], ValueError, r"u0 must have shape \(batch, hidden_size\) = \(2, 5\)"),
    ("tau-none", "leaky", "tau", lambda a: None, TypeError, "tau is required, got None"),
    ("w_hh-none", "leaky", "w_hh", lambda a: None, TypeError, "w_hh is required, got None"),
    ("tau-shape", "leaky", "tau", lambda a: a["tau"][:-1], ValueError, r"tau must have shape \(hidden_size,\) = \(5,\)"),
    ("tau-dtype", "leaky", "tau", lambda a: a["tau"].double(), TypeError, "tau must have x's dtype"),
    ("tau-int", "leaky", "tau", lambda a: a["tau"].long(), TypeError, "tau must be a floating tensor"),
    ("bias", "leaky", "bias", lambda a: a["bias"][None], ValueError, r"bias must have shape \(hidden_size,\)"),
    ("bias-device", "leaky", "bias", lambda a: _meta(a["bias"]), ValueError, "bias must be on x's device"),
    ("w_ih-rank", "leaky", "w_ih", lambda a: a["w_ih"][0], ValueError, r"w_ih must be 2-D \(hidden_size, input_size\)"),
]


@pytest.mark.parametrize("name,variant,arg,change,error,match", PUBLIC_BAD, ids=[c[0] for c in PUBLIC_BAD])
def test_public_bad_input(any_target, name, variant, arg, change, error, match):
    args = _args(variant, any_target.device)
    args[arg] = change(args)
    with pytest.raises(error, match=match):
        VARIANTS[variant].public(args, any_target.backend)


def test_rnn_bad_nonlinearity(any_target):
    a = _args("rnn_tanh", any_target.device)
    with pytest.raises(ValueError, match="nonlinearity must be one of"):
        from pyneuro.ops.rnn import rnn_sequence

        rnn_sequence(*(a[n] for n in VARIANTS["rnn_tanh"].arg_names), nonlinearity="sigmoid",
                     backend=any_target.backend)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fp64_runs_on_the_reference_only(any_target, variant):
    """fp64: the reference takes it; a compiled backend named explicitly refuses it (TypeError)."""
    args = _args(variant, any_target.device, torch.float64)
    if any_target.backend == "reference":
        out = VARIANTS[variant].public(args, "reference")
        assert all(o.dtype == torch.float64 for o in out)
    else:
        with pytest.raises(TypeError, match=rf"the '{any_target.backend}' backend takes float32, float16 or bfloat16"):
            VARIANTS[variant].public(args, any_target.backend)


@pytest.mark.parametrize("variant", ["lstm", "leaky"])
def test_unknown_and_unavailable_backend(variant):
    args = _args(variant, "cpu")
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        VARIANTS[variant].public(args, "fastest")
    # CPU tensors: the cuda backend never takes them, with or without a GPU.
    with pytest.raises(_backends.BackendUnavailableError, match=rf"{VARIANTS[variant].cell}: backend 'cuda' is "
                                                               r"unavailable: \S+"):
        VARIANTS[variant].public(args, "cuda")


@pytest.mark.parametrize("empty", ["batch", "input_size"])
@pytest.mark.parametrize("variant", ["lstm_proj", "gru", "rnn_relu", "leaky"])
def test_empty_batch_or_input_same_as_the_reference(any_target, variant, empty):
    """batch 0 or input_size 0: every backend does what the reference does (the same documented
    error type, or the same empty/zero results)."""
    v = VARIANTS[variant]
    size = Size(T=3, B=0 if empty == "batch" else 2, I=0 if empty == "input_size" else 3, H=5, P=2)
    args = make_args(v, size)
    cot = make_cotangents(v, args, torch.float32)
    try:
        want = run_public(type(any_target)("reference", "cpu"), v, args, cot)
    except (TypeError, ValueError) as exc:
        with pytest.raises(type(exc)):
            run_public(any_target, v, args, cot)
        return
    got = run_public(any_target, v, args, cot)
    for name, a, b in zip(v.out_names, got[0], want[0]):
        assert_matches(a, b, any_target.tolerance(torch.float32), name)
    for name in want[1]:
        assert_matches(got[1][name], want[1][name], any_target.tolerance(torch.float32), f"d{name}")


# ----------------------------------------------------------------------------------------------
# The raw C++ ops check their own arguments with the same exception types
# ----------------------------------------------------------------------------------------------
# (id, variant, argument, replacement, exception, fragment the message must hold)
RAW_FWD_BAD = [
    ("x-int", "lstm", "x", lambda a: a["x"].to(torch.int32), TypeError, "x must be float32, float16 or bfloat16"),
    ("x-fp64", "gru", "x", lambda a: a["x"].double(), TypeError, "x must be float32, float16 or bfloat16"),
    ("x-rank", "rnn_tanh", "x", lambda a: a["x"][0], ValueError, "x must be 3-D"),
    ("x-strided", "lstm", "x", lambda a: a["x"].transpose(0, 1).contiguous().transpose(0, 1), ValueError,
     "x must be contiguous"),
    ("x-T0", "leaky", "x", lambda a: a["x"][:0], ValueError, r"T = x.shape\[0\] must be >= 1"),
    ("x-B0", "gru", "x", lambda a: a["x"][:, :0], ValueError, r"batch = x.shape\[1\] must be >= 1"),
    ("x-I0", "rnn_relu", "x", lambda a: a["x"][..., :0], ValueError, r"input_size = x.shape\[2\] must be >= 1"),
    ("w_ih-gates", "lstm", "w_ih", lambda a: a["w_ih"][:-1].contiguous(), ValueError, "w_ih must have gates"),
    ("w_ih-input", "gru", "w_ih", lambda a: a["w_ih"][:, :-1].contiguous(), ValueError, "w_ih must have shape"),
    ("w_hh-dtype", "lstm", "w_hh", lambda a: a["w_hh"].half(), TypeError, "w_hh must be Half|w_hh must be"),
    ("w_hh-shape", "rnn_tanh", "w_hh", lambda a: a["w_hh"][:, :-1].contiguous(), ValueError, "w_hh must have shape"),
    ("b_ih-shape", "gru", "b_ih", lambda a: a["b_ih"][:-1].contiguous(), ValueError, "b_ih must have shape"),
    ("b_hh-dtype", "lstm", "b_hh", lambda a: a["b_hh"].bfloat16(), TypeError, "b_hh must be"),
    ("h0-shape", "gru", "h0", lambda a: a["h0"][:1].contiguous(), ValueError, "h0 must have shape"),
    ("h0-strided", "rnn_tanh", "h0", lambda a: a["h0"].t().contiguous().t(), ValueError, "h0 must be contiguous"),
    ("c0-shape", "lstm", "c0", lambda a: a["c0"][:, :-1].contiguous(), ValueError, "c0 must have shape"),
    ("w_hr-shape", "lstm_proj", "w_hr", lambda a: a["w_hr"][:, :-1].contiguous(), ValueError, "w_hr must have shape"),
    ("w_hr-dtype", "lstm_proj", "w_hr", lambda a: a["w_hr"].double(), TypeError, "w_hr must be"),
    ("u0-shape", "leaky", "u0", lambda a: a["u0"][:, :-1].contiguous(), ValueError, "u0 must have shape"),
    ("tau-dtype", "leaky", "tau", lambda a: a["tau"].half(), TypeError, "tau must be"),
    ("tau-shape", "leaky", "tau", lambda a: a["tau"][:-1].contiguous(), ValueError, "tau must have shape"),
    ("bias-shape", "leaky", "bias", lambda a: a["bias"][:-1].contiguous(), ValueError, "bias must have shape"),
]


def _raw_call(v, args):
    return [args[n] for n in v.arg_names] + list(v.flags)


@pytest.mark.parametrize("name,variant,arg,change,error,fragment", RAW_FWD_BAD, ids=[c[0] for c in RAW_FWD_BAD])
def test_raw_forward_rejects_bad_arguments(cxx_target, name, variant, arg, change, error, fragment):
    v = VARIANTS[variant]
    fwd, _ = raw_ops(cxx_target, v.cell)
    args = _args(variant, cxx_target.device)
    args[arg] = change(args)
    with pytest.raises(error, match=f"{v.cell}_fwd: .*({fragment})"):
        fwd(*_raw_call(v, args))


@pytest.mark.parametrize("cxx_target", [p for p in compiled_targets() if p.values[0].backend == "cuda"],
                         ids=str)
def test_raw_forward_rejects_mixed_devices(cxx_target):
    """On a GPU: a CPU tensor among CUDA ones (on the CPU alone, a meta tensor would dispatch to
    the op's fake kernel, so there is no mixed-device call to make)."""
    v = VARIANTS["lstm"]
    args = _args("lstm", "cuda")
    args["h0"] = args["h0"].cpu()
    with pytest.raises(ValueError, match="h0 must be on x's device"):
        raw_ops(cxx_target, "lstm")[0](*_raw_call(v, args))


# (id, variant, which backward argument, replacement, exception, fragment)
RAW_BWD_BAD = [
    ("reserve-width", "lstm", "reserve", lambda r: r[..., :-1].contiguous(), ValueError, "reserve must have shape"),
    ("reserve-fp16", "gru", "reserve", lambda r: r.half(), TypeError, "reserve must be"),
    ("reserve-T", "rnn_tanh", "reserve", lambda r: r[:-1].contiguous(), ValueError, "reserve must have shape"),
    ("dy-dtype", "lstm_proj", "dy", lambda d: d.double(), TypeError, "dy must be"),
    ("dy-shape", "gru", "dy", lambda d: d[:, :, :-1].contiguous(), ValueError, "dy must have shape"),
    ("dh-dtype", "leaky", "dy", lambda d: d.half(), TypeError, "dh must be"),
    ("dh_n-shape", "rnn_relu", "dstate", lambda d: d[:1].contiguous(), ValueError, "dh_n must have shape"),
    ("du_n-dtype", "leaky", "dstate", lambda d: d.double(), TypeError, "du_n must be"),
]


@pytest.mark.parametrize("name,variant,which,change,error,fragment", RAW_BWD_BAD, ids=[c[0] for c in RAW_BWD_BAD])
def test_raw_backward_rejects_bad_arguments(cxx_target, name, variant, which, change, error, fragment):
    v = VARIANTS[variant]
    fwd, bwd = raw_ops(cxx_target, v.cell)
    args = _args(variant, cxx_target.device)
    *outs, reserve = fwd(*_raw_call(v, args))
    grads = [torch.randn_like(o) for o in outs]
    if which == "reserve":
        reserve = change(reserve)
    elif which == "dy":
        grads[0] = change(grads[0])
    else:
        grads[1] = change(grads[1])
    with pytest.raises(error, match=f"{v.cell}_bwd: .*{fragment}"):
        bwd(*grads, *[args[n] for n in v.arg_names], reserve, *v.flags)


def test_raw_ops_gate_count_in_messages(cxx_target):
    """The forward names the gate count it expected (4 for the LSTM)."""
    args = _args("lstm", cxx_target.device)
    args["w_ih"] = torch.zeros(GATES["lstm"] * 5 + 1, 3, device=cxx_target.device)
    with pytest.raises(ValueError, match=r"lstm_fwd: w_ih must have gates \* hidden_size = 4 \* H rows"):
        raw_ops(cxx_target, "lstm")[0](*_raw_call(VARIANTS["lstm"], args))
