"""Drive every CUDA kernel of pyneuro._C on small shapes, for compute-sanitizer (scripts/gpu_check.sh).

Calls torch.ops.pyneuro.selective_scan_fwd / _bwd directly (so the forward and backward kernels,
every B/C variant and the partial-sum kernels run) and compares each result with the CPU kernel
on the same inputs, upcast to fp32, so a launch that silently did nothing also fails. Then the same
for the recurrent cells' ops (lstm/gru/rnn/leaky _fwd/_bwd), on both CUDA paths: the persistent
kernels and the per-step cell kernels (PYNEURO_CUDA_RNN_PATH=persistent / stepwise). Then attention
(attention_fwd / _bwd: the one-launch and the two-launch backward, causal, GQA, dropout, strided
inputs) against the fp64 contract of pyneuro/ops/attn/naive.py, and once through the public
pyneuro.ops.attention(..., backend="cuda") with autograd.

    compute-sanitizer --tool memcheck --error-exitcode 1 python scripts/gpu_check_sanitize.py --shapes full
    compute-sanitizer --tool racecheck --error-exitcode 1 python scripts/gpu_check_sanitize.py --shapes tiny
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from dataclasses import dataclass

import torch


@dataclass
class Case:
    batch: int
    dim: int
    L: int
    N: int
    groups_B: int  # 0: constant B (dim, N) fp32; else (batch, G, N, L) in the dtype
    groups_C: int
    dtype: torch.dtype
    optional: bool = True  # D, z, delta_bias, initial_state and dlast_state present
    softplus: bool = True
    chunk: int = 64

    def __str__(self):
        return (f"b{self.batch} d{self.dim} L{self.L} N{self.N} B:{self.groups_B or 'const'} "
                f"C:{self.groups_C or 'const'} {str(self.dtype).removeprefix('torch.')} "
                f"{'all-optional' if self.optional else 'no-optional'} chunk{self.chunk}")


# Odd L (partial time tiles), dim not a multiple of 32 (partial channel tiles), groups that cut the
# 32-channel tiles (segments), N = 16 and 64, every dtype, a chunk size other than the tile.
FULL = [
    Case(2, 40, 37, 16, 0, 0, torch.float32),
    Case(2, 48, 130, 16, 1, 2, torch.bfloat16),
    Case(1, 64, 129, 64, 2, 0, torch.float16, optional=False, softplus=False),
    Case(2, 24, 67, 64, 0, 1, torch.float32, chunk=16),
    Case(1, 36, 1, 16, 3, 3, torch.float32),
]
# racecheck / synccheck are slow: one block row, few tiles.
TINY = [
    Case(1, 40, 70, 16, 1, 2, torch.float32),
    Case(1, 33, 37, 64, 0, 0, torch.float16, softplus=False),
]
TOL = {torch.float32: 2e-4, torch.float16: 2e-2, torch.bfloat16: 6e-2}


def make_inputs(c: Case, device: str, gen: torch.Generator) -> dict:
    def rand(*shape, dtype=torch.float32, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype).to(device)

    def bc(groups):
        return rand(c.dim, c.N) if groups == 0 else rand(c.batch, groups, c.N, c.L, dtype=c.dtype)

    x = {
        "u": rand(c.batch, c.dim, c.L, dtype=c.dtype),
        "delta": rand(c.batch, c.dim, c.L, dtype=c.dtype, scale=0.5),
        "A": -torch.rand(c.dim, c.N, generator=gen).add(0.1).to(device),
        "B": bc(c.groups_B),
        "C": bc(c.groups_C),
        "D": rand(c.dim) if c.optional else None,
        "z": rand(c.batch, c.dim, c.L, dtype=c.dtype) if c.optional else None,
        "delta_bias": rand(c.dim, scale=0.1) if c.optional else None,
        "initial_state": rand(c.batch, c.dim, c.N) if c.optional else None,
        "dout": rand(c.batch, c.dim, c.L, dtype=c.dtype),
        "dlast_state": rand(c.batch, c.dim, c.N) if c.optional else None,
    }
    if not c.softplus:  # raw delta is the step: keep it positive
        x["delta"] = x["delta"].abs()
    return x


def run(c: Case, x: dict):
    ops = torch.ops.pyneuro
    out, last, chunks = ops.selective_scan_fwd(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"],
                                               x["delta_bias"], x["initial_state"], c.softplus, c.chunk)
    grads = ops.selective_scan_bwd(x["dout"], x["dlast_state"], x["u"], x["delta"], x["A"], x["B"], x["C"],
                                   x["D"], x["z"], x["delta_bias"], x["initial_state"], chunks, c.softplus,
                                   c.chunk)
    return (out, last, chunks, *grads)


NAMES = ["out", "last_state", "chunk_states", "du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias",
         "dinitial_state"]


def check(c: Case, gen: torch.Generator) -> list[str]:
    x = make_inputs(c, "cuda", gen)
    got = run(c, x)
    torch.cuda.synchronize()
    # The CPU kernel on the same values in fp32: the CUDA kernel also computes in fp32.
    ref = run(c, {k: None if v is None else v.cpu().float() for k, v in x.items()})
    errors = []
    for name, g, r in zip(NAMES, got, ref):
        if g is None or r is None or g.numel() == 0:
            continue
        g = g.float().cpu()
        if g.shape != r.shape:
            errors.append(f"{name}: shape {tuple(g.shape)}, the CPU kernel's is {tuple(r.shape)}")
            continue
        if not torch.isfinite(g).all():
            errors.append(f"{name}: non-finite values")
            continue
        scale = r.abs().max().item() + 1e-6
        err = (g - r).abs().max().item() / scale
        if err > TOL[c.dtype]:
            errors.append(f"{name}: max error {err:.2e} of max |ref| > {TOL[c.dtype]:.0e}")
    return errors


# The recurrent cells: odd sizes (H not a multiple of 16, B not of the 16-row tiles), projection.
RNN_CELLS = ["lstm", "lstm_proj", "gru", "rnn_relu", "leaky"]


def rnn_args(cell: str, dtype: torch.dtype, gen: torch.Generator, T=3, B=5, I=7, H=20, P=6) -> tuple:
    """The contract's forward arguments of ``cell`` on CUDA, with a cotangent for every output."""
    def rand(*shape, scale=0.3):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype).cuda()

    base = cell.split("_")[0]
    G = {"lstm": 4, "gru": 3}.get(base, 1)
    R = P if cell == "lstm_proj" else H
    x = rand(T, B, I, scale=1.0)
    if base == "lstm":
        args = (x, rand(B, R), rand(B, H), rand(G * H, I), rand(G * H, R), rand(G * H), rand(G * H),
                rand(P, H) if cell == "lstm_proj" else None)
        grads = (rand(T, B, R), rand(B, R), rand(B, H))
    elif base == "leaky":
        tau = torch.linspace(1.0, 8.0, H).to(dtype).cuda()
        args = (x, rand(B, H), rand(H, I), rand(H, H), rand(H), tau)
        grads = (rand(T, B, H), rand(B, H))
    else:
        args = (x, rand(B, H), rand(G * H, I), rand(G * H, H), rand(G * H), rand(G * H))
        if base == "rnn":
            args = (*args, cell == "rnn_relu")
        grads = (rand(T, B, H), rand(B, H))
    return args, grads


