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
import torch.nn.functional as F

import pyneuro.ops.scan as scan
from pyneuro import _backends
from pyneuro.ops.scan import selective_scan, selective_scan_naive

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
    return [pytest.param(Target("reference", "cuda" if HAS_GPU else "cpu"), id="reference")] + compiled_targets()


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
def make_inputs(batch, dim, L, N, B_kind="var", C_kind="var", *, D=True, z=True, bias=True, softplus=True,
                x0=True, dtype=torch.float32, seed=0, device="cpu"):
    """Public-API inputs and cotangents. *_kind: "var" (batch, N, L), an int G (batch, G, N, L)
    or "const" (dim, N). Without softplus, delta is kept positive (a negative step makes the
    recurrence grow)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    def bc(kind):
        if kind == "const":
            return rnd(dim, N)
        return (rnd(batch, N, L) if kind == "var" else rnd(batch, kind, N, L)).to(dtype)

    inputs = dict(
        u=rnd(batch, dim, L).to(dtype),
        delta=(rnd(batch, dim, L, scale=0.5) - 1.0 if softplus
               else torch.rand(batch, dim, L, generator=g) * 0.5 + 0.01).to(dtype),
        A=-torch.rand(dim, N, generator=g) * 2 - 0.2,
        B=bc(B_kind), C=bc(C_kind),
        D=rnd(dim) if D else None,
        z=rnd(batch, dim, L).to(dtype) if z else None,
        delta_bias=(rnd(dim, scale=0.3) if softplus else torch.rand(dim, generator=g) * 0.1) if bias else None,
        initial_state=rnd(batch, dim, N) if x0 else None,
    )
    # dout in out's dtype (autograd rounds it to that anyway), kept as fp32 for the oracle.
    cotangents = dict(dout=rnd(batch, dim, L).to(dtype).float(), dlast=rnd(batch, dim, N))
    return on(inputs, device), on(cotangents, device)


def on(d: dict, device) -> dict:
    return {k: (v.to(device) if v is not None else None) for k, v in d.items()}


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
    """An explicit fp64 recurrence, written independently of naive.py: (out, last_state, the
    gradients of <out, dout> + <last, dlast> by the reverse recurrence)."""
    i = {k: (v.double().cpu() if v is not None else None) for k, v in inputs.items()}
    dout, dlast = dout.double().cpu(), dlast.double().cpu()
    u, A = i["u"], i["A"]
    batch, dim, L = u.shape

    def per_channel(M):  # (batch | 1, dim, N, L | 1)
        if M.dim() == 2:
            return M[None, :, :, None]
        return M[:, None] if M.dim() == 3 else M.repeat_interleave(dim // M.shape[1], dim=1)

    def at(M, t):
        return M[..., t if M.shape[-1] > 1 else 0]

    raw = i["delta"] + (i["delta_bias"][:, None] if i["delta_bias"] is not None else 0)
    dt = F.softplus(raw) if softplus else raw
    Bv, Cv = per_channel(i["B"]), per_channel(i["C"])
    x = i["initial_state"] if i["initial_state"] is not None else u.new_zeros(batch, dim, A.shape[1])
    xs = [x]
    for t in range(L):
        x = torch.exp(dt[..., t, None] * A) * x + (dt[..., t] * u[..., t])[..., None] * at(Bv, t)
        xs.append(x)
    y = torch.stack([(xs[t + 1] * at(Cv, t)).sum(-1) for t in range(L)], -1) if L else u.new_zeros(u.shape)
    z = i["z"]
    dy = dout * (z * torch.sigmoid(z) if z is not None else 1)

    g = dlast.clone()
    d = {"u": torch.zeros_like(u), "A": torch.zeros_like(A)}
    N = A.shape[1]
    dB_full, dC_full = u.new_zeros(batch, dim, N, L), u.new_zeros(batch, dim, N, L)
    ddt = torch.zeros_like(dt)
    for t in reversed(range(L)):
        g = g + dy[..., t, None] * at(Cv, t)
        a = torch.exp(dt[..., t, None] * A)
        dC_full[..., t] = dy[..., t, None] * xs[t + 1]
        dB_full[..., t] = g * (dt[..., t] * u[..., t])[..., None]
        w = g * a * xs[t]  # gradient of the decay term, times the decay
        d["A"] += (w * dt[..., t, None]).sum(0)
        gB = (g * at(Bv, t)).sum(-1)
        d["u"][..., t] = dt[..., t] * gB + (i["D"] * dy[..., t] if i["D"] is not None else 0)
        ddt[..., t] = (w * A).sum(-1) + u[..., t] * gB
        g = g * a
    d["delta"] = ddt * torch.sigmoid(raw) if softplus else ddt
    for name, full in (("B", dB_full), ("C", dC_full)):  # sum over what B/C is shared across
        M = i[name]
        if M.dim() == 2:
            d[name] = full.sum((0, 3))
        else:
            G = M.shape[1] if M.dim() == 4 else 1
            d[name] = full.view(batch, G, dim // G, N, L).sum(2).view(M.shape)
    if i["D"] is not None:
        d["D"] = (dy * u).sum((0, 2))
    if i["delta_bias"] is not None:
        d["delta_bias"] = d["delta"].sum((0, 2))
    if z is not None:
        s = torch.sigmoid(z)
        Du = i["D"][:, None] * u if i["D"] is not None else 0
        d["z"] = dout * (y + Du) * s * (1 + z * (1 - s))
    if i["initial_state"] is not None:
        d["initial_state"] = g
    out = (y + (i["D"][:, None] * u if i["D"] is not None else 0)) * (z * torch.sigmoid(z) if z is not None else 1)
    return out, xs[-1], d


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
