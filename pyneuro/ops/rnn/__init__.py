"""One recurrent layer, one direction, over a whole sequence: lstm_sequence, gru_sequence,
rnn_sequence and leaky_sequence (the leaky-integrator cell of MTRNN and PV-RNN).

Shapes and gate orders are torch.nn.LSTM/GRU/RNN's (see naive.py), time-major. Stacking layers,
bidirectionality, batch_first and dropout belong to :mod:`pyneuro.nn.rnn`, which calls these once
per layer and direction; a fused kernel therefore only has to implement the single-direction cell
loop.

Backends (declared once per op below; pyneuro/_backends.py chooses among them):

* ``reference``: naive.py, differentiated by PyTorch autograd; the only one taking fp64.
* ``cpu``: torch.ops.pyneuro.<cell>_fwd/_bwd from pyneuro._C (csrc/cpu/rnn.cpp): the input
  projection of all steps as one GEMM, per step the recurrent GEMM and one fused pointwise update,
  the weight gradients as single GEMMs after the reverse loop.
* ``cuda``: the same ops' CUDA kernels (csrc/cuda/rnn*.cu), when the extension was built with CUDA.
* ``triton``: pyneuro.kernels.rnn wrapped as the custom ops pyneuro::<cell>_fwd_triton/_bwd_triton.

The compiled backends implement the forward/backward pairs of docs/rnn_contract.md: the forward
also returns a fp32 ``reserve`` (the gates and states the backward needs) and one autograd wiring
serves them all. naive.py holds the same pairs in PyTorch (``*_fwd_contract``/``*_bwd_contract``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from ... import _backends
from ..._backends import Backend
from . import naive
from .naive import gru_sequence_naive, leaky_sequence_naive, lstm_sequence_naive, rnn_sequence_naive

_TRITON_MODULE = "pyneuro.kernels.rnn"
_COMPILED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_NONLINEARITIES = ("tanh", "relu")


def _require_float_tensor(op: str, name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOATS:
        raise TypeError(f"{op}: {name} must be a floating tensor, got {t.dtype}")


def _check(op: str, gates: int, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr=None) -> tuple[int, int]:
    """Validate one layer's arguments; returns (hidden_size, output_size).

    hidden_size comes from w_ih's rows (gates * hidden_size); output_size is hidden_size, or
    w_hr's rows when an LSTM projects its hidden state.
    """
    _require_float_tensor(op, "x", x)
    if x.dim() != 3:
        raise ValueError(f"{op}: x must be 3-D (seq_len, batch, input_size), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{op}: x must hold at least one time step, got seq_len 0")
    _require_float_tensor(op, "w_ih", w_ih)
    _require_float_tensor(op, "w_hh", w_hh)  # required; the loop below skips the optional ones
    if w_ih.dim() != 2 or w_ih.shape[0] == 0 or w_ih.shape[0] % gates:
        raise ValueError(
            f"{op}: w_ih must be 2-D ({gates}*hidden_size, input_size), got shape {tuple(w_ih.shape)}")
    hidden = w_ih.shape[0] // gates
    out_size = hidden
    if w_hr is not None:
        _require_float_tensor(op, "w_hr", w_hr)
        if w_hr.dim() != 2:
            raise ValueError(f"{op}: w_hr must be 2-D (proj_size, hidden_size), got shape {tuple(w_hr.shape)}")
        out_size = w_hr.shape[0]
    seq_len, batch, input_size = x.shape
    g = f"{gates}*hidden_size" if gates > 1 else "hidden_size"
    state = "proj_size" if w_hr is not None else "hidden_size"
    expected = (
        ("w_ih", w_ih, (gates * hidden, input_size), f"({g}, input_size)"),
        ("w_hh", w_hh, (gates * hidden, out_size), f"({g}, {state})"),
        ("b_ih", b_ih, (gates * hidden,), f"({g},)"),
        ("b_hh", b_hh, (gates * hidden,), f"({g},)"),
        ("w_hr", w_hr, (out_size, hidden), "(proj_size, hidden_size)"),
        ("h0", h0, (batch, out_size), f"(batch, {state})"),
        ("c0", c0, (batch, hidden), "(batch, hidden_size)"),
    )
    _check_like_x(op, x, expected)
    return hidden, out_size


def _check_like_x(op: str, x, expected) -> None:
    """Each (name, tensor or None, shape, described) present: a float tensor of that shape with
    x's dtype and device."""
    for name, t, shape, described in expected:
        if t is None:
            continue
        _require_float_tensor(op, name, t)
        if tuple(t.shape) != shape:
            raise ValueError(f"{op}: {name} must have shape {described} = {shape}, got {tuple(t.shape)}")
        if t.dtype != x.dtype:
            raise TypeError(f"{op}: {name} must have x's dtype {x.dtype}, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{op}: {name} must be on x's device {x.device}, got {t.device}")

