"""selective_scan: Mamba's selective scan, with mamba_ssm's ``selective_scan_fn`` semantics.

    selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, initial_state=None, backend="auto")

Backends (declared once in ``OP`` below; pyneuro/_backends.py chooses among them):

* ``reference``: naive.py, differentiated by PyTorch autograd. Any N; the only one taking fp64.
* ``cpu``: torch.ops.pyneuro.selective_scan_fwd/_bwd from pyneuro._C (csrc/cpu/selective_scan.cpp).
* ``cuda``: the same two ops, CUDA kernels (csrc/cuda/), when the extension was built with CUDA.
* ``triton``: pyneuro.kernels.selective_scan, wrapped as the custom ops
  pyneuro::selective_scan_fwd_triton/_bwd_triton; the kernels are imported on first use.

The compiled backends implement the forward/backward pair of docs/selective_scan_contract.md and
share one autograd wiring: the forward saves its inputs plus the chunk-boundary states, the
backward recomputes inside each chunk. This module holds what is specific to the op: validation
(``_check``), the fake shapes, the autograd formula, the per-backend limits and tolerances, and the
public function.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ... import _backends
from ..._backends import Backend
from .naive import selective_scan_naive

_INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_TRITON_MODULE = "pyneuro.kernels.selective_scan"


# ----------------------------------------------------------------------------------------------
# Limits, published by the kernels themselves: build_info()["limits"] for the C++/CUDA ones, the
# kernel module's constants for Triton. Read once into plain values, so that backend choice under
# torch.compile touches nothing but dicts.
# ----------------------------------------------------------------------------------------------
def _compiled_limits() -> dict[str, dict[str, int]]:
    published = _backends.limits("selective_scan")
    return {b: {"max_n": published["max_n"][b], "chunk_size": published["chunk_size"][b]}
            for b in ("cpu", "cuda") if b in published.get("max_n", {})}


LIMITS: dict[str, dict[str, int]] = _compiled_limits()


def _triton_kernels():
    import importlib

    return importlib.import_module(_TRITON_MODULE)


def _triton_limits() -> dict[str, int]:
    if "triton" not in LIMITS:
        LIMITS["triton"] = {"max_n": _triton_kernels().MAX_N, "max_batch": _triton_kernels().MAX_BATCH}
    return LIMITS["triton"]


_TRITON_CHUNK: dict[int, int] = {}  # N -> chunk size: the Triton tiles shrink the chunk for large N


def chunk_size_for(backend: str, N: int) -> int:
    """The chunk_size (time steps between stored states) the public function uses on a backend."""
    if backend != "triton":
        return LIMITS[backend]["chunk_size"]
    if N not in _TRITON_CHUNK:
        _TRITON_CHUNK[N] = _triton_kernels().default_chunk_size(N)
    return _TRITON_CHUNK[N]


def max_n(backend: str) -> Optional[int]:
    """The largest state size N a backend takes (None: no limit)."""
    if backend == "reference":
        return None
    return (_triton_limits() if backend == "triton" else LIMITS[backend])["max_n"]


# Normwise tolerances (max |actual - expected| / max |expected|, per output and per gradient)
# against the fp64 oracle, on the very inputs the backend saw. One table for the conformance
# suite (tests/ops/selective_scan/) and the first-use self-check.
#   fp32: the C++ kernels use ~2-ulp polynomial exp/log with fp32 state: observed below 1e-6.
#         CUDA uses ex2.approx (2 ulp, flushes denormals); its error is allowed 4x that.
#   bf16 / fp16: outputs and input gradients are rounded to the input dtype (relative 2^-8 and
#         2^-11); the bound is two such roundings.
TOLERANCE = {
    "reference": {torch.float32: 1e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3},
    "cpu": {torch.float32: 5e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3},
    "triton": {torch.float32: 5e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3},
    "cuda": {torch.float32: 2e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3},
}


# ----------------------------------------------------------------------------------------------
# The contract ops: fake shapes and autograd, one wiring for every compiled backend
# ----------------------------------------------------------------------------------------------
_FWD_SCHEMA = ("(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, "
               "Tensor? initial_state, bool delta_softplus, int chunk_size) "
               "-> (Tensor out, Tensor last_state, Tensor chunk_states)")
_BWD_SCHEMA = ("(Tensor dout, Tensor? dlast_state, Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, "
               "Tensor? D, Tensor? z, Tensor? delta_bias, Tensor? initial_state, Tensor chunk_states, "
               "bool delta_softplus, int chunk_size) -> (Tensor du, Tensor ddelta, Tensor dA, Tensor dB, "
               "Tensor dC, Tensor dD, Tensor dz, Tensor ddelta_bias, Tensor dinitial_state)")


def _fake_fwd(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, chunk_size):
    batch, dim, L = u.shape
    N = A.shape[1]
    n_chunks = (L + chunk_size - 1) // chunk_size
    f32 = dict(device=u.device, dtype=torch.float32)
    return u.new_empty(u.shape), u.new_empty((batch, dim, N), **f32), u.new_empty((batch, dim, n_chunks, N), **f32)


def _fake_bwd(dout, dlast_state, u, delta, A, B, C, D, z, delta_bias, initial_state, chunk_states,
              delta_softplus, chunk_size):
    def like(t):
        return t.new_empty(t.shape) if t is not None else u.new_empty((0,), dtype=torch.float32)

    return (like(u), like(delta), like(A), like(B), like(C), like(D), like(z), like(delta_bias),
            like(initial_state))


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, chunk_size = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, output[2])
    ctx.delta_softplus, ctx.chunk_size = delta_softplus, chunk_size
    ctx.mark_non_differentiable(output[2])
    # Outputs without a gradient arrive as None, not as zeros: autograd would otherwise fill one
    # for the internal output at every backward (11 MiB of reserve for an LSTM at T=28, B=128, H=128).
    ctx.set_materialize_grads(False)


def _backward_with(bwd_op):
    """Gradients into every tensor input, from ``out`` and from ``last_state``; chunk_states is
    internal and not differentiable."""

    def backward(ctx, dout, dlast_state, _dchunk_states):
        u, delta, A, B, C, D, z, delta_bias, initial_state, chunk_states = ctx.saved_tensors
        dout = torch.zeros_like(u) if dout is None else dout.to(u.dtype).contiguous()
        if dlast_state is not None:
            dlast_state = dlast_state.to(torch.float32).contiguous()
        du, ddelta, dA, dB, dC, dD, dz, dbias, dx0 = bwd_op(
            dout, dlast_state, u, delta, A, B, C, D, z, delta_bias, initial_state, chunk_states,
            ctx.delta_softplus, ctx.chunk_size)
        present = lambda grad, t: grad if t is not None else None  # noqa: E731
        return (du, ddelta, dA, dB, dC, present(dD, D), present(dz, z), present(dbias, delta_bias),
                present(dx0, initial_state), None, None)

    return backward


def _register(fwd, bwd, bwd_callable):
    _backends.register_kernel_pair("selective_scan", fwd, bwd, fake_fwd=_fake_fwd, fake_bwd=_fake_bwd,
                                   setup_context=_setup_context, backward=_backward_with(bwd_callable))


# The C++ ops (cpu and, when built, cuda) exist once pyneuro._C is loaded.
if _backends.extension()[0] is not None and hasattr(torch.ops.pyneuro, "selective_scan_fwd"):
    _register("pyneuro::selective_scan_fwd", "pyneuro::selective_scan_bwd", torch.ops.pyneuro.selective_scan_bwd.default)

_fwd_triton = _backends.triton_custom_op("pyneuro::selective_scan_fwd_triton", _FWD_SCHEMA, _TRITON_MODULE,
                                         "selective_scan_fwd")
_bwd_triton = _backends.triton_custom_op("pyneuro::selective_scan_bwd_triton", _BWD_SCHEMA, _TRITON_MODULE,
                                         "selective_scan_bwd")
_register(_fwd_triton, _bwd_triton, _bwd_triton)


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------
def _fail(exc, msg):
    raise exc(f"selective_scan: {msg}")


def _check(u, delta, A, B, C, D, z, delta_bias, initial_state) -> int:
    """Validate the user's arguments (before any kernel runs); returns N."""
    tensors = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, initial_state=initial_state)
    for name, t in tensors.items():
        if t is None and name in ("u", "delta", "A", "B", "C"):
            _fail(TypeError, f"{name} is required, got None")
        if t is not None and not isinstance(t, Tensor):
            _fail(TypeError, f"{name} must be a torch.Tensor, got {type(t).__name__}")
    for name, t in tensors.items():
        if t is not None and t.device != u.device:
            _fail(ValueError, f"{name} is on {t.device} but u is on {u.device}; all tensors must be on one device")

    if u.dim() != 3:
        _fail(ValueError, f"u must be 3-D (batch, dim, L), got shape {tuple(u.shape)}")
    batch, dim, L = u.shape
    if u.dtype not in _INPUT_DTYPES + (torch.float64,):
        _fail(TypeError, f"u must be float32, float16 or bfloat16 (float64 on the reference backend), got {u.dtype}")
    fp64 = u.dtype == torch.float64
    # A, D, delta_bias, initial_state and a constant B/C are "weights": fp32 as in mamba_ssm
    # (fp64 also accepted with fp64 inputs, for the reference).
    weight_dtypes = (torch.float32, torch.float64) if fp64 else (torch.float32,)
    weight_names = "float32 or float64" if fp64 else "float32"

    def check_weight_dtype(name, t):
        if t.is_complex():
            _fail(TypeError, f"{name} must be real {weight_names}; complex {name} is not supported, got {t.dtype}")
        if t.dtype not in weight_dtypes:
            _fail(TypeError, f"{name} must be {weight_names}, got {t.dtype}")

    for name in ("delta", "z"):
        t = tensors[name]
        if t is None:
            continue
        if tuple(t.shape) != (batch, dim, L):
            _fail(ValueError, f"{name} must have u's shape (batch, dim, L) = {(batch, dim, L)}, got {tuple(t.shape)}")
        if t.dtype != u.dtype:
            _fail(TypeError, f"{name} must have u's dtype {u.dtype}, got {t.dtype}")

    check_weight_dtype("A", A)
    if A.dim() != 2 or A.shape[0] != dim or A.shape[1] < 1:
        _fail(ValueError, f"A must be (dim, N) with dim = {dim} and N >= 1, got shape {tuple(A.shape)}")
    N = A.shape[1]

    for name, M in (("B", B), ("C", C)):
        if M.dim() == 2:
            if tuple(M.shape) != (dim, N):
                _fail(ValueError, f"constant {name} must be (dim, N) = {(dim, N)}, got {tuple(M.shape)}")
            check_weight_dtype(name, M)
            continue
        if M.dim() == 3:
            if tuple(M.shape) != (batch, N, L):
                _fail(ValueError, f"variable {name} must be (batch, N, L) = {(batch, N, L)}, got {tuple(M.shape)}")
        elif M.dim() == 4:
            G = M.shape[1]
            if M.shape[0] != batch or M.shape[2:] != (N, L) or G < 1:
                _fail(ValueError, f"grouped {name} must be (batch, G, N, L) = ({batch}, G, {N}, {L}), "
                      f"got {tuple(M.shape)}")
            if dim % G:
                _fail(ValueError, f"grouped {name} has G = {G} groups, which must divide dim = {dim}")
        else:
            _fail(ValueError, f"{name} must be (dim, N), (batch, N, L) or (batch, G, N, L), got shape {tuple(M.shape)}")
        if M.is_complex() or M.dtype != u.dtype:
            _fail(TypeError, f"variable {name} must have u's dtype {u.dtype}, got {M.dtype}")

    for name, shape, described in (("D", (dim,), "(dim,)"), ("delta_bias", (dim,), "(dim,)"),
                                   ("initial_state", (batch, dim, N), "(batch, dim, N)")):
        t = tensors[name]
        if t is None:
            continue
        if tuple(t.shape) != shape:
            _fail(ValueError, f"{name} must be {described} = {shape}, got {tuple(t.shape)}")
        check_weight_dtype(name, t)
    return N


