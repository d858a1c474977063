// Device building blocks shared by pyneuro's CUDA kernels (selective scan today; the recurrent
// cells and attention next): dtype conversion, fast math on the MUFU, 16-byte vector transfers,
// warp/block scans and reductions, and launch-error propagation.
//
// Rules this header keeps, so every kernel keeps them by using it:
//   - CUDA toolkit headers only (no torch): a .cu compiles with bare nvcc, and host code reports
//     errors as cudaError_t for the torch glue to raise.
//   - Every inline PTX or hardware-only intrinsic is here, behind PYNEURO_CUDA_EMULATION with a
//     plain C++ fallback, so the CPU emulator (tools/cuda_emu) compiles the real kernels with g++.
//   - All accumulation is fp32; fp16/bf16 exist only in memory.
#pragma once

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include <cstdint>

// Return a failed cudaError_t from the enclosing function (host code returning cudaError_t).
#define PYNEURO_CUDA_TRY(expr)                       \
  do {                                               \
    const cudaError_t pyneuro_err_ = (expr);         \
    if (pyneuro_err_ != cudaSuccess) return pyneuro_err_; \
  } while (0)

// After a <<<...>>> launch: a bad configuration (grid, block, shared memory) is reported by
// cudaGetLastError, not by the launch statement; return it. Faults inside the kernel surface at
// the next synchronising call, as with any asynchronous launch.
#define PYNEURO_CUDA_CHECK_LAUNCH() PYNEURO_CUDA_TRY(cudaGetLastError())

namespace pyneuro {
namespace cuda {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int imax(int a, int b) { return a > b ? a : b; }

// ---- storage dtypes: fp32 in registers, T in memory ----------------------------------------------
__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// ---- fast math -----------------------------------------------------------------------------------
// 2^x on the MUFU (ex2.approx.ftz: 2 ulp, denormal results flush to 0), whatever the fast-math
// flags. Emulation: exp2f (exact), so the emulator checks the algebra, not the MUFU's error.
__device__ __forceinline__ float ex2_approx(float x) {
#if defined(__CUDA_ARCH__) && !defined(PYNEURO_CUDA_EMULATION)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return exp2f(x);
#endif
}

// e^x as one FMUL + one MUFU.EX2 (relative error ~2^-21 for |x| < 80).
__device__ __forceinline__ float exp_fast(float x) { return ex2_approx(x * kLog2e); }

// 1 / x. Under --use_fast_math a division is MUFU.RCP + FMUL already; spelled out so that the cost
// does not depend on the flags.
__device__ __forceinline__ float rcp_approx(float x) {
#if defined(__CUDA_ARCH__) && !defined(PYNEURO_CUDA_EMULATION)
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return 1.f / x;
#endif
}

// tanh on the MUFU (tanh.approx.f32, sm_75+: ~2^-11 relative error, one instruction). For the
// recurrent cells' gates where that suffices; tanh_accurate = 2σ(2v) - 1 costs an ex2 and an rcp
// and is ~1e-7 relative away from 0 (absolute near 0).
__device__ __forceinline__ float tanh_approx(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750 && !defined(PYNEURO_CUDA_EMULATION)
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return tanhf(x);
#endif
}

// σ(v) = 1 / (1 + e^-v): saturates to 0 and 1 without NaN (e^-v = inf gives rcp 0).
__device__ __forceinline__ float sigmoid(float v) { return rcp_approx(1.f + exp_fast(-v)); }
__device__ __forceinline__ float silu(float v) { return v * sigmoid(v); }
__device__ __forceinline__ float tanh_accurate(float v) { return fmaf(2.f, sigmoid(2.f * v), -1.f); }
// silu'(v) from σ = sigmoid(v): σ·(1 + v·(1 - σ)).
__device__ __forceinline__ float silu_grad(float v, float sig) { return sig * fmaf(v, 1.f - sig, 1.f); }

// torch.nn.functional.softplus (beta 1, threshold 20): log1p(e^v), v itself above 20. log1pf
// stays the accurate libdevice routine: log(1 + e^v) through an approximate log loses all
// relative accuracy for v << 0.
__device__ __forceinline__ float softplus(float v) { return v > 20.f ? v : log1pf(exp_fast(v)); }

// softplus'(v) = σ(v), from s = softplus(v) alone: σ(v) = 1 - e^-s. Below s = 0.5 that cancels, so
// use the series of -expm1(-s) to s^9 there (truncation < 1e-9 relative): branch-free and ~1e-7
// relative (3.7e-7 at s = 0.5 with the MUFU's 2 ulp). expm1f costs 4x more registers and time.
__device__ __forceinline__ float softplus_grad_from_output(float s) {
  float r = 1.f;
#pragma unroll
  for (int k = 9; k >= 2; --k) r = fmaf(-s * (1.f / k), r, 1.f);
  return s < 0.5f ? s * r : 1.f - exp_fast(-s);
}

// ---- 16-byte vector transfers --------------------------------------------------------------------
// One 16-byte global access moves VecWidth<T> elements: 4 fp32 or 8 fp16/bf16 (LDG.128/STG.128,
// a quarter of the instructions of 32-bit accesses for fp32, an eighth for 16-bit types).
template <typename T> struct VecWidth { static constexpr int value = 16 / int(sizeof(T)); };

__device__ __forceinline__ bool is_aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

namespace detail {
// Two 16-bit values packed in a 32-bit word (low half first, as in memory on a little-endian GPU).
__device__ __forceinline__ float lo_f(unsigned w, __half) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(w & 0xffffu)));
}
__device__ __forceinline__ float hi_f(unsigned w, __half) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(w >> 16)));
}
__device__ __forceinline__ float lo_f(unsigned w, __nv_bfloat16) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float hi_f(unsigned w, __nv_bfloat16) { return __uint_as_float(w & 0xffff0000u); }
__device__ __forceinline__ unsigned pack2(float a, float b, __half) {
  return unsigned(__half_as_ushort(__float2half_rn(a))) |
         (unsigned(__half_as_ushort(__float2half_rn(b))) << 16);
}
__device__ __forceinline__ unsigned pack2(float a, float b, __nv_bfloat16) {
  return unsigned(__bfloat16_as_ushort(__float2bfloat16_rn(a))) |
         (unsigned(__bfloat16_as_ushort(__float2bfloat16_rn(b))) << 16);
}
}  // namespace detail

