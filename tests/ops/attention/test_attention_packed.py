"""attention_qkvpacked: q, k, v packed as (B, L, 3, H, D), out (B, L, H, D).

On the cpu backend it runs the packed ops (pyneuro::attention_packed_fwd/_bwd), whose kernels read
q, k, v and write out and dqkv through strided views; there the result must equal the unpacked
op's on the same values bit for bit (same kernels, same summation order), which any stride mistake
would break. Every other backend runs the unpacked op on the three views, checked the same way.
"""
from __future__ import annotations

import pytest
import torch

from pyneuro import _backends
from pyneuro.ops import attn as attn_ops
from attention_cases import DTYPE_IDS, assert_matches, every_isa, interpreted

# (B, L, H, D, causal, dropout_p): the MNIST shapes; several query and key blocks of the cpu kernels
# (64 and 128 rows); one (batch, head) pair, which takes the cpu backward's split dq / dk-dv path.
SHAPES = {
    "mnist": (4, 17, 4, 24, False, 0.0),
    "mnist-4x4-causal-drop": (2, 50, 4, 24, True, 0.1),
    "blocks": (1, 130, 2, 40, True, 0.0),
    "one-pair-drop": (1, 70, 1, 64, False, 0.3),
    "L1": (3, 1, 2, 8, False, 0.0),
}
RNG = torch.tensor([0x5EED, 3], dtype=torch.int64)


def _inputs(shape, dtype, device, seed=0):
    B, L, H, D, causal, p = shape
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, L, 3, H, D, generator=gen, dtype=torch.float64).to(dtype).to(device)
    dout = torch.randn(B, L, H, D, generator=gen, dtype=torch.float64).to(dtype).to(device)
    return qkv, dout


def _packed(qkv, dout, shape, backend, rng_state):
    """out, lse, dqkv of attention_qkvpacked with the dropout draw fixed to rng_state."""
    B, L, H, D, causal, p = shape
    leaf = qkv.detach().clone().requires_grad_()
    original = attn_ops.draw_rng_state
    attn_ops.draw_rng_state = lambda: rng_state.clone()
    try:
        out, lse = attn_ops.attention_qkvpacked(leaf, causal=causal, dropout_p=p, return_lse=True, backend=backend)
    finally:
        attn_ops.draw_rng_state = original
    (dqkv,) = torch.autograd.grad(out, leaf, dout)
    return out, lse, dqkv


def _unpacked(qkv, dout, shape, backend, rng_state):
    """The same through the registry's unpacked op on contiguous copies of q, k, v."""
    B, L, H, D, causal, p = shape
    leaves = [qkv[:, :, i].transpose(1, 2).contiguous().requires_grad_() for i in range(3)]
    scale = 1.0 / D ** 0.5
    out, lse = attn_ops.OP.backends[backend].impl(*leaves, causal, scale, p, rng_state if p else None)
    grads = torch.autograd.grad(out, leaves, dout.transpose(1, 2))
    return out.transpose(1, 2), lse, torch.stack([g.transpose(1, 2) for g in grads], dim=2)


@every_isa
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_packed_equals_unpacked(any_target, shape, dtype):
    if interpreted(any_target) and shape in ("blocks", "one-pair-drop"):
        pytest.skip("long under the Triton interpreter; the packed form adds no Triton code (it runs "
                    "the unpacked op there)")
    s = SHAPES[shape]
    qkv, dout = _inputs(s, dtype, any_target.device)
    out, lse, dqkv = _packed(qkv, dout, s, any_target.backend, RNG)
    want_out, want_lse, want_dqkv = _unpacked(qkv, dout, s, any_target.backend, RNG)
    B, L, H, D = s[:4]
    assert out.shape == (B, L, H, D) and out.dtype == dtype
    assert lse.shape == (B, H, L) and lse.dtype == torch.float32
    assert dqkv.shape == qkv.shape and dqkv.dtype == dtype
    if any_target.backend == "cpu":  # the packed ops: the same kernels at other strides
        assert out.is_contiguous() and dqkv.is_contiguous()  # written in these layouts, no copies
        for name, got, want in (("out", out, want_out), ("lse", lse, want_lse), ("dqkv", dqkv, want_dqkv)):
            assert torch.equal(got, want), f"{name}: packed differs from unpacked by {(got - want).abs().max()}"
    else:
        tol = any_target.tolerance(dtype)
        for name, got, want in (("out", out, want_out), ("lse", lse, want_lse), ("dqkv", dqkv, want_dqkv)):
            assert_matches(got, want, tol, name)


