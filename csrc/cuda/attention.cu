// Fused attention, forward and backward (docs/attention_contract.md; launch plan in attention.h).
//
// Built for the launch-bound short sequences of the MNIST models (Lk <= 128 keys: one shared-memory
// stage per block, the whole problem of a (b, kv head) in one block), and correct for any length by
// looping over key tiles. All arithmetic fp32 on CUDA cores (no tensor cores: at D = 24 and L = 50
// the work per block is a few thousand FMAs; the cost is launches and memory).
//
// Layout of a block's shared memory (fp32):
//   kt[d][j], vt[d][j]   K and V of one key tile, transposed, row stride kBlockK + 4. A lane that
//                        owns keys j..j+kKPL-1 reads them for one d as one float4/float2 (scores,
//                        dP); a lane that owns a head-dim column d reads 4 keys as one float4
//                        (P·V, dS·K): with the +4 padding, 8 lanes on 8 consecutive d hit 8
//                        different 16-byte bank groups, so neither access conflicts.
//   row buffers          q (pre-scaled by scale·log2 e, so scores are in the log2 domain and
//                        exponentials are one ex2), dout, and per-row key weights (P, dS).
//
// Kernels, with n = B·Hkv key/value heads, G = Hq/Hkv, R = G·Lq query rows per kv head:
//   attention_rows_kernel<fwd>: grid (n, row tiles). Reads q, out-rows once, K and V once per
//     row tile (R/32 tiles at most: the short case reads them ~once); writes out and lse.
//     Per row and key: one D-dot (scores), one D-axpy (P·V); ex2 per key.
//   attention_rows_kernel<dq>: same grid, for Lk > one tile (the dk/dv kernel does dq otherwise).
//     Reads q, dout, out (delta), lse, K, V; writes dq. Two D-dots and one D-axpy per (row, key).
//   attention_dkdv_kernel: grid (n, key tiles). Reads K, V of its tile once and every query row of
//     its group (q, dout, out, lse) once; writes dk, dv of its keys (summed over the group: the
//     block owns them) and, when it is the only key tile, dq. Per (row, key): two D-dots, two
//     D-axpys into the register-resident dk/dv, one D-axpy for dq.
#include "attention.h"

#include "common.cuh"

