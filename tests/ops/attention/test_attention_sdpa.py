"""pyneuro.ops.attention against torch's scaled_dot_product_attention: forward, gradients, bad input."""
import pytest
import torch
import torch.nn.functional as F

from pyneuro import _backends
from pyneuro.ops.attn import attention

# Per-dtype tolerances for a result computed in fp32 (fp64) and rounded once to the dtype.
TOL = {
    torch.float64: dict(atol=1e-12, rtol=1e-10),
    torch.float32: dict(atol=2e-6, rtol=1e-5),
    torch.bfloat16: dict(atol=1e-2, rtol=1.6e-2),  # bf16 keeps 8 bits: one rounding is 2^-8 relative
}

SEQ_LENS = [(1, 1), (7, 7), (63, 63), (7, 63), (63, 7), (1, 63)]  # (Lq, Lk), odd and mismatched
HEAD_DIMS = [16, 40, 128]


@pytest.fixture(autouse=True)
def _auto_means_reference(monkeypatch):
    # The environment must not steer "auto" to another backend in these tests.
    monkeypatch.delenv("PYNEURO_BACKEND", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def make_qkv(lq, lk, d, dtype, batch=2, heads=3, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    shapes = ((batch, heads, lq, d), (batch, heads, lk, d), (batch, heads, lk, d))
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype).requires_grad_(requires_grad) for s in shapes]


def sdpa(q, k, v, causal, scale=None):
    """SDPA in fp32 (fp64 stays fp64): the dtype-independent expected value."""
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    return F.scaled_dot_product_attention(q.to(compute), k.to(compute), v.to(compute), is_causal=causal, scale=scale)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("lq,lk", SEQ_LENS)
@pytest.mark.parametrize("causal", [False, True])
def test_forward_matches_sdpa(lq, lk, d, dtype, causal):
    q, k, v = make_qkv(lq, lk, d, dtype)
    out = attention(q, k, v, causal=causal)
    assert out.dtype == dtype and out.shape == q.shape
    expected = sdpa(q, k, v, causal)
    assert torch.isfinite(expected).all()  # top-left causal never masks a whole row
    torch.testing.assert_close(out, expected.to(dtype), **TOL[dtype])


def test_causal_is_top_left_aligned():
    # With Lq < Lk, query 0 sees key 0 only, so its output is exactly v[..., 0, :].
    q, k, v = make_qkv(3, 8, 16, torch.float64)
    out = attention(q, k, v, causal=True)
    torch.testing.assert_close(out[..., 0, :], v[..., 0, :], atol=0, rtol=0)
    # ... and causal differs from non-causal wherever a query has keys to its right.
    assert not torch.allclose(out[..., 1, :], attention(q, k, v)[..., 1, :])