def rnn_run(cell: str, args: tuple, grads: tuple):
    base = cell.split("_")[0]
    ops = torch.ops.pyneuro
    fwd, bwd = getattr(ops, f"{base}_fwd"), getattr(ops, f"{base}_bwd")
    tensors, flags = (args[:-1], args[-1:]) if base == "rnn" else (args, ())
    outs = fwd(*args)
    return (*outs, *bwd(*grads, *tensors, outs[-1], *flags))


def rnn_check(cell: str, dtype: torch.dtype, path: str, gen: torch.Generator) -> list[str]:
    args, grads = rnn_args(cell, dtype, gen)
    os.environ["PYNEURO_CUDA_RNN_PATH"] = path
    try:
        got = rnn_run(cell, args, grads)
        torch.cuda.synchronize()
    finally:
        os.environ.pop("PYNEURO_CUDA_RNN_PATH", None)
    cpu = lambda t: t.cpu().float() if isinstance(t, torch.Tensor) else t  # noqa: E731
    ref = rnn_run(cell, tuple(cpu(a) for a in args), tuple(cpu(g) for g in grads))
    errors = []
    for k, (g, r) in enumerate(zip(got, ref)):
        if g.numel() == 0 and r.numel() == 0:
            continue
        g = g.float().cpu()
        if g.shape != r.shape:
            errors.append(f"result {k}: shape {tuple(g.shape)}, the CPU kernel's is {tuple(r.shape)}")
        elif not torch.isfinite(g).all():
            errors.append(f"result {k}: non-finite values")
        else:
            err = (g - r).abs().max().item() / (r.abs().max().item() + 1e-6)
            if err > TOL[dtype]:
                errors.append(f"result {k}: max error {err:.2e} of max |ref| > {TOL[dtype]:.0e}")
    return errors


