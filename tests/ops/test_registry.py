"""The op registry (pyneuro/_backends.py) on a toy op: backend choice, fallback with reasons,
explicit requests, the first-use self-check with a deliberately broken backend, and explain."""
from __future__ import annotations

import warnings

import pytest
import torch

from pyneuro import _backends
from pyneuro._backends import Backend, BackendSelfCheckError, BackendUnavailableError


def _double(x):
    return x * 2


def _broken(x):
    return x * 2 + 1e-3  # off by a little: the kind of bug a GPU-only kernel could hide


def _make_op(cpu_impl=_broken, *, selfcheck=True, cpu_probe=_backends.always):
    """A toy op whose 'cpu' backend is checked against its reference at first use."""
    calls = []

    def self_check(backend, device, dtype):
        calls.append((backend, str(device), dtype))
        x = torch.linspace(-1, 1, 7, dtype=dtype)
        got, want = op.backends[backend].impl(x), op.backends["reference"].impl(x)
        err = (got - want).abs().max().item()
        return None if err == 0 else f"forward differs by {err:.1e}"

    def supports(x):
        return TypeError("toy: the cpu backend takes no float64") if x.dtype == torch.float64 else None

    op = _backends.Op("toy", {
        "reference": Backend("reference", ("cpu", "cuda"), _double),
        "cpu": Backend("cpu", ("cpu",), cpu_impl, cpu_probe, supports, selfcheck=selfcheck),
    }, self_check=self_check)
    return op, calls


@pytest.fixture(autouse=True)
def _fresh_warnings():
    _backends._WARNED.clear()
    yield
    _backends._WARNED.clear()


def test_auto_takes_the_first_backend_that_can_run():
    op, _ = _make_op(_double, selfcheck=False)
    x = torch.ones(3)
    assert op.select("auto", x.device, x).name == "cpu"
    assert op.select("auto", x.device, x.double()).name == "reference"  # cpu does not support fp64


def test_explicit_backend_raises_the_supports_error():
    op, _ = _make_op(_double, selfcheck=False)
    with pytest.raises(TypeError, match="takes no float64"):
        op.select("cpu", torch.device("cpu"), torch.ones(2, dtype=torch.float64))


def test_unavailable_backend_says_why_and_auto_skips_it():
    op, _ = _make_op(_double, cpu_probe=lambda device: "not built here (rebuild)")
    x = torch.ones(2)
    assert op.select("auto", x.device, x).name == "reference"
    with pytest.raises(BackendUnavailableError, match=r"toy: backend 'cpu' is unavailable: not built here"):
        op.select("cpu", x.device, x)
    assert op.status("cpu", x.device) == "not built here (rebuild)"
    assert "does not run on cuda tensors" in op.status("cpu", torch.device("cuda"))


def test_self_check_failure_falls_back_once_with_a_warning():
    op, calls = _make_op(_broken)
    x = torch.arange(4.0)
    with pytest.warns(RuntimeWarning, match=r"backend 'cpu' failed its first-use self-check on cpu float32: "
                                            r"forward differs by 1\.0e-03.*falling back"):
        assert torch.equal(op("auto", x.device, x), x * 2)  # the reference's answer
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning, not one per call
        assert op.select("auto", x.device, x).name == "reference"
    assert calls == [("cpu", "cpu", torch.float32)]  # checked once per (backend, device, dtype)
    with pytest.warns(RuntimeWarning, match="on cpu float16"):  # another dtype: checked (and warned) anew
        op.select("auto", x.device, x.half())
    assert calls[-1] == ("cpu", "cpu", torch.float16)


def test_self_check_failure_raises_when_the_backend_is_named():
    op, _ = _make_op(_broken)
    with pytest.raises(BackendSelfCheckError, match="PYNEURO_SELFCHECK=0 turns the check off"):
        op("cpu", torch.device("cpu"), torch.ones(2))


def test_a_correct_backend_passes_and_runs():
    op, calls = _make_op(_double)
    x = torch.ones(5)
    assert op.select("auto", x.device, x).name == "cpu"
    assert calls == [("cpu", "cpu", torch.float32)]


def test_a_crashing_self_check_counts_as_a_failure():
    def crash(x):
        raise RuntimeError("illegal memory access")

    op, _ = _make_op(crash)
    with pytest.raises(BackendSelfCheckError, match="RuntimeError: illegal memory access"):
        op.select("cpu", torch.device("cpu"), torch.ones(2))


def test_selfcheck_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("PYNEURO_SELFCHECK", "0")
    op, calls = _make_op(_broken)
    assert op.select("cpu", torch.device("cpu"), torch.ones(2)).name == "cpu"
    assert calls == []


def test_env_variable_is_read_for_auto_only(monkeypatch):
    op, _ = _make_op(_double, selfcheck=False)
    x = torch.ones(2)
    monkeypatch.setenv("PYNEURO_BACKEND", "reference")
    assert op.select("auto", x.device, x).name == "reference"
    assert op.select("cpu", x.device, x).name == "cpu"


