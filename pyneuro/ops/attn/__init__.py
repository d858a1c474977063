"""attention(q, k, v, causal=False, softmax_scale=None, dropout_p=0.0, return_lse=False) in SDPA's layout.

q (B, Hq, Lq, D), k and v (B, Hkv, Lk, D) with Hq a multiple of Hkv (grouped-query and multi-query
attention); out (B, Hq, Lq, D) in q's dtype, and with ``return_lse`` the fp32 log-sum-exp of the
scaled scores (B, Hq, Lq). ``causal`` masks keys to the right of each query, top-left aligned as
SDPA's ``is_causal``. Attention dropout runs inside the kernels from a Philox mask that the backward
regenerates (docs/attention_contract.md), drawn from torch's default generator, so
``torch.manual_seed`` makes it reproducible.

Backends (declared once below; pyneuro/_backends.py chooses among them):

* ``reference``: naive.py, differentiated by PyTorch autograd; the only one taking fp64 or a head
  dim outside the compiled kernels' range.
* ``cpu``: torch.ops.pyneuro.attention_fwd/_bwd from pyneuro._C (csrc/cpu/attention.cpp), blocked
  online softmax with no Lq×Lk buffer.
* ``cuda``: the same ops' CUDA kernels (csrc/cuda/attention.cu), when the extension was built with
  CUDA: one launch per pass for the short sequences where SDPA is launch-bound; above
  ``CUDA_SHORT_MAX_KEYS`` keys it calls the Triton kernel when Triton is available.
* ``triton``: pyneuro.kernels.attention (FlashAttention-2 style) as pyneuro::attention_fwd_triton/_bwd_triton.

``attention_qkvpacked(qkv, ...)`` takes q, k, v packed as (B, L, 3, H, D) and returns out (B, L, H, D)
(flash-attn's qkvpacked layout); on the ``cpu`` backend its own op pair reads and writes those
layouts in place (pyneuro::attention_packed_fwd/_bwd).

The compiled backends implement the forward/backward pair of docs/attention_contract.md (the
forward saves the log-sum-exp, the backward recomputes the probabilities from it). The C++ ops
(cpu, cuda) carry their derivative in the extension (csrc/autograd/attention.cpp: less per-call
overhead on small heads); the Triton pair gets the same formula from ``_backward_for`` below. naive.py holds the same pair in PyTorch (``attention_fwd_contract`` /
``attention_bwd_contract``).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ... import _backends
from ..._backends import Backend
from . import naive
from .naive import attention_naive, dropout_keep_mask

_TRITON_MODULE = "pyneuro.kernels.attention"
_TRITON_LIMITS: dict = {}  # filled from the kernels module on first use (it imports triton)


def _triton_limits() -> dict:
    if not _TRITON_LIMITS:
        import importlib

        kernels = importlib.import_module(_TRITON_MODULE)
        _TRITON_LIMITS.update(max_batch_heads=kernels.MAX_BATCH_HEADS, max_row_offset=kernels.MAX_ROW_OFFSET,
                              row_offsets_fit=kernels.row_offsets_fit)
    return _TRITON_LIMITS


_COMPILED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# The head dims every compiled kernel takes (docs/attention_contract.md); csrc/common/limits.h
# publishes the C++ kernels' own, which tests/ops/attention checks against these.
HEAD_DIM_MULTIPLE = 8
MAX_HEAD_DIM = 128

FWD_SCHEMA = ("(Tensor q, Tensor k, Tensor v, bool causal, float scale, float dropout_p, Tensor? rng_state) "
              "-> (Tensor out, Tensor lse)")
BWD_SCHEMA = ("(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, bool causal, float scale, "
              "float dropout_p, Tensor? rng_state) -> (Tensor dq, Tensor dk, Tensor dv)")


# ----------------------------------------------------------------------------------------------
# Validation (the error contract: ValueError for shapes and values, TypeError for types)
# ----------------------------------------------------------------------------------------------
def _check(q, k, v, causal, softmax_scale, dropout_p) -> None:
    # Written for a few microseconds per call: attention on short sequences runs in tens of them.
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"attention: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"attention: {name} must be 4-D (batch, heads, seq, head_dim), got shape {tuple(t.shape)}")
    dtype = q.dtype
    if dtype not in _FLOATS:
        raise TypeError(f"attention: q must be a floating tensor, got {dtype}")
    if not (dtype == k.dtype == v.dtype):
        raise TypeError(f"attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"attention: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    qs, ks = q.shape, k.shape
    if ks != v.shape:
        raise ValueError(f"attention: k and v must have the same shape, got {tuple(ks)} and {tuple(v.shape)}")
    if qs[0] != ks[0]:
        raise ValueError(f"attention: q and k must have the same batch size, got {qs[0]} and {ks[0]}")
    if qs[3] != ks[3]:
        raise ValueError(f"attention: q and k must have the same head_dim, got {qs[3]} and {ks[3]}")
    if qs[3] < 1:
        raise ValueError(f"attention: head_dim (the last dimension of q, k, v) must be at least 1, got {qs[3]}")
    hq, hkv = qs[1], ks[1]
    if not (hq == hkv == 0 or (hkv > 0 and hq % hkv == 0)):
        raise ValueError(f"attention: the heads of q ({hq}) must be a multiple of the heads of k and v ({hkv}) "
                         "(grouped-query attention)")
    if ks[2] < 1:
        raise ValueError(f"attention: k and v must hold at least one key, got seq length {ks[2]}")
    if type(causal) is not bool:
        raise TypeError(f"attention: causal must be a bool, got {type(causal).__name__}")
    if softmax_scale is not None:
        if not _backends.real_number(softmax_scale):
            raise TypeError(f"attention: softmax_scale must be a number or None, got {type(softmax_scale).__name__}")
        if not (math.isfinite(softmax_scale) and softmax_scale > 0):
            raise ValueError(f"attention: softmax_scale must be a positive finite number or None, got {softmax_scale!r}")
    if not (_backends.real_number(dropout_p) and 0 <= dropout_p < 1):
        raise ValueError(f"attention: dropout_p must be in [0, 1), got {dropout_p!r}")


def draw_rng_state() -> Tensor:
    """[seed, offset] for the dropout mask: two int64 draws from torch's default CPU generator."""
    return torch.randint(-2 ** 63, 2 ** 63 - 1, (2,), dtype=torch.int64)