# ----------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------
# Every backend implementation takes the validated arguments below and returns (out, last_state).
def _reference(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus):
    return selective_scan_naive(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                                return_last_state=True, initial_state=initial_state)


def _contract_call(backend: str):
    def call(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus):
        def prep(t):
            return t.contiguous() if t is not None else None

        def prep_bc(M):  # the contract's variable B/C is 4-D: (batch, N, L) is one group
            return (M.unsqueeze(1) if M.dim() == 3 else M).contiguous()

        fwd = _fwd_triton if backend == "triton" else torch.ops.pyneuro.selective_scan_fwd.default
        out, last_state, _ = fwd(prep(u), prep(delta), prep(A), prep_bc(B), prep_bc(C), prep(D), prep(z),
                                 prep(delta_bias), prep(initial_state), bool(delta_softplus),
                                 chunk_size_for(backend, A.shape[1]))
        return out, last_state

    return call


def _compiled_supports(backend: str):
    def supports(u, delta, A, *_rest) -> Optional[Exception]:
        if u.dtype == torch.float64:
            return TypeError(f"selective_scan: the {backend!r} backend takes float32, float16 or bfloat16 inputs, "
                             "got float64 (float64 runs on backend='reference')")
        limit = max_n(backend)
        if A.shape[1] > limit:
            return ValueError(f"selective_scan: N = {A.shape[1]} (A.shape[1]) exceeds the {backend!r} backend's "
                              f"limit of {limit} (use backend='reference' for larger states)")
        if backend == "triton" and u.shape[0] > _triton_limits()["max_batch"]:
            return ValueError(f"selective_scan: batch {u.shape[0]} (u.shape[0]) exceeds the 'triton' backend's "
                              f"limit of {_triton_limits()['max_batch']} (one grid axis)")
        return None

    return supports