// v[0 .. VecWidth<T>) = p[0 .. VecWidth<T>) as fp32; p must be 16-byte aligned.
__device__ __forceinline__ void load_vec16(const float* p, float (&v)[4]) {
  const float4 f = *reinterpret_cast<const float4*>(p);
  v[0] = f.x; v[1] = f.y; v[2] = f.z; v[3] = f.w;
}
template <typename T>
__device__ __forceinline__ void load_vec16(const T* p, float (&v)[8]) {
  const float4 f = *reinterpret_cast<const float4*>(p);
  const unsigned w[4] = {__float_as_uint(f.x), __float_as_uint(f.y), __float_as_uint(f.z),
                         __float_as_uint(f.w)};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    v[2 * i] = detail::lo_f(w[i], T());
    v[2 * i + 1] = detail::hi_f(w[i], T());
  }
}
// p[0 .. VecWidth<T>) = v rounded to T; p must be 16-byte aligned.
__device__ __forceinline__ void store_vec16(float* p, const float (&v)[4]) {
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
template <typename T>
__device__ __forceinline__ void store_vec16(T* p, const float (&v)[8]) {
  *reinterpret_cast<float4*>(p) = make_float4(
      __uint_as_float(detail::pack2(v[0], v[1], T())), __uint_as_float(detail::pack2(v[2], v[3], T())),
      __uint_as_float(detail::pack2(v[4], v[5], T())), __uint_as_float(detail::pack2(v[6], v[7], T())));
}

// Shared memory, fp32: kCount (a multiple of 4) consecutive floats at a 16-byte aligned p
// <-> registers, as float4 accesses (LDS.128 / STS.128).
template <int kCount>
__device__ __forceinline__ void lds_f32(float (&v)[kCount], const float* p) {
  static_assert(kCount % 4 == 0, "whole float4s");
#pragma unroll
  for (int q = 0; q < kCount / 4; ++q) {
    const float4 f = reinterpret_cast<const float4*>(p)[q];
    v[4 * q] = f.x; v[4 * q + 1] = f.y; v[4 * q + 2] = f.z; v[4 * q + 3] = f.w;
  }
}
template <int kCount>
__device__ __forceinline__ void sts_f32(float* p, const float (&v)[kCount]) {
  static_assert(kCount % 4 == 0, "whole float4s");
#pragma unroll
  for (int q = 0; q < kCount / 4; ++q)
    reinterpret_cast<float4*>(p)[q] = make_float4(v[4 * q], v[4 * q + 1], v[4 * q + 2], v[4 * q + 3]);
}

// Block-cooperative copy of a (rows, cols) window of a row-major global matrix into fp32 shared
// memory, zero outside [0, nrows) x [0, ncols) of the kRows x kCols tile. src points at the
// window's first element, ld is its row stride (elements), dst's row stride ld_s floats keeps
// rows 16-byte aligned. Threads take 16-byte pieces in row-major order, so a warp reads
// 32·16 consecutive bytes of a row (or of consecutive rows): fully coalesced. When src or ld breaks
// 16-byte alignment (odd L, a tile start not a multiple of the vector width) the same pieces are
// read element by element, as are the pieces cut by ncols.
template <int kRows, int kCols, int kThreads, typename T>
__device__ __forceinline__ void stage_tile(float* __restrict__ dst, int ld_s, const T* __restrict__ src,
                                           int64_t ld, int nrows, int ncols) {
  constexpr int kV = VecWidth<T>::value;
  static_assert(kCols % kV == 0, "whole vectors per tile row");
  constexpr int kPieces = kRows * (kCols / kV);
  const bool vec_ok = is_aligned16(src) && ld % kV == 0;
  for (int e = threadIdx.x; e < kPieces; e += kThreads) {
    const int r = e / (kCols / kV), c = (e % (kCols / kV)) * kV;
    float v[kV];
    if (r < nrows && c + kV <= ncols && vec_ok) {
      load_vec16(src + r * ld + c, v);
    } else {
#pragma unroll
      for (int i = 0; i < kV; ++i) v[i] = (r < nrows && c + i < ncols) ? to_f(src[r * ld + c + i]) : 0.f;
    }
    float* const d = dst + r * ld_s + c;
#pragma unroll
    for (int q = 0; q < kV / 4; ++q)
      reinterpret_cast<float4*>(d)[q] = make_float4(v[4 * q], v[4 * q + 1], v[4 * q + 2], v[4 * q + 3]);
  }
}

// The reverse of stage_tile: the [0, nrows) x [0, ncols) window of an fp32 shared tile to global
// memory, rounded to T, 16 bytes per thread where aligned.
template <int kRows, int kCols, int kThreads, typename T>
__device__ __forceinline__ void store_tile(T* __restrict__ dst, int64_t ld, const float* __restrict__ src,
                                           int ld_s, int nrows, int ncols) {
  constexpr int kV = VecWidth<T>::value;
  static_assert(kCols % kV == 0, "whole vectors per tile row");
  constexpr int kPieces = kRows * (kCols / kV);
  const bool vec_ok = is_aligned16(dst) && ld % kV == 0;
  for (int e = threadIdx.x; e < kPieces; e += kThreads) {
    const int r = e / (kCols / kV), c = (e % (kCols / kV)) * kV;
    if (r >= nrows || c >= ncols) continue;
    float v[kV];
    const float* const s = src + r * ld_s + c;
#pragma unroll
    for (int q = 0; q < kV / 4; ++q) {
      const float4 f = reinterpret_cast<const float4*>(s)[q];
      v[4 * q] = f.x; v[4 * q + 1] = f.y; v[4 * q + 2] = f.z; v[4 * q + 3] = f.w;
    }
    if (c + kV <= ncols && vec_ok) {
      store_vec16(dst + r * ld + c, v);
    } else {
#pragma unroll
      for (int i = 0; i < kV; ++i)
        if (c + i < ncols) dst[r * ld + c + i] = from_f<T>(v[i]);
    }
  }
}

// ---- warp and block collectives ------------------------------------------------------------------
// All lanes of the warp must call these (full mask).
__device__ __forceinline__ float shfl_xor(float v, int lane_mask) {
  return __shfl_xor_sync(kFullMask, v, lane_mask);
}
__device__ __forceinline__ float shfl_up(float v, int delta) { return __shfl_up_sync(kFullMask, v, delta); }
__device__ __forceinline__ float shfl_idx(float v, int src_lane) { return __shfl_sync(kFullMask, v, src_lane); }

// Sum over the 32 lanes, in a butterfly: every lane gets the same, bitwise (a + b == b + a at
// each level), and the order is fixed by the lane numbers, so it is deterministic.
__device__ __forceinline__ float warp_reduce_sum(float v) {
#pragma unroll
  for (int m = 16; m >= 1; m >>= 1) v += shfl_xor(v, m);
  return v;
}
__device__ __forceinline__ float warp_reduce_max(float v) {
#pragma unroll
  for (int m = 16; m >= 1; m >>= 1) v = fmaxf(v, shfl_xor(v, m));
  return v;
}

// Inclusive scan over the lanes with any associative op(earlier, later) (Hillis-Steele, 5 steps).
template <typename Op>
__device__ __forceinline__ float warp_inclusive_scan(float v, Op op) {
  const int lane = threadIdx.x % kWarpSize;
#pragma unroll
  for (int d = 1; d < kWarpSize; d <<= 1) {
    const float o = shfl_up(v, d);
    if (lane >= d) v = op(o, v);
  }
  return v;
}
struct AddOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};

