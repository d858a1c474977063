"""cuda_emu itself: the fp16/bf16 conversions of its shim headers, the source rewrite, and small
kernels (tests/cuda_emu/kernels/emu_selftest.cu) with a known answer or a known bug, showing that
the emulator computes warp collectives as the hardware does and reports what the README says it
reports (a missing barrier, divergent barriers, a shuffle naming an exited lane, a launch asking
for more shared memory than allowed)."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch

from emu_scan import build_or_fail, emu_build, gxx_missing

rewrite_cu = emu_build.rewrite_cu


@pytest.fixture(scope="module")
def selftest():
    lib = ctypes.CDLL(str(build_or_fail("emu_selftest")))
    lib.cuda_emu_error_message.restype = ctypes.c_char_p
    lib.cuda_emu_configure.argtypes = [ctypes.c_int, ctypes.c_ulonglong, ctypes.c_int, ctypes.c_ulonglong]
    lib.selftest_fill.argtypes = [ctypes.c_void_p, ctypes.c_double, ctypes.c_int]
    lib.selftest_smem.argtypes = [ctypes.c_longlong, ctypes.c_int]
    yield lib
    lib.cuda_emu_configure(0, 0, 1, 0)


def ptr(t):
    return ctypes.c_void_p(t.data_ptr())


def error_of(lib, rc):
    msg = lib.cuda_emu_error_message().decode()
    lib.cuda_emu_clear_error()
    return rc, msg


# ---- fp16 / bf16 conversions ------------------------------------------------------------------
def _convert(lib, fn, x: np.ndarray, out_dtype):
    y = np.empty(x.shape, dtype=out_dtype)
    getattr(lib, fn)(x.ctypes.data_as(ctypes.c_void_p), y.ctypes.data_as(ctypes.c_void_p), ctypes.c_longlong(x.size))
    return y


def _probe_floats():
    """Random fp32 bit patterns plus every tie and edge the rounding can get wrong."""
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2 ** 32, size=400_000, dtype=np.uint64).astype(np.uint32)
    as_f32 = np.arange(0x7c00, dtype=np.uint16).view(np.float16).astype(np.float32).view(np.uint32)
    ties = as_f32 + np.uint32(1 << 12)  # every finite half, and its midpoint to the next (normal range)
    edges = np.array([0x477fe000, 0x477fefff, 0x477ff000, 0x477ff001, 0x33000000, 0x33000001, 0x32ffffff,
                      0x387fe000, 0x38800000, 0x7f800000, 0x00000001, 0x7f7fffff], dtype=np.uint32)
    x = np.concatenate([bits, as_f32, ties, edges]).view(np.float32)
    return np.concatenate([x, -x])


def test_half_conversions_match_numpy(selftest):
    every = np.arange(2 ** 16, dtype=np.uint16)
    got = _convert(selftest, "cuda_emu_half_to_float", every, np.float32)
    np.testing.assert_array_equal(got, every.view(np.float16).astype(np.float32))  # exact, NaN == NaN
    x = _probe_floats()
    x = x[~np.isnan(x)]
    got = _convert(selftest, "cuda_emu_float_to_half", x, np.uint16)
    with np.errstate(over="ignore"):  # overflow to inf is one of the cases checked
        want = x.astype(np.float16).view(np.uint16)  # numpy rounds to nearest even
    bad = np.nonzero(got != want)[0]
    assert bad.size == 0, f"{bad.size} mismatches, e.g. {x[bad[:3]]!r}: {got[bad[:3]]} vs {want[bad[:3]]}"
    nan = _convert(selftest, "cuda_emu_float_to_half", np.array([np.nan], np.float32), np.uint16)
    assert np.isnan(nan.view(np.float16)).all()


def test_bf16_conversions_match_torch(selftest):
    every = np.arange(2 ** 16, dtype=np.uint16)
    got = _convert(selftest, "cuda_emu_bf16_to_float", every, np.float32)
    want = torch.from_numpy(every.view(np.int16)).view(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(got, want)
    x = _probe_floats()
    x = x[~np.isnan(x)]
    got = _convert(selftest, "cuda_emu_float_to_bf16", x, np.uint16)
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    bad = np.nonzero(got != want)[0]
    assert bad.size == 0, f"{bad.size} mismatches, e.g. {x[bad[:3]]!r}: {got[bad[:3]]} vs {want[bad[:3]]}"


# ---- the source rewrite -----------------------------------------------------------------------
def test_rewrite_launches_and_extern_shared():
    src = (
        "// k<<<1, 2>>>(x) in a comment stays\n"
        "const char* s = \"a<<<b>>>(c)\";\n"
        "extern __shared__ __align__(16) float4 smem4[];\n"
        "ns::kern<T, 4><<<grid, dim3(32, 4),\n   smem, stream>>>(p,\n q);\n"
        "plain<<<1, 32>>>();\n")
    out, counts = rewrite_cu.rewrite_source(src, "/x/y.cu")
    assert counts == {"launches": 2, "extern_shared": 1}
    body = out.split("\n", 1)[1]
    assert out.startswith('#line 1 "/x/y.cu"\n')
    assert body.count("\n") == src.count("\n"), "line numbering must survive the rewrite"
    assert "// k<<<1, 2>>>(x) in a comment stays" in body and '"a<<<b>>>(c)"' in body
    assert "float4* const smem4 = ::cuda_emu::dynamic_smem<float4>();" in body
    assert ("::cuda_emu::launch(ns::kern<T, 4>, ::cuda_emu::LaunchConfig(grid, dim3(32, 4), smem, stream), p, q)"
            in body)
    assert "::cuda_emu::launch(plain, ::cuda_emu::LaunchConfig(1, 32))" in body


# ---- kernels ----------------------------------------------------------------------------------
def test_warp_collectives(selftest):
    out = torch.zeros(64, 8, dtype=torch.int32)
    assert selftest.selftest_shuffles(ptr(out)) == 0
    lane = torch.arange(64) % 32
    warp = torch.arange(64) // 32
    v = 100 * warp + lane
    base = 100 * warp
    seg8 = lane // 8 * 8
    expected = torch.stack([
        base + (lane ^ 5),
        torch.where(lane >= 3, v - 3, v),
        torch.where(lane < 29, v + 3, v),
        base + 7,
        base + (lane ^ 2),
        torch.where(lane + 2 < seg8 + 8, v + 2, v),
        torch.full((64,), sum(1 << k for k in range(0, 32, 3))),
        torch.where(warp == 1, 1, 0) + 2,
    ], dim=1)
    for k, name in enumerate(["xor 5", "up 3", "down 3", "idx 7", "xor 2 width 8", "down 2 width 8", "ballot",
                              "any + 2 all"]):
        assert torch.equal(out[:, k].long(), expected[:, k].long()), f"{name}: {out[:, k].tolist()}"


@pytest.mark.parametrize("schedule", [0, 1, 2], ids=["forward", "reverse", "random"])
def test_missing_barrier_is_visible(selftest, schedule):
    """With the barrier the block reverses its ids under every schedule; without it the reads of
    slots not yet written return the NaN shared memory starts with."""
    selftest.cuda_emu_configure(schedule, 5, 1, 0)
    expected = torch.arange(63, -1, -1, dtype=torch.float32).repeat(3)
    out = torch.zeros(3 * 64)
    assert selftest.selftest_reverse(ptr(out), 3, 64, 1) == 0
    assert torch.equal(out, expected)
    out = torch.zeros(3 * 64)
    assert selftest.selftest_reverse(ptr(out), 3, 64, 0) == 0
    assert out.isnan().any(), "a read before the barrier went unnoticed"
    selftest.cuda_emu_configure(0, 0, 1, 0)


def test_static_shared_is_per_block(selftest):
    out = torch.zeros(5, dtype=torch.int32)
    assert selftest.selftest_static_shared(ptr(out), 5) == 0
    assert out.tolist() == [sum(range(64)) + 64 * 1000 * b for b in range(5)]


@pytest.mark.parametrize("kernel, words", [
    ("selftest_divergent_barrier", ["16 threads __syncthreads at emu_selftest.cu", "16 threads exited"]),
    ("selftest_exit_before_barrier", ["1 threads exited", "31 threads __syncthreads"]),
    ("selftest_exited_lane_shuffle", ["names lane 5, which has exited"]),
])
def test_divergence_is_reported(selftest, kernel, words):
    out = torch.zeros(32, dtype=torch.int32)
    rc, msg = error_of(selftest, getattr(selftest, kernel)(ptr(out)))
    assert rc == 719, f"expected cudaErrorLaunchFailure, got {rc}: {msg}"
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"


def test_dynamic_shared_memory_limits(selftest):
    assert selftest.selftest_smem(48 << 10, 0) == 0  # the default limit
    rc, msg = error_of(selftest, selftest.selftest_smem(64 << 10, 0))
    assert rc == 9 and "cudaFuncSetAttribute" in msg, msg
    assert selftest.selftest_smem(64 << 10, 64 << 10) == 0  # after opting in
    rc, msg = error_of(selftest, selftest.selftest_smem(200 << 10, 200 << 10))  # over sm_80's 163 KiB
    assert rc == 1 and "exceeds" in msg, msg


def test_multiline_template_launch(selftest):
    out = torch.zeros(300, dtype=torch.float64)
    assert selftest.selftest_fill(out.data_ptr(), 2.5, 300) == 0
    assert torch.equal(out, torch.full((300,), 2.5, dtype=torch.float64))


@pytest.mark.skipif(gxx_missing() is not None, reason=str(gxx_missing()))
def test_builder_reports_compile_errors(tmp_path):
    """A .cu the emulator cannot compile is a BuildError carrying the compiler's message."""
    bad = tmp_path / "bad.cu"
    bad.write_text('__global__ void k(float* p) { asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(*p) : "f"(*p)); }\n')
    with pytest.raises(emu_build.BuildError, match="PYNEURO_CUDA_EMULATION"):
        emu_build._compile(bad, tmp_path / "bad.o", emu_build.BASE_FLAGS + [f"-I{emu_build.HERE / 'include'}"])
