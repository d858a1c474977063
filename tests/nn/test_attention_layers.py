"""pyneuro.nn attention layers against torch.nn.MultiheadAttention / TransformerEncoder(Layer) under the same weights."""
import pytest
import torch
from torch import nn

import pyneuro.nn as pn

TOL = {
    torch.float64: dict(atol=1e-12, rtol=1e-10),
    torch.float32: dict(atol=2e-5, rtol=1e-4),
}
E, HEADS, BATCH, L = 16, 4, 2, 7


def causal_mask(n):
    return nn.Transformer.generate_square_subsequent_mask(n, dtype=torch.float64)


def mha_pair(dtype=torch.float64, **kwargs):
    kwargs.setdefault("batch_first", True)  # torch's default is False, ours True
    torch.manual_seed(0)
    theirs = nn.MultiheadAttention(E, HEADS, dtype=dtype, **kwargs).eval()
    ours = pn.MultiheadAttention(E, HEADS, dtype=dtype, **kwargs).eval()
    ours.load_state_dict(theirs.state_dict())
    if theirs.in_proj_bias is not None:  # torch zero-inits the biases; make them matter
        with torch.no_grad():
            for layer in (theirs, ours):
                torch.manual_seed(1)
                layer.in_proj_bias.normal_()
                layer.out_proj.bias.normal_()
    return theirs, ours


