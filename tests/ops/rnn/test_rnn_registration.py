"""The dispatcher side of the recurrent cells: torch.library.opcheck on every compiled forward and
backward op (the C++ ops, and the Triton custom ops pyneuro::<cell>_fwd_triton/_bwd_triton),
torch.compile(fullgraph=True) on each layer, how ``auto`` chooses, and the first-use self-check."""
from __future__ import annotations

import pytest
import torch

import pyneuro.nn as pn
from pyneuro import _backends
from pyneuro.ops import rnn as rnn_ops
from rnn_cases import (VARIANTS, Size, Target, assert_matches, backend_targets, interpreted, interpreter_slow,
                       make_args, make_cotangents, raw_ops)

OPCHECK_SIZES = {"tiny": Size(T=2, B=3, I=1, H=5, P=3), "nobias": Size(T=3, B=1, I=2, H=3, P=2, bias=False)}
# opcheck runs each op a dozen times (~2.5 s a case on 2 cores): fp32 on the odd tiny size in
# `make test`, biases absent and bf16 in the slow run.
OPCHECK_CASES = [pytest.param("tiny", torch.float32, id="tiny-fp32"),
                 pytest.param("nobias", torch.float32, id="nobias-fp32", marks=pytest.mark.slow),
                 pytest.param("tiny", torch.bfloat16, id="tiny-bf16", marks=pytest.mark.slow)]


@pytest.mark.parametrize("size,dtype", OPCHECK_CASES)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_opcheck(backend_target, variant, size, dtype):
    """Schema, fake (meta) shapes, autograd registration and dispatch of both ops of the pair."""
    v = VARIANTS[variant]
    fwd, bwd = raw_ops(backend_target, v.cell)
    args = make_args(v, OPCHECK_SIZES[size], dtype=dtype, device=backend_target.device, seed=21)
    call = [None if args[n] is None else args[n].clone().requires_grad_() for n in v.arg_names]
    torch.library.opcheck(fwd, (*call, *v.flags))
    *outs, reserve = fwd(*call, *v.flags)
    plain = [None if t is None else t.detach() for t in call]
    cot = make_cotangents(v, args, dtype)
    grads = [cot[n].to(backend_target.device) for n in v.out_names]
    for states in (grads[1:], [None] * (len(grads) - 1)):  # the final states' gradients present, absent
        torch.library.opcheck(bwd, (grads[0], *states, *plain, reserve.detach(), *v.flags))
    if _takes_input_grad(bwd):  # the C++ backwards: dx skipped on request (fake shape (0,) then)
        torch.library.opcheck(bwd, (grads[0], *grads[1:], *plain, reserve.detach(), *v.flags, False))


def _takes_input_grad(op) -> bool:
    return any(arg.name == "input_grad" for arg in op._schema.arguments)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_backward_without_input_grad_skips_dx_only(backend_target, variant):
    """input_grad=False (what autograd passes when x needs no gradient, as for a first layer's
    images): dx comes back absent and every other gradient bit for bit as with it; through
    autograd, the weights' gradients are the same whether x requires grad or not."""
    v = VARIANTS[variant]
    fwd, bwd = raw_ops(backend_target, v.cell)
    args = make_args(v, OPCHECK_SIZES["tiny"], dtype=torch.float32, device=backend_target.device, seed=5)
    plain = [args[n] for n in v.arg_names]
    *outs, reserve = fwd(*plain, *v.flags)
    cot = make_cotangents(v, args, torch.float32)
    grads = [cot[n].to(backend_target.device) for n in v.out_names]
    if _takes_input_grad(bwd):
        full = bwd(*grads, *plain, reserve, *v.flags)
        without = bwd(*grads, *plain, reserve, *v.flags, False)
        assert full[0].shape == plain[0].shape and without[0].numel() == 0
        for k, (a, b) in enumerate(zip(full[1:], without[1:])):
            assert torch.equal(a, b), f"output {k + 1}"
    else:
        assert backend_target.backend in ("triton", "reference"), bwd._schema  # every C++ op takes it

    def weight_grads(x_requires_grad):
        call = [None if t is None else t.clone().requires_grad_(k > 0 or x_requires_grad)
                for k, t in enumerate(plain)]
        *o, _ = fwd(*call, *v.flags)
        leaves = [t for t in call[1:] if t is not None]
        return torch.autograd.grad(sum((out * g).sum() for out, g in zip(o, grads)), leaves)

    for a, b in zip(weight_grads(False), weight_grads(True)):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------
