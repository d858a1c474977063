"""The dispatcher side of batch_norm_relu: torch.library.opcheck on the compiled pair
pyneuro::batch_norm_relu_fwd / _bwd (schema, fake shapes and layouts, autograd registration,
dispatch), the raw pair against the oracle, torch.compile(fullgraph=True) through the public
function and the layer, and how ``auto`` chooses."""
from __future__ import annotations

import pytest
import torch

import pyneuro.nn as pnn
import pyneuro.ops.norm as norm
from pyneuro.ops.norm import batch_norm_relu
from batch_norm_relu_cases import (CASES, Target, assert_matches, case_data, every_isa, fp64, make_inputs,
                                   statistics)


def _raw(inputs, case, grad=False, device="cpu"):
    """The forward op's arguments (weight and bias always present, as the Python side passes them)."""
    C = case.C

    def leaf(t):
        t = t.detach().to(device).clone()
        return t.requires_grad_() if grad else t

    x = leaf(inputs.x)
    w = leaf(inputs.weight) if inputs.weight is not None else leaf(torch.ones(C))
    b = leaf(inputs.bias) if inputs.bias is not None else leaf(torch.zeros(C))
    rm = None if inputs.running_mean is None else inputs.running_mean.to(device)
    rv = None if inputs.running_var is None else inputs.running_var.to(device)
    return [x, w, b, rm, rv, case.training, case.eps, case.pool]


# opcheck runs each op a dozen times: small shapes, each layout, both pools, training and eval,
# with and without running statistics; C = 1 (both layouts hold) and an odd H/W.
OPCHECK_CASES = ["5x7", "5x7-cl", "9x6-eval-cl", "9x6-eval-pool1", "no-running-cl-pool1", "C1-cl-pool1"]


@pytest.mark.parametrize("case", OPCHECK_CASES)
def test_opcheck(backend_target, case):
    case_, inputs, _ = case_data(case)
    fwd, bwd = torch.ops.pyneuro.batch_norm_relu_fwd.default, torch.ops.pyneuro.batch_norm_relu_bwd.default
    args = _raw(inputs, case_, grad=True, device=backend_target.device)
    torch.library.opcheck(fwd, args)
    out, mean, var = fwd(*args)
    plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    dout = torch.randn_like(out)  # in out's layout, as the autograd formula hands it
    torch.library.opcheck(bwd, (dout, plain[0], plain[1], plain[2], mean, var, case_.training, case_.eps,
                                case_.pool))