@pytest.mark.parametrize("bias", [True, False])
def test_mha_state_dict_keys_match_torch(bias):
    theirs, ours = mha_pair(bias=bias)
    assert list(ours.state_dict()) == list(theirs.state_dict())


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_mha_matches_torch(batch_first, bias, causal, cross):
    theirs, ours = mha_pair(bias=bias, batch_first=batch_first)
    lk = 5 if cross else L
    shape = lambda n: (BATCH, n, E) if batch_first else (n, BATCH, E)  # noqa: E731
    query = torch.randn(shape(L), dtype=torch.float64, requires_grad=True)
    key = torch.randn(shape(lk), dtype=torch.float64, requires_grad=True) if cross else query
    value = torch.randn(shape(lk), dtype=torch.float64, requires_grad=True) if cross else query
    # torch applies the causal mask from attn_mask (top-left aligned, as our is_causal).
    mask = torch.ones(L, lk, dtype=torch.bool).tril().logical_not() if causal else None
    out_t, w_t = theirs(query, key, value, attn_mask=mask, need_weights=True, average_attn_weights=False)
    out_o, w_o = ours(query, key, value, is_causal=causal, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(out_o, out_t, **TOL[torch.float64])
    torch.testing.assert_close(w_o, w_t, **TOL[torch.float64])
    leaves = [query, key, value][: 3 if cross else 1] + list(theirs.parameters())
    cot = torch.randn_like(out_t)
    grads_t = torch.autograd.grad(out_t, leaves, cot)
    ours_leaves = leaves[: len(leaves) - len(list(theirs.parameters()))] + [
        ours.get_parameter(n) for n, _ in theirs.named_parameters()]
    for a, b in zip(torch.autograd.grad(out_o, ours_leaves, cot), grads_t):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_mha_unbatched_and_averaged_weights_match_torch():
    theirs, ours = mha_pair()
    x = torch.randn(L, E, dtype=torch.float64)
    out_t, w_t = theirs(x, x, x)  # torch's default need_weights=True, averaged over heads
    out_o, w_o = ours(x, x, x, need_weights=True)
    assert out_o.shape == (L, E) and w_o.shape == (L, L)
    torch.testing.assert_close(out_o, out_t, **TOL[torch.float64])
    torch.testing.assert_close(w_o, w_t, **TOL[torch.float64])
    assert ours(x, x, x)[1] is None  # need_weights defaults to False here


def test_mha_key_is_query_but_value_differs():
    # Only q is k is v may share one projection matmul; here v needs its own.
    theirs, ours = mha_pair()
    x, v = torch.randn(2, BATCH, L, E, dtype=torch.float64)
    torch.testing.assert_close(ours(x, x, v)[0], theirs(x, x, v)[0], **TOL[torch.float64])


def test_self_attention_causal_ignores_the_future():
    torch.manual_seed(0)
    layer = pn.MultiheadSelfAttention(E, HEADS).eval()
    x = torch.randn(BATCH, L, E)
    changed = x.clone()
    changed[:, 4] += 1.0
    out, out_changed = layer(x, causal=True), layer(changed, causal=True)
    assert out.shape == (BATCH, L, E)
    torch.testing.assert_close(out_changed[:, :4], out[:, :4], atol=0, rtol=0)
    assert (out_changed[:, 4:] - out[:, 4:]).abs().amax(dim=-1).min() > 1e-4  # every later position changes
    # Without the mask, position 0 sees position 4.
    assert not torch.allclose(layer(changed)[:, 0], layer(x)[:, 0])


def test_self_attention_equals_mha_with_same_weights():
    torch.manual_seed(0)
    mha = pn.MultiheadAttention(E, HEADS)
    self_attn = pn.MultiheadSelfAttention(E, HEADS)
    self_attn.load_state_dict(mha.state_dict())
    x = torch.randn(BATCH, L, E)
    torch.testing.assert_close(self_attn(x, causal=True), mha(x, x, x, is_causal=True)[0], atol=0, rtol=0)


def test_attention_dropout_in_training_only():
    torch.manual_seed(0)
    layer = pn.MultiheadSelfAttention(E, HEADS, dropout=0.5)
    x = torch.randn(BATCH, L, E)
    torch.manual_seed(1)
    a = layer(x)
    torch.manual_seed(1)
    assert torch.equal(layer(x), a)  # reproducible under a seed
    assert not torch.allclose(layer(x), a)  # but random
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    assert not torch.allclose(layer(x), a)


ENCODER_CASES = {
    "post-norm-relu": dict(),
    "pre-norm-gelu": dict(norm_first=True, activation="gelu"),
    "no-bias": dict(bias=False),
    "seq-first": dict(batch_first=False),
}


def encoder_layer_pair(dtype=torch.float64, **kwargs):
    kwargs = dict(dim_feedforward=32, dropout=0.1, **kwargs)
    kwargs.setdefault("batch_first", True)
    torch.manual_seed(0)
    theirs = nn.TransformerEncoderLayer(E, HEADS, dtype=dtype, **kwargs)
    ours = pn.TransformerEncoderLayer(E, HEADS, dtype=dtype, **kwargs)
    with torch.no_grad():  # non-trivial norms and biases, so every parameter matters
        for p in theirs.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ours.load_state_dict(theirs.state_dict())
    return theirs.eval(), ours.eval()


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", list(ENCODER_CASES))
def test_encoder_layer_matches_torch(case, causal):
    theirs, ours = encoder_layer_pair(**ENCODER_CASES[case])
    assert list(ours.state_dict()) == list(theirs.state_dict())
    shape = (BATCH, L, E) if ENCODER_CASES[case].get("batch_first", True) else (L, BATCH, E)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    mask = causal_mask(L) if causal else None
    out_t = theirs(x, src_mask=mask, is_causal=causal)
    out_o = ours(x, is_causal=causal)
    torch.testing.assert_close(out_o, out_t, **TOL[torch.float64])
    leaves_t = [x, *theirs.parameters()]
    leaves_o = [x, *(ours.get_parameter(n) for n, _ in theirs.named_parameters())]
    cot = torch.randn_like(out_t)
    for a, b in zip(torch.autograd.grad(out_o, leaves_o, cot), torch.autograd.grad(out_t, leaves_t, cot)):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_encoder_layer_fp32_inference_matches_torch_fast_path():
    theirs, ours = encoder_layer_pair(dtype=torch.float32)
    x = torch.randn(BATCH, L, E)
    with torch.inference_mode():  # torch takes its fused inference path here
        torch.testing.assert_close(ours(x), theirs(x), **TOL[torch.float32])


def test_encoder_layer_causal_ignores_the_future():
    _, ours = encoder_layer_pair()
    x = torch.randn(BATCH, L, E, dtype=torch.float64)
    changed = x.clone()
    changed[:, 3] += 1.0
    torch.testing.assert_close(ours(changed, is_causal=True)[:, :3], ours(x, is_causal=True)[:, :3], atol=0, rtol=0)
    assert not torch.allclose(ours(changed, is_causal=True)[:, 3], ours(x, is_causal=True)[:, 3])


def test_encoder_stack_matches_torch():
    theirs_layer, ours_layer = encoder_layer_pair(norm_first=True)
    theirs = nn.TransformerEncoder(theirs_layer, 3, norm=nn.LayerNorm(E, dtype=torch.float64),
                                   enable_nested_tensor=False).eval()
    ours = pn.TransformerEncoder(ours_layer, 3, norm=nn.LayerNorm(E, dtype=torch.float64)).eval()
    with torch.no_grad():  # distinct weights per layer
        for p in theirs.parameters():
            p.add_(0.1 * torch.randn_like(p))
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(BATCH, L, E, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x), **TOL[torch.float64])
    torch.testing.assert_close(ours(x, is_causal=True), theirs(x, mask=causal_mask(L), is_causal=True),
                               **TOL[torch.float64])


