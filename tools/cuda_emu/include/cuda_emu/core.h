// cuda_emu: enough of the CUDA programming model to compile real .cu kernels with g++ and run them
// on the CPU, one fiber per CUDA thread (see tools/cuda_emu/README.md).
//
// This header is what the shim's cuda_runtime.h pulls in: execution-space keywords, the built-in
// index variables, vector types, the block barrier, warp shuffles and votes, device math, the
// host runtime API the project uses, and `cuda_emu::launch`, which the `<<<...>>>` rewrite
// (tools/cuda_emu/rewrite_cu.py) calls. The runtime behind it is tools/cuda_emu/src/runtime.cpp.
#pragma once

#if defined(__CUDACC__)
#error "cuda_emu's headers are for g++; nvcc must use the CUDA toolkit's own headers"
#endif

// Kernels and headers test this to pick plain C++ instead of inline PTX or hardware intrinsics.
#define PYNEURO_CUDA_EMULATION 1

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- execution-space keywords ------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __constant__ static
// Static `__shared__ T x[n];` inside a kernel: one copy per OS worker thread, and a worker runs one
// block at a time, so it is per block (stale from the previous block, as uninitialised as on a
// GPU). `extern __shared__` arrays are rewritten by rewrite_cu.py into cuda_emu::dynamic_smem().
#define __shared__ static thread_local

// ---- vector and index types --------------------------------------------------------------------
struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(16) double2 { double x, y; };
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline int2 make_int2(int x, int y) { return int2{x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }
inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return uint3{x, y, z}; }

// The running fiber's indices. The scheduler of an OS worker sets threadIdx before it resumes a
// fiber; every switch is an opaque call, so the compiler reloads them afterwards.
extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;
constexpr int warpSize = 32;

// ---- runtime API types -------------------------------------------------------------------------
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
  cudaErrorCooperativeLaunchTooLarge = 720,
};
typedef cudaError_t cudaError;
struct CUstream_st;
typedef CUstream_st* cudaStream_t;
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0, cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3, cudaMemcpyDefault = 4,
};
// The device attributes the project queries (values as in the CUDA headers).
enum cudaDeviceAttr {
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrCooperativeLaunch = 95,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
  cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};

namespace cuda_emu {

// ---- runtime entry points (src/runtime.cpp) ----------------------------------------------------
void syncthreads(const char* file, int line);
// One warp-collective operation: the calling lane posts `value` (bits of <= 8 bytes) and an
// argument; the scheduler resumes the participating lanes once all of `mask` arrived and returns
// this lane's result. `op` is one of the WarpOp values.
enum WarpOp : int { kShflIdx, kShflUp, kShflDown, kShflXor, kSyncWarp, kBallot, kAny, kAll };
uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t value, int arg, int width,
                         const char* file, int line);
void* dynamic_smem_base();
// Launch-time checks against the GPU's limits; records the error and returns it.
cudaError_t check_launch(const void* kernel, dim3 grid, dim3 block, size_t smem);
// Runs body(ctx) once per thread of each block: grid x block fibers, blocks one at a time per
// OS worker.
cudaError_t run_grid(dim3 grid, dim3 block, size_t smem, void (*body)(void*), void* ctx);
cudaError_t set_func_attribute(const void* kernel, cudaFuncAttribute attr, int value);

template <typename T>
inline T* dynamic_smem() { return static_cast<T*>(dynamic_smem_base()); }

template <typename T>
inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of <= 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
inline T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

// kernel<<<grid, block, smem, stream>>>(args...) becomes launch(kernel, LaunchConfig(grid, block,
// smem, stream), args...). Arguments are converted to the kernel's parameter types once, as the
// CUDA runtime copies them into the parameter buffer; every thread then gets its own copy.
struct LaunchConfig {
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
  LaunchConfig(dim3 g, dim3 b, size_t s = 0, cudaStream_t st = nullptr)
      : grid(g), block(b), smem(s), stream(st) {}
};

