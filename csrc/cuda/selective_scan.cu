// Selective scan forward and backward on CUDA (contract: docs/selective_scan_contract.md).
//
// Geometry (both directions). A block of 128 threads = 4 warps owns 32 channels of one batch row
// (lane = channel; a block never straddles a B or C group, see ScanTiling) and walks the whole
// sequence in tiles of 64 steps. Inside a tile warp w owns steps [16w, 16w + 16): each lane runs
// its channel's recurrence over those 16 steps in registers, and the 4 warps are joined by a
// block-level scan. The state index n is a loop ("slice"): per slice a lane holds 16 a's and 16
// b's, so N costs only shared memory (32 x N carries; N <= 256). Why lanes are channels: y sums
// over n inside the lane (no cross-lane reduction in the forward), and B_t[n], C_t[n] are equal for
// all 32 lanes, so they come from shared memory as broadcast float4 loads.
//
// The scan. x_t = a_t·x_{t-1} + b_t, a_t = exp(δ_t·A[d,n]), b_t = δ_t·B_t[n]·u_t. A segment maps
// its incoming state x to P·x + X (P = Π a, X = its result from x = 0); segment (P, X) followed by
// (P', X') is (P'·P, P'·X + X'). Per slice:
//   1. each lane scans its 16 steps from x = 0 -> (P, X); warp 0 also applies the tile's carry, so
//      it publishes the true state at the end of segment 0;
//   2. (P, X) to shared memory, one __syncthreads; warp w folds segments 1..w-1 onto it (<= 2
//      fmas) to get its true start state;
//   3. each lane replays its 16 steps from there with the stored a, b (no second exp),
//      y_t += C_t[n]·x_t; warp 3's end state is the next tile's carry.
//
// Cost. Per (t, n) a lane spends ~7 FP32 instructions and one MUFU ex2; per (t, channel) the
// staging, softplus, silu and epilogue add ~1.5 per n at N = 16. The MUFU (16/clk/SM) bounds every
// layout: at (batch, dim, L, N) = (8, 1536, 2048, 16) the 4e8 exps take ~0.11 ms on an H100, about
// the fp32 copy floor of u, delta, out (0.10 ms); with 16-bit inputs the exps dominate.
//
// Chunking. chunk_states[k] is the state before step k·chunk_size. Tiles never cross a chunk start
// (a tile is min(64, steps left in the chunk) long), so each chunk start is a tile start and its
// state is the block's carry. The default chunk_size = 64 = one tile: the backward reads every
// tile's start state (N/64 floats per element: +6% over the fp32 u/delta/z/out streams at N = 16)
// and recomputes each forward step once. A chunk of m > 1 tiles makes the backward re-run the
// state-only forward of the earlier tiles of the chunk (O(m^2) tile passes): correct, slower.
//
// Backward, per tile (last to first), per slice: the forward scan above (x_t stored over b_t),
// then the same scan in reverse for the adjoint H_t = a_t·g_t, g_t = C_t[n]·dy_t + H_{t+1} (affine
// in the incoming H with the same slope P), and the per-step dB/dC/du/ddelta/dA terms. Two
// __syncthreads per slice, three with a variable B or C (their per-step sums over lanes follow).
//
// Determinism: no atomics. Sums over channels (variable dB, dC): lane terms -> shared memory ->
// a fixed-order sum per step -> one fp32 partial row per 32-channel tile of a group (workspace
// tiles·batch·G·N·L floats, tiles = channels per group / 32). Sums over batch and time (dA, dD,
// ddelta_bias, constant dB/dC): each (warp, batch, [n,] channel) entry is accumulated by the one
// thread that owns it (4·batch·dim·N floats; channel innermost, so a warp's 32 lanes touch 128
// consecutive bytes). sum_partials_kernel adds the rows in a fixed order. Results are bitwise
// reproducible for a given shape and GPU.
//
// Memory traffic per kernel, E = batch·dim·L elements of s bytes (4, or 2 for fp16/bf16), with
// z, variable B/C of G groups, chunk_size 64:
//   forward   reads u, delta, z (3·E·s), B, C (2·batch·G·N·L·s per 32 channels, from L2 after the
//             first block of a group), writes out (E·s) and chunk_states (E·N/64·4): at N = 16,
//             fp32, 4·E·4 + E bytes. All of it moves in 16-byte accesses when L is a multiple of
//             16/s and the tensors are 16-byte aligned (element-wise otherwise).
//   backward  reads u, delta, z, dout (4·E·s), chunk_states (E·N/64·4), B, C as the forward;
//             writes du, ddelta, dz (3·E·s); per slice and tile, one read-modify-write of the
//             per-warp dA (and constant dB/dC) partials (L2-resident, 4·batch·dim·N floats), and
//             the variable dB/dC partials once (⌈channels per group / 32⌉ rows of batch·G·N·L
//             floats, from which sum_partials writes dB/dC).
//   sum_partials  reads rows·M partials, writes M results: the second stage of every reduction.
// The tensor streams are the floor: at (batch, dim, L, N) = (8, 1536, 2048, 16) fp32 the forward
// moves 0.43 GB (0.13 ms at the H100's 3.35 TB/s).
#include <cuda_runtime.h>

#include <cstdint>

#include "common.cuh"
#include "selective_scan.h"