def test_explain_lists_every_backend_with_its_reason():
    op, _ = _make_op(_double, selfcheck=False)
    rows = dict(op.explain(torch.device("cpu"), torch.ones(2, dtype=torch.float64)))
    assert rows == {"cpu": "toy: the cpu backend takes no float64", "reference": "chosen"}
    rows = dict(op.explain(torch.device("cpu"), torch.ones(2)))
    assert rows == {"cpu": "chosen", "reference": "available (lower in the auto order)"}


def test_unknown_backend_names_are_refused():
    with pytest.raises(ValueError, match="unknown backend names"):
        _backends.Op("bad", {"fast": Backend("fast", ("cpu",), _double)})


def test_a_pair_without_a_derivative_is_refused():
    """register_kernel_pair without a Python backward is for ops whose derivative the extension
    registers in C++; for an op that has none it raises instead of leaving it non-differentiable."""
    lib = torch.library.Library("pyneuro_registry_test", "FRAGMENT")  # noqa: TOR901
    lib.define("plain_fwd(Tensor x) -> Tensor")
    lib.define("plain_bwd(Tensor dy) -> Tensor")
    with pytest.raises(RuntimeError, match="has no derivative"):
        _backends.register_kernel_pair("plain", "pyneuro_registry_test::plain_fwd", "pyneuro_registry_test::plain_bwd",
                                       fake_fwd=None, fake_bwd=None)
    for op in ("attention_packed_fwd", "add_layer_norm_fwd", "bias_gelu_fwd"):  # the pairs that rely on it have theirs
        if _backends.extension()[0] is not None:
            assert _backends._has_autograd_kernel(f"pyneuro::{op}")


def test_auto_choice_is_cached_per_device_but_reads_the_backends_per_call(monkeypatch):
    """The auto order's machine-available backends are worked out once per device type; which
    Backend object runs, and whether it supports the arguments, is still read at every call."""
    op, _ = _make_op(_double, selfcheck=False)
    x = torch.ones(2)
    assert op.select("auto", x.device, x).impl is _double
    replacement = Backend("cpu", ("cpu",), _broken,
                          supports=lambda x: TypeError("no fp64") if x.dtype == torch.float64 else None)
    monkeypatch.setitem(op.backends, "cpu", replacement)
    assert op.select("auto", x.device, x) is replacement
    assert op.select("auto", x.device, x.double()).name == "reference"  # supports() asked per call
    monkeypatch.setenv("PYNEURO_BACKEND", "reference")
    assert op.select("auto", x.device, x).name == "reference"  # and the environment too


def test_runs_says_whether_a_backend_takes_the_call_without_raising():
    op, _ = _make_op(_double)
    x = torch.ones(3)
    assert op.runs("cpu", x.device, x)
    assert not op.runs("cpu", x.device, x.double())  # refused by its supports (a TypeError from select)
    assert not op.runs("cuda", x.device, x)  # no such backend
    broken, _ = _make_op(_broken)
    with pytest.warns(RuntimeWarning, match="self-check"):
        broken.select("auto", x.device, x)
    assert not broken.runs("cpu", x.device, x)  # failed its self-check


def test_a_failed_self_check_still_counts_while_compiling(monkeypatch):
    """torch.compile traces the backend choice without running the check; a failure an eager call
    has already found must still keep the backend out."""
    op, calls = _make_op(_broken)
    x = torch.ones(2)
    with pytest.warns(RuntimeWarning, match="falling back"):
        assert op.select("auto", x.device, x).name == "reference"
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert op.select("auto", x.device, x).name == "reference"
    with pytest.raises(BackendSelfCheckError):
        op.select("cpu", x.device, x)
    # not yet checked (another dtype): no check while tracing, the backend is taken
    assert op.select("auto", x.device, x.half()).name == "cpu"
    assert calls == [("cpu", "cpu", torch.float32)]


def _gradient_checking_op():
    """A toy op whose self-check compares gradients and a matmul, as the real checks do."""
    def self_check(backend, device, dtype):
        w = torch.linspace(-1, 1, 12, dtype=dtype).reshape(3, 4).requires_grad_()
        m = torch.linspace(0.1, 1.3, 16, dtype=dtype).reshape(4, 4) / 3
        out = op.backends[backend].impl(w @ m)
        (grad,) = torch.autograd.grad(out.sum(), w)
        if out.dtype != dtype:
            return f"the output came out {out.dtype}"
        return None if torch.equal(grad, 2 * m.sum(1).expand(3, 4)) else "gradient differs"

    op = _backends.Op("toy_grad", {
        "reference": Backend("reference", ("cpu", "cuda"), _double),
        "cpu": Backend("cpu", ("cpu",), _double, _backends.always, lambda x: None, selfcheck=True),
    }, self_check=self_check)
    return op


@pytest.mark.parametrize("mode", ["inference_mode", "no_grad", "autocast"])
def test_the_self_check_runs_in_plain_autograd_whatever_the_first_call_runs_under(mode):
    """A correct backend whose first call comes under inference_mode, no_grad or autocast passes its
    check (and is not written off for the process)."""
    op = _gradient_checking_op()
    x = torch.ones(2)
    context = {"inference_mode": torch.inference_mode(), "no_grad": torch.no_grad(),
               "autocast": torch.autocast("cpu", dtype=torch.bfloat16)}[mode]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with context:
            assert op.select("auto", x.device, x).name == "cpu"