def test_fake_shapes_and_layouts_match_the_kernels():
    """The fake (meta) forward and backward give the real ops' shapes, dtypes and layouts."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    fwd, bwd = torch.ops.pyneuro.batch_norm_relu_fwd, torch.ops.pyneuro.batch_norm_relu_bwd
    for name in ("5x7", "5x7-cl", "C1-cl-pool1", "2x2-eval-cl"):
        case_, inputs, _ = case_data(name)
        args = _raw(inputs, case_)
        real = fwd(*args)
        real_b = bwd(torch.randn_like(real[0]), *args[:3], real[1], real[2], *args[5:])
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
            fake = fwd(*fake_args)
            fake_b = bwd(torch.empty_like(fake[0]), *fake_args[:3], fake[1], fake[2], *fake_args[5:])
        for r, f in zip(real + real_b, fake + fake_b):
            # The strides of size-1 dimensions do not matter (torch's own fake-tensor checks skip them).
            significant = [(a, b) for n, a, b in zip(r.shape, r.stride(), f.stride()) if n > 1]
            assert r.shape == f.shape and r.dtype == f.dtype and all(a == b for a, b in significant), \
                f"{name}: real {tuple(r.shape)} {r.stride()}, fake {tuple(f.shape)} {f.stride()}"


@pytest.mark.parametrize("case", ["5x7-cl", "9x6-eval", "C70-cl-pool1-eval", "noaffine", "sliced-cl"])
@every_isa
def test_raw_pair_matches_the_oracle(cxx_target, case):
    """The ops called directly: mean and var are the statistics normalised with (the batch's,
    biased, or copies of the running ones), out and the backward's three gradients the oracle's."""
    case_, inputs, want = case_data(case)
    x = inputs.x.contiguous(memory_format=torch.channels_last) if case_.layout == "sliced_cl" else inputs.x
    args = _raw(inputs, case_, device=cxx_target.device)
    args[0] = x.to(cxx_target.device)
    out, mean, var = torch.ops.pyneuro.batch_norm_relu_fwd(*args)
    tol = cxx_target.tolerance(torch.float32)
    m64, v64 = statistics(case_, inputs)
    assert_matches(mean, m64, tol, "mean")
    assert_matches(var, v64, tol, "var")
    if not case_.training:
        assert torch.equal(mean, args[3]) and torch.equal(var, args[4])
        assert mean.data_ptr() != args[3].data_ptr() and var.data_ptr() != args[4].data_ptr(), \
            "the forward returns copies of the running statistics, never the tensors themselves"
    assert_matches(out, want.out, tol, "out")
    layout = torch.channels_last if case_.layout in ("channels_last", "sliced_cl") else torch.contiguous_format
    dout = inputs.dout.contiguous(memory_format=layout).to(cxx_target.device)
    dx, dw, db = torch.ops.pyneuro.batch_norm_relu_bwd(dout, *args[:3], mean, var, *args[5:])
    assert dx.is_contiguous(memory_format=layout)
    assert_matches(dx, want.grads["x"], tol, "dx")
    if case_.affine:
        assert_matches(dw, want.grads["weight"], tol, "dweight")
        assert_matches(db, want.grads["bias"], tol, "dbias")


def test_raw_forward_never_writes_its_inputs(cxx_target):
    case_, inputs, _ = case_data("5x7-cl")
    args = _raw(inputs, case_, device=cxx_target.device)
    before = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    for training in (True, False):
        args[5] = training
        torch.ops.pyneuro.batch_norm_relu_fwd(*args)
        for a, b in zip(args, before):
            assert not isinstance(a, torch.Tensor) or torch.equal(a, b)


def test_nchw_pool2_takes_dout_in_either_layout(cxx_target):
    """NCHW x with pool 2 runs in channels_last inside (csrc/cpu/batch_norm.cpp): a channels_last
    dout, as the next convolution's backward may give, is taken without a copy to NCHW and gives
    the same gradients; x's other layouts still need dout in theirs."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 5, 6, 10, generator=g)
    w, b = torch.randn(5, generator=g), torch.randn(5, generator=g)
    out, mean, var = torch.ops.pyneuro.batch_norm_relu_fwd(x, w, b, None, None, True, 1e-5, 2)
    assert out.is_contiguous()
    dout = torch.randn(out.shape, generator=g)
    nchw = torch.ops.pyneuro.batch_norm_relu_bwd(dout, x, w, b, mean, var, True, 1e-5, 2)
    cl = torch.ops.pyneuro.batch_norm_relu_bwd(dout.contiguous(memory_format=torch.channels_last), x, w, b, mean,
                                               var, True, 1e-5, 2)
    assert nchw[0].is_contiguous() and cl[0].is_contiguous()
    for a, c in zip(nchw, cl):
        assert torch.equal(a, c)
    out1, mean1, var1 = torch.ops.pyneuro.batch_norm_relu_fwd(x, w, b, None, None, True, 1e-5, 1)
    with pytest.raises(ValueError, match="dout must be contiguous in x's layout"):
        torch.ops.pyneuro.batch_norm_relu_bwd(out1.contiguous(memory_format=torch.channels_last), x, w, b, mean1,
                                              var1, True, 1e-5, 1)


# ----------------------------------------------------------------------------------------------
# torch.compile
# ----------------------------------------------------------------------------------------------
def _compile_check(target: Target, compiler: str, training: bool):
    torch._dynamo.reset()
    case_, inputs, _ = case_data("5x7-cl" if training else "9x6-eval-cl")
    dev = target.device

    def loss(x, w, b, rm, rv):
        out = batch_norm_relu(x, rm, rv, w, b, training, 0.1, 1e-5, case_.pool, backend=target.backend)
        return (out * out).sum()

    def leaves():
        return [t.detach().to(dev).clone().requires_grad_() for t in (inputs.x, inputs.weight, inputs.bias)]

    stats = [inputs.running_mean.to(dev).clone(), inputs.running_var.to(dev).clone()]
    eager_stats = [s.clone() for s in stats]
    eager = leaves()
    expected = torch.autograd.grad(loss(*eager, *eager_stats), eager)  # eager first: probes run here
    compiled = torch.compile(loss, backend=compiler, fullgraph=True)
    mine = leaves()
    got = torch.autograd.grad(compiled(*mine, *stats), mine)
    for name, g, e in zip(("x", "weight", "bias"), got, expected):
        assert_matches(g, e, 1e-6, f"d{name}")
    for name, s, e in zip(("running_mean", "running_var"), stats, eager_stats):  # updated once, in place
        assert_matches(s, e, 1e-6, name)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_torch_compile_smoke(any_target, training):
    # aot_eager traces the op through its fake and autograd registrations like inductor does,
    # without inductor's C++ code generation; the slow test runs inductor.
    _compile_check(any_target, "aot_eager", training)