namespace pyneuro {
namespace cuda {
namespace {

constexpr int kLanes = 32;                  // channels per block, one per lane
constexpr int kWarps = 4;                   // time segments per tile, one per warp
constexpr int kSteps = 16;                  // steps per segment (a, b, x of a slice in registers)
constexpr int kTile = kWarps * kSteps;      // 64 steps per tile (== kSelectiveScanDefaultChunk)
constexpr int kThreads = kLanes * kWarps;   // 128
constexpr int kRow = kTile + 4;             // [channel][t] row stride: a lane's float4 loads of its
                                            // row are bank-conflict free (4 banks apart per lane)
constexpr int kNB = 16;                     // B/C rows (states) staged in shared memory at once
constexpr int kRedRow = kLanes + 4;         // [t][lane] rows of the dB/dC reduction buffers
constexpr int kSlabRow = kLanes + 1;        // [n][lane] rows of A / constant B, C slabs: the
                                            // transposing store is 2-way, the reads conflict-free
// Blocks per SM the kernels are compiled for (__launch_bounds__): the register budget is
// 65536 / (128 · blocks). The forward fits 128 registers (4 blocks, 16 warps per SM) without
// spilling, except the fp32 variable-B/C variant on sm_80, which spilled 16 bytes at 128 and gets
// 168 (3 blocks) there only. The backward holds six 16-step arrays: at 168 registers (3 blocks)
// ptxas spilled block-level values in 7 of 12 variants, so it gets up to 255 (2 blocks, 8 warps
// per SM; its shared memory allowed 2 blocks on sm_80/sm_86 anyway, 3 on sm_90).
template <typename T, bool kBVar, bool kCVar>
struct FwdBlocksPerSM {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 800
  static constexpr int value = (sizeof(T) == 4 && kBVar && kCVar) ? 3 : 4;
#else
  static constexpr int value = 4;
#endif
};
constexpr int kBwdBlocksPerSM = 2;

static_assert(kTile == kSelectiveScanDefaultChunk, "default chunk = one tile");
static_assert(kSteps % 4 == 0 && kRow % 4 == 0 && kRedRow % 4 == 0, "float4 alignment");
static_assert(kThreads == 2 * kTile, "the dB/dC reduction gives two threads per step");

// One float4 as an indexable quad. Inner loops fetch B/C four steps at a time, right where they are
// used, instead of holding 16 in registers (keeps the kernels under their register budgets).
struct Quad {
  float v[4];
};
__device__ __forceinline__ Quad ldq(const float* p) {
  const float4 f = *reinterpret_cast<const float4*>(p);
  return Quad{{f.x, f.y, f.z, f.w}};
}
__device__ __forceinline__ void stq(float* p, const Quad& q) {
  *reinterpret_cast<float4*>(p) = make_float4(q.v[0], q.v[1], q.v[2], q.v[3]);
}
__device__ __forceinline__ Quad splat(float s) { return Quad{{s, s, s, s}}; }

// The block's channels: [d0, d0 + nch), inside one group of B (gB) and of C (gC); tile_B/tile_C
// is the block's row in the variable dB/dC partials.
struct BlockTile {
  int d0, nch, gB, gC, tile_B, tile_C;
};

template <typename Params>
__device__ __forceinline__ BlockTile block_tile(const Params& p) {
  const int s = blockIdx.x / p.tiles_per_seg, j = blockIdx.x - s * p.tiles_per_seg;
  const int cpg_B = p.groups_B > 0 ? p.dim / p.groups_B : p.dim;
  const int cpg_C = p.groups_C > 0 ? p.dim / p.groups_C : p.dim;
  BlockTile t;
  t.d0 = s * p.seg_len + j * kLanes;
  t.nch = imin(kLanes, p.seg_len - j * kLanes);
  t.gB = t.d0 / cpg_B;
  t.gC = t.d0 / cpg_C;
  t.tile_B = (s % (cpg_B / p.seg_len)) * p.tiles_per_seg + j;
  t.tile_C = (s % (cpg_C / p.seg_len)) * p.tiles_per_seg + j;
  return t;
}

// A (channels, steps) tile of a (rows, L) input, as fp32 in shared memory [channel][t] (row
// stride kRow), zero outside the block's channels and the tile: 16-byte loads, coalesced.
template <typename T>
__device__ __forceinline__ void stage_channels(float* s, const T* __restrict__ x, int64_t row0,
                                               int nch, int L, int t0, int len) {
  stage_tile<kLanes, kTile, kThreads>(s, kRow, x + row0 * L + t0, L, nch, len);
}
// kNB rows of a variable B or C, (b, g, n0 .. n0 + kNB) x tile, into s[kNB][kTile].
template <typename T>
__device__ __forceinline__ void stage_states(float* s, const T* __restrict__ M, int64_t row,
                                             int nrows, int L, int t0, int len) {
  stage_tile<kNB, kTile, kThreads>(s, kTile, M + row * L + t0, L, nrows, len);
}

// δ_t of this lane's 16 steps (row: its 16 entries of the staged raw delta, updated in place):
// softplus(delta + bias) (or delta + bias), and 0 for steps outside the tile or the block's
// channels, which makes them the identity (a = 1, b = 0). Done by the lane that owns the steps:
// the staging stays a plain copy and the bias is one register per lane. A rolled loop over
// float4s keeps one copy of softplus in the code and no 16-element array live.
__device__ __forceinline__ void lane_delta(float* row, float bias, bool softplus_on, int valid_steps) {
#pragma unroll 1
  for (int q = 0; q < kSteps / 4; ++q) {
    Quad d = ldq(row + 4 * q);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float v = d.v[i] + bias;
      if (softplus_on) v = softplus(v);
      d.v[i] = 4 * q + i < valid_steps ? v : 0.f;
    }
    stq(row + 4 * q, d);
  }
}

// kNB states [n0, n0 + kNB) of a (dim, N) fp32 parameter (A, constant B or C) for the block's
// channels, times `scale`, transposed into s[n - n0][lane] (row stride kSlabRow); 0 outside. Each
// slice then reads its 32 values with one conflict-free LDS instead of a global load whose lanes
// are N floats apart (32 sectors and ~16 L1 wavefronts per warp, the forward's busiest load).
// (Rolled, with 32-bit offsets from the block's first row: unrolled, the compiler hoisted one
// 64-bit address per iteration out of the slice loop and the kernels spilled.)
__device__ __forceinline__ void stage_param_slab(float* s, const float* __restrict__ M, int d0, int nch,
                                                 int N, int n0, float scale) {
  const float* __restrict__ rows = M + int64_t(d0) * N;  // (32 x N <= 8192 floats from here)
#pragma unroll 1
  for (int i = threadIdx.x; i < kLanes * kNB; i += kThreads) {
    const int r = i / kNB, j = i % kNB;  // consecutive threads read consecutive n of one channel
    s[j * kSlabRow + r] = (r < nch && n0 + j < N) ? rows[r * N + n0 + j] * scale : 0.f;
  }
}

// A per-channel fp32 parameter (D, delta_bias) of this lane's channel, 0 when absent. Loaded where
// it is used (an L1 hit after the first tile) rather than held in a register across the scan.
__device__ __forceinline__ float channel_param(const float* __restrict__ v, int d, bool active) {
  return (v != nullptr && active) ? v[d] : 0.f;
}

// The gate of this lane's 16 steps, in place: dout -> dy = dout·silu(z) (the gradient reaching
// y + D·u) and z -> dout·silu'(z) (dz per unit of y + D·u). Zero-staged entries give 0.
__device__ __forceinline__ void lane_gate_grad(float* dout_row, float* z_row) {
#pragma unroll 1
  for (int q = 0; q < kSteps / 4; ++q) {
    Quad g = ldq(dout_row + 4 * q), zq = ldq(z_row + 4 * q);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float zz = zq.v[i], sg = sigmoid(zz);
      zq.v[i] = g.v[i] * silu_grad(zz, sg);
      g.v[i] *= zz * sg;
    }
    stq(dout_row + 4 * q, g);
    stq(z_row + 4 * q, zq);
  }
}

// Sum the 32 lanes' terms of each step of a tile, s[t][lane] (row stride kRedRow), in a fixed
// order, and write the sums of steps t < len to dst[t]. Two threads per step (16 lanes each,
// conflict-free float4 loads), joined by one shuffle; a + b == b + a, so both halves agree.
__device__ __forceinline__ void reduce_lanes(const float* s, float* __restrict__ dst, int len) {
  const int t = threadIdx.x / 2, h = threadIdx.x % 2;
  const float4* q = reinterpret_cast<const float4*>(s + t * kRedRow + h * 16);
  float acc = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float4 f = q[i];
    acc += f.x; acc += f.y; acc += f.z; acc += f.w;
  }
  acc += shfl_xor(acc, 1);
  if (h == 0 && t < len) dst[t] = acc;
}