// The first-order linear recurrence x_t = a_t·x_{t-1} + b_t as a scan: a run of steps maps its
// incoming state x to P·x + X. Running (P1, X1) then (P2, X2) is (P2·P1, P2·X1 + X2).
struct Affine {
  float P, X;
};
__device__ __forceinline__ Affine affine_then(Affine first, Affine second) {
  return Affine{second.P * first.P, fmaf(second.P, first.X, second.X)};
}
// Inclusive scan of affine maps over the lanes (lane 0 first): lane i gets steps 0..i composed.
__device__ __forceinline__ Affine warp_scan_affine(Affine v) {
  const int lane = threadIdx.x % kWarpSize;
#pragma unroll
  for (int d = 1; d < kWarpSize; d <<= 1) {
    const float P = shfl_up(v.P, d), X = shfl_up(v.X, d);
    if (lane >= d) v = affine_then(Affine{P, X}, v);
  }
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024): warp sums, then warp 0 sums
// those in warp order (deterministic). `scratch` holds 32 floats; the result is valid in every
// thread. Two __syncthreads: every thread must call it, and a second call with the same scratch
// needs a __syncthreads in between (threads may still be reading scratch[0]).
__device__ __forceinline__ float block_reduce_sum(float v, float* scratch) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int nwarps = (blockDim.x + kWarpSize - 1) / kWarpSize;
  v = warp_reduce_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float s = lane < nwarps ? scratch[lane] : 0.f;
    s = warp_reduce_sum(s);
    if (lane == 0) scratch[0] = s;
  }
  __syncthreads();
  const float total = scratch[0];
  return total;
}