# ----------------------------------------------------------------------------------------------
# The compiled pairs: fake shapes, and the autograd wiring of those without a C++ one
# ----------------------------------------------------------------------------------------------
def _fake_fwd(q, k, v, causal, scale, dropout_p, rng_state):
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)


def _fake_bwd(dout, q, k, v, out, lse, causal, scale, dropout_p, rng_state):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, causal, scale, dropout_p, rng_state = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, rng_state)
    ctx.flags = (causal, scale, dropout_p)
    ctx.mark_non_differentiable(lse)
    # Outputs without a gradient arrive as None, not as zeros: autograd would otherwise fill one
    # for the internal output at every backward (11 MiB of reserve for an LSTM at T=28, B=128, H=128).
    ctx.set_materialize_grads(False)


def _backward_for(bwd_op):
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, rng_state = ctx.saved_tensors
        causal, scale, dropout_p = ctx.flags
        if dout is None:
            dout = torch.zeros_like(out)
        dout = _unit_last_stride(dout.to(q.dtype))
        dq, dk, dv = bwd_op(dout, q, k, v, out, lse, causal, scale, dropout_p, rng_state)
        return dq, dk, dv, None, None, None, None

    return backward


def _register_pair(fwd, bwd, bwd_callable) -> None:
    _backends.register_kernel_pair("attention", fwd, bwd, fake_fwd=_fake_fwd, fake_bwd=_fake_bwd,
                                   setup_context=_setup_context, backward=_backward_for(bwd_callable))


if _backends.extension()[0] is not None and hasattr(torch.ops.pyneuro, "attention_fwd"):
    _register_pair("pyneuro::attention_fwd", "pyneuro::attention_bwd", torch.ops.pyneuro.attention_bwd.default)


