// Fused attention on CUDA (docs/attention_contract.md): parameter structs and launchers.
//
// Plain structs + cudaStream_t only (CUDA toolkit headers, no torch), so attention.cu compiles with
// bare nvcc and under the CPU emulator. The torch glue (attention_glue.cpp) checks the tensors
// (csrc/common/attention_args.h), reads rng_state on the host and calls these launchers.
//
// Kernels (attention.cu; shapes and traffic there):
//   forward: ONE launch. A block owns one (b, kv head) and a tile of query rows of all the query
//     heads of its group; K and V are staged in shared memory kAttentionBlockKeys(D) keys at a time
//     (one stage when Lk fits: the short-sequence case), online softmax over the stages.
//   backward, Lk <= one key tile: ONE launch (delta, P, dS, dq, dk, dv): a block owns a (b, kv
//     head), so it sums dk/dv over the group's query heads itself, with no atomics.
//   backward, longer: TWO launches: dk/dv per (b, kv head, key tile) looping over the query rows,
//     then dq per (b, kv head, row tile) looping over the key tiles. Deterministic, no atomics.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "../common/limits.h"
#include "../cpu/philox.h"

namespace pyneuro {
namespace cuda {

enum class AttnDtype : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Element strides of a (B, H, L, D) operand whose last stride is 1.
struct AttnStrides {
  int64_t b = 0, h = 0, l = 0;
};

// Keys per shared-memory tile at head dim D (the template bucket's, see attention.cu).
inline int attention_block_keys(int D) { return D <= 64 ? kAttentionBlockKeysSmallD : kAttentionBlockKeysLargeD; }

struct AttentionFwdParams {
  AttnDtype dtype = AttnDtype::kFloat32;
  int B = 0, Hq = 0, Hkv = 0, Lq = 0, Lk = 0, D = 0;
  bool causal = false;
  float scale = 1.f;
  bool dropout = false;                 // dropout_p > 0: `drop` holds the mask's parameters
  philox::DropoutParams drop;
  const void* q = nullptr;              // (B, Hq, Lq, D), strides q_st
  const void* k = nullptr;              // (B, Hkv, Lk, D), strides k_st
  const void* v = nullptr;              // (B, Hkv, Lk, D), strides v_st
  AttnStrides q_st, k_st, v_st;
  void* out = nullptr;                  // (B, Hq, Lq, D) contiguous, q's dtype
  float* lse = nullptr;                 // (B, Hq, Lq) contiguous
};

struct AttentionBwdParams {
  AttnDtype dtype = AttnDtype::kFloat32;
  int B = 0, Hq = 0, Hkv = 0, Lq = 0, Lk = 0, D = 0;
  bool causal = false;
  float scale = 1.f;
  bool dropout = false;
  philox::DropoutParams drop;
  const void* dout = nullptr;           // (B, Hq, Lq, D), strides dout_st
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const void* out = nullptr;            // the forward's, strides out_st
  const float* lse = nullptr;           // (B, Hq, Lq) contiguous, the forward's
  AttnStrides dout_st, q_st, k_st, v_st, out_st;
  void* dq = nullptr;                   // (B, Hq, Lq, D) contiguous, q's dtype
  void* dk = nullptr;                   // (B, Hkv, Lk, D) contiguous
  void* dv = nullptr;                   // (B, Hkv, Lk, D) contiguous
};

// Grid limits the glue checks before launching ("" when the problem fits, else the reason).
const char* attention_unsupported(int B, int Hq, int Hkv, int Lq, int Lk, int D);

cudaError_t attention_fwd(const AttentionFwdParams& p, cudaStream_t stream);
// Launches one kernel when Lk <= attention_block_keys(D), else two.
cudaError_t attention_bwd(const AttentionBwdParams& p, cudaStream_t stream);

// Dynamic shared memory of the three kernels at head dim D (for the launchers and the compile-time
// fit check, scripts/cuda_smem_probe.cu), at their largest launch shape.
size_t attention_rows_smem_bytes(int D, bool dq);
size_t attention_dkdv_smem_bytes(int D);

}  // namespace cuda
}  // namespace pyneuro