// Dynamic shared memory of a launch, in floats. An array the variant does not use takes no space
// (the z tile without z; B/C staging and dB/dC reduction buffers for a constant B/C), so the
// launcher asks only for what it needs; the kernels carve the same layout in the same order.
// Pieces whose presence is a template argument come first and the z tile last before the
// N-sized carries, so that every hot array sits at a compile-time offset. Every piece is a whole
// number of float4s.
constexpr int kChannelTile = kLanes * kRow;  // a [channel][t] tile
constexpr int kStateRows = kNB * kTile;       // a B/C staging block
constexpr int kRedTile = kTile * kRedRow;     // a dB/dC reduction buffer
constexpr int kAggF2 = kWarps * kLanes;       // one set of (P, X) scan aggregates, in float2
constexpr int kSlab = kNB * kSlabRow;         // a slab of A or of a constant B/C
static_assert(kSlab % 4 == 0, "float4 alignment of what follows a slab");
// Slabs: A, plus one per constant B/C.
constexpr int slabs(bool B_var, bool C_var) { return 1 + !B_var + !C_var; }
size_t fwd_smem_floats(int N, bool has_z, bool B_var, bool C_var) {
  return size_t(2 + has_z) * kChannelTile + size_t(B_var + C_var) * kStateRows + 2 * 2 * kAggF2 +
         size_t(slabs(B_var, C_var)) * kSlab + size_t(kLanes) * N;
}
size_t bwd_smem_floats(int N, bool has_z, bool B_var, bool C_var) {
  return size_t(3 + has_z) * kChannelTile + size_t(B_var + C_var) * (kStateRows + kRedTile) +
         3 * 2 * kAggF2 + size_t(slabs(B_var, C_var)) * kSlab +
         size_t(selective_scan_bwd_carry_in_smem(N) ? 2 : 1) * kLanes * N;
}
// The largest backward (z, variable B and C) at the largest N with shared carries, and at the
// largest N: both within sm_86/sm_89's 99 KiB per block (the smallest opt-in limit targeted).
static_assert((3 + 1) * kChannelTile + 2 * (kStateRows + kRedTile) + 3 * 2 * kAggF2 + kSlab +
                  2 * kLanes * kBwdSmemCarryMaxN <= 99 * 1024 / 4, "shared carries fit 99 KiB");
static_assert((3 + 1) * kChannelTile + 2 * (kStateRows + kRedTile) + 3 * 2 * kAggF2 + kSlab +
                  kLanes * kSelectiveScanMaxDState <= 99 * 1024 / 4, "state carry fits 99 KiB");

