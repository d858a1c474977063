"""Forward + backward speed of the CPU selective scan against a naive PyTorch loop, per CPU ISA.

    .venv/bin/python tests/cpu/scan_speed.py [--shape 32 128 784 16] [--reps 5] [--isas avx2 avx512]

The naive loop is the fair baseline: the recurrence step by step in PyTorch, with the sequence
split by `unbind` (one view per step, whose backward is O(L) in total; indexing [:, :, t] instead
makes autograd's backward O(L^2)). Times are the minimum over reps of both wall time and process
CPU time (all threads), so a ratio stays meaningful on a machine shared with other work. Not a
test (pytest does not collect it); the figures go to docs/kernels/selective_scan.md.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import pyneuro._C as C
from pyneuro.ops import selective_scan


def naive_unbind(u, delta, A, B, Cm, D, z, delta_bias):
    """Variable (batch, N, L) B and C, softplus on: the benchmark's configuration."""
    dt = F.softplus(delta + delta_bias[:, None])
    x = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for dt_t, u_t, B_t, C_t in zip(dt.unbind(-1), u.unbind(-1), B.unbind(-1), Cm.unbind(-1)):
        x = torch.exp(dt_t[..., None] * A) * x + (dt_t * u_t)[..., None] * B_t[:, None, :]
        ys.append((x * C_t[:, None, :]).sum(-1))
    y = torch.stack(ys, -1) + D[:, None] * u
    return y * F.silu(z)


def inputs(batch, dim, L, N):
    g = torch.Generator().manual_seed(0)
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale)  # noqa: E731
    return [r(batch, dim, L), r(batch, dim, L, scale=0.5), -torch.rand(dim, N, generator=g) - 0.5,
            r(batch, N, L), r(batch, N, L), r(dim), r(batch, dim, L), r(dim, scale=0.1)]


def timed(fn, leaves, reps):
    best_wall = best_cpu = float("inf")
    for _ in range(reps):
        for t in leaves:
            t.grad = None
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn(*leaves)
        out.backward(torch.ones_like(out))
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best_wall, best_cpu


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", type=int, nargs=4, default=[32, 128, 784, 16])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--naive-reps", type=int, default=2)
    p.add_argument("--isas", nargs="*", default=None)
    a = p.parse_args()
    leaves = [t.requires_grad_() for t in inputs(*a.shape)]
    scan = lambda *t: selective_scan(*t, delta_softplus=True, backend="cpu")  # noqa: E731
    n_wall, n_cpu = timed(naive_unbind, leaves, a.naive_reps)
    print(f"shape {tuple(a.shape)}, {torch.get_num_threads()} threads; naive (unbind) fwd+bwd: "
          f"{n_wall * 1e3:.0f} ms wall, {n_cpu * 1e3:.0f} ms CPU")
    before = C.cpu_isa()
    for isa in a.isas or C.cpu_isas():
        C.set_cpu_isa(isa)
        timed(scan, leaves, 1)  # warm-up
        w, c = timed(scan, leaves, a.reps)
        print(f"  cpu/{isa:<8} {w * 1e3:7.1f} ms wall {c * 1e3:7.1f} ms CPU   "
              f"speed-up: {n_wall / w:5.1f}x wall, {n_cpu / c:5.1f}x CPU")
    C.set_cpu_isa(before)


if __name__ == "__main__":
    main()
