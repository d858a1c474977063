// Selective scan (Mamba's S6 recurrence) on CUDA: parameter structs and launchers.
//
// Plain structs + cudaStream_t only (CUDA toolkit headers, no torch), so that every .cu file
// compiles with bare `nvcc -c` in CI. The torch glue (selective_scan_glue.cpp) validates tensors,
// fills these structs and allocates outputs and the backward workspace.
//
// Semantics and shapes: docs/selective_scan_contract.md. With  δ = softplus(delta + delta_bias)
// (or delta + delta_bias), per (batch b, channel d, state n, step t):
//     x_t = exp(δ_t·A[d,n])·x_{t-1} + δ_t·B_t[n]·u_t,     y_t = Σ_n C_t[n]·x_t,
//     out_t = (y_t + D[d]·u_t)·silu(z_t).
// The state and every accumulation are fp32; u, delta, z, variable B/C, out and their gradients
// are fp32, fp16 or bf16 (one dtype for all of them).
//
// Limits: 1 <= dstate (N) <= kSelectiveScanMaxDState; batch <= 65535 (grid.y); any chunk_size >= 1
// (chunk_size = kSelectiveScanDefaultChunk is the fast one, see selective_scan.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <numeric>

#include "../common/limits.h"

namespace pyneuro {
namespace cuda {

// kSelectiveScanMaxDState and kSelectiveScanDefaultChunk (and why they are what they are) live in
// ../common/limits.h, toolkit-free, so that build_info() and the argument checks read them too.

enum class ScanDtype : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Fields marked "derived" are filled by the launcher; callers leave them alone.
struct SelectiveScanFwdParams {
  int batch = 0, dim = 0, seqlen = 0, dstate = 0;
  int groups_B = 0;  // 0: B is constant (dim, N) fp32; else B is (batch, groups_B, N, L) in `dtype`
  int groups_C = 0;  // same for C
  int chunk_size = kSelectiveScanDefaultChunk;  // in [1, max(seqlen, 1)]
  int n_chunks = 0;                             // ceil(seqlen / chunk_size)
  bool delta_softplus = false;
  ScanDtype dtype = ScanDtype::kFloat32;

  const void* u = nullptr;      // (batch, dim, L)
  const void* delta = nullptr;  // (batch, dim, L)
  const void* z = nullptr;      // (batch, dim, L) or null
  const float* A = nullptr;     // (dim, N)
  const void* B = nullptr;      // see groups_B
  const void* C = nullptr;      // see groups_C
  const float* D = nullptr;             // (dim,) or null
  const float* delta_bias = nullptr;    // (dim,) or null
  const float* initial_state = nullptr; // (batch, dim, N) or null

  void* out = nullptr;            // (batch, dim, L), dtype
  float* last_state = nullptr;    // (batch, dim, N)
  float* chunk_states = nullptr;  // (batch, dim, n_chunks, N): state before step k·chunk_size

  // derived
  int seg_len = 0, tiles_per_seg = 0;
};

struct SelectiveScanBwdParams {
  int batch = 0, dim = 0, seqlen = 0, dstate = 0;
  int groups_B = 0, groups_C = 0;
  int chunk_size = kSelectiveScanDefaultChunk;
  int n_chunks = 0;
  bool delta_softplus = false;
  ScanDtype dtype = ScanDtype::kFloat32;

  const void* dout = nullptr;            // (batch, dim, L), dtype
  const float* dlast_state = nullptr;    // (batch, dim, N) or null
  const void* u = nullptr;
  const void* delta = nullptr;
  const void* z = nullptr;
  const float* A = nullptr;
  const void* B = nullptr;
  const void* C = nullptr;
  const float* D = nullptr;
  const float* delta_bias = nullptr;
  const float* initial_state = nullptr;  // only tells whether dinitial_state is wanted
  const float* chunk_states = nullptr;   // from the forward with the same chunk_size

  void* du = nullptr;        // (batch, dim, L), dtype
  void* ddelta = nullptr;    // (batch, dim, L), dtype: gradient w.r.t. the raw delta
  void* dz = nullptr;        // (batch, dim, L), dtype; null when z is absent
  float* dA = nullptr;       // (dim, N)
  void* dB = nullptr;        // B's shape and dtype
  void* dC = nullptr;        // C's shape and dtype
  float* dD = nullptr;           // (dim,) or null (then not computed)
  float* ddelta_bias = nullptr;  // (dim,) or null
  float* dinitial_state = nullptr;  // (batch, dim, N) or null

  float* workspace = nullptr;  // selective_scan_bwd_workspace_floats(*this) floats, no init needed