// =================================================================================================
// Forward.  grid (blocks_x, batch), 128 threads; per block 32 channels x all L.
// Per tile: u, delta, z and the first 16 B/C rows are staged raw (16-byte loads); each lane turns
// its own 16 δ's into softplus(delta + bias) in place, then the slices run (A, constant B/C
// staged per 16 states as [n][lane] slabs); the lane computes out = (y + D·u)·silu(z) for its own
// steps and the tile is stored with 16-byte stores.
// Shared memory (fp32): δ, u (then out) tiles 2 x 32 x 68, z 32 x 68 (with z); B and C rows
// 16 x 64 each (when variable); A and constant B/C slabs 16 x 33 each; scan aggregates
// 2 x 4 x 32 float2; carries 32 x N. With z and variable B, C: 39.6 KiB at N = 16 (4 blocks per
// SM on A100 and H100), 69.6 KiB at N = 256.
// Registers: <= 128 (4 blocks, 16 warps per SM), no spills; the fp32 variable-B/C variant on
// sm_80 spilled 16/24 bytes there and is compiled for 3 blocks (154 registers, 12 warps per SM).
// HBM traffic: u, delta, z read once, out written once, N floats of chunk_states per channel per
// chunk (+6% over fp32 u/delta/z/out at N = 16, chunk 64), variable B/C read once per 32 channels.
// =================================================================================================
template <typename T, bool kBVar, bool kCVar>
__global__ void __launch_bounds__(kThreads, (FwdBlocksPerSM<T, kBVar, kCVar>::value))
selective_scan_fwd_kernel(const SelectiveScanFwdParams p) {
  extern __shared__ float4 smem4[];
  const bool has_z = p.z != nullptr;
  float* const s_delta = reinterpret_cast<float*>(smem4);   // [kLanes][kRow] raw delta
  float* const s_u = s_delta + kChannelTile;                 // [kLanes][kRow] u, then out
  float2* const s_agg = reinterpret_cast<float2*>(s_u + kChannelTile);  // [2][kWarps][kLanes]
  float* const s_pA = reinterpret_cast<float*>(s_agg + 2 * kAggF2);     // [kNB][kSlabRow] A·log2(e)
  float* const s_pB = s_pA + kSlab;                          // [kNB][kSlabRow] (constant B)
  float* const s_pC = s_pB + (kBVar ? 0 : kSlab);            // [kNB][kSlabRow] (constant C)
  float* const s_B = s_pC + (kCVar ? 0 : kSlab);             // [kNB][kTile] (variable B)
  float* const s_C = s_B + (kBVar ? kStateRows : 0);         // [kNB][kTile] (variable C)
  float* const s_gate = s_C + (kCVar ? kStateRows : 0);      // [kLanes][kRow] z (with z)
  float* const s_carry = s_gate + (has_z ? kChannelTile : 0);  // [N][kLanes]

  const T* __restrict__ u = static_cast<const T*>(p.u);
  const T* __restrict__ delta = static_cast<const T*>(p.delta);
  const T* __restrict__ z = static_cast<const T*>(p.z);
  const T* __restrict__ Bvar = static_cast<const T*>(p.B);
  const T* __restrict__ Cvar = static_cast<const T*>(p.C);
  const float* __restrict__ Bconst = static_cast<const float*>(p.B);
  const float* __restrict__ Cconst = static_cast<const float*>(p.C);
  T* __restrict__ out = static_cast<T*>(p.out);

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int b = blockIdx.y, L = p.seqlen, N = p.dstate, cs = p.chunk_size;
  const BlockTile bt = block_tile(p);
  const int64_t row0 = int64_t(b) * p.dim + bt.d0;  // (b, d0) row of u/delta/z/out/states
  const bool active = lane < bt.nch;
  const int64_t rowB = (int64_t(b) * p.groups_B + bt.gB) * N;  // (b, gB, n = 0) row of B
  const int64_t rowC = (int64_t(b) * p.groups_C + bt.gC) * N;

  for (int i = tid; i < kLanes * N; i += kThreads) {
    const int r = i / N, n = i - r * N;
    s_carry[n * kLanes + r] = (p.initial_state != nullptr && r < bt.nch)
                                  ? p.initial_state[(row0 + r) * N + n] : 0.f;
  }

  int par = 0;  // s_agg double buffer: one __syncthreads per slice
  for (int t0 = 0; t0 < L;) {
    const int len = imin(kTile, imin(L - t0, cs - t0 % cs));  // tiles never cross a chunk start
    __syncthreads();  // previous tile done with shared memory; carries final
    if (t0 % cs == 0) {
      const int64_t k = t0 / cs;
      for (int i = tid; i < kLanes * N; i += kThreads) {
        const int r = i / N, n = i - r * N;
        if (r < bt.nch) p.chunk_states[((row0 + r) * p.n_chunks + k) * N + n] = s_carry[n * kLanes + r];
      }
    }
    stage_channels(s_delta, delta, row0, bt.nch, L, t0, len);
    stage_channels(s_u, u, row0, bt.nch, L, t0, len);
    if (has_z) stage_channels(s_gate, z, row0, bt.nch, L, t0, len);
    if (kBVar) stage_states(s_B, Bvar, rowB, imin(kNB, N), L, t0, len);
    if (kCVar) stage_states(s_C, Cvar, rowC, imin(kNB, N), L, t0, len);
    stage_param_slab(s_pA, p.A, bt.d0, bt.nch, N, 0, kLog2e);
    if (!kBVar) stage_param_slab(s_pB, Bconst, bt.d0, bt.nch, N, 0, 1.f);
    if (!kCVar) stage_param_slab(s_pC, Cconst, bt.d0, bt.nch, N, 0, 1.f);
    __syncthreads();

    // This lane's 16 steps: δ, δ·u, and y accumulated over n.
    float dl[kSteps], du[kSteps], y[kSteps];
    lane_delta(s_delta + lane * kRow + warp * kSteps, channel_param(p.delta_bias, bt.d0 + lane, active),
               p.delta_softplus, active ? len - warp * kSteps : 0);
    lds_f32(dl, s_delta + lane * kRow + warp * kSteps);
    lds_f32(du, s_u + lane * kRow + warp * kSteps);
#pragma unroll
    for (int k = 0; k < kSteps; ++k) { du[k] *= dl[k]; y[k] = 0.f; }

    for (int n = 0; n < N; ++n) {
      const int nl = n % kNB;
      if (nl == 0 && n > 0) {  // the next kNB states' B/C rows and A, B, C slabs
        __syncthreads();  // everyone is done with the previous rows
        if (kBVar) stage_states(s_B, Bvar, rowB + n, imin(kNB, N - n), L, t0, len);
        if (kCVar) stage_states(s_C, Cvar, rowC + n, imin(kNB, N - n), L, t0, len);
        stage_param_slab(s_pA, p.A, bt.d0, bt.nch, N, n, kLog2e);
        if (!kBVar) stage_param_slab(s_pB, Bconst, bt.d0, bt.nch, N, n, 1.f);
        if (!kCVar) stage_param_slab(s_pC, Cconst, bt.d0, bt.nch, N, n, 1.f);
        __syncthreads();
      }
      const float A2 = s_pA[nl * kSlabRow + lane];
      const float Bn = kBVar ? 0.f : s_pB[nl * kSlabRow + lane];
      const float Cn = kCVar ? 0.f : s_pC[nl * kSlabRow + lane];

      const float* const Brow = s_B + nl * kTile + warp * kSteps;
      const float* const Crow = s_C + nl * kTile + warp * kSteps;
      // 1. local scan of the 16 steps from x = 0, keeping a and b for the replay
      float a[kSteps], bx[kSteps];
      float P = 1.f, X = 0.f;
#pragma unroll
      for (int q = 0; q < kSteps / 4; ++q) {
        const Quad bq = kBVar ? ldq(Brow + 4 * q) : splat(Bn);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int k = 4 * q + i;
          a[k] = ex2_approx(dl[k] * A2);
          bx[k] = du[k] * bq.v[i];
          X = fmaf(a[k], X, bx[k]);
          P *= a[k];
        }
      }
      float x = 0.f;
      if (warp == 0) {  // segment 0 starts from the carry: publish its true end state
        x = s_carry[n * kLanes + lane];
        X = fmaf(P, x, X);
      }
      float2* const agg = s_agg + par * kWarps * kLanes;
      agg[warp * kLanes + lane] = make_float2(P, X);
      __syncthreads();
      // 2. start state of segment w: segment 0's end state through segments 1..w-1
      if (warp > 0) {
        x = agg[lane].y;
        for (int j = 1; j < warp; ++j) {
          const float2 g = agg[j * kLanes + lane];
          x = fmaf(g.x, x, g.y);
        }
      }
      // 3. replay from the true start state; y_t += C_t[n]·x_t
#pragma unroll
      for (int q = 0; q < kSteps / 4; ++q) {
        const Quad cq = kCVar ? ldq(Crow + 4 * q) : splat(Cn);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int k = 4 * q + i;
          x = fmaf(a[k], x, bx[k]);
          y[k] = fmaf(cq.v[i], x, y[k]);
        }
      }
      if (warp == kWarps - 1) s_carry[n * kLanes + lane] = x;  // warp 0 read it before the barrier
      par ^= 1;
    }

    // out = (y + D·u)·silu(z), written over this lane's own u entries, then stored coalesced.
    {
      float* const urow = s_u + lane * kRow + warp * kSteps;
      const float* const zrow = s_gate + lane * kRow + warp * kSteps;
      const float Dv = channel_param(p.D, bt.d0 + lane, active);
#pragma unroll
      for (int q = 0; q < kSteps / 4; ++q) {
        Quad o = ldq(urow + 4 * q);
        const Quad zq = has_z ? ldq(zrow + 4 * q) : splat(0.f);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          o.v[i] = fmaf(Dv, o.v[i], y[4 * q + i]);
          if (has_z) o.v[i] *= silu(zq.v[i]);
        }
        stq(urow + 4 * q, o);
      }
    }
    __syncthreads();
    store_tile<kLanes, kTile, kThreads>(out + row0 * L + t0, L, s_u, kRow, bt.nch, len);
    t0 += len;
  }
  __syncthreads();
  for (int i = tid; i < kLanes * N; i += kThreads) {
    const int r = i / N, n = i - r * N;
    if (r < bt.nch) p.last_state[(row0 + r) * N + n] = s_carry[n * kLanes + r];
  }
}