def _compiled_probe(backend: str):
    base = _backends.compiled_probe("selective_scan_fwd")

    def probe(device: torch.device) -> Optional[str]:
        reason = base(device)
        if reason is None and backend not in LIMITS:
            reason = "pyneuro._C publishes no selective_scan limits (built from older sources): rebuild it"
        return reason

    return probe


def _self_check(backend: str, device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """Compare ``backend`` with the reference on a tiny problem, forward and backward (a few ms).
    Returns None when they agree within TOLERANCE, else what disagreed."""
    with torch.enable_grad():  # the first call may come under torch.no_grad()
        return _compare_with_reference(backend, device, dtype)


def _compare_with_reference(backend: str, device: torch.device, dtype: torch.dtype) -> Optional[str]:
    dtype = dtype if dtype in _INPUT_DTYPES else torch.float32
    g = torch.Generator().manual_seed(1234)
    batch, dim, L, N = 2, 4, 37, 8

    def rand(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dt).requires_grad_()

    args = [rand(batch, dim, L), rand(batch, dim, L, scale=0.5), -torch.rand(dim, N, generator=g).add(0.5)
            .to(device).requires_grad_(), rand(batch, 2, N, L), rand(dim, N, dt=torch.float32),
            rand(dim, dt=torch.float32), rand(batch, dim, L), rand(dim, dt=torch.float32, scale=0.1),
            rand(batch, dim, N, dt=torch.float32)]
    dout = torch.randn(batch, dim, L, generator=g).to(device=device, dtype=dtype)
    results = []
    for b in (backend, "reference"):
        out, last = OP.backends[b].impl(*args, True)
        grads = torch.autograd.grad((out.float() * dout.float()).sum() + last.float().sum(), args)
        results.append([out, last, *grads])
    names = ("out", "last_state", "du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias", "dinitial_state")
    tol = TOLERANCE[backend][dtype]
    for name, got, want in zip(names, *results):
        got, want = got.detach().double(), want.detach().double()
        err = ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()
        if not err <= tol:  # also catches NaN
            return f"{name} differs from the reference by {err:.2e} (normwise; tolerance {tol:.0e})"
    return None


def example_arguments(batch: int = 2, dim: int = 64, L: int = 128, N: int = 16, dtype=torch.float32,
                      device="meta") -> tuple:
    """Arguments of the given sizes (shape only, on the meta device by default) for
    ``pyneuro explain selective_scan``."""
    def t(*shape, dt=dtype):
        return torch.empty(*shape, dtype=dt, device=device)

    BC = t(batch, N, L)
    return (t(batch, dim, L), t(batch, dim, L), t(dim, N, dt=torch.float32), BC, BC, None, None, None, None, True)


OP = _backends.register_op(
    "selective_scan",
    {
        "reference": Backend("reference", ("cpu", "cuda"), _reference),
        "cpu": Backend("cpu", ("cpu",), _contract_call("cpu"), _compiled_probe("cpu"),
                       _compiled_supports("cpu")),
        "triton": Backend("triton", ("cuda", "cpu"), _contract_call("triton"), _backends.triton_probe(_TRITON_MODULE),
                          _compiled_supports("triton"), selfcheck=True),
        "cuda": Backend("cuda", ("cuda",), _contract_call("cuda"), _compiled_probe("cuda"),
                        _compiled_supports("cuda"), selfcheck=True),
    },
    self_check=_self_check,
    example=example_arguments,
)


# ----------------------------------------------------------------------------------------------
# The public function
# ----------------------------------------------------------------------------------------------
def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, initial_state=None, backend="auto"):
    """Mamba's selective scan; mamba_ssm ``selective_scan_fn`` semantics, plus ``initial_state``.

    Shapes: u, delta, z: (batch, dim, L); A: (dim, N), real; B, C: (batch, N, L), grouped
    (batch, G, N, L) with dim % G == 0, or constant (dim, N); D, delta_bias: (dim,);
    initial_state: (batch, dim, N).

        delta_t = softplus(delta_t + delta_bias)    (when delta_softplus)
        x_t     = exp(delta_t A) * x_{t-1} + delta_t B_t u_t,   y_t = <x_t, C_t>
        out     = (y + D u) * silu(z)

    u, delta, z and a variable B/C share one dtype (fp32, fp16 or bf16; fp64 on the reference);
    A, D, delta_bias, initial_state and a constant B/C are fp32. The state is kept in fp32.
    Returns out (u's dtype), or (out, last_state) with last_state (batch, dim, N) fp32 (fp64 for
    fp64 inputs) when ``return_last_state``. Gradients flow into every tensor argument, also from
    last_state.
    """
    _check(u, delta, A, B, C, D, z, delta_bias, initial_state)
    args = (u, delta, A, B, C, D, z, delta_bias, initial_state, bool(delta_softplus))
    out, last_state = OP(backend, u.device, *args)
    return (out, last_state) if return_last_state else out


__all__ = ["selective_scan", "selective_scan_naive", "OP", "LIMITS", "TOLERANCE", "chunk_size_for", "max_n"]
