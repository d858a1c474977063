"""The dispatcher side of attention: torch.library.opcheck on every compiled forward and backward
op (the C++ ops and the Triton custom ops), torch.compile(fullgraph=True), how ``auto`` chooses,
the first-use self-check, and the published head-dim limits."""
from __future__ import annotations

import pytest
import torch

from pyneuro import _backends
from pyneuro.ops import attn as attn_ops
from attention_cases import (Shape, Target, assert_matches, backend_targets, interpreted, make_cotangent,
                             make_inputs, raw_ops, rng_for, scale_of)

OPCHECK_SHAPES = {
    "gqa-causal": Shape(B=1, Hq=2, Hkv=1, Lq=3, Lk=5, D=8, causal=True),
    "dropout": Shape(B=2, Hq=1, Lq=4, D=16, dropout_p=0.5),
}


@pytest.mark.parametrize("shape", list(OPCHECK_SHAPES))
def test_opcheck(backend_target, shape):
    """Schema, fake (meta) shapes, autograd registration and dispatch of both ops of the pair."""
    s = OPCHECK_SHAPES[shape]
    fwd, bwd = raw_ops(backend_target)
    q, k, v = (t.to(backend_target.device).requires_grad_() for t in make_inputs(s, seed=21))
    flags = (s.causal, scale_of(s), s.dropout_p, rng_for(s))
    torch.library.opcheck(fwd, (q, k, v, *flags))
    out, lse = fwd(q, k, v, *flags)
    dout = make_cotangent(s, torch.float32, device=backend_target.device)
    torch.library.opcheck(bwd, (dout, q.detach(), k.detach(), v.detach(), out.detach(), lse, *flags))


def _compile_check(target, compiler):
    torch._dynamo.reset()
    s = Shape(B=2, Hq=4, Hkv=2, Lq=5, Lk=7, D=16, causal=True)
    q, k, v = (t.to(target.device) for t in make_inputs(s, seed=22))

    def loss(q, k, v):
        out, lse = attn_ops.attention(q, k, v, causal=True, return_lse=True, backend=target.backend)
        return out.square().sum() + lse.sum()

    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    expected = torch.autograd.grad(loss(*leaves), leaves)  # eager first: probes and self-check run here
    compiled = torch.compile(loss, backend=compiler, fullgraph=True)
    got = torch.autograd.grad(compiled(*leaves), leaves)
    for name, g, e in zip(("dq", "dk", "dv"), got, expected):
        assert_matches(g, e, 1e-5, name)


def test_autograd_wiring(backend_target):
    """The C++ ops (cpu, cuda) differentiate through the extension's C++ node (csrc/autograd/),
    not a Python registration laid over it; the Triton ops through the Python one. Same gradients."""
    s = Shape(B=1, Hq=2, Lq=4, D=8)
    q, k, v = (t.to(backend_target.device).requires_grad_() for t in make_inputs(s, seed=24))
    out, lse = attn_ops.attention(q, k, v, return_lse=True, backend=backend_target.backend)
    node = out.grad_fn.name()
    if backend_target.backend == "triton":
        assert "CppNode" not in node
    else:
        assert node.startswith("torch::autograd::CppNode<") and "AttentionFunction" in node, node
    assert not lse.requires_grad
    got = torch.autograd.grad(out[..., :1].sum(), (q, k, v))
    want = torch.autograd.grad(attn_ops.attention(q, k, v, backend="reference")[..., :1].sum(), (q, k, v))
    for name, g, e in zip(("dq", "dk", "dv"), got, want):
        assert_matches(g, e, 1e-5, name)


def test_torch_compile_fullgraph(backend_target):
    """aot_eager traces the ops through their fake and autograd registrations as inductor does."""
    _compile_check(backend_target, "aot_eager")


def test_torch_compile_fullgraph_with_dropout(backend_target):
    """The rng draw and the dropout op trace into one graph; the compiled run draws its own masks,
    so it is checked by its statistics: the same keep rate as eager, not the same bits."""
    torch._dynamo.reset()
    s = Shape(B=1, Hq=2, Lq=16, D=16)
    q, k, _ = (t.to(backend_target.device) for t in make_inputs(s, seed=23))
    v = torch.eye(16, device=backend_target.device).expand(1, 2, 16, 16).contiguous()

    def keep_rate(q, k, v):
        return (attn_ops.attention(q, k, v, dropout_p=0.5, backend=backend_target.backend) != 0).float().mean()

    compiled = torch.compile(keep_rate, backend="aot_eager", fullgraph=True)
    rate = torch.stack([compiled(q, k, v) for _ in range(4)]).mean().item()
    assert abs(rate - 0.5) < 5 * (0.25 / (4 * 512)) ** 0.5


@pytest.mark.slow
@pytest.mark.parametrize("compiled_target", [p for p in backend_targets() if not interpreted(p.values[0])], ids=str)
def test_torch_compile_inductor(compiled_target):
    _compile_check(compiled_target, "inductor")


@pytest.mark.slow
def test_torch_compile_inductor_reference():
    _compile_check(Target("reference", "cpu"), "inductor")


# ----------------------------------------------------------------------------------------------
# Backend choice
# ----------------------------------------------------------------------------------------------
def _select(*args, backend="auto"):
    return attn_ops.OP.select(backend, args[0].device, *args).name