// =================================================================================================
// Backward.  Same grid and geometry; tiles from the last to the first.
// Per tile: start state from chunk_states (plus a state-only forward over the earlier tiles of
// the chunk when chunk_size > 64), then per slice n:
//   forward scan (as above; x_t replaces b_t in registers; dC terms dy_t·x_t; y_t if z),
//   reverse scan of H_t = a_t·g_t, g_t = C_t[n]·dy_t + H_{t+1}: local pass, publish (P, X),
//     __syncthreads, fold the segments to the right, replay with per-step terms
//     gB_t += g_t·B_t[n] (-> du, ddelta),  gA_t += H_t·x_{t-1}·A (-> ddelta),
//     dA += H_t·x_{t-1}·δ_t,  dB terms g_t·δ_t·u_t;
//   with a variable B or C: __syncthreads, then the slice's dB/dC terms summed over lanes.
// Lane prologue: δ as in the forward; dy = dout·silu(z) into registers and dout·silu'(z) kept in
// the z tile for dz (one sigmoid per element). Lane epilogue per step: ddelta (through softplus:
// σ(v) = 1 - exp(-softplus(v))), du, dz = (y + D·u)·dout·silu'(z); 16-byte stores.
// Shared memory (fp32): δ, u, dout tiles 3 x 32 x 68 (+ z with z); B, C rows 16 x 64 and dB/dC
// terms 64 x 36 each (when variable); A and constant B/C slabs 16 x 33 each; aggregates
// 3 x 4 x 32 float2; state and adjoint carries
// 2 x 32 x N, or for N > kBwdSmemCarryMaxN (128) only the state carry, the adjoint carry then
// being 32 x N floats of the workspace (at N = 256 both in shared memory took 129 KiB, over the
// 99 KiB of sm_86/sm_89). With z and variable B, C: 69.1 KiB at N = 16, 97.1 KiB at N = 128..256.
// Registers: 195-225, no spills: compiled for 2 blocks per SM (8 warps; 255 registers). At 3
// blocks (168 registers) ptxas spilled block-level values in 7 of 12 variants; shared memory
// allowed only 2 blocks on A100 anyway (H100: 3 at N = 16). At N > 128: 1 block on A100 and
// sm_86/89, 2 on H100.
// HBM traffic: u, delta, z, dout read once, du, ddelta, dz written once, chunk_states read once;
// variable dB/dC partials of ⌈channels per group / 32⌉ rows x (N, L) per (batch, group) written
// once and read once by sum_partials_kernel.
// =================================================================================================
template <typename T, bool kBVar, bool kCVar>
__global__ void __launch_bounds__(kThreads, kBwdBlocksPerSM)
selective_scan_bwd_kernel(const SelectiveScanBwdParams p) {
  extern __shared__ float4 smem4[];
  const bool has_z = p.z != nullptr;
  float* const s_delta = reinterpret_cast<float*>(smem4);  // [kLanes][kRow] raw delta, gA, ddelta
  float* const s_u = s_delta + kChannelTile;                // u, then du
  float* const s_dy = s_u + kChannelTile;                   // dout, then y, then dz
  float2* const s_aggF = reinterpret_cast<float2*>(s_dy + kChannelTile);  // [2][kWarps][kLanes]
  float2* const s_aggR = s_aggF + 2 * kAggF2;               // [kWarps][kLanes]
  float* const s_pA = reinterpret_cast<float*>(s_aggR + kAggF2);  // [kNB][kSlabRow] A
  float* const s_pB = s_pA + kSlab;                         // [kNB][kSlabRow] (constant B)
  float* const s_pC = s_pB + (kBVar ? 0 : kSlab);           // [kNB][kSlabRow] (constant C)
  float* const s_B = s_pC + (kCVar ? 0 : kSlab);            // [kNB][kTile] (variable B)
  float* const s_C = s_B + (kBVar ? kStateRows : 0);        // [kNB][kTile] (variable C)
  float* const s_redB = s_C + (kCVar ? kStateRows : 0);     // [kTile][kRedRow] dB terms (variable B)
  float* const s_redC = s_redB + (kBVar ? kRedTile : 0);    // [kTile][kRedRow] dC terms (variable C)
  float* const s_z = s_redC + (kCVar ? kRedTile : 0);       // z, then dout·silu'(z) (with z)
  float* const s_fc = s_z + (has_z ? kChannelTile : 0);     // [N][kLanes] x at tile start
  // [N][kLanes] adjoint entering the tile end: in shared memory up to kBwdSmemCarryMaxN, else this
  // block's 32 x N floats of the workspace (L2-resident; one access per slice and tile, ordered by
  // the same __syncthreads as in shared memory).
  float* const s_rc = p.dstate <= kBwdSmemCarryMaxN
                          ? s_fc + kLanes * p.dstate
                          : p.ws_carry + (int64_t(blockIdx.y) * gridDim.x + blockIdx.x) * kLanes * p.dstate;

  const T* __restrict__ u = static_cast<const T*>(p.u);
  const T* __restrict__ delta = static_cast<const T*>(p.delta);
  const T* __restrict__ z = static_cast<const T*>(p.z);
  const T* __restrict__ dout = static_cast<const T*>(p.dout);
  const T* __restrict__ Bvar = static_cast<const T*>(p.B);
  const T* __restrict__ Cvar = static_cast<const T*>(p.C);
  const float* __restrict__ Bconst = static_cast<const float*>(p.B);
  const float* __restrict__ Cconst = static_cast<const float*>(p.C);
  T* __restrict__ du_out = static_cast<T*>(p.du);
  T* __restrict__ ddelta_out = static_cast<T*>(p.ddelta);
  T* __restrict__ dz_out = static_cast<T*>(p.dz);

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int b = blockIdx.y, L = p.seqlen, N = p.dstate, cs = p.chunk_size;
  const BlockTile bt = block_tile(p);
  const int64_t row0 = int64_t(b) * p.dim + bt.d0;
  const bool active = lane < bt.nch;
  const int64_t rowB = (int64_t(b) * p.groups_B + bt.gB) * N;
  const int64_t rowC = (int64_t(b) * p.groups_C + bt.gC) * N;
  // This thread's (warp, b, n = 0, d) entry of the per-warp partials of dA and constant dB/dC,
  // laid out (warp, batch, N, dim) so that the 32 lanes (channels) of a warp access 128
  // consecutive bytes; entry n is n·dim further.
  const int64_t wcol = (int64_t(warp) * p.batch + b) * N * p.dim + bt.d0 + lane;
  const int64_t wstride = p.dim;
  // variable dB/dC partial rows (tile, b, g, n = 0, t = 0)
  float* const dBv_row = kBVar ? p.ws_dB_var + ((int64_t(bt.tile_B) * p.batch + b) * p.groups_B + bt.gB) * N * int64_t(L) : nullptr;
  float* const dCv_row = kCVar ? p.ws_dC_var + ((int64_t(bt.tile_C) * p.batch + b) * p.groups_C + bt.gC) * N * int64_t(L) : nullptr;

  for (int i = tid; i < kLanes * N; i += kThreads) {
    const int r = i / N, n = i - r * N;
    s_rc[n * kLanes + r] = (p.dlast_state != nullptr && r < bt.nch)
                               ? p.dlast_state[(row0 + r) * N + n] : 0.f;
  }

  bool first = true;  // first tile processed: the per-warp partials are written, not updated
  int par = 0;
  for (int c = p.n_chunks - 1; c >= 0; --c) {
    const int cstart = c * cs, clen = imin(cs, L - cstart);
    const int ntl = (clen + kTile - 1) / kTile;
    for (int j = ntl - 1; j >= 0; --j) {
      const int t0 = cstart + j * kTile, len = imin(kTile, clen - j * kTile);
      __syncthreads();  // previous tile done with shared memory; s_rc final
      for (int i = tid; i < kLanes * N; i += kThreads) {
        const int r = i / N, n = i - r * N;
        s_fc[n * kLanes + r] = r < bt.nch ? p.chunk_states[((row0 + r) * p.n_chunks + c) * N + n] : 0.f;
      }

      // ---- start state of tile j: state-only forward over tiles 0..j-1 of the chunk (full tiles)
      for (int jj = 0; jj < j; ++jj) {
        const int s0 = cstart + jj * kTile;
        __syncthreads();  // s_fc written; previous readers of s_delta/s_u/s_B done
        stage_channels(s_delta, delta, row0, bt.nch, L, s0, kTile);
        stage_channels(s_u, u, row0, bt.nch, L, s0, kTile);
        if (kBVar) stage_states(s_B, Bvar, rowB, imin(kNB, N), L, s0, kTile);
        stage_param_slab(s_pA, p.A, bt.d0, bt.nch, N, 0, kLog2e);
        if (!kBVar) stage_param_slab(s_pB, Bconst, bt.d0, bt.nch, N, 0, 1.f);
        __syncthreads();
        float dl[kSteps], du[kSteps];
        lane_delta(s_delta + lane * kRow + warp * kSteps, channel_param(p.delta_bias, bt.d0 + lane, active),
                   p.delta_softplus, active ? kSteps : 0);
        lds_f32(dl, s_delta + lane * kRow + warp * kSteps);
        lds_f32(du, s_u + lane * kRow + warp * kSteps);
#pragma unroll
        for (int k = 0; k < kSteps; ++k) du[k] *= dl[k];
        for (int n = 0; n < N; ++n) {
          const int nl = n % kNB;
          if (nl == 0 && n > 0) {
            __syncthreads();
            if (kBVar) stage_states(s_B, Bvar, rowB + n, imin(kNB, N - n), L, s0, kTile);
            stage_param_slab(s_pA, p.A, bt.d0, bt.nch, N, n, kLog2e);
            if (!kBVar) stage_param_slab(s_pB, Bconst, bt.d0, bt.nch, N, n, 1.f);
            __syncthreads();
          }
          const float A2 = s_pA[nl * kSlabRow + lane];
          const float Bn = kBVar ? 0.f : s_pB[nl * kSlabRow + lane];
          float P = 1.f, X = 0.f;
#pragma unroll
          for (int q = 0; q < kSteps / 4; ++q) {
            const Quad bq = kBVar ? ldq(s_B + nl * kTile + warp * kSteps + 4 * q) : splat(Bn);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              const float a = ex2_approx(dl[4 * q + i] * A2);
              X = fmaf(a, X, du[4 * q + i] * bq.v[i]);
              P *= a;
            }
          }
          float2* const agg = s_aggF + par * kWarps * kLanes;
          agg[warp * kLanes + lane] = make_float2(P, warp == 0 ? fmaf(P, s_fc[n * kLanes + lane], X) : X);
          __syncthreads();
          if (warp == kWarps - 1) {  // end of the tile = end of segment 3
            float x = agg[lane].y;
            for (int w = 1; w < kWarps - 1; ++w) {
              const float2 g = agg[w * kLanes + lane];
              x = fmaf(g.x, x, g.y);
            }
            s_fc[n * kLanes + lane] = fmaf(P, x, X);  // warp 0 read it before the barrier
          }
          par ^= 1;
        }
      }

      // ---- the tile itself
      __syncthreads();  // s_fc final; the state-only pass is done with shared memory
      stage_channels(s_delta, delta, row0, bt.nch, L, t0, len);
      stage_channels(s_u, u, row0, bt.nch, L, t0, len);
      stage_channels(s_dy, dout, row0, bt.nch, L, t0, len);
      if (has_z) stage_channels(s_z, z, row0, bt.nch, L, t0, len);
      if (kBVar) stage_states(s_B, Bvar, rowB, imin(kNB, N), L, t0, len);
      if (kCVar) stage_states(s_C, Cvar, rowC, imin(kNB, N), L, t0, len);
      stage_param_slab(s_pA, p.A, bt.d0, bt.nch, N, 0, 1.f);
      if (!kBVar) stage_param_slab(s_pB, Bconst, bt.d0, bt.nch, N, 0, 1.f);
      if (!kCVar) stage_param_slab(s_pC, Cconst, bt.d0, bt.nch, N, 0, 1.f);
      __syncthreads();

      // This lane's 16 steps: δ, δ·u, dy = dout·silu(z) in registers, gB = Σ_n g·B accumulated in
      // registers. gA = Σ_n H·x_{t-1}·A and y = Σ_n C·x (for dz) accumulate in the lane's own
      // s_delta and s_dy entries, free once δ and dout are in registers (in registers they made the
      // kernel spill); s_z keeps dout·silu'(z) for dz = (y + D·u)·dout·silu'(z). Zero-staged
      // entries outside the tile give dy = 0.
      float dl[kSteps], du[kSteps], dy[kSteps], gB[kSteps];
      float* const garow = s_delta + lane * kRow + warp * kSteps;
      float* const urow = s_u + lane * kRow + warp * kSteps;
      float* const yrow = s_dy + lane * kRow + warp * kSteps;
      float* const zrow = s_z + lane * kRow + warp * kSteps;
      const int valid_steps = active ? len - warp * kSteps : 0;
      lane_delta(garow, channel_param(p.delta_bias, bt.d0 + lane, active), p.delta_softplus, valid_steps);
      if (has_z) lane_gate_grad(yrow, zrow);
      lds_f32(dl, garow);
      lds_f32(du, urow);
      lds_f32(dy, yrow);
#pragma unroll
      for (int k = 0; k < kSteps; ++k) { du[k] *= dl[k]; gB[k] = 0.f; }
#pragma unroll
      for (int q = 0; q < kSteps / 4; ++q) {
        stq(garow + 4 * q, splat(0.f));
        if (has_z) stq(yrow + 4 * q, splat(0.f));
      }

      for (int n = 0; n < N; ++n) {
        const int nl = n % kNB;
        if (nl == 0 && n > 0) {
          __syncthreads();
          if (kBVar) stage_states(s_B, Bvar, rowB + n, imin(kNB, N - n), L, t0, len);
          if (kCVar) stage_states(s_C, Cvar, rowC + n, imin(kNB, N - n), L, t0, len);
          stage_param_slab(s_pA, p.A, bt.d0, bt.nch, N, n, 1.f);
          if (!kBVar) stage_param_slab(s_pB, Bconst, bt.d0, bt.nch, N, n, 1.f);
          if (!kCVar) stage_param_slab(s_pC, Cconst, bt.d0, bt.nch, N, n, 1.f);
          __syncthreads();
        }
        const float An = s_pA[nl * kSlabRow + lane], A2 = An * kLog2e;
        const float Bn = kBVar ? 0.f : s_pB[nl * kSlabRow + lane];
        const float Cn = kCVar ? 0.f : s_pC[nl * kSlabRow + lane];
        // This slice's terms of the per-warp partials of (b, d, n), added to them by this thread
        // only, each as soon as it is complete (fewer live registers in the reverse replay).
        float accA = 0.f, accB = 0.f, accC = 0.f;
        const int64_t wi = wcol + n * wstride;
        const float* const Brow = s_B + nl * kTile + warp * kSteps;
        const float* const Crow = s_C + nl * kTile + warp * kSteps;

        // -- forward: local scan, publish, fold, replay (x_t kept in xs)
        float a[kSteps], xs[kSteps];
        {
          float P = 1.f, X = 0.f;
#pragma unroll
          for (int q = 0; q < kSteps / 4; ++q) {
            const Quad bq = kBVar ? ldq(Brow + 4 * q) : splat(Bn);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              const int k = 4 * q + i;
              a[k] = ex2_approx(dl[k] * A2);
              xs[k] = du[k] * bq.v[i];
              X = fmaf(a[k], X, xs[k]);
              P *= a[k];
            }
          }
          float x = 0.f;
          if (warp == 0) { x = s_fc[n * kLanes + lane]; X = fmaf(P, x, X); }
          float2* const agg = s_aggF + par * kWarps * kLanes;
          agg[warp * kLanes + lane] = make_float2(P, X);
          __syncthreads();
          if (warp > 0) {
            x = agg[lane].y;
            for (int w = 1; w < warp; ++w) {
              const float2 g = agg[w * kLanes + lane];
              x = fmaf(g.x, x, g.y);
            }
          }
          const float x0 = x;  // state before this segment
#pragma unroll
          for (int q = 0; q < kSteps / 4; ++q) {
            const Quad cq = kCVar ? ldq(Crow + 4 * q) : splat(Cn);
            Quad yq = has_z ? ldq(yrow + 4 * q) : splat(0.f);  // (no conditionally set arrays:
                                                                // they go to local memory)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              const int k = 4 * q + i;
              x = fmaf(a[k], x, xs[k]);
              xs[k] = x;
              if (has_z) yq.v[i] = fmaf(cq.v[i], x, yq.v[i]);
              const float v = dy[k] * x;  // dC term
              if (kCVar) s_redC[(warp * kSteps + k) * kRedRow + lane] = v;
              else accC += v;
            }
            if (has_z) stq(yrow + 4 * q, yq);
          }
          if (!kCVar && active) p.ws_dC_const[wi] = first ? accC : p.ws_dC_const[wi] + accC;

          // -- reverse: local pass from H = 0; slope is the same P
          float H = 0.f;
#pragma unroll
          for (int q = kSteps / 4 - 1; q >= 0; --q) {
            const Quad cq = kCVar ? ldq(Crow + 4 * q) : splat(Cn);
#pragma unroll
            for (int i = 3; i >= 0; --i) H = a[4 * q + i] * fmaf(dy[4 * q + i], cq.v[i], H);
          }
          // P again from this thread's own aggregate (after a barrier, so it is a reload and P is
          // not held in a register through the forward replay)
          P = agg[warp * kLanes + lane].x;
          float rin = 0.f;
          if (warp == kWarps - 1) { rin = s_rc[n * kLanes + lane]; H = fmaf(P, rin, H); }
          s_aggR[warp * kLanes + lane] = make_float2(P, H);
          __syncthreads();
          // adjoint entering segment w from the right: segment 3's output through segments 2..w+1
          H = rin;
          if (warp < kWarps - 1) {
            H = s_aggR[(kWarps - 1) * kLanes + lane].y;
            for (int w = kWarps - 2; w > warp; --w) {
              const float2 g = s_aggR[w * kLanes + lane];
              H = fmaf(g.x, H, g.y);
            }
          }
#pragma unroll
          for (int q = kSteps / 4 - 1; q >= 0; --q) {
            const Quad bq = kBVar ? ldq(Brow + 4 * q) : splat(Bn);
            const Quad cq = kCVar ? ldq(Crow + 4 * q) : splat(Cn);
            Quad gaq = ldq(garow + 4 * q);
#pragma unroll
            for (int i = 3; i >= 0; --i) {
              const int k = 4 * q + i;
              const float g = fmaf(dy[k], cq.v[i], H);         // dL/dx_t
              const float Hn = a[k] * g;                       // dL/dx_{t-1} through step t
              const float r = Hn * (k > 0 ? xs[k - 1] : x0);   // dL/da_t · a_t
              gB[k] = fmaf(g, bq.v[i], gB[k]);
              gaq.v[i] = fmaf(r, An, gaq.v[i]);
              accA = fmaf(r, dl[k], accA);
              const float v = g * du[k];  // dB term
              if (kBVar) s_redB[(warp * kSteps + k) * kRedRow + lane] = v;
              else accB += v;
              H = Hn;
            }
            stq(garow + 4 * q, gaq);
          }
          if (warp == 0) s_rc[n * kLanes + lane] = H;  // warp 3 read it before the barrier
        }
        if (active) {
          p.ws_dA[wi] = first ? accA : p.ws_dA[wi] + accA;
          if (!kBVar) p.ws_dB_const[wi] = first ? accB : p.ws_dB_const[wi] + accB;
        }
        // Sum this slice's dB/dC terms over the 32 lanes. Done after a third barrier, where a and x
        // of the slice are dead (inlined between the scans it spilled); the buffers are written
        // again only after the next slice's first barrier, which every reader has passed by then.
        if (kBVar || kCVar) {
          __syncthreads();
          if (kBVar) reduce_lanes(s_redB, dBv_row + int64_t(n) * L + t0, len);
          if (kCVar) reduce_lanes(s_redC, dCv_row + int64_t(n) * L + t0, len);
        }
        par ^= 1;
      }

      // ---- per-step epilogue over this lane's own entries, four steps at a time:
      // ddelta over gA, du over u, dz = (y + D·u)·dout·silu'(z) over y; this tile's dD and
      // ddelta_bias terms, added to the per-warp partials (coalesced, like dA's).
      const float Dv = channel_param(p.D, bt.d0 + lane, active);
      float dD_acc = 0.f, dbias_acc = 0.f;