# ----------------------------------------------------------------------------------------------
# The compiled pairs: schemas, fake shapes and one autograd wiring for every backend
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Cell:
    """One cell's compiled pair (docs/rnn_contract.md).

    The forward takes ``n_tensors`` tensor arguments then the ``flags`` (non-tensor arguments),
    and returns its outputs followed by the reserve; the backward takes the gradients of those
    outputs, the forward's tensor arguments, the reserve, then the flags."""
    name: str
    fwd_schema: str
    bwd_schema: str
    n_tensors: int
    fake_outputs: Callable  # (tensor args) -> [(shape, dtype)] of the forward's outputs, reserve last

    @property
    def n_flags(self) -> int:
        """The forward's non-tensor arguments (the Elman cell's ``relu``)."""
        return self.fwd_schema.count("bool ")

    @property
    def n_outputs(self) -> int:
        """The differentiable outputs (all but the reserve): y and the final state(s)."""
        return 3 if self.name == "lstm" else 2


def _lstm_fake(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr):
    T, B, _ = x.shape
    H, R = c0.shape[1], h0.shape[1]
    return [((T, B, R), x.dtype), ((B, R), x.dtype), ((B, H), x.dtype), ((T, B, 5 * H + R), torch.float32)]


def _gru_fake(x, h0, w_ih, w_hh, b_ih, b_hh):
    T, B, _ = x.shape
    H = h0.shape[1]
    return [((T, B, H), x.dtype), ((B, H), x.dtype), ((T, B, 5 * H), torch.float32)]


def _single_state_fake(x, h0, *_weights):
    T, B, _ = x.shape
    H = h0.shape[1]
    return [((T, B, H), x.dtype), ((B, H), x.dtype), ((T, B, H), torch.float32)]


CELLS = {
    "lstm": _Cell(
        "lstm",
        "(Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr) "
        "-> (Tensor y, Tensor h_n, Tensor c_n, Tensor reserve)",
        "(Tensor dy, Tensor? dh_n, Tensor? dc_n, Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, "
        "Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, Tensor reserve) -> (Tensor dx, Tensor dh0, Tensor dc0, "
        "Tensor dw_ih, Tensor dw_hh, Tensor db_ih, Tensor db_hh, Tensor dw_hr)",
        8, _lstm_fake),
    "gru": _Cell(
        "gru",
        "(Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh) "
        "-> (Tensor y, Tensor h_n, Tensor reserve)",
        "(Tensor dy, Tensor? dh_n, Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
        "Tensor reserve) -> (Tensor dx, Tensor dh0, Tensor dw_ih, Tensor dw_hh, Tensor db_ih, Tensor db_hh)",
        6, _gru_fake),
    "rnn": _Cell(
        "rnn",
        "(Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, bool relu) "
        "-> (Tensor y, Tensor h_n, Tensor reserve)",
        "(Tensor dy, Tensor? dh_n, Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
        "Tensor reserve, bool relu) -> (Tensor dx, Tensor dh0, Tensor dw_ih, Tensor dw_hh, Tensor db_ih, "
        "Tensor db_hh)",
        6, _single_state_fake),
    "leaky": _Cell(
        "leaky",
        "(Tensor x, Tensor u0, Tensor w_ih, Tensor w_hh, Tensor? bias, Tensor tau) "
        "-> (Tensor h, Tensor u_n, Tensor reserve)",
        "(Tensor dh, Tensor? du_n, Tensor x, Tensor u0, Tensor w_ih, Tensor w_hh, Tensor? bias, Tensor tau, "
        "Tensor reserve) -> (Tensor dx, Tensor du0, Tensor dw_ih, Tensor dw_hh, Tensor dbias, Tensor dtau)",
        6, _single_state_fake),
}