namespace pyneuro {
namespace cuda {
namespace {

constexpr float kLn2 = 0.6931471805599453f;
constexpr int kMaxWarps = 8;
constexpr int kDkdvThreads = 256;
constexpr int kDkdvRowsPerWarp = 2;                         // rows per warp per chunk
constexpr int kDkdvChunk = kDkdvRowsPerWarp * (kDkdvThreads / kWarpSize);  // 16 query rows per chunk

// Compile-time shape of a head-dim bucket: D <= kMaxD. Keys per tile and per lane follow from it.
template <int kMaxD_>
struct Tile {
  static constexpr int kMaxD = kMaxD_;
  static constexpr int kBlockK = kMaxD <= 64 ? kAttentionBlockKeysSmallD : kAttentionBlockKeysLargeD;
  static constexpr int kLd = kBlockK + 4;                   // kt/vt row stride (floats)
  static constexpr int kKPL = kBlockK / kWarpSize;          // keys per lane in the score phase
  static constexpr int kCols = kMaxD / kWarpSize;           // head-dim columns per lane
  static constexpr int kRowsPerWarp = kMaxD == 128 ? 2 : 4; // rows a warp of the rows kernel keeps
  static_assert(kKPL == 2 || kKPL == 4, "float2/float4 key reads");
};

template <int N>
__device__ __forceinline__ void lds_keys(float (&v)[N], const float* p) {
  if constexpr (N == 4) {
    const float4 f = *reinterpret_cast<const float4*>(p);
    v[0] = f.x; v[1] = f.y; v[2] = f.z; v[3] = f.w;
  } else {
    const float2 f = *reinterpret_cast<const float2*>(p);
    v[0] = f.x; v[1] = f.y;
  }
}

__device__ __forceinline__ float dot4(const float4 a, const float4 b, float acc) {
  return fmaf(a.w, b.w, fmaf(a.z, b.z, fmaf(a.y, b.y, fmaf(a.x, b.x, acc))));
}

// The kernels' view of a problem (forward or backward): pointers, strides, sizes.
struct Problem {
  int B, Hq, Hkv, Lq, Lk, D, group;
  bool causal, dropout;
  float scale;
  philox::DropoutParams drop;
  const void *q, *k, *v, *dout, *out;
  const float* lse_in;
  AttnStrides q_st, k_st, v_st, dout_st, out_st;
  void* out_w;       // forward: out
  float* lse_w;      // forward: lse
  void *dq, *dk, *dv;
  int rows_per_tile;  // rows kernel: query rows (of G·Lq) per block
};

// Stage keys [j0, j0 + n) of one (b, kv head) of `src` into dst[d][j] (row stride ld), fp32, with
// columns [n, round_up(n, 4)) zeroed (the float4 P·V / dS·K loops read them, weighted by 0). One
// 16-byte global load per thread per piece where aligned (rows of D elements, D a multiple of 8).
template <typename T, int kLd>
__device__ __forceinline__ void stage_transposed(float* __restrict__ dst, const T* __restrict__ src, int64_t ld_src,
                                                 int n, int D) {
  constexpr int kV = VecWidth<T>::value;
  const int pieces_per_row = D / kV;
  const int pieces = n * pieces_per_row;
  for (int e = threadIdx.x; e < pieces; e += blockDim.x) {
    const int j = e / pieces_per_row, c = (e - j * pieces_per_row) * kV;
    const T* row = src + j * ld_src + c;
    float v[kV];
    if (is_aligned16(row)) {
      load_vec16(row, v);
    } else {
#pragma unroll
      for (int i = 0; i < kV; ++i) v[i] = to_f(row[i]);
    }
#pragma unroll
    for (int i = 0; i < kV; ++i) dst[(c + i) * kLd + j] = v[i];
  }
  const int pad = ((n + 3) & ~3) - n;
  for (int e = threadIdx.x; e < pad * D; e += blockDim.x) dst[(e / pad) * kLd + n + e % pad] = 0.f;
}

// The dropout words of keys jg..jg+kKPL-1 (jg = the lane's first key) for row i of head bh: the
// kept ones get `keep_scale`, the dropped ones 0.
template <int kKPL>
__device__ __forceinline__ void dropout_factors(float (&f)[kKPL], const Problem& p, uint32_t bh, int i, int jg) {
  const philox::Words w = philox::dropout_words(p.drop, bh, uint32_t(i), uint32_t(jg) >> 2);
#pragma unroll
  for (int t = 0; t < kKPL; ++t) {
    const int k = (jg + t) & 3;  // selects, not an indexed local array (that would go to local memory)
    const uint32_t word = k == 0 ? w.w0 : k == 1 ? w.w1 : k == 2 ? w.w2 : w.w3;
    f[t] = word >= p.drop.threshold ? p.drop.keep_scale : 0.f;
  }
}

// How a warp's lanes cover the n keys of a stage in the key phase (scores, dP): groups of kKPL keys
// (lane group g owns keys kKPL·g ..), npow groups (a power of 2 covering round_up(n, 4) keys) and
// 32 / npow lanes per group, each summing every split-th term of the D-dot, combined by a
// butterfly. At Lk = 17: 8 groups x 4 lanes busy instead of 5 lanes. Warp-uniform.
struct KeyLanes {
  int jl0, part, split, npow;
  bool owner;  // part 0: the lane that counts and stores its keys' values
};
template <int kKPL>
__device__ __forceinline__ KeyLanes key_lanes(int n) {
  const int groups = ((n + 3) & ~3) / kKPL;
  int npow = 1;
  while (npow < groups) npow <<= 1;
  const int lane = threadIdx.x % kWarpSize;
  KeyLanes kl;
  kl.npow = npow;
  kl.split = kWarpSize / npow;
  kl.part = lane / npow;
  kl.jl0 = kKPL * (lane - kl.part * npow);
  kl.owner = kl.part == 0;
  return kl;
}

// s[t] = Σ_d a[d] · xt[d][jl0 + t] for the lane group's keys, in every lane of the group. All
// lanes must call it (the butterfly).
template <int kKPL, int kLd>
__device__ __forceinline__ void key_dots(float (&s)[kKPL], const float* a, const float* xt, int D, const KeyLanes& kl,
                                         int n) {
#pragma unroll
  for (int t = 0; t < kKPL; ++t) s[t] = 0.f;
  if (kl.jl0 < n) {
    for (int d = kl.part; d < D; d += kl.split) {
      const float ad = a[d];
      float xv[kKPL];
      lds_keys(xv, xt + d * kLd + kl.jl0);
#pragma unroll
      for (int t = 0; t < kKPL; ++t) s[t] = fmaf(ad, xv[t], s[t]);
    }
  }
  for (int m = kl.npow; m < kWarpSize; m <<= 1) {
#pragma unroll
    for (int t = 0; t < kKPL; ++t) s[t] += shfl_xor(s[t], m);
  }
}

// One row's scaled scores (log2 domain) for the lane group's keys jl = jl0 + t of the tile:
// qrow · kt[:, jl], -inf where masked (past the tile, or causal j > i).
template <int kKPL, int kLd>
__device__ __forceinline__ void row_scores(float (&s)[kKPL], const float* qrow, const float* kt, int D,
                                           const KeyLanes& kl, int n, int j0, int i, bool causal) {
  key_dots<kKPL, kLd>(s, qrow, kt, D, kl, n);
#pragma unroll
  for (int t = 0; t < kKPL; ++t) {
    const int jl = kl.jl0 + t;
    const bool visible = jl < n && (!causal || j0 + jl <= i);
    s[t] = visible ? s[t] : -INFINITY;
  }
}

// acc[c] += Σ_j w[j] · xt[d][j] for the lane's columns d = lane + 32c, j < n (w zero past n).
template <int kCols, int kLd>
__device__ __forceinline__ void row_accumulate(float (&acc)[kCols], const float* w, const float* xt, int D, int n) {
  const int lane = threadIdx.x % kWarpSize;
  const int n4 = (n + 3) & ~3;
#pragma unroll
  for (int c = 0; c < kCols; ++c) {
    const int d = lane + c * kWarpSize;
    if (d >= D) continue;
    float a = acc[c];
    const float* x = xt + d * kLd;
    for (int j = 0; j < n4; j += 4)
      a = dot4(*reinterpret_cast<const float4*>(w + j), *reinterpret_cast<const float4*>(x + j), a);
    acc[c] = a;
  }
}

// ---- forward, and dq for long sequences ------------------------------------------------------------
// Block (blockIdx.x = b·Hkv + hkv, blockIdx.y = row tile), warps = blockDim.x / 32. Rows r of the
// kv head are ordered r = i·G + g (query i of query head hkv·G + g), so a tile's rows share their
// causal extent. Warp w keeps rows w + warps·ρ (ρ < kRowsPerWarp) in registers across the key
// stages: forward the running max m, sum l and the output row; dq mode the row's dq.
// Launch bounds with 2 blocks per SM: a register budget of 128 (85-95 used). With the thread count
// alone, ptxas (CUDA 13) settled on 64-80 registers and spilled.
template <typename T, int kMaxD, bool kDq>
__global__ void __launch_bounds__(kMaxWarps * kWarpSize, 2) attention_rows_kernel(const Problem p) {
  using Tl = Tile<kMaxD>;
  constexpr int kBlockK = Tl::kBlockK, kLd = Tl::kLd, kKPL = Tl::kKPL, kCols = Tl::kCols, kR = Tl::kRowsPerWarp;
  extern __shared__ float4 smem_f4[];
  float* const smem = reinterpret_cast<float*>(smem_f4);
  const int D = p.D, G = p.group;
  const int warps = blockDim.x / kWarpSize, warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int rows_pb = warps * kR;
  float* const kt = smem;
  float* const vt = kt + D * kLd;
  float* const qrows = vt + D * kLd;                      // rows_pb x D
  float* const drows = qrows + rows_pb * D;               // dq mode: rows_pb x D
  float* const wbuf = drows + (kDq ? rows_pb * D : 0);    // warps x kBlockK
  float* const wrow = wbuf + warp * kBlockK;

  const int bkv = blockIdx.x, b = bkv / p.Hkv, hkv = bkv - b * p.Hkv;
  const int R = G * p.Lq;
  const int r_begin = blockIdx.y * p.rows_per_tile, r_end = imin(R, r_begin + p.rows_per_tile);
  const float qscale = p.scale * kLog2e;
  const T* const kbase = static_cast<const T*>(p.k) + b * p.k_st.b + hkv * p.k_st.h;
  const T* const vbase = static_cast<const T*>(p.v) + b * p.v_st.b + hkv * p.v_st.h;

  // Per-row state. Forward: m (log2 domain), l, acc = Σ P·M·v unnormalised. dq: lse2, delta, acc.
  float acc[kR][kCols], st0[kR], st1[kR];
  int row_i[kR], row_h[kR];
#pragma unroll
  for (int rho = 0; rho < kR; ++rho) {
    const int r = r_begin + warp + warps * rho;
    row_i[rho] = r < r_end ? r / G : -1;
    row_h[rho] = r < r_end ? hkv * G + (r - (r / G) * G) : 0;
#pragma unroll
    for (int c = 0; c < kCols; ++c) acc[rho][c] = 0.f;
    st0[rho] = -INFINITY;
    st1[rho] = 0.f;
    if (row_i[rho] < 0) continue;
    const int i = row_i[rho], h = row_h[rho];
    const T* qr = static_cast<const T*>(p.q) + b * p.q_st.b + h * p.q_st.h + i * p.q_st.l;
    float* const qs = qrows + (warp + warps * rho) * D;
    for (int d = lane; d < D; d += kWarpSize) qs[d] = to_f(qr[d]) * qscale;
    if constexpr (kDq) {
      const T* dr = static_cast<const T*>(p.dout) + b * p.dout_st.b + h * p.dout_st.h + i * p.dout_st.l;
      const T* orow = static_cast<const T*>(p.out) + b * p.out_st.b + h * p.out_st.h + i * p.out_st.l;
      float* const ds = drows + (warp + warps * rho) * D;
      float delta = 0.f;
      for (int d = lane; d < D; d += kWarpSize) {
        const float g = to_f(dr[d]);
        ds[d] = g;
        delta = fmaf(g, to_f(orow[d]), delta);
      }
      st0[rho] = p.lse_in[(int64_t(b) * p.Hq + h) * p.Lq + i] * kLog2e;
      st1[rho] = warp_reduce_sum(delta);
    }
  }
  __syncwarp(kFullMask);

  // Keys any row of the tile sees: causal rows i see 0..i.
  const int i_last = (r_end - 1) / G;
  const int keys = p.causal ? imin(p.Lk, i_last + 1) : p.Lk;
  for (int j0 = 0; j0 < keys; j0 += kBlockK) {
    const int n = imin(kBlockK, keys - j0);
    const KeyLanes kl = key_lanes<kKPL>(n);
    const int jl0 = kl.jl0;
    __syncthreads();  // the previous stage's readers are done
    stage_transposed<T, kLd>(kt, kbase + j0 * p.k_st.l, p.k_st.l, n, D);
    stage_transposed<T, kLd>(vt, vbase + j0 * p.v_st.l, p.v_st.l, n, D);
    __syncthreads();
#pragma unroll
    for (int rho = 0; rho < kR; ++rho) {
      const int i = row_i[rho];
      if (i < 0) continue;  // warp-uniform
      const int lr = warp + warps * rho;
      const uint32_t bh = uint32_t(b * p.Hq + row_h[rho]);
      float s[kKPL], w[kKPL];
      row_scores<kKPL, kLd>(s, qrows + lr * D, kt, D, kl, n, j0, i, p.causal);
      float drop[kKPL];
#pragma unroll
      for (int t = 0; t < kKPL; ++t) drop[t] = 1.f;
      if (p.dropout && jl0 < n) dropout_factors<kKPL>(drop, p, bh, i, j0 + jl0);
      if constexpr (!kDq) {
        float mx = s[0];
#pragma unroll
        for (int t = 1; t < kKPL; ++t) mx = fmaxf(mx, s[t]);
        // Stage 0 always holds key 0, visible to every row: m is finite from the first stage on.
        const float m_new = fmaxf(st0[rho], warp_reduce_max(mx));
        const float corr = ex2_approx(st0[rho] - m_new);
        float sum = 0.f;
#pragma unroll
        for (int t = 0; t < kKPL; ++t) {
          const float pr = ex2_approx(s[t] - m_new);  // 0 where masked
          sum += pr;
          w[t] = pr * drop[t];
        }
        st1[rho] = fmaf(st1[rho], corr, warp_reduce_sum(kl.owner ? sum : 0.f));
        st0[rho] = m_new;
#pragma unroll
        for (int c = 0; c < kCols; ++c) acc[rho][c] *= corr;
      } else {
        float dp[kKPL];
        key_dots<kKPL, kLd>(dp, drows + lr * D, vt, D, kl, n);
#pragma unroll
        for (int t = 0; t < kKPL; ++t) {
          const float pr = ex2_approx(s[t] - st0[rho]);
          w[t] = s[t] == -INFINITY ? 0.f : pr * fmaf(dp[t], drop[t], -st1[rho]);  // dS
        }
      }
      if (kl.owner) {
#pragma unroll
        for (int t = 0; t < kKPL; ++t) wrow[jl0 + t] = w[t];
      }
      __syncwarp(kFullMask);
      row_accumulate<kCols, kLd>(acc[rho], wrow, kDq ? kt : vt, D, n);
      __syncwarp(kFullMask);  // wrow is rewritten by the next row
    }
  }

#pragma unroll
  for (int rho = 0; rho < kR; ++rho) {
    const int i = row_i[rho];
    if (i < 0) continue;
    const int64_t row = (int64_t(b) * p.Hq + row_h[rho]) * p.Lq + i;
    T* const dst = static_cast<T*>(kDq ? p.dq : p.out_w) + row * D;
    const float f = kDq ? p.scale : 1.f / st1[rho];
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const int d = lane + c * kWarpSize;
      if (d < D) dst[d] = from_f<T>(acc[rho][c] * f);
    }
    if (!kDq && lane == 0) p.lse_w[row] = (st0[rho] + log2f(st1[rho])) * kLn2;
  }
}

// ---- backward: dk, dv (and dq for a single key tile) ----------------------------------------------
// Block (blockIdx.x = b·Hkv + hkv, blockIdx.y = key tile of kBlockK keys), 256 threads. Loops over
// the query rows of all G heads that see the tile (causal: i >= the tile's first key) in chunks of
// 16: each warp computes P, dP and dS of its 2 rows for every key of the tile (lanes over keys)
// into shared memory, and, when this is the only key tile, the rows' dq (lanes over d); then the
// whole block adds the chunk's dSᵀ q and (P·M)ᵀ dout to dk, dv, which stay in registers: thread
// t owns the 4-column strips s = t + 256u of the kBlockK x kMaxD tile (key j = s / (kMaxD/4),
// columns 4·(s % (kMaxD/4)) + 0..3), so each row costs one broadcast dS (P) load and one float4
// q (dout) load per 4 FMAs.
// Launch bounds: 2 blocks per SM (128 registers) up to D = 64; the D = 128 bucket needs a few more
// (at 128, ptxas spilled on sm_80), so it is bounded to 1 block (its 92 KiB of shared memory allow
// no more than 2 on sm_90 and 1 on sm_80/86 anyway).
template <typename T, int kMaxD>
__global__ void __launch_bounds__(kDkdvThreads, kMaxD == 128 ? 1 : 2) attention_dkdv_kernel(const Problem p) {
  using Tl = Tile<kMaxD>;
  constexpr int kBlockK = Tl::kBlockK, kLd = Tl::kLd, kKPL = Tl::kKPL, kCols = Tl::kCols;
  constexpr int kStripsPerKey = kMaxD / 4;
  constexpr int kStrips = kBlockK * kStripsPerKey / kDkdvThreads;  // per thread
  constexpr int kWarps = kDkdvThreads / kWarpSize;
  extern __shared__ float4 smem_f4[];
  float* const smem = reinterpret_cast<float*>(smem_f4);
  const int D = p.D, G = p.group;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  float* const kt = smem;
  float* const vt = kt + D * kLd;
  float* const qc = vt + D * kLd;             // kDkdvChunk x D: q · scale · log2 e
  float* const dc = qc + kDkdvChunk * D;      // kDkdvChunk x D: dout
  float* const dsc = dc + kDkdvChunk * D;     // kDkdvChunk x kBlockK: dS
  float* const pc = dsc + kDkdvChunk * kBlockK;  // kDkdvChunk x kBlockK: P · M / (1 - p)

  const int bkv = blockIdx.x, b = bkv / p.Hkv, hkv = bkv - b * p.Hkv;
  const int j0 = blockIdx.y * kBlockK, n = imin(kBlockK, p.Lk - j0);
  const bool fused_dq = gridDim.y == 1;
  const float qscale = p.scale * kLog2e;
  stage_transposed<T, kLd>(kt, static_cast<const T*>(p.k) + b * p.k_st.b + hkv * p.k_st.h + j0 * p.k_st.l,
                           p.k_st.l, n, D);
  stage_transposed<T, kLd>(vt, static_cast<const T*>(p.v) + b * p.v_st.b + hkv * p.v_st.h + j0 * p.v_st.l,
                           p.v_st.l, n, D);

  float dk_acc[kStrips][4], dv_acc[kStrips][4];
#pragma unroll
  for (int u = 0; u < kStrips; ++u)
#pragma unroll
    for (int x = 0; x < 4; ++x) dk_acc[u][x] = dv_acc[u][x] = 0.f;

  // Rows r = (i - i_first)·G + g for i >= i_first: causal rows before the tile see none of its keys.
  const int i_first = p.causal ? imin(j0, p.Lq) : 0;
  const int rows = G * (p.Lq - i_first);
  const KeyLanes kl = key_lanes<kKPL>(n);
  const int jl0 = kl.jl0;
  for (int c0 = 0; c0 < rows; c0 += kDkdvChunk) {
    const int chunk = imin(kDkdvChunk, rows - c0);
    __syncthreads();  // stage done / the previous chunk's readers done
#pragma unroll
    for (int rho = 0; rho < kDkdvRowsPerWarp; ++rho) {
      const int lr = warp + kWarps * rho;
      if (lr >= chunk) continue;  // warp-uniform
      const int r = c0 + lr, i = i_first + r / G, h = hkv * G + (r - (r / G) * G);
      const int64_t row = (int64_t(b) * p.Hq + h) * p.Lq + i;
      const T* qr = static_cast<const T*>(p.q) + b * p.q_st.b + h * p.q_st.h + i * p.q_st.l;
      const T* dr = static_cast<const T*>(p.dout) + b * p.dout_st.b + h * p.dout_st.h + i * p.dout_st.l;
      const T* orow = static_cast<const T*>(p.out) + b * p.out_st.b + h * p.out_st.h + i * p.out_st.l;
      float* const qs = qc + lr * D;
      float* const ds = dc + lr * D;
      float delta = 0.f;
      for (int d = lane; d < D; d += kWarpSize) {
        qs[d] = to_f(qr[d]) * qscale;
        const float g = to_f(dr[d]);
        ds[d] = g;
        delta = fmaf(g, to_f(orow[d]), delta);
      }
      delta = warp_reduce_sum(delta);
      const float lse2 = p.lse_in[row] * kLog2e;
      __syncwarp(kFullMask);
      float s[kKPL], dp[kKPL], drop[kKPL];
      row_scores<kKPL, kLd>(s, qs, kt, D, kl, n, j0, i, p.causal);
      key_dots<kKPL, kLd>(dp, ds, vt, D, kl, n);
#pragma unroll
      for (int t = 0; t < kKPL; ++t) drop[t] = 1.f;
      if (p.dropout && jl0 < n) dropout_factors<kKPL>(drop, p, uint32_t(b * p.Hq + h), i, j0 + jl0);
      if (kl.owner) {
#pragma unroll
        for (int t = 0; t < kKPL; ++t) {
          const bool visible = s[t] != -INFINITY;
          const float pr = ex2_approx(s[t] - lse2);
          pc[lr * kBlockK + jl0 + t] = visible ? pr * drop[t] : 0.f;
          dsc[lr * kBlockK + jl0 + t] = visible ? pr * fmaf(dp[t], drop[t], -delta) : 0.f;
        }
      }
      if (fused_dq) {
        __syncwarp(kFullMask);
        float dq[kCols];
#pragma unroll
        for (int c = 0; c < kCols; ++c) dq[c] = 0.f;
        row_accumulate<kCols, kLd>(dq, dsc + lr * kBlockK, kt, D, n);
        T* const dst = static_cast<T*>(p.dq) + row * D;
#pragma unroll
        for (int c = 0; c < kCols; ++c) {
          const int d = lane + c * kWarpSize;
          if (d < D) dst[d] = from_f<T>(dq[c] * p.scale);
        }
      }
    }
    __syncthreads();
    // dk[j][d] += Σ_r dS[r][j] q[r][d], dv[j][d] += Σ_r PM[r][j] dout[r][d]: consecutive threads
    // take consecutive strips of one j, so dS/PM reads broadcast and q/dout float4 reads are
    // conflict-free (the rows are D floats, D a multiple of 8: 16-byte aligned).
#pragma unroll
    for (int u = 0; u < kStrips; ++u) {
      const int e = threadIdx.x + u * kDkdvThreads, j = e / kStripsPerKey, d = (e % kStripsPerKey) * 4;
      if (j >= n || d >= D) continue;
      for (int r = 0; r < chunk; ++r) {
        const float ds = dsc[r * kBlockK + j], pm = pc[r * kBlockK + j];
        const float4 qv = *reinterpret_cast<const float4*>(qc + r * D + d);
        const float4 gv = *reinterpret_cast<const float4*>(dc + r * D + d);
        dk_acc[u][0] = fmaf(ds, qv.x, dk_acc[u][0]); dk_acc[u][1] = fmaf(ds, qv.y, dk_acc[u][1]);
        dk_acc[u][2] = fmaf(ds, qv.z, dk_acc[u][2]); dk_acc[u][3] = fmaf(ds, qv.w, dk_acc[u][3]);
        dv_acc[u][0] = fmaf(pm, gv.x, dv_acc[u][0]); dv_acc[u][1] = fmaf(pm, gv.y, dv_acc[u][1]);
        dv_acc[u][2] = fmaf(pm, gv.z, dv_acc[u][2]); dv_acc[u][3] = fmaf(pm, gv.w, dv_acc[u][3]);
      }
    }
  }

  // q was scaled by scale·log2 e: dk = scale · Σ dS q = ln 2 · Σ dS (q · scale · log2 e).
  T* const dk = static_cast<T*>(p.dk) + (int64_t(bkv) * p.Lk + j0) * D;
  T* const dv = static_cast<T*>(p.dv) + (int64_t(bkv) * p.Lk + j0) * D;
#pragma unroll
  for (int u = 0; u < kStrips; ++u) {
    const int e = threadIdx.x + u * kDkdvThreads, j = e / kStripsPerKey, d = (e % kStripsPerKey) * 4;
    if (j >= n || d >= D) continue;
#pragma unroll
    for (int x = 0; x < 4; ++x) {
      dk[j * D + d + x] = from_f<T>(dk_acc[u][x] * kLn2);
      dv[j * D + d + x] = from_f<T>(dv_acc[u][x]);
    }
  }
}

// ---- launch plumbing -----------------------------------------------------------------------------
struct RowsPlan {
  int warps, rows_per_tile, tiles;
};

// Row tiles of at most kMaxWarps·kR rows, split evenly; as few warps as those rows need (a tiny
// L does not launch 8 mostly idle warps).
RowsPlan rows_plan(int rows, int kR) {
  const int max_rows = kMaxWarps * kR;
  const int tiles = (rows + max_rows - 1) / max_rows;
  const int per_tile = (rows + tiles - 1) / tiles;
  return {(per_tile + kR - 1) / kR, per_tile, tiles};
}

int rows_per_warp(int D) { return D <= 32 ? Tile<32>::kRowsPerWarp : D <= 64 ? Tile<64>::kRowsPerWarp : Tile<128>::kRowsPerWarp; }

size_t rows_smem(int D, int warps, bool dq) {
  const int bk = attention_block_keys(D), R = warps * rows_per_warp(D);
  return sizeof(float) * (size_t(2) * D * (bk + 4) + size_t(dq ? 2 : 1) * R * D + size_t(warps) * bk);
}

size_t dkdv_smem(int D) {
  const int bk = attention_block_keys(D);
  return sizeof(float) * (size_t(2) * D * (bk + 4) + size_t(2) * kDkdvChunk * D + size_t(2) * kDkdvChunk * bk);
}

template <typename K>
cudaError_t launch(K kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t stream, const Problem& p) {
  if (smem > 48 * 1024)
    PYNEURO_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kernel<<<grid, block, smem, stream>>>(p);
  PYNEURO_CUDA_CHECK_LAUNCH();
  return cudaSuccess;
}

// f(T{}, integral_constant<kMaxD>) for the runtime dtype and head-dim bucket.
template <int kMaxD> struct Bucket { static constexpr int value = kMaxD; };
template <typename F>
cudaError_t with_kernel_types(AttnDtype dtype, int D, F&& f) {
  auto by_d = [&](auto t) -> cudaError_t {
    if (D <= 32) return f(t, Bucket<32>{});
    if (D <= 64) return f(t, Bucket<64>{});
    return f(t, Bucket<128>{});
  };
  switch (dtype) {
    case AttnDtype::kFloat32: return by_d(float{});
    case AttnDtype::kFloat16: return by_d(__half{});
    case AttnDtype::kBFloat16: return by_d(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

template <typename P>
Problem common_problem(const P& a) {
  Problem p{};
  p.B = a.B; p.Hq = a.Hq; p.Hkv = a.Hkv; p.Lq = a.Lq; p.Lk = a.Lk; p.D = a.D; p.group = a.Hq / a.Hkv;
  p.causal = a.causal; p.dropout = a.dropout; p.scale = a.scale; p.drop = a.drop;
  p.q = a.q; p.k = a.k; p.v = a.v; p.q_st = a.q_st; p.k_st = a.k_st; p.v_st = a.v_st;
  return p;
}

}  // namespace

const char* attention_unsupported(int B, int Hq, int Hkv, int Lq, int Lk, int D) {
  if (Hkv < 1 || Hq % Hkv != 0 || D < 8 || D > 128 || D % 8 != 0 || Lq < 1 || Lk < 1 || B < 1)
    return "the contract's shapes (checked before) do not hold";
  const int64_t n = int64_t(B) * Hkv;
  const int64_t rows = int64_t(Hq / Hkv) * Lq;
  if (n > 2147483647LL) return "batch * kv_heads must be < 2^31 (grid x)";
  if (int64_t(B) * Hq * Lq * D >= (int64_t(1) << 62)) return "the tensors are too large";
  if ((rows + kMaxWarps * 2 - 1) / (kMaxWarps * 2) > 65535) return "(heads / kv_heads) * Lq must be <= 1048560 (grid y)";
  if ((int64_t(Lk) + kAttentionBlockKeysLargeD - 1) / kAttentionBlockKeysLargeD > 65535)
    return "Lk must be <= 4194240 (grid y)";
  return "";
}

size_t attention_rows_smem_bytes(int D, bool dq) { return rows_smem(D, kMaxWarps, dq); }
size_t attention_dkdv_smem_bytes(int D) { return dkdv_smem(D); }

cudaError_t attention_fwd(const AttentionFwdParams& a, cudaStream_t stream) {
  Problem p = common_problem(a);
  p.out_w = a.out;
  p.lse_w = a.lse;
  const RowsPlan plan = rows_plan(p.group * p.Lq, rows_per_warp(p.D));
  p.rows_per_tile = plan.rows_per_tile;
  return with_kernel_types(a.dtype, a.D, [&](auto t, auto bucket) {
    using T = decltype(t);
    constexpr int kMaxD = decltype(bucket)::value;
    return launch(attention_rows_kernel<T, kMaxD, false>, dim3(unsigned(p.B * p.Hkv), unsigned(plan.tiles)),
                  dim3(unsigned(plan.warps * kWarpSize)), rows_smem(p.D, plan.warps, false), stream, p);
  });
}

cudaError_t attention_bwd(const AttentionBwdParams& a, cudaStream_t stream) {
  Problem p = common_problem(a);
  p.dout = a.dout; p.out = a.out; p.lse_in = a.lse;
  p.dout_st = a.dout_st; p.out_st = a.out_st;
  p.dq = a.dq; p.dk = a.dk; p.dv = a.dv;
  const int key_tiles = (p.Lk + attention_block_keys(p.D) - 1) / attention_block_keys(p.D);
  const RowsPlan plan = rows_plan(p.group * p.Lq, rows_per_warp(p.D));
  p.rows_per_tile = plan.rows_per_tile;
  return with_kernel_types(a.dtype, a.D, [&](auto t, auto bucket) {
    using T = decltype(t);
    constexpr int kMaxD = decltype(bucket)::value;
    PYNEURO_CUDA_TRY(launch(attention_dkdv_kernel<T, kMaxD>, dim3(unsigned(p.B * p.Hkv), unsigned(key_tiles)),
                            dim3(kDkdvThreads), dkdv_smem(p.D), stream, p));
    if (key_tiles == 1) return cudaSuccess;  // dq came with dk, dv
    return launch(attention_rows_kernel<T, kMaxD, true>, dim3(unsigned(p.B * p.Hkv), unsigned(plan.tiles)),
                  dim3(unsigned(plan.warps * kWarpSize)), rows_smem(p.D, plan.warps, true), stream, p);
  });
}

}  // namespace cuda
}  // namespace pyneuro