// ---- grid-wide synchronisation (persistent kernels) ------------------------------------------------
// A load that bypasses L1 (ld.global.cg): for data other blocks wrote during this launch, which a
// stale L1 line must not hide. Emulation: a plain load (host memory is coherent).
__device__ __forceinline__ float ldcg(const float* p) {
#if defined(__CUDA_ARCH__) && !defined(PYNEURO_CUDA_EMULATION)
  return __ldcg(p);
#else
  return *p;
#endif
}

// Barrier of a group of `count` co-resident blocks (a cooperative launch guarantees residency):
// every thread of each block calls it with the same monotonic `target` = (calls so far + 1)·count,
// and `counter` starts at 0 for the launch. As cooperative_groups' grid sync: block barrier,
// one thread publishes the block's writes (fence, then the arrival), spins until all arrived,
// fences, block barrier. A monotonic target needs no reset between calls (a reset could race
// with a late block still reading the old value). Emulation: blocks run one after another, so a
// group of more than one block would never meet; one block's group is exact (the arrival makes
// the count reach the target), and a larger one traps instead of hanging.
__device__ __forceinline__ void group_barrier(unsigned* counter, unsigned target) {
  __syncthreads();
  if (threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0) {
    __threadfence();
    atomicAdd(counter, 1u);
#if defined(__CUDA_ARCH__) && !defined(PYNEURO_CUDA_EMULATION)
    while (*static_cast<volatile unsigned*>(counter) < target) __nanosleep(20);
#else
    if (__atomic_load_n(counter, __ATOMIC_ACQUIRE) < target) __trap();
#endif
    __threadfence();
  }
  __syncthreads();
}


