"""Random selective-scan inputs, shared by the test suites that call the op or its kernels
(tests/ops/selective_scan, tests/kernels). tests/ is on sys.path (its conftest.py's folder), so
they import it as ``scan_inputs``."""
from __future__ import annotations

import torch


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