  // derived: tiling and the workspace carved into its partials
  int seg_len = 0, tiles_per_seg = 0;
  float* ws_dA = nullptr;
  float* ws_dB_const = nullptr;
  float* ws_dC_const = nullptr;
  float* ws_dD = nullptr;
  float* ws_dbias = nullptr;
  float* ws_dB_var = nullptr;
  float* ws_dC_var = nullptr;
  float* ws_carry = nullptr;  // the adjoint carries when they are not in shared memory (see below)
};

// ---- Channel tiling, shared by the kernels, the launchers and the glue -------------------------
// A block owns up to 32 channels of one batch row. Its channels never straddle a group of B or of
// C, so a variable B/C tile is one (batch, group) row set: channels are cut into segments of
// seg_len = gcd(channels per B group, channels per C group) (a constant matrix counts as one
// group), and each segment into ceil(seg_len / 32) tiles.
struct ScanTiling {
  int seg_len, tiles_per_seg, blocks_x;
  int tiles_B, tiles_C;  // channel tiles per B (C) group: rows of the variable dB (dC) partials
};

inline ScanTiling selective_scan_tiling(int dim, int groups_B, int groups_C) {
  const int cpg_B = groups_B > 0 ? dim / groups_B : dim;
  const int cpg_C = groups_C > 0 ? dim / groups_C : dim;
  ScanTiling t;
  t.seg_len = std::gcd(cpg_B, cpg_C);
  t.tiles_per_seg = (t.seg_len + 31) / 32;
  t.blocks_x = (dim / t.seg_len) * t.tiles_per_seg;
  t.tiles_B = (cpg_B / t.seg_len) * t.tiles_per_seg;
  t.tiles_C = (cpg_C / t.seg_len) * t.tiles_per_seg;
  return t;
}

// ---- Backward workspace (fp32, written before read: no memset) --------------------------------
// Per-warp partials of the sums over batch and time, reduced in fixed order by a second kernel:
//   dA, constant dB, constant dC: 4·batch·dim·N each, laid out (warp, batch, N, dim) so that a
//   warp's lanes (channels) access consecutive floats;  dD, ddelta_bias: (warp, batch, dim);
// partials of the sums over channels for variable B/C, one row per 32-channel tile of a group:
//   dB: tiles_B·batch·groups_B·N·L   (dim/32 rows for groups_B = 1; same for dC);
// for N > kBwdSmemCarryMaxN, the backward's adjoint carries: 32·N per block, batch·blocks_x·32·N.
// Up to kBwdSmemCarryMaxN both carries (32 x N each) stay in shared memory; above it the adjoint
// carry moves here (read and written once per slice and tile, by one thread each), so that the
// backward's shared memory at N = 256 fits the 99 KiB a block may use on sm_86/sm_89.
constexpr int kBwdSmemCarryMaxN = 128;
inline bool selective_scan_bwd_carry_in_smem(int dstate) { return dstate <= kBwdSmemCarryMaxN; }

struct ScanBwdWorkspace {
  int64_t dA, dB_const, dC_const, dD, dbias, dB_var, dC_var, carry, total;  // offsets in floats
};

inline ScanBwdWorkspace selective_scan_bwd_workspace_layout(int batch, int dim, int seqlen,
                                                            int dstate, int groups_B,
                                                            int groups_C) {
  const ScanTiling t = selective_scan_tiling(dim, groups_B, groups_C);
  const int64_t per_state = int64_t(4) * batch * dim * dstate;
  const int64_t per_chan = int64_t(4) * batch * dim;
  ScanBwdWorkspace w;
  int64_t o = 0;
  w.dA = o;       o += per_state;
  w.dB_const = o; o += groups_B == 0 ? per_state : 0;
  w.dC_const = o; o += groups_C == 0 ? per_state : 0;
  w.dD = o;       o += per_chan;
  w.dbias = o;    o += per_chan;
  w.dB_var = o;   o += groups_B > 0 ? int64_t(t.tiles_B) * batch * groups_B * dstate * seqlen : 0;
  w.dC_var = o;   o += groups_C > 0 ? int64_t(t.tiles_C) * batch * groups_C * dstate * seqlen : 0;
  w.carry = o;    o += selective_scan_bwd_carry_in_smem(dstate) ? 0 : int64_t(batch) * t.blocks_x * 32 * dstate;
  w.total = o;
  return w;
}

inline int64_t selective_scan_bwd_workspace_floats(const SelectiveScanBwdParams& p) {
  return selective_scan_bwd_workspace_layout(p.batch, p.dim, p.seqlen, p.dstate, p.groups_B,
                                             p.groups_C)
      .total;
}

// Launchers: enqueue on `stream`, return the launch error (cudaSuccess when fine). They require
// seqlen >= 1, batch >= 1, dim >= 1 (the glue handles empty problems without a launch).
cudaError_t selective_scan_fwd(const SelectiveScanFwdParams& params, cudaStream_t stream);
cudaError_t selective_scan_bwd(const SelectiveScanBwdParams& params, cudaStream_t stream);

// Dynamic shared memory (bytes) the launcher requests for these params: it depends on dstate,
// on whether z is given (params.z != nullptr) and on the kinds of B and C (groups_B/groups_C > 0:
// variable), not on the dtype. The largest is with z and both variable. For compile-time checks
// against the 227 KiB (sm_90) / 163 KiB (sm_80) a block may use, and for occupancy estimates.
size_t selective_scan_fwd_smem_bytes(const SelectiveScanFwdParams& params);
size_t selective_scan_bwd_smem_bytes(const SelectiveScanBwdParams& params);

}  // namespace cuda
}  // namespace pyneuro