def _fake_fwd_for(cell: _Cell):
    def fake(*args):
        return tuple(args[0].new_empty(shape, dtype=dtype) for shape, dtype in cell.fake_outputs(*args[:cell.n_tensors]))

    return fake


def _fake_bwd_for(cell: _Cell, takes_input_grad: bool = False):
    """The backward's output shapes: each tensor input's, an absent one's (0,); with
    ``takes_input_grad`` (the C++ ops' trailing ``input_grad`` flag) dx (0,) when it is False."""
    def fake(*args):
        x = args[cell.n_outputs]  # after the gradients of the differentiable outputs
        inputs = list(args[cell.n_outputs:cell.n_outputs + cell.n_tensors])
        if takes_input_grad and len(args) > cell.n_outputs + cell.n_tensors + 1 + cell.n_flags \
                and not args[-1]:
            inputs[0] = None
        return tuple(t.new_empty(t.shape) if t is not None else x.new_empty((0,)) for t in inputs)

    return fake


def _setup_context_for(cell: _Cell):
    def setup_context(ctx, inputs, output):
        tensors, flags = inputs[:cell.n_tensors], inputs[cell.n_tensors:]
        ctx.save_for_backward(*tensors, output[-1])
        ctx.flags = tuple(flags)
        ctx.y_shape = output[0].shape
        ctx.mark_non_differentiable(output[-1])
        # Outputs without a gradient arrive as None, not as zeros: autograd would otherwise fill one
        # for the internal output at every backward (11 MiB of reserve for an LSTM at T=28, B=128, H=128).
        ctx.set_materialize_grads(False)

    return setup_context


def _backward_for(cell: _Cell, bwd_op, takes_input_grad: bool = False):
    """Gradients into every tensor input from y and from the final states; the reserve is
    internal and not differentiable. With ``takes_input_grad`` (the C++ ops) the backward is told
    whether x needs its gradient, and skips the dx GEMM when not (a first layer's input)."""

    def backward(ctx, *grads):
        *saved, reserve = ctx.saved_tensors
        x = saved[0]
        dy, *dstates = grads[:-1]
        dy = x.new_zeros(ctx.y_shape) if dy is None else dy.to(x.dtype).contiguous()
        dstates = [None if d is None else d.to(x.dtype).contiguous() for d in dstates]
        need_dx = ctx.needs_input_grad[0]
        extra = (need_dx,) if takes_input_grad else ()
        result = bwd_op(dy, *dstates, *saved, reserve, *ctx.flags, *extra)
        wanted = (need_dx, *(True for _ in saved[1:]))
        return (*(g if t is not None and want else None for g, t, want in zip(result, saved, wanted)),
                *(None for _ in ctx.flags))

    return backward


def _register_pair(cell: _Cell, fwd, bwd, bwd_callable, takes_input_grad: bool = False) -> None:
    _backends.register_kernel_pair(cell.name, fwd, bwd, fake_fwd=_fake_fwd_for(cell),
                                   fake_bwd=_fake_bwd_for(cell, takes_input_grad),
                                   setup_context=_setup_context_for(cell),
                                   backward=_backward_for(cell, bwd_callable, takes_input_grad))


def _has_compiled(name: str) -> bool:
    return _backends.extension()[0] is not None and hasattr(torch.ops.pyneuro, name)


