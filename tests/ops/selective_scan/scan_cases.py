"""What the selective-scan conformance suite shares: the backends it runs on, the inputs, the one
fp64 oracle, and the error measure. (pytest puts this folder on sys.path; the module has a name
no other op's suite uses.)

Targets: every backend the op declares, in every variant this machine can execute: ``cpu`` once
per CPU ISA the machine runs (baseline, avx2, avx512), ``triton`` on a GPU or under the
interpreter, ``cuda`` on a GPU. A target that cannot run here is still generated and skipped with
its reason, so nothing disappears silently.

The oracle: naive.py's forward in fp64 and, for gradients, ``adjoint_fp64`` (an explicit fp64
reverse recurrence: naive's autograd builds a graph node per step, slow at L = 2049), which test_oracle.py checks against
naive's autograd and finite differences. Both run on the very inputs the backend saw (already
rounded to fp16/bf16), so tolerances measure the backend, not the input rounding. Tolerances are
the op's own table (pyneuro.ops.scan.TOLERANCE), which the first-use self-check uses too.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import pytest
import torch

import pyneuro.ops.scan as scan
from pyneuro import _backends
from pyneuro.ops.scan import selective_scan, selective_scan_naive
from pyneuro.ops.scan.naive import selective_scan_adjoint
from scan_inputs import make_inputs, on  # noqa: F401  (tests/scan_inputs.py; re-exported)

GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
HAS_GPU = torch.cuda.is_available()
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------------------------
# Targets
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    backend: str
    device: str
    isa: Optional[str] = None  # cpu only: the ISA variant the C++ kernels run in

    def __str__(self) -> str:
        return f"{self.backend}-{self.isa}" if self.isa else self.backend

    def tolerance(self, dtype: torch.dtype) -> float:
        return scan.TOLERANCE[self.backend][dtype]


def _cpu_isas() -> list[Optional[str]]:
    ext, _ = _backends.extension()
    if ext is None or not hasattr(ext, "cpu_isas"):
        return [None]
    return list(ext.cpu_isas())


def _why_not(backend: str, device: str) -> Optional[str]:
    return scan.OP.status(backend, torch.device(device))


def _param(target: Target, reason: Optional[str]):
    marks = [pytest.mark.skipif(reason is not None, reason=f"{target}: {reason}")]
    if target.backend == "triton":
        marks.append(pytest.mark.triton)
    if target.device == "cuda" or target.backend == "cuda":
        marks.append(pytest.mark.cuda)
    return pytest.param(target, marks=marks, id=str(target))


def compiled_targets() -> list:
    """pytest params: every compiled backend (cpu per ISA, triton, cuda), skipped with the reason
    where it cannot run here."""
    params = [_param(Target("cpu", "cpu", isa), _why_not("cpu", "cpu")) for isa in _cpu_isas()]
    triton_device = "cuda" if HAS_GPU else "cpu"
    reason = _why_not("triton", triton_device)
    if reason is None and not HAS_GPU and not _backends.triton_interpret():
        reason = "TRITON_INTERPRET=1 must be set before triton is imported (tests/conftest.py does it)"
    params.append(_param(Target("triton", triton_device), reason))
    params.append(_param(Target("cuda", "cuda"), None if HAS_GPU and _why_not("cuda", "cuda") is None
                         else (_why_not("cuda", "cuda") or "no CUDA GPU")))
    return params


def all_targets() -> list:
    """compiled_targets() and the reference (on the GPU when there is one)."""
    return [_param(Target("reference", "cuda" if HAS_GPU else "cpu"), None)] + compiled_targets()


@contextlib.contextmanager
def activated(target: Target):
    """Run the C++ CPU kernels in the target's ISA variant for the duration of a test."""
    if target.isa is None:
        yield target
        return
    ext, _ = _backends.extension()
    before = ext.cpu_isa()
    ext.set_cpu_isa(target.isa)
    try:
        yield target
    finally:
        ext.set_cpu_isa(before)


def interpreted(target: Target) -> bool:
    return target.backend == "triton" and target.device == "cpu"


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------
def contract_args(inputs, softplus, chunk_size):
    """Public inputs -> the contract's normalised forward arguments (docs/selective_scan_contract.md)."""
    bc = lambda M: (M.unsqueeze(1) if M.dim() == 3 else M).contiguous()  # noqa: E731
    i = inputs
    return (i["u"], i["delta"], i["A"], bc(i["B"]), bc(i["C"]), i["D"], i["z"], i["delta_bias"],
            i["initial_state"], softplus, chunk_size)


def run(target: Target, inputs, softplus, dout, dlast):
    """The public function on ``target``: out, last_state and the gradients of
    <out, dout> + <last, dlast> w.r.t. every input present."""
    leaves = {k: (v.detach().to(target.device).clone().requires_grad_() if v is not None else None)
              for k, v in inputs.items()}
    out, last = selective_scan(**leaves, delta_softplus=softplus, return_last_state=True, backend=target.backend)
    loss = (out.float() * dout.to(out.device)).sum() + (last * dlast.to(out.device)).sum()
    names = [k for k in GRAD_NAMES if leaves[k] is not None]
    grads = torch.autograd.grad(loss, [leaves[k] for k in names])
    return out.detach(), last.detach(), dict(zip(names, grads))


# ----------------------------------------------------------------------------------------------
# The fp64 oracle
# ----------------------------------------------------------------------------------------------
def naive_autograd_fp64(inputs, softplus, dout, dlast):
    """naive.py in fp64, differentiated by autograd: the definition (slow for long L)."""
    leaves = {k: (v.detach().double().cpu().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    out, last = selective_scan_naive(**leaves, delta_softplus=softplus, return_last_state=True)
    loss = (out * dout.double().cpu()).sum() + (last * dlast.double().cpu()).sum()
    names = [k for k in GRAD_NAMES if leaves[k] is not None]
    grads = torch.autograd.grad(loss, [leaves[k] for k in names])
    return out.detach(), last.detach(), dict(zip(names, grads))


def adjoint_fp64(inputs, softplus, dout, dlast):
    """naive.py's explicit recurrence and its adjoint (selective_scan_adjoint) in fp64, written
    independently of selective_scan_naive: (out, last_state, gradients of <out, dout> + <last, dlast>)."""
    i = {k: (v.double().cpu() if v is not None else None) for k, v in inputs.items()}
    out, states, grads = selective_scan_adjoint(**i, delta_softplus=softplus, dout=dout.double().cpu(),
                                                dlast_state=dlast.double().cpu())
    return out, states[:, :, -1], grads


def oracle(inputs, softplus, dout, dlast):
    """(out, last_state, gradients) in fp64: naive.py's forward, adjoint_fp64's gradients."""
    with torch.no_grad():
        out, last = selective_scan_naive(**{k: (v.double().cpu() if v is not None else None)
                                            for k, v in inputs.items()},
                                         delta_softplus=softplus, return_last_state=True)
    return out, last, adjoint_fp64(inputs, softplus, dout, dlast)[2]


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------
def normwise_error(actual, expected) -> float:
    """max |actual - expected| / max |expected| (absolute when expected is all zero)."""
    expected = expected.detach().double().cpu()
    if not expected.numel():
        return 0.0
    scale = expected.abs().max().item()
    err = (actual.detach().double().cpu() - expected).abs().max().item()
    return err / scale if scale > 0 else err


def assert_matches(actual, expected, tol, what):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = normwise_error(actual, expected)
    assert err <= tol, f"{what}: normwise error {err:.3g} > {tol:.3g}"