// ---- tensor-core MMA ------------------------------------------------------------------------------
// One warp: D (16 x 8, fp32) += A (16 x 16) · B (16 x 8) with fp16 or bf16 operands and fp32
// accumulation (mma.sync m16n8k16, sm_80+), both operands read from shared memory: A row-major
// (A[m][k] at a[m·lda + k]), B given as its transpose (B[k][n] at bt[n·ldb + k]: the rows of a
// weight matrix). lda, ldb even and a, bt 4-byte aligned (32-bit fragment loads). The lane with
// g = lane / 4, q = lane % 4 holds d[0], d[1] = D[g][2q], D[g][2q+1] and d[2], d[3] = D[g+8][2q],
// D[g+8][2q+1] (PTX ISA, "Matrix fragments for mma.m16n8k16").
// Emulation: each lane computes its own four elements from shared memory in fp32 (the products of
// 16-bit values are exact in fp32; the summation order differs from the hardware's).
namespace detail {
template <typename T> struct MmaType;
template <> struct MmaType<__half> { static constexpr bool bf16 = false; };
template <> struct MmaType<__nv_bfloat16> { static constexpr bool bf16 = true; };
}  // namespace detail

template <typename T>
__device__ __forceinline__ void mma_16x8x16_smem(float (&d)[4], const T* a, int lda, const T* bt, int ldb) {
  const int lane = threadIdx.x % kWarpSize, g = lane / 4, q = lane % 4;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800 && !defined(PYNEURO_CUDA_EMULATION)
  const auto w = [](const T* p) { return *reinterpret_cast<const unsigned*>(p); };
  const unsigned a0 = w(a + g * lda + 2 * q), a1 = w(a + (g + 8) * lda + 2 * q);
  const unsigned a2 = w(a + g * lda + 2 * q + 8), a3 = w(a + (g + 8) * lda + 2 * q + 8);
  const unsigned b0 = w(bt + g * ldb + 2 * q), b1 = w(bt + g * ldb + 2 * q + 8);
  if constexpr (detail::MmaType<T>::bf16) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  } else {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
#else
  (void)detail::MmaType<T>::bf16;  // only fp16/bf16 operands
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int m = g + (i >= 2 ? 8 : 0), n = 2 * q + (i & 1);
    float acc = 0.f;
    for (int k = 0; k < 16; ++k) acc = fmaf(to_f(a[m * lda + k]), to_f(bt[n * ldb + k]), acc);
    d[i] += acc;
  }
#endif
}

}  // namespace cuda
}  // namespace pyneuro
