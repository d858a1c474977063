// Small CUDA kernels, each with a known right answer or a known bug, that show what cuda_emu
// computes and what it reports (tests/cuda_emu/test_emulator_runtime.py). Plain CUDA: this file
// also compiles with nvcc. Each host entry point returns the launch's cudaError_t.
#include <cuda_runtime.h>

#include <cstdint>

namespace {

constexpr unsigned kFull = 0xffffffffu;

// Two warps; per thread 8 results of the warp collectives on v = 100·warp + lane.
__global__ void shuffles_kernel(int* out) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int v = 100 * warp + lane;
  int* o = out + 8 * threadIdx.x;
  o[0] = __shfl_xor_sync(kFull, v, 5);
  o[1] = __shfl_up_sync(kFull, v, 3);
  o[2] = __shfl_down_sync(kFull, v, 3);
  o[3] = __shfl_sync(kFull, v, 7);
  o[4] = __shfl_xor_sync(kFull, v, 2, 8);   // within segments of 8 lanes
  o[5] = __shfl_down_sync(kFull, v, 2, 8);  // clamps at each segment's end
  o[6] = int(__ballot_sync(kFull, lane % 3 == 0));
  o[7] = __any_sync(kFull, lane == 31 && warp == 1) + 2 * __all_sync(kFull, lane < 32);
}

// out[t] = t-th thread's read of what thread (n - 1 - t) wrote; right only with the barrier.
__global__ void reverse_kernel(float* out, int with_barrier) {
  extern __shared__ float s[];
  const int t = threadIdx.x, n = blockDim.x;
  s[t] = float(t);
  if (with_barrier) __syncthreads();
  out[blockIdx.x * n + t] = s[n - 1 - t];
}

// Bug: every block's thread 0 writes the same global after a barrier (blocks are unordered).
__global__ void block_race_kernel(int* out) {
  __syncthreads();
  __syncthreads();
  if (threadIdx.x == 0) out[0] = int(blockIdx.x);
  __syncthreads();
}

// A static __shared__ array is per block: each block sums its own threads' ids.
__global__ void static_shared_kernel(int* out) {
  __shared__ int total[1];
  if (threadIdx.x == 0) total[0] = 0;
  __syncthreads();
  atomicAdd(&total[0], int(threadIdx.x) + 1000 * int(blockIdx.x));
  __syncthreads();
  if (threadIdx.x == 0) out[blockIdx.x] = total[0];
}

// Bug: only half of the block reaches the barrier.
__global__ void divergent_barrier_kernel(int* out) {
  if (threadIdx.x < 16) __syncthreads();
  out[threadIdx.x] = 1;
}

// Bug: a thread returns early, the rest wait at a barrier.
__global__ void exit_before_barrier_kernel(int* out) {
  if (threadIdx.x == 3) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

// Bug: lane 5 has exited, yet the full mask names it.
__global__ void exited_lane_shuffle_kernel(int* out) {
  if (threadIdx.x == 5) return;
  out[threadIdx.x] = __shfl_xor_sync(kFull, int(threadIdx.x), 1);
}

// Touches every byte of its dynamic shared memory.
__global__ void smem_kernel(int n_floats) {
  extern __shared__ __align__(16) float4 buf4[];
  float* buf = reinterpret_cast<float*>(buf4);
  for (int i = threadIdx.x; i < n_floats; i += blockDim.x) buf[i] = 0.f;
}

// Bug: writes one float past its dynamic shared memory (ASan: heap-buffer-overflow).
__global__ void smem_overflow_kernel(int n_floats) {
  extern __shared__ float buf[];
  if (threadIdx.x == 0) buf[n_floats] = 1.f;
}

// Bug: a float4 load from an address 4 bytes past a 16-byte boundary (UBSan: misaligned).
__global__ void misaligned_kernel(const float* p, float* out) {
  const float4 v = *reinterpret_cast<const float4*>(p + 1);
  out[threadIdx.x] = v.x;
}

template <typename T>
__global__ void fill_kernel(T* out, T value, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = value;
}

}  // namespace

extern "C" {

int selftest_shuffles(int* out) {
  shuffles_kernel<<<1, 64>>>(out);
  return cudaGetLastError();
}

int selftest_reverse(float* out, int blocks, int threads, int with_barrier) {
  reverse_kernel<<<blocks, threads, threads * sizeof(float)>>>(out, with_barrier);
  return cudaGetLastError();
}

int selftest_block_race(int* out) {
  block_race_kernel<<<2, 32>>>(out);
  return cudaGetLastError();
}

int selftest_static_shared(int* out, int blocks) {
  static_shared_kernel<<<dim3(blocks), dim3(64), 0, nullptr>>>(out);
  return cudaGetLastError();
}

int selftest_divergent_barrier(int* out) {
  divergent_barrier_kernel<<<1, 32>>>(out);
  return cudaGetLastError();
}

int selftest_exit_before_barrier(int* out) {
  exit_before_barrier_kernel<<<1, 32>>>(out);
  return cudaGetLastError();
}

int selftest_exited_lane_shuffle(int* out) {
  exited_lane_shuffle_kernel<<<1, 32>>>(out);
  return cudaGetLastError();
}

// Dynamic shared memory of `bytes`, after raising the kernel's limit to `attr_bytes` (0: not).
int selftest_smem(long long bytes, int attr_bytes) {
  if (attr_bytes > 0) {
    const cudaError_t err = cudaFuncSetAttribute(smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, attr_bytes);
    if (err != cudaSuccess) return err;
  }
  smem_kernel<<<1, 128, size_t(bytes)>>>(int(bytes / 4));
  return cudaGetLastError();
}

int selftest_smem_overflow(int n_floats) {
  smem_overflow_kernel<<<1, 32, n_floats * sizeof(float)>>>(n_floats);
  return cudaGetLastError();
}

int selftest_misaligned(const float* p, float* out) {
  misaligned_kernel<<<1, 1>>>(p, out);
  return cudaGetLastError();
}

int selftest_fill(double* out, double value, int n) {
  fill_kernel<double>
      <<<(n + 127) / 128, 128>>>(
          out, value, n);  // a launch across lines, with template arguments
  return cudaGetLastError();
}

}  // extern "C"
