"""The real CUDA attention kernels (csrc/cuda/attention.cu), compiled with g++ against cuda_emu and
run on the CPU, against the fp64 contract pair of pyneuro/ops/attn/naive.py.

What runs here: the forward (one launch: online softmax over key tiles), the one-launch backward
(Lk within one key tile: dq, dk, dv from one block per (b, kv head)) and the two-launch backward
(longer Lk: dk/dv per key tile, then dq per row tile), through the launchers as attention_glue.cpp
calls them (tests/cuda_emu/emu_attention.py; the glue itself needs a CUDA torch: tests/cuda/).
Cases cross every boundary of the kernels: L = 1, odd lengths, Lq != Lk with causal masking in
both directions, MHA/GQA/MQA, each head-dim bucket (D <= 32, <= 64, <= 128, whose key tiles are
128, 128 and 64 keys), more rows than one row tile, more keys than one key tile (L > 256 too),
dropout (the contract's Philox mask, regenerated in the backward), fp32/bf16/fp16, and strided
inputs, including rows that are not 16-byte aligned (the scalar staging path).

Tolerances (normwise, max |got - want| / max |want|, on the very inputs the kernel saw): fp32
5e-6 (fp32 sums over at most a few hundred keys; exp/log are exact in the emulator, so the GPU's
ex2.approx error is not in it: tests/cuda/ has the GPU levels); fp16/bf16 outputs are rounded once
from fp32, which adds at most one unit roundoff of the largest element (half an ulp: 2^-11 for fp16,
2^-8 for bf16). lse is fp32 in every dtype.
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
from dataclasses import dataclass

import pytest
import torch

from emu_attention import EmulatedAttention
from emu_scan import build_or_fail, emu_build, normwise_error

from pyneuro.ops.attn import naive

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
UNIT_ROUNDOFF = {F32: 0.0, F16: 2.0 ** -11, BF16: 2.0 ** -8}


def tol(dtype) -> float:
    return 5e-6 + UNIT_ROUNDOFF[dtype]


@pytest.fixture(scope="module")
def emu() -> EmulatedAttention:
    lib = EmulatedAttention(build_or_fail("attention"))
    lib.configure("forward")
    return lib


@dataclass(frozen=True)
class Case:
    B: int
    Hq: int
    Hkv: int
    Lq: int
    Lk: int
    D: int
    causal: bool = False
    p: float = 0.0
    dtype: torch.dtype = F32
    layout: str = "contiguous"  # or "strided" (heads/seq swapped, padded rows), "unaligned" (rows off 16 B)
    seed: int = 0

    def __str__(self):
        dt = {F32: "f32", F16: "f16", BF16: "bf16"}[self.dtype]
        return (f"b{self.B}h{self.Hq}/{self.Hkv}-L{self.Lq}x{self.Lk}-D{self.D}{'-causal' if self.causal else ''}"
                f"{f'-p{self.p}' if self.p else ''}-{dt}-{self.layout}")


CASES = [
    Case(1, 1, 1, 1, 1, 8),                                           # L = 1
    Case(2, 3, 3, 17, 17, 24, layout="strided"),                      # MNIST rows (28x28 -> 17 tokens)
    Case(2, 4, 4, 50, 50, 24, causal=True),                           # two row tiles, causal
    Case(1, 4, 2, 13, 11, 32, causal=True),                           # GQA, Lq > Lk causal
    Case(1, 4, 1, 5, 9, 16, causal=True, layout="unaligned"),         # MQA, Lq < Lk causal, scalar staging
    Case(1, 2, 1, 9, 70, 72, causal=True, p=0.3),                     # D bucket 128: two 64-key tiles
    Case(1, 2, 2, 33, 130, 64, layout="strided"),                     # D bucket 64: two 128-key tiles
    Case(1, 2, 2, 20, 20, 128, p=0.2, dtype=BF16),                    # largest D, bf16 dropout
    Case(2, 2, 1, 17, 17, 40, causal=True, dtype=F16, layout="strided"),
    Case(1, 2, 1, 300, 300, 8, causal=True),                          # L > 256: 3 key tiles, 19 row tiles
    Case(1, 1, 1, 260, 257, 16, p=0.1, dtype=BF16, layout="unaligned"),
    Case(1, 3, 3, 7, 7, 8, p=0.5, dtype=F16, layout="strided"),
]


def operand(g, B, H, L, D, dtype, layout):
    """A (B, H, L, D) operand with the case's strides (last stride 1), values ~ N(0, 1)."""
    if layout == "contiguous":
        return torch.randn(B, H, L, D, generator=g).to(dtype)
    if layout == "strided":  # (B, L, H, D + 8) storage: heads and sequence swapped, padded rows
        return torch.randn(B, L, H, D + 8, generator=g).to(dtype).transpose(1, 2)[..., :D]
    base = torch.randn(B, H, L, D + 3, generator=g).to(dtype)  # rows start 3 elements in: never 16-byte aligned
    return base[..., 3:]