def test_encoder_layer_dropout_in_training():
    _, ours = encoder_layer_pair()
    x = torch.randn(BATCH, L, E, dtype=torch.float64)
    expected = ours(x)
    ours.train()
    assert not torch.allclose(ours(x), expected)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: pn.MultiheadAttention(E, 5), ValueError, r"embed_dim \(16\) must be divisible by num_heads \(5\)"),
        (lambda: pn.MultiheadAttention(E, 0), ValueError, "num_heads must be positive"),
        (lambda: pn.MultiheadAttention(E, HEADS, dropout=-0.1), ValueError, r"dropout must be a probability"),
        (lambda: pn.MultiheadAttention(E, HEADS, backend="fastest"), ValueError, "backend must be 'auto' or one of"),
        (lambda: pn.TransformerEncoderLayer(E, 3), ValueError, r"d_model \(16\) must be divisible by nhead \(3\)"),
        (lambda: pn.TransformerEncoderLayer(E, HEADS, activation="tanh"), ValueError, "activation must be 'relu', 'gelu'"),
        (lambda: pn.TransformerEncoder(pn.TransformerEncoderLayer(E, HEADS), 0), ValueError, "num_layers must be positive"),
    ],
    ids=["heads-divide", "heads-zero", "dropout", "backend", "nhead-divide", "activation", "stack-size"],
)
def test_bad_constructor_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_bad_forward_input():
    layer = pn.MultiheadAttention(E, HEADS)
    x = torch.randn(BATCH, L, E)
    with pytest.raises(NotImplementedError, match="attn_mask not supported"):
        layer(x, x, x, attn_mask=torch.zeros(L, L, dtype=torch.bool))
    with pytest.raises(NotImplementedError, match="key_padding_mask not supported"):
        layer(x, x, x, key_padding_mask=torch.zeros(BATCH, L, dtype=torch.bool))
    with pytest.raises(NotImplementedError, match="src_key_padding_mask not supported"):
        pn.TransformerEncoderLayer(E, HEADS)(x, src_key_padding_mask=torch.zeros(BATCH, L, dtype=torch.bool))
    with pytest.raises(ValueError, match="query's last dim must be embed_dim=16"):
        layer(torch.randn(BATCH, L, 8), x, x)
    with pytest.raises(ValueError, match="all be 3-D .* or all 2-D"):
        layer(x, x[0], x[0])
    with pytest.raises(ValueError, match="key and value must have the same shape"):
        layer(x, x, x[:, :3])
    with pytest.raises(ValueError, match="same batch size"):
        layer(x, x[:1], x[:1])
    with pytest.raises(TypeError, match="query dtype torch.float64 does not match"):
        layer(x.double(), x, x)


def test_training_dropout_runs_in_pyneuros_attention(monkeypatch):
    """While training with attention dropout the layer calls pyneuro's op with dropout_p (no SDPA
    fallback): its output is the op's under the same seed, and SDPA is never called."""
    import torch.nn.functional as F
    from pyneuro.ops import attention

    def no_sdpa(*args, **kwargs):
        raise AssertionError("MultiheadAttention fell back to SDPA")

    monkeypatch.setattr(F, "scaled_dot_product_attention", no_sdpa)
    torch.manual_seed(0)
    layer = pn.MultiheadSelfAttention(E, HEADS, dropout=0.3)
    x = torch.randn(BATCH, L, E)
    torch.manual_seed(5)
    got = layer(x, causal=True)
    q, k, v = (layer._split_heads(t) for t in layer._project(x, x, x))
    torch.manual_seed(5)
    heads = attention(q, k, v, causal=True, dropout_p=0.3)
    want = layer.out_proj(heads.transpose(1, 2).reshape(BATCH, L, E))
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_attention_dropout_of_one_is_refused():
    with pytest.raises(ValueError, match="dropout must be below 1"):
        pn.MultiheadAttention(E, HEADS, dropout=1.0)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("norm_first", [True, False], ids=["pre-norm", "post-norm"])
