"""add_layer_norm on every backend and CPU ISA variant against the fp64 oracle, the oracle's
written-out backward against autograd, thread-count independence, the dispatcher registration
(opcheck, the C++ autograd node, torch.compile) and the argument errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pyneuro import _backends
from pyneuro.ops import add_layer_norm
from pyneuro.ops import layernorm as ln
from add_layer_norm_cases import Case, assert_matches, every_isa, make_inputs, oracle

CASES = {
    "transformer": Case((4, 17, 96)),                      # the MNIST transformer's rows
    "odd-N-3d": Case((3, 5, 37)),
    "rows-not-chunked": Case((33, 24)),                    # a last, short chunk of the weight-grad sums
    "no-residual": Case((70, 8), residual=False),
    "no-affine": Case((40, 16), affine=False, bias=False),
    "weight-no-bias": Case((40, 16), bias=False),
    "no-dtotal": Case((40, 16), dtotal=False),
    "one-row": Case((1, 48)),
}


def _run(target, case, x, residual, weight, bias, dout, dtotal):
    # On the target's device: the reference target is also generated for cuda on a GPU machine.
    leaves = [t.to(target.device, copy=True).requires_grad_() if t is not None else None
              for t in (x, residual, weight, bias)]
    dout, dtotal = (t.to(target.device) if t is not None else None for t in (dout, dtotal))
    out, total = ln.OP.backends[target.backend].impl(*leaves, 1e-5)
    outputs, grads_in = [out], [dout]
    if dtotal is not None:
        outputs.append(total)
        grads_in.append(dtotal)
    wanted = [t for t in leaves if t is not None]
    grads = torch.autograd.grad(outputs, wanted, grads_in)
    return (out, total), dict(zip([n for n, t in zip(("dx", "dresidual", "dweight", "dbias"), leaves) if t is not None],
                                  grads))


@every_isa
@pytest.mark.parametrize("case", list(CASES))
def test_matches_oracle(any_target, case):
    c = CASES[case]
    x, residual, weight, bias, dout, dtotal = make_inputs(c)
    (out, total), grads = _run(any_target, c, x, residual, weight, bias, dout, dtotal)
    (out_ref, total_ref), (dt_ref, dw_ref, db_ref) = oracle(x, residual, weight, bias, dout, dtotal)
    tol = any_target.tolerance(torch.float32)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert_matches(out, out_ref, tol, "out")
    assert_matches(total, total_ref, tol, "total")
    assert_matches(grads["dx"], dt_ref, tol, "dx")
    if residual is not None:
        assert torch.equal(grads["dresidual"], grads["dx"])
    if weight is not None:
        assert_matches(grads["dweight"], dw_ref, tol, "dweight")
    if bias is not None:
        assert_matches(grads["dbias"], db_ref, tol, "dbias")


@every_isa
def test_rows_far_from_zero_keep_their_precision(target):
    """Rows of mean 1000 and spread ~2: E[t²] - mean² would cancel ~6 digits, and even t - mean with
    the mean rounded to fp32 loses half an ulp of 1000 (3e-5) against the spread; torch's layer_norm
    (the reference) shows 1.4e-5 here. The cpu kernel pivots on each row's first element. No residual:
    the fp32 rounding of x + residual would cost as much at this offset."""
    x, residual, weight, bias, dout, dtotal = make_inputs(Case((64, 96), residual=False, offset=1e3))
    (out, total), grads = _run(target, None, x, residual, weight, bias, dout, dtotal)
    (out_ref, _), (dt_ref, dw_ref, db_ref) = oracle(x, residual, weight, bias, dout, dtotal)
    tol = target.tolerance(torch.float32)
    assert_matches(out, out_ref, tol, "out")
    assert_matches(grads["dx"], dt_ref, tol, "dx")
    assert_matches(grads["dweight"], dw_ref, tol, "dweight")


@every_isa
@pytest.mark.parametrize("shape", [(7, 96), (7, 37)])
def test_a_row_does_not_depend_on_the_rows_beside_it(target, shape):
    """The cpu kernels take rows four (forward) or two (backward) at a time and the rest one by one;
    each row's sums are formed in the same order either way, so a row normalised with six others
    comes out bit for bit as it does alone (out, total, dx)."""
    x, residual, weight, bias, dout, dtotal = make_inputs(Case(shape), seed=5)
    (out, total), grads = _run(target, None, x, residual, weight, bias, dout, dtotal)
    for r in range(shape[0]):
        row = [t[r:r + 1] for t in (x, residual)] + [weight, bias] + [t[r:r + 1] for t in (dout, dtotal)]
        (out_r, total_r), grads_r = _run(target, None, *row)
        assert torch.equal(out_r, out[r:r + 1]) and torch.equal(total_r, total[r:r + 1]), r
        assert torch.equal(grads_r["dx"], grads["dx"][r:r + 1]), r


X_BIAS_CASES = {
    "transformer": Case((4, 17, 96)),                      # out_proj's / linear2's bias, pre-norm
    "odd-N-rows-not-chunked": Case((37, 37)),              # two chunks, the second short; odd rows
    "no-residual": Case((9, 24), residual=False),          # total = x + x_bias alone
    "no-dtotal": Case((10, 16), dtotal=False),
    "no-affine": Case((11, 8), affine=False, bias=False),  # the one-row backward path
}


def _run_with_x_bias(target, x, x_bias, residual, weight, bias, dout, dtotal):
    """(out, total) and every gradient (dx, dx_bias, dresidual, dweight, dbias; None where absent)."""
    leaves = [t.to(target.device, copy=True).requires_grad_() if t is not None else None
              for t in (x, x_bias, residual, weight, bias)]
    dout, dtotal = (t.to(target.device) if t is not None else None for t in (dout, dtotal))
    lx, lxb, lres, lw, lb = leaves
    out, total = ln.OP.backends[target.backend].impl(lx, lres, lw, lb, 1e-5, lxb)
    outputs, grads_in = [out], [dout]
    if dtotal is not None:
        outputs.append(total)
        grads_in.append(dtotal)
    wanted = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(outputs, wanted, grads_in))
    return (out, total), [next(grads) if t is not None else None for t in leaves]


@every_isa
@pytest.mark.parametrize("case", list(X_BIAS_CASES))
def test_x_bias_matches_oracle(any_target, case):
    """x_bias (the preceding linear layer's bias, folded in): total = (x + x_bias) + residual, and
    x_bias's gradient is the sum over the rows of the one reaching total (with or without a residual;
    without one, total is then a new tensor whose own gradient dtotal counts too)."""
    c = X_BIAS_CASES[case]
    x, residual, weight, bias, dout, _ = make_inputs(c, seed=7)
    x_bias = torch.randn(c.shape[-1], generator=torch.Generator().manual_seed(8))
    dtotal = torch.randn(c.shape, generator=torch.Generator().manual_seed(9)) if c.dtotal else None
    (out, total), (dx, dxb, dres, dw, db) = _run_with_x_bias(any_target, x, x_bias, residual, weight, bias, dout,
                                                             dtotal)
    d = lambda t: None if t is None else t.double()  # noqa: E731
    out_ref, total_ref = ln.add_layer_norm_naive(d(x), d(residual), d(weight), d(bias), 1e-5, d(x_bias))
    dt_ref, dw_ref, db_ref = ln.add_layer_norm_backward_naive(d(dout), d(dtotal), total_ref, d(weight), 1e-5)
    tol = any_target.tolerance(torch.float32)
    assert_matches(out, out_ref, tol, "out")
    assert_matches(total, total_ref, tol, "total")
    assert_matches(dx, dt_ref, tol, "dx")
    assert_matches(dxb, dt_ref.sum(tuple(range(dt_ref.dim() - 1))), tol, "dx_bias")
    if residual is not None:
        assert torch.equal(dres, dx)
    if weight is not None:
        assert_matches(dw, dw_ref, tol, "dweight")
    if bias is not None:
        assert_matches(db, db_ref, tol, "dbias")


@every_isa
@pytest.mark.parametrize("shape", [(7, 96), (7, 37)])
def test_x_bias_rows_and_their_sum(target, shape):
    """With x_bias, a row still comes out bit for bit as it does alone (the kernels' four-row and
    two-row paths against the one-row one), total is formed as (x + x_bias) + residual in fp32, and
    dx_bias is dx's rows added one after another (one chunk of rows here)."""
    x, residual, weight, bias, dout, dtotal = make_inputs(Case(shape), seed=11)
    x_bias = torch.randn(shape[-1], generator=torch.Generator().manual_seed(12))
    (out, total), (dx, dxb, *_) = _run_with_x_bias(target, x, x_bias, residual, weight, bias, dout, dtotal)
    assert torch.equal(total, (x + x_bias) + residual)
    for r in range(shape[0]):
        row = [x[r:r + 1], x_bias, residual[r:r + 1], weight, bias, dout[r:r + 1], dtotal[r:r + 1]]
        (out_r, total_r), (dx_r, *_) = _run_with_x_bias(target, *row)
        assert torch.equal(out_r, out[r:r + 1]) and torch.equal(total_r, total[r:r + 1]), r
        assert torch.equal(dx_r, dx[r:r + 1]), r
    running = torch.zeros(shape[-1])
    for r in range(shape[0]):
        running = running + dx[r]
    if target.backend != "reference":  # torch's sum (the reference's autograd) adds in its own order
        assert torch.equal(dxb, running)


