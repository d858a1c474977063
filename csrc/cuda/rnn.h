// Recurrent cells (LSTM with optional projection, GRU, RNN tanh/relu, leaky integrator) on CUDA:
// parameter structs and launchers. Semantics, layouts and the reserve: docs/rnn_contract.md.
//
// Plain structs + cudaStream_t only (CUDA toolkit headers, no torch), so every .cu compiles with
// bare nvcc. The torch glue (rnn_glue.cpp) checks the tensors, runs the GEMMs through torch
// (cuBLAS) and calls these launchers:
//
//   path 1, any size (rnn.cu): gx = x W_ihᵀ for all T steps as one GEMM, then per step
//     gh = h_{t-1} W_hhᵀ (one GEMM) + rnn_cell_fwd (one fused pointwise kernel: biases, gates,
//     state, y, reserve). Backward: per step rnn_cell_bwd (one fused pointwise kernel) + the
//     recurrent GEMM; dx, dW_ih, dW_hh, db (dW_hr, dτ) as single GEMMs / sums over all T·B.
//   path 2, H <= kRnnPersistentMaxH (rnn_persistent.cu): one cooperative launch per sequence
//     does every step's recurrent GEMM and cell, W_hh slices resident in shared memory.
//
// Dtypes: X ∈ {fp32, fp16, bf16} for x, weights, states and y; every GEMM result the kernels
// read, the reserve and all gradient work buffers are fp32.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "../common/limits.h"