#pragma unroll
      for (int q = 0; q < kSteps / 4; ++q) {
        Quad uq = ldq(urow + 4 * q), gq = ldq(garow + 4 * q);
        Quad yq = has_z ? ldq(yrow + 4 * q) : splat(0.f);
        const Quad wq = has_z ? ldq(zrow + 4 * q) : splat(0.f);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int k = 4 * q + i;
          const float uu = uq.v[i];
          const float ddl = fmaf(uu, gB[k], gq.v[i]);  // dL/dδ
          const float ddr = p.delta_softplus ? ddl * softplus_grad_from_output(dl[k]) : ddl;
          if (k < valid_steps) {
            dD_acc = fmaf(dy[k], uu, dD_acc);
            dbias_acc += ddr;
          }
          gq.v[i] = ddr;
          uq.v[i] = fmaf(dl[k], gB[k], dy[k] * Dv);  // du
          if (has_z) yq.v[i] = fmaf(Dv, uu, yq.v[i]) * wq.v[i];
        }
        stq(garow + 4 * q, gq);
        stq(urow + 4 * q, uq);
        if (has_z) stq(yrow + 4 * q, yq);
      }
      if (active) {
        const int64_t wi = (int64_t(warp) * p.batch + b) * p.dim + bt.d0 + lane;
        p.ws_dD[wi] = first ? dD_acc : p.ws_dD[wi] + dD_acc;
        p.ws_dbias[wi] = first ? dbias_acc : p.ws_dbias[wi] + dbias_acc;
      }
      __syncthreads();
      store_tile<kLanes, kTile, kThreads>(ddelta_out + row0 * L + t0, L, s_delta, kRow, bt.nch, len);
      store_tile<kLanes, kTile, kThreads>(du_out + row0 * L + t0, L, s_u, kRow, bt.nch, len);
      if (has_z) store_tile<kLanes, kTile, kThreads>(dz_out + row0 * L + t0, L, s_dy, kRow, bt.nch, len);
      first = false;
    }
  }
  __syncthreads();
  if (p.dinitial_state != nullptr) {
    for (int i = tid; i < kLanes * N; i += kThreads) {
      const int r = i / N, n = i - r * N;
      if (r < bt.nch) p.dinitial_state[(row0 + r) * N + n] = s_rc[n * kLanes + r];
    }
  }
}