def make(c: Case):
    g = torch.Generator().manual_seed(c.seed)
    q = operand(g, c.B, c.Hq, c.Lq, c.D, c.dtype, c.layout)
    k = operand(g, c.B, c.Hkv, c.Lk, c.D, c.dtype, c.layout)
    v = operand(g, c.B, c.Hkv, c.Lk, c.D, c.dtype, c.layout)
    dout = operand(g, c.B, c.Hq, c.Lq, c.D, c.dtype, c.layout)
    rng = torch.tensor([int(torch.randint(0, 2 ** 62, (1,), generator=g)), c.seed + 7]) if c.p > 0 else None
    return q, k, v, dout, rng


def run(emu, c: Case):
    q, k, v, dout, rng = make(c)
    scale = 1 / math.sqrt(c.D)
    out, lse = emu.fwd(q, k, v, c.causal, scale, c.p, rng)
    grads = emu.bwd(dout, q, k, v, out, lse, c.causal, scale, c.p, rng)
    return (q, k, v, dout, rng, scale), (out, lse, *grads)


@pytest.mark.parametrize("c", CASES, ids=str)
def test_matches_contract(emu, c: Case):
    (q, k, v, dout, rng, scale), (out, lse, dq, dk, dv) = run(emu, c)
    want_out, want_lse = naive.attention_fwd_contract(q.double(), k.double(), v.double(), c.causal, scale, c.p, rng)
    # The backward is judged on the forward the kernel produced (its rounded out and its lse).
    want = naive.attention_bwd_contract(dout, q, k, v, out, lse, c.causal, scale, c.p, rng)
    errors = {"out": normwise_error(out, want_out), "lse": normwise_error(lse, want_lse)}
    errors.update({n: normwise_error(g, w) for n, g, w in zip(("dq", "dk", "dv"), (dq, dk, dv), want)})
    limits = {n: tol(F32) if n == "lse" else tol(c.dtype) for n in errors}
    bad = {n: f"{e:.2e} > {limits[n]:.1e}" for n, e in errors.items() if not e <= limits[n]}
    assert not bad, f"{c}: {bad}"


def test_dropout_changes_the_result(emu):
    """The mask is applied (an ignored p would also be caught by the oracle; this says so directly)."""
    c = Case(1, 2, 2, 16, 16, 16, p=0.5)
    _, (out_p, lse_p, *_) = run(emu, c)
    _, (out_0, lse_0, *_) = run(emu, Case(1, 2, 2, 16, 16, 16))
    assert normwise_error(out_p, out_0.double()) > 0.1
    assert torch.equal(lse_p, lse_0)  # lse is the undropped softmax's


@pytest.mark.parametrize("c", [CASES[3], CASES[5]], ids=str)
def test_schedule_independent(emu, c: Case):
    """No atomics, no reliance on thread order: bitwise the same under every interleaving."""
    _, ref = run(emu, c)
    try:
        for schedule, workers in (("reverse", 1), ("random", 1), ("forward", 2)):
            emu.configure(schedule, seed=3, workers=workers)
            _, got = run(emu, c)
            for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), got, ref):
                assert torch.equal(a, b), f"{c} {name} differs under {schedule} x{workers}"
    finally:
        emu.configure("forward")


def test_refuses_unsupported_head_dim(emu):
    q = torch.zeros(1, 1, 4, 12)
    with pytest.raises(RuntimeError, match="cudaError 1"):
        emu.fwd(q, q, q, False, 1.0)