# torch.compile on each layer
# ----------------------------------------------------------------------------------------------
LAYERS = {
    "LSTM-proj-2layer-bidir": lambda backend: pn.LSTM(3, 6, num_layers=2, bidirectional=True, proj_size=4,
                                                      batch_first=True, backend=backend),
    "GRU-2layer": lambda backend: pn.GRU(3, 5, num_layers=2, backend=backend),
    "RNN-relu-bidir": lambda backend: pn.RNN(3, 5, nonlinearity="relu", bidirectional=True, backend=backend),
}


def _compile_check(target, layer_name, compiler):
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = LAYERS[layer_name](target.backend).to(target.device)
    x = torch.randn(2, 4, 3, device=target.device)

    def loss(inp):
        out, hx = layer(inp)
        states = hx if isinstance(hx, tuple) else (hx,)
        return out.square().sum() + sum(s.sum() for s in states)

    leaves = [x.clone().requires_grad_(), *layer.parameters()]
    expected = torch.autograd.grad(loss(leaves[0]), leaves)  # eager first: probes and self-check run here
    compiled = torch.compile(loss, backend=compiler, fullgraph=True)
    got = torch.autograd.grad(compiled(leaves[0]), leaves)
    for k, (g, e) in enumerate(zip(got, expected)):
        assert_matches(g, e, 1e-5, f"gradient {k}")