// out[i] = Σ_r part[r·M + i] in increasing r: the fixed-order second stage of every reduction.
// With dim > 0 the partials are (N, dim) matrices (the backward's coalesced per-warp layout) and
// out is (dim, N): part index n·dim + d goes to out[d·N + n]. Threads walk the partials in memory
// order (coalesced reads, rows·M floats); only the M writes are strided.
template <typename OutT>
__global__ void __launch_bounds__(256)
sum_partials_kernel(const float* __restrict__ part, OutT* __restrict__ out, int rows, int64_t M,
                    int dim) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < M;
       i += int64_t(gridDim.x) * blockDim.x) {
    float s = 0.f;
    for (int r = 0; r < rows; ++r) s += part[int64_t(r) * M + i];
    int64_t o = i;
    if (dim > 0) {
      const int64_t n = i / dim, d = i - n * dim;
      o = d * (M / dim) + n;
    }
    out[o] = from_f<OutT>(s);
  }
}

// ---- launchers ---------------------------------------------------------------------------------
// dim > 0: (N, dim) partials summed into a (dim, N) result, see sum_partials_kernel.
template <typename OutT>
cudaError_t launch_sum(const float* part, void* out, int rows, int64_t M, cudaStream_t stream,
                       int dim = 0) {
  if (M == 0) return cudaSuccess;
  const int64_t blocks = (M + 255) / 256 < 8192 ? (M + 255) / 256 : 8192;
  sum_partials_kernel<OutT><<<int(blocks), 256, 0, stream>>>(part, static_cast<OutT*>(out), rows, M, dim);
  PYNEURO_CUDA_CHECK_LAUNCH();
  return cudaSuccess;
}