def test_oracle_backward_is_autograd_through_the_forward():
    x, residual, weight, bias, dout, dtotal = (t.double() if t is not None else None
                                               for t in make_inputs(Case((6, 11))))
    leaves = [t.clone().requires_grad_() for t in (x, residual, weight, bias)]
    out, total = ln.add_layer_norm_naive(*leaves, 1e-5)
    dx, dr, dw, db = torch.autograd.grad((out, total), leaves, (dout, dtotal))
    want_dt, want_dw, want_db = ln.add_layer_norm_backward_naive(dout, dtotal, total.detach(), weight, 1e-5)
    for name, got, want in (("dx", dx, want_dt), ("dresidual", dr, want_dt), ("dweight", dw, want_dw),
                            ("dbias", db, want_db)):
        assert_matches(got, want, 1e-12, name)


def test_single_feature_rows():
    """N = 1: every row normalises to 0, out = bias, and dx = dtotal (the norm passes nothing back)."""
    x, residual, weight, bias, dout, dtotal = make_inputs(Case((5, 1)))
    leaves = [t.clone().requires_grad_() for t in (x, residual, weight, bias)]
    out, total = add_layer_norm(*leaves)
    dx, _, dw, db = torch.autograd.grad((out, total), leaves, (dout, dtotal))
    assert torch.equal(out, bias.expand_as(out))
    # dx = dtotal + rstd (g - mean(g)) with g - mean(g) = 0 up to the rounding of g (a fused
    # multiply-add forms it from the exact product): at most rstd · ulp(g).
    rstd = 1e-5 ** -0.5
    bound = rstd * (dout * weight).abs() * 2.0 ** -23
    assert ((dx - dtotal).abs() <= bound).all()
    assert torch.equal(dw, torch.zeros_like(dw)) and torch.allclose(db, dout.sum(0))