@pytest.mark.parametrize("scale", [0.05, 1.0, 3.0])
def test_custom_softmax_scale(scale):
    q, k, v = make_qkv(7, 9, 32, torch.float64)
    for causal in (False, True):
        torch.testing.assert_close(attention(q, k, v, causal=causal, softmax_scale=scale),
                                   sdpa(q, k, v, causal, scale=scale), **TOL[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("lq,lk,d", [(1, 1, 16), (7, 7, 40), (63, 63, 64), (7, 63, 128), (63, 7, 16)])
@pytest.mark.parametrize("causal", [False, True])
def test_gradients_match_sdpa(lq, lk, d, dtype, causal):
    q, k, v = make_qkv(lq, lk, d, dtype, requires_grad=True)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    ours = torch.autograd.grad(attention(q, k, v, causal=causal), (q, k, v), grad_out)
    theirs = torch.autograd.grad(sdpa(q, k, v, causal), (q, k, v), grad_out)
    tol = TOL[dtype] if dtype == torch.float64 else dict(atol=1e-5, rtol=1e-4)  # grads sum over L
    for name, a, b in zip("qkv", ours, theirs):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"grad of {name}: {m}")


@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck_fp64(causal):
    q, k, v = make_qkv(3, 5, 4, torch.float64, batch=1, heads=2, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v: attention(q, k, v, causal=causal, softmax_scale=0.7), (q, k, v))


def _t(*shape, dtype=torch.float32, device="cpu"):
    return torch.zeros(shape, dtype=dtype, device=device)


@pytest.mark.parametrize(
    "args,kwargs,error,match",
    [
        ((_t(2, 8, 4), _t(2, 8, 4), _t(2, 8, 4)), {}, ValueError, "q must be 4-D"),
        ((_t(1, 2, 8, 4), _t(1, 2, 8, 4, 1), _t(1, 2, 8, 4)), {}, ValueError, "k must be 4-D"),
        ((_t(1, 2, 8, 4), _t(1, 2, 8, 4), _t(1, 2, 9, 4)), {}, ValueError, "k and v must have the same shape"),
        ((_t(1, 2, 8, 4), _t(1, 2, 8, 5), _t(1, 2, 8, 5)), {}, ValueError, "must have the same head_dim"),
        ((_t(1, 2, 8, 4), _t(2, 2, 8, 4), _t(2, 2, 8, 4)), {}, ValueError, "must have the same batch size"),
        ((_t(1, 6, 8, 4), _t(1, 4, 8, 4), _t(1, 4, 8, 4)), {}, ValueError, r"heads of q \(6\) must be a multiple"),
        ((_t(1, 2, 8, 4), _t(1, 2, 0, 4), _t(1, 2, 0, 4)), {}, ValueError, "at least one key"),
        ((_t(1, 2, 8, 4),) * 3, {"dropout_p": 1.0}, ValueError, r"dropout_p must be in \[0, 1\)"),
        ((_t(1, 2, 8, 4),) * 3, {"dropout_p": -0.1}, ValueError, "dropout_p must be in"),
        ((_t(1, 2, 8, 4),) * 3, {"causal": 1}, TypeError, "causal must be a bool"),
        ((_t(1, 2, 8, 4), _t(1, 2, 8, 4, dtype=torch.float64), _t(1, 2, 8, 4)), {}, TypeError, "share a dtype"),
        ((_t(1, 2, 8, 4, dtype=torch.int64),) * 3, {}, TypeError, "q must be a floating tensor"),
        (([[1.0]], _t(1, 2, 8, 4), _t(1, 2, 8, 4)), {}, TypeError, "q must be a torch.Tensor"),
        ((_t(1, 2, 8, 4), _t(1, 2, 8, 4, device="meta"), _t(1, 2, 8, 4)), {}, ValueError, "one device"),
        ((_t(1, 2, 8, 4),) * 3, {"softmax_scale": 0.0}, ValueError, "softmax_scale must be a positive"),
        ((_t(1, 2, 8, 4),) * 3, {"softmax_scale": float("inf")}, ValueError, "softmax_scale must be a positive finite"),
        ((_t(1, 2, 8, 4),) * 3, {"backend": "fastest"}, ValueError, "backend must be 'auto' or one of"),
    ],
    ids=["q-rank", "k-rank", "kv-shape", "head-dim", "batch", "gqa-heads", "no-keys", "dropout-1", "dropout-neg",
         "causal-type", "mixed-dtype", "int-dtype", "not-tensor", "device-mix", "scale", "scale-inf", "backend-name"],
)
def test_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        attention(*args, **kwargs)


def test_named_backend_unavailable_on_cpu_says_why():
    q = _t(1, 1, 4, 8)
    with pytest.raises(_backends.BackendUnavailableError, match=r"backend 'cuda' is unavailable: \S+"):
        attention(q, q, q, backend="cuda")


@pytest.mark.parametrize("d", [4, 12, 136])
@pytest.mark.parametrize("backend", ["cpu", "triton", "cuda"])
def test_compiled_backend_names_the_head_dim_it_cannot_take(backend, d):
    """A named compiled backend refuses a head dim outside multiples of 8 up to 128 with the
    reason (before its probe when it is available here, or with why it is unavailable)."""
    q = _t(1, 1, 4, d)
    with pytest.raises((ValueError, _backends.BackendUnavailableError),
                       match=rf"head_dim that is a multiple of 8 from 8 to 128, got {d}|unavailable"):
        attention(q, q, q, backend=backend)
    assert attention(q, q, q).shape == q.shape  # auto falls back to the reference


def _uniform_scores_case(lq=5, lk=7, d=8):
    """q = 0 gives every key the same score, so the output is the plain mean of the values seen:
    all of v (non-causal), or v[0..i] for query i (causal, top-left aligned)."""
    _, k, v = make_qkv(lq, lk, d, torch.float64, batch=1, heads=2)
    q = torch.zeros(1, 2, lq, d, dtype=torch.float64)
    mean_all = v.mean(-2, keepdim=True).expand(-1, -1, lq, -1)
    assert lq <= lk  # so query i sees keys 0..i
    running_mean = v.cumsum(-2)[..., :lq, :] / torch.arange(1, lq + 1, dtype=torch.float64)[:, None]
    return q, k, v, mean_all, running_mean


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_closed_forms(backend):
    q, k, v, mean_all, running_mean = _uniform_scores_case()
    torch.testing.assert_close(attention(q, k, v, backend=backend), mean_all, atol=1e-12, rtol=0)
    torch.testing.assert_close(attention(q, k, v, causal=True, backend=backend), running_mean, atol=1e-12, rtol=0)

    # One-hot scores: key j is e_j scaled up so softmax is one-hot (exp(-60) ~ 1e-26 elsewhere);
    # query i points at key perm[i], so output row i is exactly v[perm[i]].
    lk, d = 6, 8
    keys = torch.zeros(1, 1, lk, d, dtype=torch.float64)
    keys[0, 0, torch.arange(lk), torch.arange(lk)] = 60.0
    perm = torch.tensor([3, 0, 5, 1])
    queries = torch.zeros(1, 1, len(perm), d, dtype=torch.float64)
    queries[0, 0, torch.arange(len(perm)), perm] = 1.0
    values = torch.randn(1, 1, lk, d, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    out = attention(queries, keys, values, softmax_scale=1.0, backend=backend)
    torch.testing.assert_close(out[0, 0], values[0, 0, perm], atol=1e-12, rtol=0)


def test_env_backend_override_is_honoured(monkeypatch):
    q, k, v, mean_all, _ = _uniform_scores_case()
    monkeypatch.setenv("PYNEURO_BACKEND", "cuda")
    with pytest.raises(_backends.BackendUnavailableError, match="cuda"):
        attention(q, k, v)
    monkeypatch.setenv("PYNEURO_BACKEND", "reference")
    torch.testing.assert_close(attention(q, k, v), mean_all, atol=1e-12, rtol=0)