# The packed pair (cpu only): qkv (B, L, 3, H, D) in, out (B, L, H, D), one dqkv out of the backward;
# its derivative is the extension's (csrc/autograd/attention.cpp).
def _fake_packed_fwd(qkv, causal, scale, dropout_p, rng_state):
    B, L, _, H, D = qkv.shape
    return qkv.new_empty((B, L, H, D)), qkv.new_empty((B, H, L), dtype=torch.float32)


def _fake_packed_bwd(dout, qkv, out, lse, causal, scale, dropout_p, rng_state):
    return qkv.new_empty(qkv.shape)


_HAS_PACKED = _backends.extension()[0] is not None and hasattr(torch.ops.pyneuro, "attention_packed_fwd")
if _HAS_PACKED:
    _backends.register_kernel_pair("attention_packed", "pyneuro::attention_packed_fwd", "pyneuro::attention_packed_bwd",
                                   fake_fwd=_fake_packed_fwd, fake_bwd=_fake_packed_bwd)  # derivative: C++
_TRITON_FWD = _backends.triton_custom_op("pyneuro::attention_fwd_triton", FWD_SCHEMA, _TRITON_MODULE, "attention_fwd")
_TRITON_BWD = _backends.triton_custom_op("pyneuro::attention_bwd_triton", BWD_SCHEMA, _TRITON_MODULE, "attention_bwd")
_register_pair(_TRITON_FWD, _TRITON_BWD, _TRITON_BWD)


# Normwise tolerances (max |actual - expected| / max |expected|, per output and per gradient)
# against the fp64 oracle on the same inputs. One table for the conformance suite
# (tests/ops/attention/) and the first-use self-check.
#   fp32: the same sums in another order, exp2-based softmax (a few ulp); the gradients sum over Lk
#         or Lq terms: observed ~1e-6.
#   bf16 / fp16: inputs are exact in the oracle, so the error is the output's one rounding (2^-9 /
#         2^-12 relative) on the CPU; GPU kernels also round P (and dS) to the input dtype before
#         their tensor-core products.
TOLERANCE = {
    "reference": {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3},
    "cpu": {torch.float32: 2e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3},
    "triton": {torch.float32: 5e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3},
    "cuda": {torch.float32: 5e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3},
}


# ----------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------
def _unit_last_stride(t: Tensor) -> Tensor:
    """The kernels take any strides but a unit one in head_dim (what SDPA's head split leaves)."""
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _reference(q, k, v, causal, scale, dropout_p, rng_state):
    return attention_naive(q, k, v, causal, scale, dropout_p, rng_state, return_lse=True)


# The CUDA kernels are built for short sequences (K/V of a head staged in shared memory, CUDA
# cores, one launch); past this many keys the cuda backend hands over to the Triton kernel
# (tensor cores, FlashAttention-2 tiling) when Triton runs here, else runs its own tiled path.
CUDA_SHORT_MAX_KEYS = 256


def _contract_call(backend: str):
    """The backend's forward op on the validated arguments: (out, lse)."""

    def call(q, k, v, causal, scale, dropout_p, rng_state):
        if q.numel() == 0:  # an empty batch, no heads or no queries: nothing for a kernel to launch
            return _reference(q, k, v, causal, scale, dropout_p, rng_state)
        args = (q, k, v, causal, scale, dropout_p, rng_state)
        if backend == "cuda" and k.shape[2] > CUDA_SHORT_MAX_KEYS and OP.runs("triton", q.device, *args):
            return OP.backends["triton"].impl(*args)
        # (else no Triton here, it failed its self-check or refuses the shape, e.g. B·H > 65,535:
        # the CUDA tiled path takes any length)
        fwd = _TRITON_FWD if backend == "triton" else torch.ops.pyneuro.attention_fwd.default
        if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
            q, k, v = _unit_last_stride(q), _unit_last_stride(k), _unit_last_stride(v)
        return tuple(fwd(q, k, v, causal, scale, dropout_p, rng_state))

    return call