needs_cpu = pytest.mark.skipif("cpu" not in ln.OP.available(torch.device("cpu")),
                               reason="the C++ extension is not built here")


@needs_cpu
def test_results_do_not_depend_on_the_thread_count():
    x, residual, weight, bias, dout, dtotal = make_inputs(Case((1000, 96)), seed=3)
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            leaves = [t.clone().requires_grad_() for t in (x, residual, weight, bias)]
            out, total = add_layer_norm(*leaves, backend="cpu")
            results.append((out, total, *torch.autograd.grad((out, total), leaves, (dout, dtotal))))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@needs_cpu
@pytest.mark.parametrize("case", ["transformer", "no-residual", "no-affine"])
def test_opcheck(case):
    c = CASES[case]
    x, residual, weight, bias, dout, dtotal = make_inputs(c)
    args = [t.requires_grad_() if t is not None else None for t in (x, residual, weight, bias)]
    torch.library.opcheck(torch.ops.pyneuro.add_layer_norm_fwd.default, (*args, 1e-5))
    _out, total, shift, rstd = torch.ops.pyneuro.add_layer_norm_fwd(*[a.detach() if a is not None else None
                                                                     for a in args], 1e-5)
    saved = total if residual is not None else x.detach()
    torch.library.opcheck(torch.ops.pyneuro.add_layer_norm_bwd.default,
                          (dout, dtotal, saved, shift, rstd, weight.detach() if weight is not None else None,
                           bias is not None))


@needs_cpu
def test_opcheck_with_x_bias():
    x, residual, weight, bias, dout, dtotal = make_inputs(CASES["odd-N-3d"])
    x_bias = torch.randn(x.shape[-1])
    for res in (residual, None):
        args = [t.clone().requires_grad_() if t is not None else None for t in (x, res, weight, bias)]
        torch.library.opcheck(torch.ops.pyneuro.add_layer_norm_fwd.default,
                              (*args, 1e-5, x_bias.clone().requires_grad_()))
        _out, total, shift, rstd = torch.ops.pyneuro.add_layer_norm_fwd(x, res, weight, bias, 1e-5, x_bias)
        torch.library.opcheck(torch.ops.pyneuro.add_layer_norm_bwd.default,
                              (dout, dtotal, total, shift, rstd, weight, True, True))