_TRITON_FWD: dict[str, object] = {}
for _cell in CELLS.values():
    # The C++ ops (cpu and, when built, cuda) exist once pyneuro._C is loaded.
    if _has_compiled(f"{_cell.name}_fwd"):
        # The C++ backwards take a trailing `input_grad` flag (csrc/ops.cpp); Triton's do not.
        _register_pair(_cell, f"pyneuro::{_cell.name}_fwd", f"pyneuro::{_cell.name}_bwd",
                       getattr(torch.ops.pyneuro, f"{_cell.name}_bwd").default, takes_input_grad=True)
    _fwd = _backends.triton_custom_op(f"pyneuro::{_cell.name}_fwd_triton", _cell.fwd_schema, _TRITON_MODULE,
                                      f"{_cell.name}_fwd")
    _bwd = _backends.triton_custom_op(f"pyneuro::{_cell.name}_bwd_triton", _cell.bwd_schema, _TRITON_MODULE,
                                      f"{_cell.name}_bwd")
    _register_pair(_cell, _fwd, _bwd, _bwd)
    _TRITON_FWD[_cell.name] = _fwd


# Normwise tolerances (max |actual - expected| / max |expected|, per output and per gradient)
# against the fp64 oracle on the same inputs. One table for the conformance suite
# (tests/ops/rnn/) and the first-use self-check.
#   fp32: the same math in another order (blocked GEMMs, polynomial sigmoid/tanh of ~2 ulp),
#         amplified over T steps by the recurrence: observed ~1e-6 at T = 28.
#   bf16 / fp16: the CPU computes in fp32 and rounds inputs and outputs once (2^-8 / 2^-11
#         relative); GPU kernels also round h to the input dtype for the recurrent GEMM each step.
TOLERANCE = {
    "reference": {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3},
    "cpu": {torch.float32: 2e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3},
    "triton": {torch.float32: 5e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3},
    "cuda": {torch.float32: 5e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3},
}


# ----------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------
def _contract_call(cell: _Cell, backend: str):
    """The backend's forward op on the validated arguments; returns the outputs without the reserve."""

    def call(*args):
        x = args[0]
        if x.shape[1] == 0 or x.shape[2] == 0:
            # An empty batch or zero inputs: the kernels' launch shapes degenerate (and their
            # argument checks refuse them); the result is empty or bias-only, as the reference gives.
            return _REFERENCES[cell.name](*args)
        fwd = _TRITON_FWD[cell.name] if backend == "triton" else getattr(torch.ops.pyneuro, f"{cell.name}_fwd").default
        prepared = [a.contiguous() if isinstance(a, Tensor) else a for a in args]
        return tuple(fwd(*prepared)[:-1])

    return call


def _compiled_supports(cell: _Cell, backend: str):
    # Every compiled backend takes any validated size (the Triton kernels switch from their
    # persistent form to one launch per step above kernels/rnn.py's PERSISTENT_MAX_H; the CUDA ones
    # from the persistent kernel to the per-step cell above csrc/common/limits.h's bound), so only
    # the dtype can rule one out.
    def supports(x, *_rest) -> Optional[Exception]:
        if x.dtype not in _COMPILED_DTYPES:
            return TypeError(f"{cell.name}: the {backend!r} backend takes float32, float16 or bfloat16, got "
                             f"{x.dtype} ({x.dtype} runs on backend='reference')")
        return None

    return supports


def _self_check_for(cell: _Cell):
    def self_check(backend: str, device: torch.device, dtype: torch.dtype) -> Optional[str]:
        """Compare ``backend`` with the reference on a tiny problem, forward and backward."""
        with torch.enable_grad():  # the first call may come under torch.no_grad()
            return _compare(backend, device, dtype)

    def _compare(backend: str, device: torch.device, dtype: torch.dtype) -> Optional[str]:
        dtype = dtype if dtype in _COMPILED_DTYPES else torch.float32
        args = example_arguments(cell.name, T=5, B=3, I=7, H=12, dtype=dtype, device=device, random=True)
        results = []
        for b in (backend, "reference"):
            outs = OPS[cell.name].backends[b].impl(*args)
            tensors = [a for a in args if isinstance(a, Tensor)]
            loss = sum((o.double() * torch.linspace(-1, 1, o.numel(), device=device, dtype=torch.float64)
                        .view_as(o)).sum() for o in outs)
            results.append([*outs, *torch.autograd.grad(loss, tensors)])
        tol = TOLERANCE[backend][dtype]
        for k, (got, want) in enumerate(zip(*results)):
            got, want = got.detach().double(), want.detach().double()
            err = ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()
            if not err <= tol:  # also catches NaN
                return f"result {k} differs from the reference by {err:.2e} (normwise; tolerance {tol:.0e})"
        return None

    return self_check