# ---------------------------------------------------------------------------------- sanitizers
SANITIZE = os.environ.get("PYNEURO_EMU_SANITIZE", "")


@pytest.mark.slow
@pytest.mark.skipif(not SANITIZE, reason="opt-in: set PYNEURO_EMU_SANITIZE=address,undefined or thread (each "
                                         "sanitized build takes minutes; tests/cuda_emu/test_emulated_sanitizers.py "
                                         "shows each mode catching planted bugs)")
def test_clean_under_sanitizer():
    """tools/cuda_emu/drivers/attention_selfcheck.cpp: forward and both backward paths, fp32 and bf16,
    three schedules, with no out-of-bounds, misaligned or racing access reported."""
    if shutil.which(emu_build.CXX) is None:
        pytest.skip(f"{emu_build.CXX} not found")
    try:
        exe = emu_build.build("attention_selfcheck", sanitize=SANITIZE)
    except emu_build.BuildError as e:
        pytest.fail(f"sanitized build of attention_selfcheck failed:\n{e}", pytrace=False)
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0:abort_on_error=0", TSAN_OPTIONS="halt_on_error=0")
    r = subprocess.run([str(exe)], capture_output=True, text=True, env=env, timeout=1800)
    log = r.stdout + r.stderr
    assert r.returncode == 0 and "Sanitizer" not in log, log[-6000:]
    assert log.count("ok ") == 3, log


# ------------------------------------------------------------------------------- the torch glue
@pytest.fixture(scope="module")
def emu_glue():
    """csrc/cuda/attention_glue.cpp itself (PYNEURO_CUDA_GLUE_EMULATION: CPU tensors, kernels on
    cuda_emu) as torch.ops.pyneuro_emu_attention.attention_fwd/_bwd."""
    torch.ops.load_library(str(build_or_fail("attention_glue")))
    return torch.ops.pyneuro_emu_attention


@pytest.mark.slow
@pytest.mark.parametrize("c", [Case(2, 4, 2, 13, 11, 32, causal=True, p=0.25, layout="strided"),
                               Case(1, 2, 1, 9, 70, 72, dtype=BF16, layout="unaligned")], ids=str)
def test_glue_matches_contract(emu_glue, c: Case):
    """The glue's strides, outputs (contiguous, q's dtype; lse fp32), rng_state read and launches."""
    q, k, v, dout, rng = make(c)
    scale = 0.3
    out, lse = emu_glue.attention_fwd(q, k, v, c.causal, scale, c.p, rng)
    dq, dk, dv = emu_glue.attention_bwd(dout, q, k, v, out, lse, c.causal, scale, c.p, rng)
    assert all(t.is_contiguous() and t.dtype == c.dtype for t in (out, dq, dk, dv)) and lse.dtype == F32
    want_out, want_lse = naive.attention_fwd_contract(q.double(), k.double(), v.double(), c.causal, scale, c.p, rng)
    want = naive.attention_bwd_contract(dout, q, k, v, out, lse, c.causal, scale, c.p, rng)
    assert normwise_error(lse, want_lse) <= tol(F32)
    for name, got, w in zip(("out", "dq", "dk", "dv"), (out, dq, dk, dv), (want_out, *want)):
        assert normwise_error(got, w) <= tol(c.dtype), name


@pytest.mark.slow
def test_glue_argument_errors(emu_glue):
    """The shared check (csrc/common/attention_args.h) runs before any launch, with the error contract."""
    q = torch.randn(1, 2, 4, 16)
    with pytest.raises(ValueError, match="head_dim"):
        emu_glue.attention_fwd(q[..., :12], q[..., :12], q[..., :12], False, 1.0, 0.0, None)
    with pytest.raises(ValueError, match="rng_state"):
        emu_glue.attention_fwd(q, q, q, False, 1.0, 0.5, None)
    with pytest.raises(TypeError, match="dtype"):
        emu_glue.attention_fwd(q, q.half(), q, False, 1.0, 0.0, None)
    with pytest.raises(ValueError, match="multiple"):
        emu_glue.attention_fwd(torch.randn(1, 3, 4, 16), q, q, False, 1.0, 0.0, None)