@needs_cpu
def test_gradient_comes_from_the_cpp_node():
    x, residual, weight, bias, *_ = make_inputs(CASES["transformer"])
    out, total = add_layer_norm(x.requires_grad_(), residual, weight, bias, backend="cpu")
    node = out.grad_fn.name()
    assert node.startswith("torch::autograd::CppNode<") and "AddLayerNormFunction" in node, node
    with pytest.raises(RuntimeError, match="no double backward"):
        (g,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
        g.sum().backward()


@needs_cpu
def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    x, residual, weight, bias, *_ = make_inputs(CASES["odd-N-3d"])
    x_bias = torch.randn(x.shape[-1])

    def loss(x, residual, weight, bias, x_bias):
        out, total = add_layer_norm(x, residual, weight, bias, backend="cpu")
        out2, total2 = add_layer_norm(out, total, weight, bias, backend="cpu", x_bias=x_bias)
        return out2.square().sum() + (total2 * total2.detach()).sum()

    leaves = [t.clone().requires_grad_() for t in (x, residual, weight, bias, x_bias)]
    want = torch.autograd.grad(loss(*leaves), leaves)
    got = torch.autograd.grad(torch.compile(loss, backend="aot_eager", fullgraph=True)(*leaves), leaves)
    for name, g, w in zip(("dx", "dresidual", "dweight", "dbias", "dx_bias"), got, want):
        assert_matches(g, w, 1e-6, name)


def test_auto_takes_cpu_for_float32_and_the_reference_otherwise():
    x = torch.randn(4, 8)
    expected = "cpu" if "cpu" in ln.OP.available(x.device) else "reference"
    assert ln.OP.select("auto", x.device, x, None, None, None, 1e-5).name == expected
    assert ln.OP.select("auto", x.device, x.double(), None, None, None, 1e-5).name == "reference"
    out, total = add_layer_norm(x.double(), x.double())
    assert_matches(out, F.layer_norm(2 * x.double(), (8,)), 1e-12, "out")


@needs_cpu
def test_cpu_backend_refuses_other_dtypes_by_name():
    with pytest.raises(TypeError, match="float32 tensors only"):
        add_layer_norm(torch.randn(2, 4, dtype=torch.float64), backend="cpu")


@pytest.mark.parametrize("kwargs, error, fragment", [
    (dict(x=[1.0]), TypeError, "x must be a torch.Tensor"),
    (dict(x=torch.zeros(2, 3, dtype=torch.int64)), TypeError, "x must be a floating tensor"),
    (dict(x=torch.zeros(2, 0)), ValueError, "last dimension of at least 1"),
    (dict(residual=torch.zeros(2, 4)), ValueError, "residual must have x's shape"),
    (dict(residual=torch.zeros(2, 3, dtype=torch.float64)), TypeError, "residual must have x's dtype"),
    (dict(weight=torch.zeros(4)), ValueError, "weight must have"),
    (dict(bias=[0.0, 0.0, 0.0]), TypeError, "bias must be a torch.Tensor or None"),
    (dict(eps=-1.0), ValueError, "eps must be a finite number >= 0"),
    (dict(eps="small"), TypeError, "eps must be a number"),
    (dict(x_bias=torch.zeros(2)), ValueError, "x_bias must have"),
    (dict(x_bias=torch.zeros(3, dtype=torch.float64)), TypeError, "x_bias must have x's dtype"),
])
def test_bad_arguments_are_named(kwargs, error, fragment):
    args = dict(x=torch.zeros(2, 3), residual=None, weight=None, bias=None, eps=1e-5)
    args.update(kwargs)
    with pytest.raises(error, match=fragment):
        add_layer_norm(**args)


@needs_cpu
def test_the_cpp_op_names_its_arguments_too():
    op = torch.ops.pyneuro.add_layer_norm_fwd
    with pytest.raises(ValueError, match="residual must have shape"):
        op(torch.zeros(2, 3), torch.zeros(3, 2), None, None, 1e-5)
    with pytest.raises(TypeError, match="x must be Float"):
        op(torch.zeros(2, 3, dtype=torch.float64), None, None, None, 1e-5)
    with pytest.raises(ValueError, match="weight must have shape"):
        op(torch.zeros(2, 3), None, torch.zeros(2), None, 1e-5)
    with pytest.raises(ValueError, match="x_bias must have shape"):
        op(torch.zeros(2, 3), None, None, None, 1e-5, torch.zeros(2))