def test_strided_qkv(any_target):
    """A qkv that is a view (every other position of a longer sequence, with padding per row)."""
    s = SHAPES["mnist"]
    B, L, H, D = s[:4]
    big, dout = _inputs((B, 2 * L, H, D + 8, False, 0.0), torch.float32, any_target.device, seed=3)
    qkv = big[:, ::2, :, :, 4:4 + D]
    assert not qkv.is_contiguous() and qkv.stride(-1) == 1
    dout = dout[:, :L, :, :D]
    got = _packed(qkv, dout, s, any_target.backend, RNG)
    want = _packed(qkv.contiguous(), dout.contiguous(), s, any_target.backend, RNG)
    for name, g, w in zip(("out", "lse", "dqkv"), got, want):
        assert torch.equal(g, w), name


def _packed_ops_here() -> bool:
    return _backends.extension()[0] is not None and hasattr(torch.ops.pyneuro, "attention_packed_fwd")


needs_packed = pytest.mark.skipif(not _packed_ops_here(), reason="the C++ extension is not built here")


@needs_packed
@pytest.mark.parametrize("dropout_p", [0.0, 0.5])
def test_opcheck_packed_ops(dropout_p):
    """Schema, fake shapes, the C++ autograd kernel and dispatch of both packed ops."""
    qkv = torch.randn(2, 5, 3, 2, 8, requires_grad=True)
    rng = RNG if dropout_p else None
    fwd, bwd = torch.ops.pyneuro.attention_packed_fwd.default, torch.ops.pyneuro.attention_packed_bwd.default
    torch.library.opcheck(fwd, (qkv, True, 0.3, dropout_p, rng))
    out, lse = fwd(qkv, True, 0.3, dropout_p, rng)
    torch.library.opcheck(bwd, (torch.randn_like(out), qkv.detach(), out.detach(), lse, True, 0.3, dropout_p, rng))


@needs_packed
def test_gradient_comes_from_the_cpp_node_in_one_piece():
    qkv = torch.randn(2, 6, 3, 2, 16, requires_grad=True)
    out = attn_ops.attention_qkvpacked(qkv, backend="cpu")
    node = out.grad_fn.name()
    assert node.startswith("torch::autograd::CppNode<") and "AttentionPackedFunction" in node, node
    # The projection's gradient arrives whole: no stack or cat node between qkv and the op.
    assert out.grad_fn.next_functions[0][0].name() == "torch::autograd::AccumulateGrad"


@needs_packed
def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    qkv = torch.randn(2, 7, 3, 2, 16)

    def loss(qkv):
        out, lse = attn_ops.attention_qkvpacked(qkv, causal=True, return_lse=True, backend="cpu")
        return out.square().sum() + lse.sum()

    leaf = qkv.clone().requires_grad_()
    (want,) = torch.autograd.grad(loss(leaf), leaf)
    (got,) = torch.autograd.grad(torch.compile(loss, backend="aot_eager", fullgraph=True)(leaf), leaf)
    assert_matches(got, want, 1e-6, "dqkv")


def test_matches_the_reference_in_fp64():
    """fp64 runs on the reference (no packed kernel): against SDPA's math on the views."""
    qkv, _ = _inputs(SHAPES["mnist"], torch.float64, "cpu")
    out = attn_ops.attention_qkvpacked(qkv, causal=True)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
    assert_matches(out, want, 1e-12, "out")


@pytest.mark.parametrize("qkv, error, fragment", [
    ([1.0], TypeError, "qkv must be a torch.Tensor"),
    (torch.zeros(2, 5, 3, 16), ValueError, "qkv must have shape (batch, seq, 3, heads, head_dim)"),
    (torch.zeros(2, 5, 4, 2, 16), ValueError, "qkv must have shape (batch, seq, 3, heads, head_dim)"),
    (torch.zeros(2, 5, 3, 2, 16, dtype=torch.int32), TypeError, "must be a floating tensor"),
])
def test_bad_qkv_is_named(qkv, error, fragment):
    with pytest.raises(error, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        attn_ops.attention_qkvpacked(qkv)


def test_bad_scalars_are_named():
    qkv = torch.zeros(1, 4, 3, 1, 8)
    with pytest.raises(ValueError, match="dropout_p"):
        attn_ops.attention_qkvpacked(qkv, dropout_p=1.0)
    with pytest.raises(TypeError, match="causal"):
        attn_ops.attention_qkvpacked(qkv, causal=1)


@needs_packed
def test_cpp_check_names_qkv():
    """The op's own check (reached by direct calls) names the argument too."""
    with pytest.raises(ValueError, match="qkv must have shape"):
        torch.ops.pyneuro.attention_packed_fwd(torch.zeros(1, 4, 2, 1, 8), False, 1.0, 0.0, None)
    with pytest.raises(ValueError, match="head_dim"):
        torch.ops.pyneuro.attention_packed_fwd(torch.zeros(1, 4, 3, 1, 12), False, 1.0, 0.0, None)