@pytest.mark.slow
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_torch_compile_inductor(target, training):
    _compile_check(target, "inductor", training)


def test_torch_compile_layer_fullgraph(backend_target):
    """The layer (conv -> BatchNormReLU2d, the cnn model's block) in one graph, training."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Conv2d(2, 6, 3, padding=1, bias=False),
                                pnn.BatchNormReLU2d(6, pool=2, backend=backend_target.backend))
    block = block.to(memory_format=torch.channels_last)
    twin = torch.nn.Sequential(torch.nn.Conv2d(2, 6, 3, padding=1, bias=False),
                               pnn.BatchNormReLU2d(6, pool=2, backend=backend_target.backend))
    twin.load_state_dict(block.state_dict())
    x = torch.randn(4, 2, 7, 9).contiguous(memory_format=torch.channels_last)
    expected = torch.autograd.grad(block(x).square().sum(), list(block.parameters()))
    compiled = torch.compile(twin, backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(compiled(x).square().sum(), list(twin.parameters()))
    for k, (g, e) in enumerate(zip(got, expected)):
        assert_matches(g, e, 1e-6, f"gradient {k}")
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(twin[1], name), getattr(block[1], name)), name


# ----------------------------------------------------------------------------------------------
# Backend choice
# ----------------------------------------------------------------------------------------------
def _select(inputs, case, backend="auto"):
    return norm.OP.select(backend, inputs.x.device, inputs.x, inputs.running_mean, inputs.running_var,
                          inputs.weight, inputs.bias, case.training, case.momentum, case.eps, case.pool).name


def test_auto_picks_cpu_when_built_else_the_reference():
    case_ = CASES["5x7-cl"]
    reason = norm.OP.status("cpu", torch.device("cpu"))
    assert _select(make_inputs(case_), case_) == ("cpu" if reason is None else "reference")
    for dtype in (torch.float64, torch.float16, torch.bfloat16):  # the cpu backend takes fp32 only
        assert _select(make_inputs(case_, dtype), case_) == "reference"
    inputs = make_inputs(case_)
    auto = batch_norm_relu(inputs.x, None, None, inputs.weight, inputs.bias, True, pool=2)
    named = batch_norm_relu(inputs.x, None, None, inputs.weight, inputs.bias, True, pool=2,
                            backend="cpu" if reason is None else "reference")
    assert torch.equal(auto, named)


def test_env_variable_names_the_backend(monkeypatch):
    case_ = CASES["5x7"]
    inputs = make_inputs(case_)
    monkeypatch.setenv("PYNEURO_BACKEND", "reference")
    assert _select(inputs, case_) == "reference"
    if norm.OP.status("cpu", torch.device("cpu")) is None:
        assert _select(inputs, case_, "cpu") == "cpu"  # an argument naming a backend wins over the variable


def test_example_arguments_feed_explain():
    rows = dict(norm.OP.explain(torch.device("cpu"), *norm.OP.example(N=4, C=3, H=6, W=6)))
    assert "chosen" in rows.values()
    if norm.OP.status("cpu", torch.device("cpu")) is None:
        assert rows["cpu"] == "chosen"
    rows = dict(norm.OP.explain(torch.device("cpu"), *norm.OP.example(dtype=torch.bfloat16)))
    assert rows["reference"] == "chosen"
    assert "float32" in rows["cpu"] or rows["cpu"] == norm.OP.status("cpu", torch.device("cpu"))


def test_oracle_statistics_are_float64():
    """The suite's oracle runs in fp64 whatever the inputs' dtype."""
    case_, inputs, want = case_data("5x7", torch.bfloat16)
    assert want.out.dtype == torch.float64 and all(g.dtype == torch.float64 for g in want.grads.values())
    assert fp64(inputs.x).dtype == torch.float64
