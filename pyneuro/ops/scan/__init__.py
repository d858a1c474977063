"""selective_scan: Mamba's selective scan, with mamba_ssm's ``selective_scan_fn`` semantics.

    selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, initial_state=None, backend="auto")

Backends (see pyneuro/_backends.py for how one is chosen):

* ``reference``: naive.py, differentiated by PyTorch autograd. Any N; the only one taking fp64.
* ``cpu``: torch.ops.pyneuro.selective_scan_fwd/_bwd from pyneuro._C (csrc/cpu/selective_scan.cpp).
* ``cuda``: the same two ops, CUDA kernels (csrc/cuda/), when the extension was built with CUDA.
* ``triton``: pyneuro.kernels.selective_scan, wrapped here as the custom ops
  pyneuro::selective_scan_fwd_triton/_bwd_triton; imported only when first used.

The compiled backends all implement the forward/backward pair of docs/selective_scan_contract.md
and share one autograd wiring (``_register_autograd``): the forward saves its inputs plus the
chunk-boundary states, the backward recomputes inside each chunk. Every op has a fake (meta)
implementation, so the function runs under ``torch.compile`` and passes ``torch.library.opcheck``.

``backend="auto"`` falls back to ``reference`` when the inputs are fp64 or N exceeds the compiled
kernels' limit (``MAX_N``); naming a backend that cannot take them raises instead.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Callable, Optional

import torch
from torch import Tensor

from ... import _backends
from .naive import selective_scan_naive

MAX_N = 256  # the cpu, cuda and triton kernels' limit on N (state size per channel)
COMPILED_BACKENDS = ("cpu", "cuda", "triton")
# Time steps between the states the forward stores for the backward (contract: chunk_size).
# cpu: speed was flat from 64 to 256 at N = 16 on the development CPU; 128 halves the stored
# states of 64. cuda: csrc/cuda/selective_scan.h's kSelectiveScanDefaultChunk. triton:
# kernels/selective_scan.py's DEFAULT_CHUNK_SIZE (a power of two in [4, 256]; a test checks they
# agree). Constants, not look-ups, so that tracing under torch.compile imports nothing.
_CHUNK_SIZE = {"cpu": 128, "cuda": 64, "triton": 64}

_INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_TRITON_MODULE = "pyneuro.kernels.selective_scan"


# ----------------------------------------------------------------------------------------------
# Backend availability
# ----------------------------------------------------------------------------------------------
# Probes are answered from module-level caches: backend choice runs inside torch.compile's
# tracing, which must not reach the imports the uncached probes do (they would break the graph).
_COMPILED_STATUS = {kind: _backends.compiled_op_status("selective_scan_fwd", torch.device(kind))
                    for kind in ("cpu", "cuda")}
_TRITON_STATUS: dict = {}


def _compiled_probe(device: torch.device):
    return _COMPILED_STATUS.get(device.type, (False, f"no compiled kernels for {device.type} tensors"))


def _triton_probe(device: torch.device):
    key = (device.type, _backends.triton_interpret())
    if key not in _TRITON_STATUS:
        ok, reason = _backends.triton_status(device)
        if ok and importlib.util.find_spec(_TRITON_MODULE) is None:
            ok, reason = False, f"{_TRITON_MODULE} is missing from this install (kernels/selective_scan.py)"
        _TRITON_STATUS[key] = (ok, reason)
    return _TRITON_STATUS[key]


_OP = _backends.register_op(
    "selective_scan",
    reference=(_backends.always, ("cpu", "cuda")),
    cpu=(_compiled_probe, ("cpu",)),
    triton=(_triton_probe, ("cuda", "cpu")),
    cuda=(_compiled_probe, ("cuda",)),
)


# ----------------------------------------------------------------------------------------------
# Fake (shape-only) implementations, shared by the C++ ops and the Triton wrappers
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# Autograd, one wiring for every compiled backend
# ----------------------------------------------------------------------------------------------
def _register_autograd(fwd_qualname: str, bwd_qualname: str, bwd: Callable) -> None:
    """Differentiate the op ``fwd_qualname`` (contract forward) with ``bwd`` (contract backward,
    the op ``bwd_qualname``).

    Gradients flow into every tensor input, from ``out`` and from ``last_state``;
    ``chunk_states`` is internal and not differentiable. The backward itself has no derivative:
    differentiating through it raises instead of silently returning zeros.
    """

    def setup_context(ctx, inputs, output):
        u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, chunk_size = inputs
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, output[2])
        ctx.delta_softplus, ctx.chunk_size = delta_softplus, chunk_size
        ctx.mark_non_differentiable(output[2])

    def backward(ctx, dout, dlast_state, _dchunk_states):
        u, delta, A, B, C, D, z, delta_bias, initial_state, chunk_states = ctx.saved_tensors
        dout = torch.zeros_like(u) if dout is None else dout.to(u.dtype).contiguous()
        if dlast_state is not None:
            dlast_state = dlast_state.to(torch.float32).contiguous()
        du, ddelta, dA, dB, dC, dD, dz, dbias, dx0 = bwd(
            dout, dlast_state, u, delta, A, B, C, D, z, delta_bias, initial_state, chunk_states,
            ctx.delta_softplus, ctx.chunk_size)
        present = lambda grad, t: grad if t is not None else None  # noqa: E731
        return (du, ddelta, dA, dB, dC, present(dD, D), present(dz, z), present(dbias, delta_bias),
                present(dx0, initial_state), None, None)

    torch.library.register_autograd(fwd_qualname, backward, setup_context=setup_context)

    def no_double_backward(ctx, *grads):
        raise RuntimeError("selective_scan: the compiled backends have no double backward (second "
                           "derivatives); use backend='reference' for those")

    torch.library.register_autograd(bwd_qualname, no_double_backward, setup_context=lambda ctx, inputs, output: None)


# The C++ ops (cpu and, when built, cuda) exist once pyneuro._C is loaded (_COMPILED_STATUS did).
if _backends.extension()[0] is not None and hasattr(torch.ops.pyneuro, "selective_scan_fwd"):
    torch.library.register_fake("pyneuro::selective_scan_fwd")(_fake_fwd)
    torch.library.register_fake("pyneuro::selective_scan_bwd")(_fake_bwd)
    _register_autograd("pyneuro::selective_scan_fwd", "pyneuro::selective_scan_bwd",
                       torch.ops.pyneuro.selective_scan_bwd.default)


# The Triton kernels are plain functions; these custom ops give them the dispatcher's features.
def _triton_kernels():
    return importlib.import_module(_TRITON_MODULE)


def _fresh(outputs, inputs):
    """custom_op outputs may not alias inputs: copy any that do (e.g. a state passed through)."""
    storages = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, Tensor) and t.numel()}
    return tuple(o.clone() if o.numel() and o.untyped_storage().data_ptr() in storages else o for o in outputs)


@torch.library.custom_op("pyneuro::selective_scan_fwd_triton", mutates_args=())
def _fwd_triton(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                z: Optional[Tensor], delta_bias: Optional[Tensor], initial_state: Optional[Tensor],
                delta_softplus: bool, chunk_size: int) -> tuple[Tensor, Tensor, Tensor]:
    args = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    return _fresh(_triton_kernels().selective_scan_fwd(*args, delta_softplus, chunk_size), args)


@torch.library.custom_op("pyneuro::selective_scan_bwd_triton", mutates_args=())
def _bwd_triton(dout: Tensor, dlast_state: Optional[Tensor], u: Tensor, delta: Tensor, A: Tensor, B: Tensor,
                C: Tensor, D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor],
                initial_state: Optional[Tensor], chunk_states: Tensor, delta_softplus: bool,
                chunk_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    args = (dout, dlast_state, u, delta, A, B, C, D, z, delta_bias, initial_state, chunk_states)
    return _fresh(_triton_kernels().selective_scan_bwd(*args, delta_softplus, chunk_size), args)


_fwd_triton.register_fake(_fake_fwd)
_bwd_triton.register_fake(_fake_bwd)
_register_autograd("pyneuro::selective_scan_fwd_triton", "pyneuro::selective_scan_bwd_triton", _bwd_triton)


def _forward_op(backend: str):
    if backend == "triton":
        return _fwd_triton
    return torch.ops.pyneuro.selective_scan_fwd.default


def chunk_size_for(backend: str) -> int:
    """The chunk_size (time steps between stored states) the public function uses on a backend."""
    return _CHUNK_SIZE[backend]


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


def _resolve_backend(backend: str, u: Tensor, N: int) -> str:
    explicit = backend if backend != "auto" else os.environ.get("PYNEURO_BACKEND", "auto") or "auto"
    chosen = _backends.choose("selective_scan", u.device, backend)
    if chosen not in COMPILED_BACKENDS:
        return chosen
    if u.dtype == torch.float64:
        if explicit == "auto":
            return "reference"
        _fail(TypeError, f"the {chosen!r} backend takes float32, float16 or bfloat16 inputs, got float64 "
              "(float64 runs on backend='reference')")
    if N > MAX_N:
        if explicit == "auto":
            return "reference"
        _fail(ValueError, f"N = {N} (A.shape[1]) exceeds the {chosen!r} backend's limit of {MAX_N} "
              "(use backend='reference' for larger states)")
    return chosen


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
    N = _check(u, delta, A, B, C, D, z, delta_bias, initial_state)
    chosen = _resolve_backend(backend, u, N)
    if chosen == "reference":
        return selective_scan_naive(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                    delta_softplus=delta_softplus, return_last_state=return_last_state,
                                    initial_state=initial_state)

    def prep(t):
        return t.contiguous() if t is not None else None

    def prep_bc(M):  # the contract's variable B/C is 4-D: (batch, N, L) is one group
        return (M.unsqueeze(1) if M.dim() == 3 else M).contiguous()

    out, last_state, _ = _forward_op(chosen)(
        prep(u), prep(delta), prep(A), prep_bc(B), prep_bc(C), prep(D), prep(z), prep(delta_bias),
        prep(initial_state), bool(delta_softplus), chunk_size_for(chosen))
    return (out, last_state) if return_last_state else out


__all__ = ["selective_scan", "selective_scan_naive", "MAX_N", "chunk_size_for"]