def _compiled_supports(backend: str):
    def supports(q, k, *_rest) -> Optional[Exception]:
        if q.dtype not in _COMPILED_DTYPES:
            return TypeError(f"attention: the {backend!r} backend takes float32, float16 or bfloat16, got "
                             f"{q.dtype} ({q.dtype} runs on backend='reference')")
        d = q.shape[-1]
        if d % HEAD_DIM_MULTIPLE or not HEAD_DIM_MULTIPLE <= d <= MAX_HEAD_DIM:
            return ValueError(f"attention: the {backend!r} backend takes a head_dim that is a multiple of "
                              f"{HEAD_DIM_MULTIPLE} from {HEAD_DIM_MULTIPLE} to {MAX_HEAD_DIM}, got {d} "
                              "(other head dims run on backend='reference')")
        if backend == "triton":
            limits = _triton_limits()
            if q.shape[0] * q.shape[1] > limits["max_batch_heads"]:
                return ValueError(f"attention: the 'triton' backend takes batch × heads up to "
                                  f"{limits['max_batch_heads']} (one grid axis), got q {tuple(q.shape)}")
            rows = max(q.shape[2], k.shape[2])
            if not limits["row_offsets_fit"](rows, d):
                return ValueError(f"attention: the 'triton' backend takes heads of up to "
                                  f"{limits['max_row_offset'] + 1} elements (int32 row offsets), got {rows} rows "
                                  f"of {d}")
        return None

    return supports


def example_arguments(B: int = 128, H: int = 4, L: int = 17, D: int = 24, Hkv: int | None = None, Lk: int | None = None,
                      causal: bool = False, dropout_p: float = 0.0, dtype=torch.float32, device="meta",
                      random: bool = False) -> tuple:
    """Validated-form arguments (q, k, v, causal, scale, dropout_p, rng_state) at these sizes: shape
    only on the meta device (``pyneuro explain``), or random leaves requiring grad."""
    gen = torch.Generator().manual_seed(1234)
    Hkv, Lk = Hkv or H, Lk or L

    def t(*shape):
        if not random:
            return torch.empty(*shape, dtype=dtype, device=device)
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype).requires_grad_()

    rng_state = torch.tensor([12345, 678], dtype=torch.int64) if dropout_p > 0 else None
    return (t(B, H, L, D), t(B, Hkv, Lk, D), t(B, Hkv, Lk, D), causal, 1.0 / math.sqrt(D), dropout_p, rng_state)