template <typename T>
cudaError_t launch_fwd(SelectiveScanFwdParams p, cudaStream_t stream) {
  const ScanTiling tl = selective_scan_tiling(p.dim, p.groups_B, p.groups_C);
  p.seg_len = tl.seg_len;
  p.tiles_per_seg = tl.tiles_per_seg;
  void (*kernel)(const SelectiveScanFwdParams) =
      p.groups_B > 0 ? (p.groups_C > 0 ? selective_scan_fwd_kernel<T, true, true>
                                       : selective_scan_fwd_kernel<T, true, false>)
                     : (p.groups_C > 0 ? selective_scan_fwd_kernel<T, false, true>
                                       : selective_scan_fwd_kernel<T, false, false>);
  const size_t smem = selective_scan_fwd_smem_bytes(p);
  PYNEURO_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  const dim3 grid(tl.blocks_x, p.batch);
  kernel<<<grid, kThreads, smem, stream>>>(p);
  PYNEURO_CUDA_CHECK_LAUNCH();
  return cudaSuccess;
}

template <typename T>
cudaError_t launch_bwd(SelectiveScanBwdParams p, cudaStream_t stream) {
  const ScanTiling tl = selective_scan_tiling(p.dim, p.groups_B, p.groups_C);
  p.seg_len = tl.seg_len;
  p.tiles_per_seg = tl.tiles_per_seg;
  const ScanBwdWorkspace wl = selective_scan_bwd_workspace_layout(p.batch, p.dim, p.seqlen, p.dstate,
                                                                  p.groups_B, p.groups_C);
  p.ws_dA = p.workspace + wl.dA;
  p.ws_dB_const = p.workspace + wl.dB_const;
  p.ws_dC_const = p.workspace + wl.dC_const;
  p.ws_dD = p.workspace + wl.dD;
  p.ws_dbias = p.workspace + wl.dbias;
  p.ws_dB_var = p.workspace + wl.dB_var;
  p.ws_dC_var = p.workspace + wl.dC_var;
  p.ws_carry = p.workspace + wl.carry;
  void (*kernel)(const SelectiveScanBwdParams) =
      p.groups_B > 0 ? (p.groups_C > 0 ? selective_scan_bwd_kernel<T, true, true>
                                       : selective_scan_bwd_kernel<T, true, false>)
                     : (p.groups_C > 0 ? selective_scan_bwd_kernel<T, false, true>
                                       : selective_scan_bwd_kernel<T, false, false>);
  const size_t smem = selective_scan_bwd_smem_bytes(p);
  PYNEURO_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  const dim3 grid(tl.blocks_x, p.batch);
  kernel<<<grid, kThreads, smem, stream>>>(p);
  PYNEURO_CUDA_CHECK_LAUNCH();

  const int warp_rows = kWarps * p.batch;
  const int64_t dimN = int64_t(p.dim) * p.dstate;
  const int64_t NL = int64_t(p.dstate) * p.seqlen;
  PYNEURO_CUDA_TRY(launch_sum<float>(p.ws_dA, p.dA, warp_rows, dimN, stream, p.dim));
  PYNEURO_CUDA_TRY(p.groups_B > 0
                       ? launch_sum<T>(p.ws_dB_var, p.dB, tl.tiles_B, int64_t(p.batch) * p.groups_B * NL, stream)
                       : launch_sum<float>(p.ws_dB_const, p.dB, warp_rows, dimN, stream, p.dim));
  PYNEURO_CUDA_TRY(p.groups_C > 0
                       ? launch_sum<T>(p.ws_dC_var, p.dC, tl.tiles_C, int64_t(p.batch) * p.groups_C * NL, stream)
                       : launch_sum<float>(p.ws_dC_const, p.dC, warp_rows, dimN, stream, p.dim));
  if (p.dD != nullptr) PYNEURO_CUDA_TRY(launch_sum<float>(p.ws_dD, p.dD, warp_rows, p.dim, stream));
  if (p.ddelta_bias != nullptr)
    PYNEURO_CUDA_TRY(launch_sum<float>(p.ws_dbias, p.ddelta_bias, warp_rows, p.dim, stream));
  return cudaSuccess;
}

}  // namespace

cudaError_t selective_scan_fwd(const SelectiveScanFwdParams& params, cudaStream_t stream) {
  switch (params.dtype) {
    case ScanDtype::kFloat32: return launch_fwd<float>(params, stream);
    case ScanDtype::kFloat16: return launch_fwd<__half>(params, stream);
    case ScanDtype::kBFloat16: return launch_fwd<__nv_bfloat16>(params, stream);
  }
  return cudaErrorInvalidValue;
}

size_t selective_scan_fwd_smem_bytes(const SelectiveScanFwdParams& params) {
  return fwd_smem_floats(params.dstate, params.z != nullptr, params.groups_B > 0, params.groups_C > 0) *
         sizeof(float);
}

size_t selective_scan_bwd_smem_bytes(const SelectiveScanBwdParams& params) {
  return bwd_smem_floats(params.dstate, params.z != nullptr, params.groups_B > 0, params.groups_C > 0) *
         sizeof(float);
}

cudaError_t selective_scan_bwd(const SelectiveScanBwdParams& params, cudaStream_t stream) {
  switch (params.dtype) {
    case ScanDtype::kFloat32: return launch_bwd<float>(params, stream);
    case ScanDtype::kFloat16: return launch_bwd<__half>(params, stream);
    case ScanDtype::kBFloat16: return launch_bwd<__nv_bfloat16>(params, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace pyneuro