# Attention: (B, Hq, Hkv, Lq, Lk, D, causal, dropout_p, dtype, strided). Lk within one key tile (the
# one-launch backward) and above it (dk/dv then dq), every D bucket, GQA, Lq != Lk.
ATTN_FULL = [
    (2, 4, 4, 17, 17, 24, False, 0.0, torch.float32, False),
    (2, 4, 2, 33, 29, 64, True, 0.2, torch.bfloat16, True),
    (1, 2, 1, 9, 150, 72, True, 0.0, torch.float16, False),
    (1, 2, 2, 130, 260, 32, False, 0.1, torch.float32, True),
]
ATTN_TINY = [
    (1, 2, 1, 17, 17, 24, True, 0.2, torch.float32, False),
    (1, 1, 1, 9, 70, 72, False, 0.0, torch.float32, True),
]


def attention_label(c) -> str:
    B, Hq, Hkv, Lq, Lk, D, causal, p, dtype, strided = c
    return (f"b{B} h{Hq}/{Hkv} L{Lq}x{Lk} D{D}{' causal' if causal else ''}{f' p{p}' if p else ''} "
            f"{str(dtype).removeprefix('torch.')}{' strided' if strided else ''}")


def attention_check(c, gen: torch.Generator) -> list[str]:
    from pyneuro.ops.attn import naive

    B, Hq, Hkv, Lq, Lk, D, causal, p, dtype, strided = c

    def operand(H, L):
        if strided:
            return torch.randn(B, L, H, D + 8, generator=gen).to(dtype).cuda().transpose(1, 2)[..., :D]
        return torch.randn(B, H, L, D, generator=gen).to(dtype).cuda()

    q, k, v, dout = operand(Hq, Lq), operand(Hkv, Lk), operand(Hkv, Lk), operand(Hq, Lq)
    rng = torch.tensor([20261202, 5], dtype=torch.int64) if p > 0 else None
    scale = 1 / D ** 0.5
    ops = torch.ops.pyneuro
    out, lse = ops.attention_fwd(q, k, v, causal, scale, p, rng)
    got = (out, lse, *ops.attention_bwd(dout, q, k, v, out, lse, causal, scale, p, rng))
    torch.cuda.synchronize()
    cpu = [t.cpu() for t in (q, k, v, dout, out, lse)]
    ref = (*naive.attention_fwd_contract(*(t.double() for t in cpu[:3]), causal, scale, p, rng),
           *naive.attention_bwd_contract(cpu[3], *cpu[:3], cpu[4], cpu[5], causal, scale, p, rng))
    errors = []
    for name, g, r in zip(("out", "lse", "dq", "dk", "dv"), got, ref):
        g = g.double().cpu()
        if g.shape != r.shape:
            errors.append(f"{name}: shape {tuple(g.shape)}, the contract's is {tuple(r.shape)}")
        elif not torch.isfinite(g).all():
            errors.append(f"{name}: non-finite values")
        else:
            err = (g - r).abs().max().item() / (r.abs().max().item() + 1e-6)
            limit = TOL[torch.float32 if name == "lse" else dtype]
            if err > limit:
                errors.append(f"{name}: max error {err:.2e} of max |ref| > {limit:.0e}")
    return errors