namespace pyneuro {
namespace cuda {

enum class RnnDtype : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };
// kRnnTanh/kRnnRelu are the plain RNN with either activation.
enum class RnnCellKind : int { kLstm = 0, kGru = 1, kRnnTanh = 2, kRnnRelu = 3, kLeaky = 4 };

// f(std::integral_constant<RnnCellKind, kCell>{}) for the runtime `cell`: the one switch from a
// cell kind to the kernel instance compiled for it; `fallback` for a value outside the enum.
template <typename R, typename F>
R with_cell(RnnCellKind cell, R fallback, F&& f) {
  using K = RnnCellKind;
  switch (cell) {
    case K::kLstm: return f(std::integral_constant<K, K::kLstm>{});
    case K::kGru: return f(std::integral_constant<K, K::kGru>{});
    case K::kRnnTanh: return f(std::integral_constant<K, K::kRnnTanh>{});
    case K::kRnnRelu: return f(std::integral_constant<K, K::kRnnRelu>{});
    case K::kLeaky: return f(std::integral_constant<K, K::kLeaky>{});
  }
  return fallback;
}

inline int rnn_cell_gates(RnnCellKind c) {
  return c == RnnCellKind::kLstm ? 4 : c == RnnCellKind::kGru ? 3 : 1;
}
// Floats per (t, b) row of the reserve (the contract's table): LSTM 5H + R, GRU 5H, else H.
inline int rnn_cell_reserve_width(RnnCellKind c, int H, int R) {
  return c == RnnCellKind::kLstm ? 5 * H + R : c == RnnCellKind::kGru ? 5 * H : H;
}
// Column of h_t (u_t for leaky) inside a reserve row.
inline int rnn_cell_state_offset(RnnCellKind c, int H) {
  return c == RnnCellKind::kLstm ? 5 * H : c == RnnCellKind::kGru ? 4 * H : 0;
}

// ---- path 1: one time step of the forward cell --------------------------------------------------
// Pre-activations = gx + b_ih (+ b_hh) + gh, per the contract's equations. For the leaky cell b_ih
// is `bias` and b_hh is unused. "X" pointers have `dtype`.
struct RnnCellFwdParams {
  RnnCellKind cell = RnnCellKind::kLstm;
  RnnDtype dtype = RnnDtype::kFloat32;
  int B = 0, H = 0;
  int R = 0;           // width of h (LSTM with projection: P; else H)
  int t = 0, T = 0;    // this step and the sequence length
  const float* gx = nullptr;    // (B, G·H) fp32: x_t W_ihᵀ (no bias)
  const float* gh = nullptr;    // (B, G·H) fp32: h_{t-1} W_hhᵀ (no bias)
  const void* b_ih = nullptr;   // (G·H,) X or null
  const void* b_hh = nullptr;   // (G·H,) X or null
  const void* tau = nullptr;    // leaky: (H,) X
  const void* state0 = nullptr; // (B, R) X: h0 (GRU: h_{-1}), u0 (leaky); read at t = 0 only
  const void* c0 = nullptr;     // LSTM: (B, H) X; read at t = 0 only
  const float* reserve_prev = nullptr;  // reserve row t-1 (B, W) or null at t = 0
  float* reserve = nullptr;     // reserve row t (B, W)
  void* y = nullptr;            // (B, R) X row t; LSTM with projection: null (the glue's GEMM
                                // computes h_t = m_t W_hrᵀ and writes y, h_n and the reserve's h_t)
  void* m = nullptr;            // LSTM with projection: (B, H) X, m_t = o ⊙ tanh(c_t) (GEMM operand)
  void* h_n = nullptr;          // (B, R) X, written when t = T-1 (not with projection)
  void* c_n = nullptr;          // LSTM: (B, H) X, written when t = T-1
};

// ---- path 1: one time step of the backward cell, t = T-1 down to 0 -------------------------------
// The gradient reaching h_t is dy_t + drec (+ dh_n at t = T-1), each term present or not.
// `carry` (B, H) fp32 is read (t < T-1) and rewritten in place, one element per thread:
//   LSTM: dc_t in -> dc_{t-1} = dc_t ⊙ f_t out (dc_n, when given, is the input at T-1);
//   GRU: dh_t ⊙ z_t, the direct part of dh_{t-1} (the glue adds dS_t W_hh through drec);
//   leaky: (1 - α) ⊙ g_t (du_n at T-1); RNN: unused.
// Outputs per step: dA row t = gradient of the input-side pre-activation (x W_ihᵀ + b_ih);
// GRU also dS row t (recurrent side, differs in the n block: da_n ⊙ r); LSTM with projection
// also m row t (m_t, for dW_hr); leaky also dtau_acc += g_t ⊙ (u_{t-1} − u_t) / τ.
struct RnnCellBwdParams {
  RnnCellKind cell = RnnCellKind::kLstm;
  RnnDtype dtype = RnnDtype::kFloat32;
  int B = 0, H = 0, R = 0, t = 0, T = 0;
  const float* reserve = nullptr;  // (T, B, W), the forward's
  const void* dy = nullptr;        // (B, R) X row t, or null (LSTM with projection: folded in drec)
  const float* drec = nullptr;     // (B, R) fp32 or null
  const void* dh_n = nullptr;      // (B, R) X or null; used at t = T-1 only
  const void* dc_n = nullptr;      // LSTM (B, H) X or null; leaky: du_n; used at t = T-1 only
  const void* state0 = nullptr;    // (B, R) X: h0 / u0 (the state before step 0)
  const void* c0 = nullptr;        // LSTM (B, H) X
  const void* tau = nullptr;       // leaky (H,) X
  float* carry = nullptr;          // (B, H) fp32, see above
  float* dA = nullptr;             // (B, G·H) fp32 row t
  float* dS = nullptr;             // GRU: (B, 3H) fp32 row t
  float* m = nullptr;              // LSTM with projection: (B, H) fp32 row t
  float* dtau_acc = nullptr;       // leaky: (B, H) fp32, accumulated (the glue zeroes it)
};

cudaError_t rnn_cell_fwd(const RnnCellFwdParams& p, cudaStream_t stream);
cudaError_t rnn_cell_bwd(const RnnCellBwdParams& p, cudaStream_t stream);

// ---- path 2: the persistent forward --------------------------------------------------------------
// One cooperative launch runs all T steps. Block (x, y) owns unit tiles of kRnnPersistentUnits
// hidden units (all G gates of each) and batch tiles of kRnnPersistentBatch rows; the W_hh rows of
// its unit tiles stay in shared memory (fp32, or X for fp16/bf16) for the whole sequence. Step t
// reads h_{t-1} from the reserve (fp32, written by every x-block at step t-1), so the blocks of a
// batch-tile group (same blockIdx.y) meet at a grid barrier between steps.
// Not for the LSTM with projection (h_t needs a second GEMM per step): path 1 runs it.
struct RnnPersistentFwdParams {
  RnnCellKind cell = RnnCellKind::kLstm;
  RnnDtype dtype = RnnDtype::kFloat32;
  int B = 0, H = 0, T = 0;
  const float* gx = nullptr;      // (T, B, G·H) fp32: x W_ihᵀ for all steps (no bias)
  const void* w_hh = nullptr;     // (G·H, H) X
  const void* b_ih = nullptr;     // (G·H,) X or null (leaky: bias)
  const void* b_hh = nullptr;     // (G·H,) X or null
  const void* tau = nullptr;      // leaky (H,) X
  const void* state0 = nullptr;   // (B, H) X
  const void* c0 = nullptr;       // LSTM (B, H) X
  float* reserve = nullptr;       // (T, B, W)
  void* y = nullptr;              // (T, B, H) X
  void* h_n = nullptr;            // (B, H) X
  void* c_n = nullptr;            // LSTM (B, H) X
  unsigned* barrier = nullptr;    // rnn_persistent_barrier_words(plan) zeroed words
  // Launch shape; fill with rnn_persistent_fwd_plan.
  int blocks_x = 0, blocks_y = 0, tiles_per_block = 0;
};

struct RnnPersistentPlan {
  bool ok = false;
  const char* why_not = "";  // when !ok: the reason path 1 runs instead
  int blocks_x = 0, blocks_y = 0, tiles_per_block = 0;
  size_t smem_bytes = 0;
};

// Whether the persistent forward can run this problem on `device` (cooperative launch supported,
// H within the limit, the grid co-resident at the kernel's occupancy), and its launch shape.
// max_blocks_x > 0 caps the blocks along the hidden units (tests: more unit tiles per block).
RnnPersistentPlan rnn_persistent_fwd_plan(RnnCellKind cell, RnnDtype dtype, int B, int H, int device,
                                          int max_blocks_x = 0);
// Dynamic shared memory of one block (for the plan and the compile-time fit check).
size_t rnn_persistent_fwd_smem_bytes(RnnCellKind cell, RnnDtype dtype, int H, int tiles_per_block);
inline int rnn_persistent_barrier_words(const RnnPersistentFwdParams& p) { return p.blocks_y; }
cudaError_t rnn_persistent_fwd(const RnnPersistentFwdParams& p, cudaStream_t stream);

// ---- path 2: the persistent backward ------------------------------------------------------------
// One cooperative launch runs the reverse loop: per step t, drec = dS_{t+1} W_hh (the gradient
// reaching h_t through step t+1; W_hh's columns of the block's units stay in shared memory), then
// the same per-unit gradient as rnn_cell_bwd. dS_t goes through global memory to every block of the
// batch-tile group (a grid barrier per step). After step 0 it writes drec = dS_0 W_hh and leaves the
// carry of step 0, so that the glue finishes dh0 (dc0, du0) as for path 1; dx, dW and db stay
// single GEMMs in the glue. Same grid shape and limits as the forward; not for the projection LSTM.
struct RnnPersistentBwdParams {
  RnnCellKind cell = RnnCellKind::kLstm;
  RnnDtype dtype = RnnDtype::kFloat32;
  int B = 0, H = 0, T = 0;
  const float* reserve = nullptr;  // (T, B, W), the forward's
  const void* dy = nullptr;        // (T, B, H) X
  const void* dh_n = nullptr;      // (B, H) X or null (not for leaky)
  const void* last_in = nullptr;   // LSTM dc_n / leaky du_n, (B, H) X or null
  const void* w_hh = nullptr;      // (G·H, H) X
  const void* state0 = nullptr;    // (B, H) X
  const void* c0 = nullptr;        // LSTM (B, H) X
  const void* tau = nullptr;       // leaky (H,) X
  float* carry = nullptr;          // (B, H) fp32: out, step 0's carry (see RnnCellBwdParams)
  float* drec = nullptr;           // (B, H) fp32: out, dS_0 W_hh
  float* dA = nullptr;             // (T, B, G·H) fp32
  float* dS = nullptr;             // (T, B, G·H) fp32; GRU: its own buffer, else == dA
  float* dtau_acc = nullptr;       // leaky (B, H) fp32, zeroed by the caller
  unsigned* barrier = nullptr;     // blocks_y zeroed words
  int blocks_x = 0, blocks_y = 0, tiles_per_block = 0;
};

RnnPersistentPlan rnn_persistent_bwd_plan(RnnCellKind cell, RnnDtype dtype, int B, int H, int device,
                                          int max_blocks_x = 0);
size_t rnn_persistent_bwd_smem_bytes(RnnCellKind cell, RnnDtype dtype, int H, int tiles_per_block);
cudaError_t rnn_persistent_bwd(const RnnPersistentBwdParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace pyneuro