def test_encoder_stack_fp32_forward_and_gradients_match_torch(norm_first, activation):
    """fp32, where pyneuro's layers run on the fused CPU ops (packed attention; each residual add
    inside the next layer norm, carried between layers as a pending sum; with the GELU, linear1's
    bias inside it): output and every gradient against torch.nn's stack with the same weights."""
    theirs_layer, ours_layer = encoder_layer_pair(dtype=torch.float32, norm_first=norm_first,
                                                  activation=activation)
    theirs = nn.TransformerEncoder(theirs_layer, 3, norm=nn.LayerNorm(E), enable_nested_tensor=False).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ours = pn.TransformerEncoder(ours_layer, 3, norm=nn.LayerNorm(E)).eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(BATCH, L, E, requires_grad=True)
    out_t, out_o = theirs(x), ours(x)
    torch.testing.assert_close(out_o, out_t, **TOL[torch.float32])
    cot = torch.randn_like(out_t)
    names = [n for n, _ in theirs.named_parameters()]
    grads_t = torch.autograd.grad(out_t, [x, *theirs.parameters()], cot)
    grads_o = torch.autograd.grad(out_o, [x, *(ours.get_parameter(n) for n in names)], cot)
    for name, a, b in zip(["x", *names], grads_o, grads_t):
        torch.testing.assert_close(a, b, **TOL[torch.float32], msg=lambda m, name=name: f"{name}: {m}")


def test_exact_gelu_runs_on_bias_gelu_where_it_has_a_compiled_backend(monkeypatch):
    """linear1 runs without its bias and bias_gelu adds it when bias_gelu would run compiled (cpu,
    fp32); in fp64 (its reference) the layers run as they are, the same values either way."""
    import pyneuro.nn.attention as attention_module
    from pyneuro.ops import gelu

    calls = []
    real = attention_module.bias_gelu
    monkeypatch.setattr(attention_module, "bias_gelu", lambda *a, **k: calls.append(1) or real(*a, **k))
    for dtype in (torch.float32, torch.float64):
        calls.clear()
        theirs, ours = encoder_layer_pair(dtype=dtype, norm_first=True, activation="gelu")
        x = torch.randn(BATCH, L, E, dtype=dtype)
        torch.testing.assert_close(ours(x), theirs(x), **TOL[dtype])
        compiled = gelu.OP.select("auto", x.device, x, None).name != "reference"
        assert len(calls) == (1 if compiled else 0), (dtype, calls)


def test_out_proj_and_linear2_biases_ride_into_the_next_layer_norm(monkeypatch):
    """fp32 on the cpu ops: out_proj's and linear2's GEMMs run without their biases, which the
    add_layer_norm after each adds (x_bias), across layers too (a pre-norm layer's linear2 bias goes
    to the next layer's norm1, the last one's to the encoder's norm). Not while their dropout is
    active (the bias must be added before it), nor in fp64 (add_layer_norm's reference); the results
    and every gradient match torch's either way."""
    import pyneuro.nn.attention as attention_module
    from pyneuro.ops import layernorm

    folded = []
    real = attention_module.add_layer_norm
    monkeypatch.setattr(attention_module, "add_layer_norm",
                        lambda *a, **k: folded.append(k.get("x_bias") is not None) or real(*a, **k))
    compiled = layernorm.OP.select("auto", torch.device("cpu"), torch.zeros(1, E), None, None, None, 1e-5).name != "reference"
    for dtype, training in ((torch.float32, False), (torch.float32, True), (torch.float64, False)):
        folded.clear()
        theirs_layer, ours_layer = encoder_layer_pair(dtype=dtype, norm_first=True)  # dropout 0.1
        theirs = nn.TransformerEncoder(theirs_layer, 2, norm=nn.LayerNorm(E, dtype=dtype), enable_nested_tensor=False)
        ours = pn.TransformerEncoder(ours_layer, 2, norm=nn.LayerNorm(E, dtype=dtype))
        ours.load_state_dict(theirs.state_dict())
        theirs.train(training), ours.train(training)
        x = torch.randn(BATCH, L, E, dtype=dtype)
        torch.manual_seed(3)
        out_o = ours(x)
        assert sum(folded) == (4 if compiled and dtype == torch.float32 and not training else 0), (dtype, training)
        if training:
            continue  # torch's and pyneuro's dropout masks differ (another generator)
        out_t = theirs(x)
        torch.testing.assert_close(out_o, out_t, **TOL[dtype])
        names = ["layers.0.self_attn.out_proj.bias", "layers.0.linear2.bias", "layers.1.linear2.bias"]
        cot = torch.randn_like(out_t)
        grads_t = torch.autograd.grad(out_t, [theirs.get_parameter(n) for n in names], cot)
        grads_o = torch.autograd.grad(out_o, [ours.get_parameter(n) for n in names], cot)
        for name, a, b in zip(names, grads_o, grads_t):
            torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m, name=name: f"{name}: {m}")