def attention_public_check(gen: torch.Generator) -> list[str]:
    """The public function with autograd on the cuda backend (the registered pair, no fallback)."""
    try:
        from pyneuro.ops.attn import attention, naive
    except ImportError as e:
        return [f"pyneuro.ops.attn.attention is not importable: {e}"]
    leaves = [torch.randn(2, 4, 17, 24, generator=gen).cuda().requires_grad_() for _ in range(3)]
    dout = torch.randn(2, 4, 17, 24, generator=gen).cuda()
    out = attention(*leaves, causal=True, backend="cuda")
    grads = torch.autograd.grad(out, leaves, dout)
    torch.cuda.synchronize()
    ref_leaves = [t.detach().cpu().double().requires_grad_() for t in leaves]
    ref = naive.attention_naive(*ref_leaves, causal=True)
    ref_grads = torch.autograd.grad(ref, ref_leaves, dout.cpu().double())
    errors = []
    for name, g, r in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref, *ref_grads)):
        err = (g.detach().double().cpu() - r).abs().max().item() / (r.abs().max().item() + 1e-6)
        if not err <= TOL[torch.float32]:
            errors.append(f"{name}: max error {err:.2e} of max |ref| > {TOL[torch.float32]:.0e}")
    return errors


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", choices=["full", "tiny"], default="full")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check_sanitize: no CUDA device", file=sys.stderr)
        return 2
    importlib.import_module("pyneuro._C")  # registers the ops
    if not torch._C._dispatch_has_kernel_for_dispatch_key("pyneuro::selective_scan_fwd", "CUDA"):
        print("gpu_check_sanitize: pyneuro._C has no CUDA kernel for selective_scan_fwd", file=sys.stderr)
        return 2
    gen = torch.Generator().manual_seed(0)
    failed = 0
    for c in FULL if args.shapes == "full" else TINY:
        start = time.perf_counter()
        errors = check(c, gen)
        print(f"{'ok  ' if not errors else 'FAIL'}  selective_scan fwd+bwd  {c}  ({time.perf_counter() - start:.1f} s)")
        for e in errors:
            print(f"        {e}")
        failed |= bool(errors)
    if torch._C._dispatch_has_kernel_for_dispatch_key("pyneuro::lstm_fwd", "CUDA"):
        dtypes = (torch.float32, torch.bfloat16) if args.shapes == "full" else (torch.float32,)
        for cell in RNN_CELLS:
            for dtype in dtypes:
                for path in ("persistent", "stepwise"):
                    if path == "persistent" and cell == "lstm_proj":
                        continue  # the projection LSTM has no persistent kernel
                    start = time.perf_counter()
                    errors = rnn_check(cell, dtype, path, gen)
                    print(f"{'ok  ' if not errors else 'FAIL'}  {cell} fwd+bwd  {str(dtype).removeprefix('torch.')} "
                          f"{path}  ({time.perf_counter() - start:.1f} s)")
                    for e in errors:
                        print(f"        {e}")
                    failed |= bool(errors)
    if torch._C._dispatch_has_kernel_for_dispatch_key("pyneuro::attention_fwd", "CUDA"):
        for c in ATTN_FULL if args.shapes == "full" else ATTN_TINY:
            start = time.perf_counter()
            errors = attention_check(c, gen)
            print(f"{'ok  ' if not errors else 'FAIL'}  attention fwd+bwd  {attention_label(c)}  "
                  f"({time.perf_counter() - start:.1f} s)")
            for e in errors:
                print(f"        {e}")
            failed |= bool(errors)
        start = time.perf_counter()
        errors = attention_public_check(gen)
        print(f"{'ok  ' if not errors else 'FAIL'}  pyneuro.ops.attention backend=cuda  ({time.perf_counter() - start:.1f} s)")
        for e in errors:
            print(f"        {e}")
        failed |= bool(errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