def _self_check(backend: str, device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """Compare ``backend`` with the reference on tiny problems (GQA, causal with Lq ≠ Lk, dropout),
    forward and backward."""
    with torch.enable_grad():  # the first call may come under torch.no_grad()
        dtype = dtype if dtype in _COMPILED_DTYPES else torch.float32
        for sizes in (dict(B=2, H=4, Hkv=2, L=9, Lk=13, D=16, causal=True),
                      dict(B=1, H=2, L=7, D=24, dropout_p=0.25)):
            args = example_arguments(**sizes, dtype=dtype, device=device, random=True)
            results = []
            for b in (backend, "reference"):
                out, lse = OP.backends[b].impl(*args)
                weights = torch.linspace(-1, 1, out.numel(), device=device, dtype=torch.float64).view_as(out)
                grads = torch.autograd.grad((out.double() * weights).sum(), args[:3])
                results.append([out, lse, *grads])
            tol = TOLERANCE[backend][dtype]
            for name, got, want in zip(("out", "lse", "dq", "dk", "dv"), *results):
                got, want = got.detach().double(), want.detach().double()
                err = ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()
                if not err <= tol:  # also catches NaN
                    return f"{name} differs from the reference by {err:.2e} (normwise; tolerance {tol:.0e}) at {sizes}"
    return None


OP = _backends.register_op(
    "attention",
    {
        "reference": Backend("reference", ("cpu", "cuda"), _reference),
        "cpu": Backend("cpu", ("cpu",), _contract_call("cpu"), _backends.compiled_probe("attention_fwd"),
                       _compiled_supports("cpu")),
        "triton": Backend("triton", ("cuda", "cpu"), _contract_call("triton"), _backends.triton_probe(_TRITON_MODULE),
                          _compiled_supports("triton"), selfcheck=True),
        "cuda": Backend("cuda", ("cuda",), _contract_call("cuda"), _backends.compiled_probe("attention_fwd"),
                        _compiled_supports("cuda"), selfcheck=True),
    },
    self_check=_self_check,
    example=lambda dtype=torch.float32, device="meta", **sizes: example_arguments(dtype=dtype, device=device, **sizes),
)


def _contract_args(q, k, v, causal, softmax_scale, dropout_p) -> tuple:
    """The public arguments checked and put in the contract's form (q, k, v, causal, scale,
    dropout_p, rng_state): the scale defaults to 1/sqrt(D), the dropout mask's seed is drawn here."""
    _check(q, k, v, causal, softmax_scale, dropout_p)
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    dropout_p = float(dropout_p)
    return q, k, v, causal, scale, dropout_p, draw_rng_state() if dropout_p > 0 else None


def attention(q, k, v, causal: bool = False, softmax_scale: float | None = None, dropout_p: float = 0.0,
              return_lse: bool = False, backend: str = "auto"):
    """softmax(q kᵀ · scale [+ causal mask]) [· dropout] v, with torch SDPA's semantics and layout.

    Returns out (B, Hq, Lq, D), or (out, lse) with ``return_lse`` (lse: fp32 (B, Hq, Lq), natural
    log, no gradient). ``softmax_scale`` defaults to 1/sqrt(D). ``dropout_p`` applies whenever it is
    > 0 (as SDPA: pass 0 in evaluation).
    """
    args = _contract_args(q, k, v, causal, softmax_scale, dropout_p)  # checks q first: then q.device
    out, lse = OP(backend, q.device, *args)
    return (out, lse) if return_lse else out


def attention_qkvpacked(qkv, causal: bool = False, softmax_scale: float | None = None, dropout_p: float = 0.0,
                        return_lse: bool = False, backend: str = "auto"):
    """:func:`attention` on q, k and v packed in one tensor, as flash-attn's ``flash_attn_qkvpacked_func``.

    qkv (B, L, 3, H, D): q, k, v at index 0, 1, 2 of dim 2, the layout of a self-attention's input
    projection (B, L, 3 H D) viewed per head. Returns out (B, L, H, D), or (out, lse) with
    ``return_lse`` (lse (B, H, L) fp32, as :func:`attention`'s). Same semantics, backends and
    choice among them as :func:`attention`. On the ``cpu`` backend the kernels read q, k, v in
    place and write out and the gradient of qkv in these layouts (pyneuro::attention_packed_fwd/_bwd):
    no head-split copies forward, and the backward's dq, dk, dv are not concatenated afterwards.
    The other backends run on the three views and their gradients are stacked by autograd.
    """
    if not isinstance(qkv, torch.Tensor):
        raise TypeError(f"attention_qkvpacked: qkv must be a torch.Tensor, got {type(qkv).__name__}")
    if qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError("attention_qkvpacked: qkv must have shape (batch, seq, 3, heads, head_dim), "
                         f"got {tuple(qkv.shape)}")
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
    args = _contract_args(q, k, v, causal, softmax_scale, dropout_p)
    causal, scale, dropout_p, rng_state = args[3:]
    chosen = OP.select(backend, qkv.device, *args)
    if chosen.name == "cpu" and _HAS_PACKED and qkv.numel():
        out, lse = torch.ops.pyneuro.attention_packed_fwd(_unit_last_stride(qkv), causal, scale, dropout_p, rng_state)
    else:
        out, lse = chosen.impl(*args)
        out = out.transpose(1, 2)
    return (out, lse) if return_lse else out


__all__ = ["attention", "attention_qkvpacked", "attention_naive", "dropout_keep_mask", "draw_rng_state", "OP", "TOLERANCE"]