def test_encoder_layers_and_their_norms_are_still_called_as_modules():
    """Run with deferred adds (run_layers), each layer is still called through its module, so hooks
    see it (the architecture picture traces the transformer that way); a norm with a hook is called
    as a module instead of being fused with its add, with the same result."""
    _, ours_layer = encoder_layer_pair(dtype=torch.float32, norm_first=True)
    encoder = pn.TransformerEncoder(ours_layer, 2).eval()
    x = torch.randn(BATCH, L, E)
    fused = encoder(x)
    seen = []
    handles = [layer.register_forward_hook(lambda m, a, out: seen.append(type(out))) for layer in encoder.layers]
    handles.append(encoder.layers[1].norm2.register_forward_hook(lambda m, a, out: seen.append("norm2")))
    try:
        hooked = encoder(x)
    finally:
        for h in handles:
            h.remove()
    assert seen == [tuple, "norm2", tuple]  # layer 0, then layer 1's norm2 inside layer 1
    torch.testing.assert_close(hooked, fused, **TOL[torch.float32])
    assert torch.equal(encoder(x), fused)  # hooks gone: the fused path again, bit for bit


def test_transformer_model_layers_appear_in_its_architecture():
    from pyneuro.models.registry import get
    from pyneuro.viz.architecture import trace_layers

    model = get("transformer").build()
    names = [call.name for call in trace_layers(model, torch.zeros(2, 16, 49))]
    assert any(name.startswith("layers.0") for name in names), names


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", ["pre-norm-gelu", "post-norm-relu", "no-bias"])
@pytest.mark.parametrize("rows", [0, -1, slice(2, 5)], ids=["first", "last", "2:5"])
def test_encoder_layer_rows_are_the_whole_outputs_rows(case, rows, dtype):
    """forward(..., rows=...) computes only those tokens' outputs (queries from them, keys and values
    from all): the same values as the whole output's rows, and the same gradients of everything (the
    input's other tokens get theirs through the keys and values), pending sums included."""
    _, ours = encoder_layer_pair(dtype=dtype, **ENCODER_CASES[case])
    x = torch.randn(BATCH, L, E, dtype=dtype, requires_grad=True)
    incoming = pn.Pending(torch.randn(BATCH, L, E, dtype=dtype, requires_grad=True),
                          torch.randn(E, dtype=dtype, requires_grad=True))
    index = (slice(None), slice(rows, rows + 1 if rows != -1 else None) if isinstance(rows, int) else rows)
    whole = pn.add_pending(*ours(x, pending=incoming, defer_add=True))[index]
    part = pn.add_pending(*ours(x, pending=incoming, defer_add=True, rows=rows))
    assert part.shape == whole.shape
    torch.testing.assert_close(part, whole, **TOL[dtype])
    leaves = [x, *incoming, *ours.parameters()]
    cot = torch.randn_like(whole)
    for a, b in zip(torch.autograd.grad(part, leaves, cot), torch.autograd.grad(whole, leaves, cot)):
        torch.testing.assert_close(a, b, **TOL[dtype])


def test_encoder_layer_rows_skip_the_other_tokens_work():
    """Only the asked-for tokens reach the out-projection's successors: linear1 sees one row per
    batch element with rows=0, every row without."""
    _, ours = encoder_layer_pair(dtype=torch.float32, norm_first=True, activation="gelu")
    seen = []
    ours.linear1.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    x = torch.randn(BATCH, L, E)
    ours(x, rows=0)
    ours(x)
    assert seen == [(BATCH, 1, E), (BATCH, L, E)]