@pytest.mark.parametrize("layer", list(LAYERS))
def test_torch_compile_fullgraph(backend_target, layer):
    """aot_eager traces the ops through their fake and autograd registrations like inductor does,
    without inductor's code generation (the slow tests below run inductor, and the reference).
    Tracing does not depend on the CPU ISA variant: cpu runs in its default one."""
    _compile_check(backend_target, layer, "aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("layer", list(LAYERS))
def test_torch_compile_fullgraph_reference(layer):
    """The reference's Python loop unrolled into one graph (~15 s for the 2-layer LSTM)."""
    _compile_check(Target("reference", "cpu"), layer, "aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("layer", list(LAYERS))
# inductor does not run interpreted Triton kernels on CPU tensors: not generated for that target
@pytest.mark.parametrize("compiled_target", [p for p in backend_targets() if not interpreted(p.values[0])], ids=str)
def test_torch_compile_inductor(compiled_target, layer):
    _compile_check(compiled_target, layer, "inductor")


@pytest.mark.slow
@pytest.mark.parametrize("layer", list(LAYERS))
def test_torch_compile_inductor_reference(layer):
    _compile_check(Target("reference", "cpu"), layer, "inductor")


# ----------------------------------------------------------------------------------------------
# Backend choice
# ----------------------------------------------------------------------------------------------
def _select(variant, args, backend="auto"):
    v = VARIANTS[variant]
    return rnn_ops.OPS[v.cell].select(backend, args["x"].device, *(args[n] for n in v.arg_names), *v.flags).name


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_auto_on_cpu_picks_cpu_when_built_else_the_reference(variant):
    v = VARIANTS[variant]
    args = make_args(v, Size(T=2, B=2, I=3, H=4, P=2))
    cpu_reason = rnn_ops.OPS[v.cell].status("cpu", torch.device("cpu"))
    assert _select(variant, args) == ("cpu" if cpu_reason is None else "reference")
    rows = dict(rnn_ops.OPS[v.cell].explain(torch.device("cpu"), *(args[n] for n in v.arg_names), *v.flags))
    assert rows["cpu" if cpu_reason is None else "reference"] == "chosen"
    if cpu_reason is not None:
        assert rows["cpu"] == cpu_reason
    # fp64 always runs on the reference, and explain says why cpu was passed over.
    args64 = make_args(v, Size(T=2, B=2, I=3, H=4, P=2), dtype=torch.float64)
    assert _select(variant, args64) == "reference"
    rows = dict(rnn_ops.OPS[v.cell].explain(torch.device("cpu"), *(args64[n] for n in v.arg_names), *v.flags))
    assert rows["reference"] == "chosen"
    assert "takes float32, float16 or bfloat16" in rows["cpu"] or rows["cpu"] == cpu_reason


def test_auto_result_is_the_chosen_backend_result():
    v = VARIANTS["gru"]
    args = make_args(v, Size(T=4, B=2, I=3, H=5))
    chosen = _select("gru", args)
    auto = v.public(args, "auto")
    named = v.public(args, chosen)
    for a, b in zip(auto, named):
        assert torch.equal(a, b)


def test_env_variable_names_the_backend(monkeypatch):
    args = make_args(VARIANTS["lstm"], Size(T=2, B=1, I=2, H=3))
    monkeypatch.setenv("PYNEURO_BACKEND", "reference")
    assert _select("lstm", args) == "reference"
    monkeypatch.setenv("PYNEURO_BACKEND", "cuda")  # named: raises instead of falling back
    with pytest.raises(_backends.BackendUnavailableError, match="backend 'cuda' is unavailable"):
        _select("lstm", args)


def test_example_arguments_feed_explain():
    for cell, op in rnn_ops.OPS.items():
        args = op.example(T=3, B=2, I=4, H=5)
        rows = dict(op.explain(torch.device("cpu"), *args))
        assert "chosen" in rows.values(), f"{cell}: {rows}"


# ----------------------------------------------------------------------------------------------
# First-use self-check
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "leaky"])
@interpreter_slow
def test_self_check_passes_a_correct_backend(backend_target, cell, dtype):
    op = rnn_ops.OPS[cell]
    assert op.self_check(backend_target.backend, torch.device(backend_target.device), dtype) is None


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "leaky"])
def test_first_use_under_no_grad(backend_target, cell, monkeypatch):
    """The first call of a self-checked backend may come in inference (torch.no_grad()): the
    self-check must still compare gradients, not fail for lack of a graph."""
    op = rnn_ops.OPS[cell]
    monkeypatch.setattr(op, "_checked", {})  # as in a fresh process
    v = next(v for v in VARIANTS.values() if v.cell == cell)
    args = make_args(v, Size(T=2, B=2, I=3, H=4), device=backend_target.device)
    with torch.no_grad():
        outs = v.public(args, backend_target.backend)
    assert outs[0].shape[:2] == (2, 2)


@pytest.mark.parametrize("cell", ["lstm", "leaky"])
def test_self_check_catches_a_wrong_gradient(monkeypatch, cell):
    """A backend whose forward is right but whose backward is off by 1% fails the check."""
    op = rnn_ops.OPS[cell]
    real = op.backends["reference"].impl

    class ScaleGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return g * 1.01

    def broken(x, *rest):
        return real(ScaleGrad.apply(x), *rest)

    monkeypatch.setitem(op.backends, "cpu", _backends.Backend("cpu", ("cpu",), broken))
    failure = op.self_check("cpu", torch.device("cpu"), torch.float32)
    assert failure is not None and "differs from the reference" in failure


def test_layers_reject_double_backward_only_on_compiled_backends():
    """Reference layers support second derivatives (plain autograd)."""
    layer = pn.GRU(2, 3, backend="reference", dtype=torch.float64)
    x = torch.randn(3, 1, 2, dtype=torch.float64, requires_grad=True)
    (dx,) = torch.autograd.grad(layer(x)[0].square().sum(), [x], create_graph=True)
    dx.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