def test_auto_on_cpu_picks_cpu_when_built_else_the_reference():
    args = attn_ops.example_arguments(B=2, H=2, L=5, D=16, device="cpu", random=True)
    cpu_reason = attn_ops.OP.status("cpu", torch.device("cpu"))
    assert _select(*args) == ("cpu" if cpu_reason is None else "reference")
    rows = dict(attn_ops.OP.explain(torch.device("cpu"), *args))
    assert rows["cpu" if cpu_reason is None else "reference"] == "chosen"
    # fp64 and a head dim outside the kernels' range run on the reference, and explain says why.
    for kw, why in ((dict(dtype=torch.float64), "takes float32, float16 or bfloat16"),
                    (dict(D=12), "multiple of 8 from 8 to 128, got 12")):
        args = attn_ops.example_arguments(**{"B": 1, "H": 1, "L": 3, "D": 16, **kw}, device="cpu", random=True)
        assert _select(*args) == "reference"
        rows = dict(attn_ops.OP.explain(torch.device("cpu"), *args))
        assert why in rows["cpu"] or rows["cpu"] == cpu_reason


def test_example_arguments_feed_explain():
    rows = dict(attn_ops.OP.explain(torch.device("cpu"), *attn_ops.OP.example(B=8, H=4, L=50, D=24)))
    assert "chosen" in rows.values(), rows


def test_head_dim_limits_agree_with_the_compiled_kernels():
    """The Python supports() and csrc/common/limits.h state the same head dims."""
    published = _backends.limits("attention")
    if not published:
        pytest.skip("pyneuro._C is not built, or publishes no attention limits")
    assert published.get("max_head_dim") == attn_ops.MAX_HEAD_DIM, published
    assert published.get("head_dim_multiple") == attn_ops.HEAD_DIM_MULTIPLE, published


# ----------------------------------------------------------------------------------------------
# First-use self-check
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_self_check_passes_a_correct_backend(backend_target, dtype):
    assert attn_ops.OP.self_check(backend_target.backend, torch.device(backend_target.device), dtype) is None


def test_first_use_under_no_grad(backend_target, monkeypatch):
    monkeypatch.setattr(attn_ops.OP, "_checked", {})  # as in a fresh process
    q, k, v = (t.to(backend_target.device) for t in make_inputs(Shape(B=1, Hq=2, Lq=3, D=8)))
    with torch.no_grad():
        out = attn_ops.attention(q, k, v, backend=backend_target.backend)
    assert out.shape == q.shape


def test_self_check_catches_a_wrong_dropout_mask(monkeypatch):
    """A backend right without dropout but with another mask (here: another offset) fails the check."""
    real = attn_ops.OP.backends["reference"].impl

    def other_mask(q, k, v, causal, scale, dropout_p, rng_state):
        if rng_state is not None:
            rng_state = rng_state + torch.tensor([0, 1])
        return real(q, k, v, causal, scale, dropout_p, rng_state)

    monkeypatch.setitem(attn_ops.OP.backends, "cpu", _backends.Backend("cpu", ("cpu",), other_mask))
    failure = attn_ops.OP.self_check("cpu", torch.device("cpu"), torch.float32)
    assert failure is not None and "differs from the reference" in failure


@pytest.mark.skipif(attn_ops.OP.status("cpu", torch.device("cpu")) is not None,
                    reason="needs the compiled extension, whose CPU kernel stands in for the CUDA tiled path here")
@pytest.mark.parametrize("triton_takes_it", [True, False])
def test_cuda_backend_hands_long_keys_to_triton_only_when_triton_takes_the_call(monkeypatch, triton_takes_it):
    """Past CUDA_SHORT_MAX_KEYS keys the cuda backend calls the Triton kernel if Triton takes this
    very call (available, passed its self-check, supports the shape: not B·H > 65,535, which
    raised a ValueError out of the hand-off before), else its own tiled path (the same C++ op,
    run here on CPU tensors by the CPU kernel)."""
    asked = []

    def runs(backend, device, *args):
        asked.append(backend)
        return triton_takes_it

    monkeypatch.setattr(attn_ops.OP, "runs", runs)
    monkeypatch.setitem(attn_ops.OP.backends, "triton",
                        _backends.Backend("triton", ("cuda",), lambda *args: "triton's result"))
    s = Shape(B=1, Hq=2, Lq=3, Lk=attn_ops.CUDA_SHORT_MAX_KEYS + 1, D=8)
    q, k, v = make_inputs(s, seed=23)
    got = attn_ops._contract_call("cuda")(q, k, v, False, scale_of(s), 0.0, None)
    assert asked == ["triton"]
    if triton_takes_it:
        assert got == "triton's result"
    else:
        want = attn_ops._reference(q, k, v, False, scale_of(s), 0.0, None)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=2e-5, atol=2e-6)
    short = Shape(B=1, Hq=2, Lq=3, Lk=attn_ops.CUDA_SHORT_MAX_KEYS, D=8)
    attn_ops._contract_call("cuda")(*make_inputs(short, seed=24), False, scale_of(short), 0.0, None)
    assert asked == ["triton"]  # short sequences never ask