def example_arguments(cell: str, T: int = 28, B: int = 128, I: int = 28, H: int = 128, P: int = 0,
                      dtype=torch.float32, device="meta", random: bool = False) -> tuple:
    """Validated-form arguments of ``cell`` ("lstm", "gru", "rnn", "leaky") at these sizes: shape
    only on the meta device (``pyneuro explain``), or random leaves requiring grad."""
    gen = torch.Generator().manual_seed(1234)

    def t(*shape, scale=1.0):
        if not random:
            return torch.empty(*shape, dtype=dtype, device=device)
        value = torch.randn(*shape, generator=gen) * scale
        return value.to(device=device, dtype=dtype).requires_grad_()

    G = {"lstm": 4, "gru": 3}.get(cell, 1)
    R = P or H
    w = 1.0 / H ** 0.5
    common = (t(G * H, I, scale=w), t(G * H, R if cell == "lstm" else H, scale=w))
    if cell == "lstm":
        return (t(T, B, I), t(B, R), t(B, H), *common, t(G * H, scale=w), t(G * H, scale=w),
                t(P, H, scale=w) if P else None)
    if cell == "leaky":
        tau = torch.linspace(1.0, 8.0, H).to(device=device, dtype=dtype)
        return (t(T, B, I), t(B, H), *common, t(H, scale=w), tau.requires_grad_() if random else tau)
    args = (t(T, B, I), t(B, H), *common, t(G * H, scale=w), t(G * H, scale=w))
    return (*args, False) if cell == "rnn" else args


def _reference_rnn(x, h0, w_ih, w_hh, b_ih, b_hh, relu):
    return rnn_sequence_naive(x, h0, w_ih, w_hh, b_ih, b_hh, "relu" if relu else "tanh")


_REFERENCES = {"lstm": lstm_sequence_naive, "gru": gru_sequence_naive, "rnn": _reference_rnn,
               "leaky": leaky_sequence_naive}

OPS: dict[str, _backends.Op] = {}
for _cell in CELLS.values():
    OPS[_cell.name] = _backends.register_op(
        _cell.name,
        {
            "reference": Backend("reference", ("cpu", "cuda"), _REFERENCES[_cell.name]),
            "cpu": Backend("cpu", ("cpu",), _contract_call(_cell, "cpu"), _backends.compiled_probe(f"{_cell.name}_fwd"),
                           _compiled_supports(_cell, "cpu")),
            "triton": Backend("triton", ("cuda", "cpu"), _contract_call(_cell, "triton"),
                              _backends.triton_probe(_TRITON_MODULE), _compiled_supports(_cell, "triton"),
                              selfcheck=True),
            "cuda": Backend("cuda", ("cuda",), _contract_call(_cell, "cuda"),
                            _backends.compiled_probe(f"{_cell.name}_fwd"), _compiled_supports(_cell, "cuda"),
                            selfcheck=True),
        },
        self_check=_self_check_for(_cell),
        example=lambda dtype=torch.float32, device="meta", _name=_cell.name, **sizes: example_arguments(
            _name, dtype=dtype, device=device, **sizes),
    )
LSTM_OP, GRU_OP, RNN_OP, LEAKY_OP = (OPS[name] for name in ("lstm", "gru", "rnn", "leaky"))