template <typename... P, typename... A>
void launch(void (*kernel)(P...), const LaunchConfig& cfg, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
  struct Ctx {
    void (*kernel)(P...);
    std::tuple<std::decay_t<P>...> args;
  } ctx{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
  if (check_launch(reinterpret_cast<const void*>(kernel), cfg.grid, cfg.block, cfg.smem) != cudaSuccess)
    return;
  run_grid(cfg.grid, cfg.block, cfg.smem,
           [](void* c) {
             Ctx& x = *static_cast<Ctx*>(c);
             std::apply(x.kernel, x.args);  // by-value parameters: a copy per thread
           },
           &ctx);
}

}  // namespace cuda_emu

// ---- barriers, shuffles, votes -----------------------------------------------------------------
// Macros so that a divergence report names the source line of each side.
#define __syncthreads() ::cuda_emu::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) ::cuda_emu::syncwarp_at(__FILE__, __LINE__, ##__VA_ARGS__)
#define __shfl_sync(m, v, src, ...) ::cuda_emu::shfl(::cuda_emu::kShflIdx, m, v, src, __FILE__, __LINE__, ##__VA_ARGS__)
#define __shfl_up_sync(m, v, d, ...) ::cuda_emu::shfl(::cuda_emu::kShflUp, m, v, d, __FILE__, __LINE__, ##__VA_ARGS__)
#define __shfl_down_sync(m, v, d, ...) ::cuda_emu::shfl(::cuda_emu::kShflDown, m, v, d, __FILE__, __LINE__, ##__VA_ARGS__)
#define __shfl_xor_sync(m, v, x, ...) ::cuda_emu::shfl(::cuda_emu::kShflXor, m, v, x, __FILE__, __LINE__, ##__VA_ARGS__)
#define __ballot_sync(m, p) unsigned(::cuda_emu::warp_collective(::cuda_emu::kBallot, m, (p) ? 1 : 0, 0, 32, __FILE__, __LINE__))
#define __any_sync(m, p) int(::cuda_emu::warp_collective(::cuda_emu::kAny, m, (p) ? 1 : 0, 0, 32, __FILE__, __LINE__))
#define __all_sync(m, p) int(::cuda_emu::warp_collective(::cuda_emu::kAll, m, (p) ? 1 : 0, 0, 32, __FILE__, __LINE__))

namespace cuda_emu {
template <typename T>
inline T shfl(WarpOp op, unsigned mask, T v, int arg, const char* file, int line, int width = 32) {
  return from_bits<T>(warp_collective(op, mask, to_bits(v), arg, width, file, line));
}
inline void syncwarp_at(const char* file, int line, unsigned mask = 0xffffffffu) {
  warp_collective(kSyncWarp, mask, 0, 0, 32, file, line);
}
}  // namespace cuda_emu