@pytest.mark.parametrize("how", ["causal", "seq-first", "hooked-attention", "torch-last-layer"])
def test_rows_fall_back_to_the_whole_layer_where_the_row_path_does_not_apply(how):
    """Causal masks, a sequence-first layer, a hooked attention module and a torch.nn last layer in
    run_layers: the whole layer runs, then its rows are taken: the same values as asked."""
    theirs, ours = encoder_layer_pair(norm_first=True, batch_first=how != "seq-first")
    x = torch.randn((L, BATCH, E) if how == "seq-first" else (BATCH, L, E), dtype=torch.float64)
    causal = how == "causal"
    if how == "hooked-attention":
        ours.self_attn.register_forward_hook(lambda *a: None)
    if how == "torch-last-layer":
        stream, pending = pn.run_layers([ours, theirs], x, rows=3)
        torch.testing.assert_close(pn.add_pending(stream, pending), theirs(ours(x))[:, 3:4], **TOL[torch.float64])
        return
    whole = ours(x, is_causal=causal)
    part = ours(x, is_causal=causal, rows=3)
    expected = whole[3:4] if how == "seq-first" else whole[:, 3:4]
    torch.testing.assert_close(part, expected, **TOL[torch.float64])


@pytest.mark.parametrize("rows, error, match", [
    ("0", TypeError, "rows must be an int or a slice"),
    (True, TypeError, "rows must be an int or a slice"),
    (L, ValueError, "rows=7 is out of range for 7 tokens"),
    (slice(0, 4, 2), ValueError, "rows must be a slice with step 1"),
])
def test_bad_rows_are_refused_by_name(rows, error, match):
    _, ours = encoder_layer_pair()
    with pytest.raises(error, match=match):
        ours(torch.randn(BATCH, L, E, dtype=torch.float64), rows=rows)


def test_transformer_model_runs_its_last_layer_on_the_class_token_only():
    """The classifier reads only the class token, so its last layer computes only that token (the
    earlier ones every token): the same logits and gradients as with the last layer over every
    token (fp64), and the last layer's feed-forward sees one token per image."""
    import copy

    from pyneuro.models.registry import get

    torch.manual_seed(0)
    model = get("transformer").build(num_layers=2).double()
    whole = copy.deepcopy(model)
    whole.class_token_only_last_layer = False
    x = torch.randn(3, 16, 49, dtype=torch.float64)
    seen = []
    for layer in model.layers:
        layer.linear1.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    logits, expected = model(x), whole(x)
    assert seen == [17, 1]
    torch.testing.assert_close(logits, expected, atol=1e-12, rtol=1e-10)
    cot = torch.randn_like(logits)
    grads = torch.autograd.grad(logits, list(model.parameters()), cot)
    grads_whole = torch.autograd.grad(expected, list(whole.parameters()), cot)
    for (name, _), a, b in zip(model.named_parameters(), grads, grads_whole):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10, msg=lambda m, name=name: f"{name}: {m}")
    with pytest.raises(TypeError, match="class_token_only_last_layer must be a bool"):
        get("transformer").build(class_token_only_last_layer="false")  # a string would read as True


def test_encoder_stack_rows_match_the_whole_outputs_rows():
    """TransformerEncoder(..., rows=0): the stack's output (final norm included) at the first token
    only, equal to the whole output's first row, gradients too."""
    _, ours_layer = encoder_layer_pair(norm_first=True, activation="gelu")
    ours = pn.TransformerEncoder(ours_layer, 3, norm=nn.LayerNorm(E, dtype=torch.float64)).eval()
    x = torch.randn(BATCH, L, E, dtype=torch.float64, requires_grad=True)
    part, whole = ours(x, rows=0), ours(x)[:, :1]
    torch.testing.assert_close(part, whole, **TOL[torch.float64])
    cot = torch.randn_like(whole)
    leaves = [x, *ours.parameters()]
    for a, b in zip(torch.autograd.grad(part, leaves, cot), torch.autograd.grad(whole, leaves, cot)):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.slow
def test_transformer_model_compiles_fullgraph_with_its_class_token_last_layer():
    """torch.compile(fullgraph=True) traces the model with the row path (slices of the token dim,
    attention with one query) and gives the eager logits and gradients."""
    from pyneuro.models.registry import get

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = get("transformer").build(num_layers=2)
    x = torch.randn(4, 16, 49)
    expected = model(x)
    grads = torch.autograd.grad(expected.square().sum(), list(model.parameters()))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    got = compiled(x)
    torch.testing.assert_close(got, expected, **TOL[torch.float32])
    for a, b in zip(torch.autograd.grad(got.square().sum(), list(model.parameters())), grads):
        torch.testing.assert_close(a, b, **TOL[torch.float32])