def lstm_sequence(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, backend: str = "auto"):
    """One LSTM layer over x (T, B, I) -> (y (T, B, H_out), h_n (B, H_out), c_n (B, H)).

    Weights as torch.nn.LSTM's ``weight_ih_l0`` etc. (gates i, f, g, o). ``h0``/``c0`` of None
    start from zeros. ``w_hr`` (P, H) projects the hidden state (torch's proj_size); then
    H_out = P, else H_out = H.
    """
    hidden, out_size = _check("lstm_sequence", 4, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    h0 = x.new_zeros(x.shape[1], out_size) if h0 is None else h0
    c0 = x.new_zeros(x.shape[1], hidden) if c0 is None else c0
    return LSTM_OP(backend, x.device, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)


def gru_sequence(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, backend: str = "auto"):
    """One GRU layer over x (T, B, I) -> (y (T, B, H), h_n (B, H)); torch.nn.GRU's gates (r, z, n).

    ``h0`` of None starts from zeros.
    """
    hidden, _ = _check("gru_sequence", 3, x, h0, None, w_ih, w_hh, b_ih, b_hh)
    h0 = x.new_zeros(x.shape[1], hidden) if h0 is None else h0
    return GRU_OP(backend, x.device, x, h0, w_ih, w_hh, b_ih, b_hh)


def rnn_sequence(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity: str = "tanh", backend: str = "auto"):
    """One Elman RNN layer over x (T, B, I) -> (y (T, B, H), h_n (B, H)); nonlinearity "tanh" or "relu".

    ``h0`` of None starts from zeros.
    """
    if nonlinearity not in _NONLINEARITIES:
        raise ValueError(f"rnn_sequence: nonlinearity must be one of {_NONLINEARITIES}, got {nonlinearity!r}")
    hidden, _ = _check("rnn_sequence", 1, x, h0, None, w_ih, w_hh, b_ih, b_hh)
    h0 = x.new_zeros(x.shape[1], hidden) if h0 is None else h0
    return RNN_OP(backend, x.device, x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity == "relu")


def _check_leaky(x, u0, w_ih, w_hh, bias, tau) -> int:
    op = "leaky_sequence"
    _require_float_tensor(op, "x", x)
    if x.dim() != 3:
        raise ValueError(f"{op}: x must be 3-D (seq_len, batch, input_size), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{op}: x must hold at least one time step, got seq_len 0")
    _require_float_tensor(op, "w_ih", w_ih)
    if w_ih.dim() != 2 or w_ih.shape[0] == 0:
        raise ValueError(f"{op}: w_ih must be 2-D (hidden_size, input_size), got shape {tuple(w_ih.shape)}")
    hidden = w_ih.shape[0]
    seq_len, batch, input_size = x.shape
    expected = (("w_ih", w_ih, (hidden, input_size), "(hidden_size, input_size)"),
                ("w_hh", w_hh, (hidden, hidden), "(hidden_size, hidden_size)"),
                ("bias", bias, (hidden,), "(hidden_size,)"),
                ("tau", tau, (hidden,), "(hidden_size,)"),
                ("u0", u0, (batch, hidden), "(batch, hidden_size)"))
    for name, t in (("w_hh", w_hh), ("tau", tau)):
        if t is None:
            raise TypeError(f"{op}: {name} is required, got None")
    _check_like_x(op, x, expected)
    return hidden


def leaky_sequence(x, u0, w_ih, w_hh, bias, tau, backend: str = "auto"):
    """The leaky-integrator (continuous-time) RNN over x (T, B, I) -> (h (T, B, H), u_T (B, H)).

        u_t = (1 - 1/τ) ⊙ u_{t-1} + (1/τ) ⊙ (W_ih x_t + W_hh tanh(u_{t-1}) + bias),  h_t = tanh(u_t)

    ``u0`` (B, H) is the initial internal state (None: zeros), ``w_ih`` (H, I), ``w_hh`` (H, H),
    ``bias`` (H,) or None, ``tau`` (H,) the per-unit time constants, τ ≥ 1 (fixed, or a learned
    tensor: it gets its gradient). τ is not range-checked here, since that would synchronise a GPU
    at every call; keep it ≥ 1 by construction (e.g. 1 + softplus(θ)). Gradients flow into every
    tensor argument, also from u_T.
    """
    hidden = _check_leaky(x, u0, w_ih, w_hh, bias, tau)
    u0 = x.new_zeros(x.shape[1], hidden) if u0 is None else u0
    return LEAKY_OP(backend, x.device, x, u0, w_ih, w_hh, bias, tau)


__all__ = [
    "lstm_sequence", "gru_sequence", "rnn_sequence", "leaky_sequence",
    "lstm_sequence_naive", "gru_sequence_naive", "rnn_sequence_naive", "leaky_sequence_naive",
    "CELLS", "OPS", "TOLERANCE", "example_arguments",
]