// ---- device functions --------------------------------------------------------------------------
// Exact libm versions of the fast intrinsics: the emulator checks index math and algebra, not the
// MUFU's error (README: what it cannot catch).
inline float __expf(float x) { return expf(x); }
inline float __exp10f(float x) { return exp10f(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __log10f(float x) { return log10f(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline float rsqrtf(float x) { return 1.f / sqrtf(x); }
inline int __float_as_int(float x) { int i; std::memcpy(&i, &x, 4); return i; }
inline unsigned __float_as_uint(float x) { unsigned i; std::memcpy(&i, &x, 4); return i; }
inline float __int_as_float(int i) { float x; std::memcpy(&x, &i, 4); return x; }
inline float __uint_as_float(unsigned i) { float x; std::memcpy(&x, &i, 4); return x; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
template <typename T> inline T __ldg(const T* p) { return *p; }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
[[noreturn]] inline void __trap() { __builtin_trap(); }
inline unsigned __activemask() { return 0xffffffffu; }

// Atomics: real ones, since several OS workers may run blocks at once.
template <typename T> inline T atomicAdd(T* p, T v) {
  if constexpr (std::is_floating_point<T>::value) {
    T old, want;
    __atomic_load(p, &old, __ATOMIC_RELAXED);
    do { want = old + v; } while (!__atomic_compare_exchange(p, &old, &want, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return old;
  } else {
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
  }
}
template <typename T> inline T atomicMax(T* p, T v) { return __atomic_fetch_max(p, v, __ATOMIC_RELAXED); }
template <typename T> inline T atomicMin(T* p, T v) { return __atomic_fetch_min(p, v, __ATOMIC_RELAXED); }
template <typename T> inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
template <typename T> inline T atomicCAS(T* p, T cmp, T v) {
  __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return cmp;
}

// ---- host runtime API --------------------------------------------------------------------------
// "Device" memory is host memory: pointers from numpy/torch CPU tensors can be passed straight in.
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t err);
const char* cudaGetErrorName(cudaError_t err);
cudaError_t cudaMalloc(void** p, size_t bytes);
template <typename T> inline cudaError_t cudaMalloc(T** p, size_t bytes) {
  return cudaMalloc(reinterpret_cast<void**>(p), bytes);
}
cudaError_t cudaFree(void* p);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream = nullptr);
cudaError_t cudaMemset(void* p, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t stream = nullptr);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
template <typename T>
inline cudaError_t cudaMemcpyToSymbol(T& symbol, const void* src, size_t bytes, size_t offset = 0,
                                      cudaMemcpyKind = cudaMemcpyHostToDevice) {
  std::memcpy(reinterpret_cast<char*>(&symbol) + offset, src, bytes);
  return cudaSuccess;
}
template <typename F>
inline cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute attr, int value) {
  return cuda_emu::set_func_attribute(reinterpret_cast<const void*>(kernel), attr, value);
}

// Devices and occupancy. The emulated device: device 0 with kEmuMultiprocessors "SMs", cooperative
// launches supported, the shared-memory limit of the settings (PYNEURO_EMU_SMEM_LIMIT), and one
// resident block per SM for any kernel whose launch would be accepted (occupancy is not modelled).
namespace cuda_emu {
constexpr int kEmuMultiprocessors = 4;
size_t smem_limit();
// SMs a cooperative grid may fill: all of them, or fewer (PYNEURO_EMU_COOPERATIVE_SMS), as on a GPU
// shared with other work, where the occupancy query admits a grid that the launch then refuses.
int cooperative_sms();
size_t max_dynamic_smem(const void* kernel);  // the 48 KiB default or the kernel's attribute
}  // namespace cuda_emu
inline cudaError_t cudaGetDevice(int* device) { *device = 0; return cudaSuccess; }
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return cudaErrorInvalidValue;
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = cuda_emu::kEmuMultiprocessors; return cudaSuccess;
    case cudaDevAttrCooperativeLaunch: *value = 1; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = int(cuda_emu::smem_limit()); return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}
template <typename F>
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, F* kernel, int block_size,
                                                                 size_t dynamic_smem) {
  const bool fits = block_size >= 1 && block_size <= 1024 &&
                    dynamic_smem <= cuda_emu::max_dynamic_smem(reinterpret_cast<const void*>(kernel));
  *blocks = fits ? 1 : 0;
  return cudaSuccess;
}
// A cooperative launch: the kernel's arguments come as an array of pointers, as on the GPU. Blocks
// still run one after another (README: a grid barrier across more than one block cannot meet
// here), so the grid must fit the emulated device, as the real call requires.
namespace cuda_emu {
template <typename... P, size_t... I>
inline void launch_from_pointers(void (*kernel)(P...), const LaunchConfig& cfg, void** args,
                                 std::index_sequence<I...>) {
  launch(kernel, cfg, *static_cast<std::decay_t<P>*>(args[I])...);
}
}  // namespace cuda_emu
template <typename... P>
inline cudaError_t cudaLaunchCooperativeKernel(void (*kernel)(P...), dim3 grid, dim3 block, void** args,
                                               size_t smem = 0, cudaStream_t stream = nullptr) {
  int per_sm = 0;
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, int(block.x * block.y * block.z), smem);
  if (uint64_t(grid.x) * grid.y * grid.z > uint64_t(per_sm) * cuda_emu::cooperative_sms())
    return cudaErrorCooperativeLaunchTooLarge;
  cuda_emu::launch_from_pointers(kernel, cuda_emu::LaunchConfig(grid, block, smem, stream), args,
                                 std::index_sequence_for<P...>{});
  return cudaPeekAtLastError();
}
