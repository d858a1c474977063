// Attention forward and backward on the CPU (docs/attention_contract.md), compiled once per ISA.
//
// Blocked online softmax, as FlashAttention: a task owns a block of Bq query rows (forward, dq) or
// Bk keys (dk, dv) of one head and walks the other side block by block, so the only score storage
// is a per-thread Bq x Bk tile; nothing Lq x Lk exists. Per (query block, key block) tile, with n
// valid keys and D the head dim:
//   forward   S = Q Kᵀ (Bq x n x D), online-softmax update of the row max m and sum l, O = α O + P V;
//   backward  S = Q Kᵀ, dP = dO Vᵀ, P = exp(S - lse), dS = P (dP M/(1-p) - δ), then
//             dv += (P M/(1-p))ᵀ dO, dk += scale dSᵀ Q, dq += scale dS K.
// Scores live in log2 units (S · scale · log2 e) so that every exponential is one exp2_clamped.
//
// The products run on one register-blocked micro-kernel (gemm_tile: 6 rows x up to 4 native
// vectors of accumulators, no packing) whose A operand is read by broadcast at any (row, column)
// strides: Pᵀ and dSᵀ cost nothing to "transpose". Its B operand must be row-major with unit
// column stride, so the Kᵀ and Vᵀ of a key block are transposed once into a (D x n) per-thread
// buffer. Head dims that are a multiple of 8 but not of 16 end in one 8-lane vector on AVX-512.
//
// Memory traffic per task: the forward reads its Bq x D query rows once and every visible K and V
// row once (2 n D floats per tile for Bq · n · 2D multiply-adds: intensity Bq/2 flops per byte
// read from cache), writes Bq x D outputs and Bq lse. With Lq, Lk <= 64 (the small path, one tile
// per head) all of a head's Q, K, Kᵀ, V and S (< 48 KiB at D = 64) stay in L1.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu/isa.h"
#include "cpu/philox.h"
#include "cpu/vec_math.h"

namespace pyneuro::cpu::PYNEURO_CPU_ISA {
namespace {

using vec::fvec;
typedef float v8 __attribute__((vector_size(32)));

constexpr int kLanes = vec::kNativeLanes;
// Accumulator rows x native vectors of gemm_tile: 6 x 4 zmm on AVX-512 (24 of 32 registers),
// 6 x 2 on AVX2/SSE (12 of 16).
constexpr int kRows = 6;
constexpr int kMaxVecs = kLanes == 16 ? 4 : 2;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

template <class V>
static inline __attribute__((always_inline)) V load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class V>
static inline __attribute__((always_inline)) void store(float* p, V v) {
  std::memcpy(p, &v, sizeof v);
}

// C[r, 0 : NV·W) (+)= Σ_k A(r, k) B[k, 0 : NV·W) for r < MR, W the lanes of V; A(r, k) =
// A[r·ars + k·acs] (broadcast), B row-major with row stride ldb. Accumulates into C when `acc`.
template <class V, int MR, int NV>
static inline __attribute__((always_inline)) void micro(int64_t K, const float* A, int64_t ars, int64_t acs,
                                                        const float* B, int64_t ldb, float* C, int64_t ldc,
                                                        bool acc) {
  constexpr int W = sizeof(V) / sizeof(float);
  V c[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) c[r][j] = acc ? load<V>(C + r * ldc + j * W) : V{};
  for (int64_t k = 0; k < K; ++k) {
    V b[NV];
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) b[j] = load<V>(B + k * ldb + j * W);
    const float* a = A + k * acs;
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const V ar = V{} + a[r * ars];
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) c[r][j] += ar * b[j];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) store<V>(C + r * ldc + j * W, c[r][j]);
}

// All M rows of one column panel of NV vectors: full strips of kRows, then the remainder.
template <class V, int NV>
void panel(int64_t M, int64_t K, const float* A, int64_t ars, int64_t acs, const float* B, int64_t ldb, float* C,
           int64_t ldc, bool acc) {
  int64_t r = 0;
  for (; r + kRows <= M; r += kRows) micro<V, kRows, NV>(K, A + r * ars, ars, acs, B, ldb, C + r * ldc, ldc, acc);
  const float* a = A + r * ars;
  float* c = C + r * ldc;
  switch (M - r) {
    case 5: micro<V, 5, NV>(K, a, ars, acs, B, ldb, c, ldc, acc); break;
    case 4: micro<V, 4, NV>(K, a, ars, acs, B, ldb, c, ldc, acc); break;
    case 3: micro<V, 3, NV>(K, a, ars, acs, B, ldb, c, ldc, acc); break;
    case 2: micro<V, 2, NV>(K, a, ars, acs, B, ldb, c, ldc, acc); break;
    case 1: micro<V, 1, NV>(K, a, ars, acs, B, ldb, c, ldc, acc); break;
    default: break;
  }
}

// C (M x N) (+)= A (M x K) B (K x N), N a multiple of 8; A at any strides, B and C row-major.
// Column panels outermost, so that a panel of B (K x up to 64 floats) stays in L1 over the rows.
void gemm_tile(int64_t M, int64_t N, int64_t K, const float* A, int64_t ars, int64_t acs, const float* B, int64_t ldb,
               float* C, int64_t ldc, bool acc) {
  int64_t c0 = 0;
  for (; c0 + kMaxVecs * kLanes <= N; c0 += kMaxVecs * kLanes)
    panel<fvec, kMaxVecs>(M, K, A, ars, acs, B + c0, ldb, C + c0, ldc, acc);
  const int64_t vecs = (N - c0) / kLanes;  // < kMaxVecs
  if constexpr (kMaxVecs == 4) {
    if (vecs == 3) panel<fvec, 3>(M, K, A, ars, acs, B + c0, ldb, C + c0, ldc, acc);
    if (vecs == 2) panel<fvec, 2>(M, K, A, ars, acs, B + c0, ldb, C + c0, ldc, acc);
  }
  if (vecs == 1) panel<fvec, 1>(M, K, A, ars, acs, B + c0, ldb, C + c0, ldc, acc);
  c0 += vecs * kLanes;
  if (c0 < N) panel<v8, 1>(M, K, A, ars, acs, B + c0, ldb, C + c0, ldc, acc);  // 8 columns left (AVX-512)
}

int64_t round_up8(int64_t n) { return (n + 7) / 8 * 8; }

// dst (D x ldt) = the n x D rows of src (row stride lds) transposed; columns n..ldt zeroed, so
// that the padded score columns are finite (they are masked anyway).
void transpose_block(const float* src, int64_t lds, int64_t n, int64_t D, float* dst, int64_t ldt) {
  for (int64_t d = 0; d < D; ++d) {
    float* row = dst + d * ldt;
    for (int64_t j = 0; j < n; ++j) row[j] = src[j * lds + d];
    for (int64_t j = n; j < ldt; ++j) row[j] = 0.f;
  }
}

// keep[j] = M(b, h, i, kb0 + j) / (1 - p) for j < n: 0 or the keep scale. kb0 is a multiple of 4
// (blocks are), so the key groups of one Philox call line up with the block.
void dropout_row(const philox::DropoutParams& d, uint32_t bh, uint32_t i, int64_t kb0, int64_t n, float* keep) {
  const int64_t groups = (n + 3) / 4;
  const uint32_t j4_0 = static_cast<uint32_t>(kb0 >> 2);
  const float ks = d.keep_scale;
  const uint32_t th = d.threshold;
#pragma omp simd
  for (int64_t g = 0; g < groups; ++g) {
    const philox::Words w = philox::dropout_words(d, bh, i, j4_0 + static_cast<uint32_t>(g));
    keep[4 * g + 0] = w.w0 >= th ? ks : 0.f;
    keep[4 * g + 1] = w.w1 >= th ? ks : 0.f;
    keep[4 * g + 2] = w.w2 >= th ? ks : 0.f;
    keep[4 * g + 3] = w.w3 >= th ? ks : 0.f;
  }
}

// Keys of a block of n starting at kb0 that query row i sees.
inline int64_t visible(bool causal, int64_t i, int64_t kb0, int64_t n) {
  return causal ? std::clamp<int64_t>(i - kb0 + 1, 0, n) : n;
}

struct Head {  // the rows of one (b, h) pair, from the strided inputs
  const float *q, *k, *v, *dout, *o;
  uint32_t bh;  // b · Hq + h
};

Head head(const AttentionParams& p, int64_t b, int64_t h) {
  const int64_t hk = h / (p.Hq / p.Hkv);
  Head r;
  r.q = p.q + b * p.q_strides[0] + h * p.q_strides[1];
  r.k = p.k + b * p.k_strides[0] + hk * p.k_strides[1];
  r.v = p.v + b * p.v_strides[0] + hk * p.v_strides[1];
  r.dout = p.dout ? p.dout + b * p.dout_strides[0] + h * p.dout_strides[1] : nullptr;
  r.o = p.o ? p.o + b * p.o_strides[0] + h * p.o_strides[1] : nullptr;
  r.bh = static_cast<uint32_t>(b * p.Hq + h);
  return r;
}

// Per-thread tiles: Kᵀ and Vᵀ of a key block (D x Bk), two score tiles (Bq x Bk), a keep row,
// and the running max and sum of the forward's rows.
struct Scratch {
  std::vector<float> kt, vt, s, ds, keep, m, l;
  explicit Scratch(const AttentionParams& p) {
    const int64_t bk = round_up8(p.block_k);
    kt.resize(p.D * bk);
    vt.resize(p.D * bk);
    s.resize(p.block_q * bk);
    ds.resize(p.block_q * bk);
    keep.resize(bk + 4);
    m.resize(p.block_q);
    l.resize(p.block_q);
  }
};

}  // namespace

// Tasks (b, h, query block). out rows: O accumulates in place, scaled by 1/l at the end.
void attention_fwd(const AttentionParams& p, int64_t t0, int64_t t1) {
  Scratch w(p);
  const int64_t D = p.D, nqb = (p.Lq + p.block_q - 1) / p.block_q;
  const float c = p.scale * kLog2e;
  const vec::Exp2Range range = vec::exp2_range();
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t bh = t / nqb, q0 = (t % nqb) * p.block_q, M = std::min(p.block_q, p.Lq - q0);
    const Head hd = head(p, bh / p.Hq, bh % p.Hq);
    const float* Q = hd.q + q0 * p.q_strides[2];
    float* O = p.out + (bh * p.Lq + q0) * D;
    std::fill(O, O + M * D, 0.f);
    std::fill(w.m.begin(), w.m.begin() + M, -INFINITY);
    std::fill(w.l.begin(), w.l.begin() + M, 0.f);
    const int64_t k_end = p.causal ? std::min(p.Lk, q0 + M) : p.Lk;
    for (int64_t kb0 = 0; kb0 < k_end; kb0 += p.block_k) {
      const int64_t n = std::min(p.block_k, p.Lk - kb0), ld = round_up8(n);
      float* S = w.s.data();
      transpose_block(hd.k + kb0 * p.k_strides[2], p.k_strides[2], n, D, w.kt.data(), ld);
      gemm_tile(M, ld, D, Q, p.q_strides[2], 1, w.kt.data(), ld, S, ld, false);
      for (int64_t r = 0; r < M; ++r) {
        float* s = S + r * ld;
        const int64_t nv = visible(p.causal, q0 + r, kb0, n);
        float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
        for (int64_t j = 0; j < nv; ++j) mx = std::max(mx, s[j] * c);
        const float m_new = std::max(w.m[r], mx), m_old = w.m[r];
        float sum = 0.f;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < nv; ++j) {
          const float e = vec::exp2_clamped(s[j] * c - m_new, range);
          s[j] = e;
          sum += e;
        }
        for (int64_t j = nv; j < n; ++j) s[j] = 0.f;
        if (p.dropout && nv > 0) {
          dropout_row(p.drop, hd.bh, static_cast<uint32_t>(q0 + r), kb0, nv, w.keep.data());
          const float* keep = w.keep.data();
#pragma omp simd
          for (int64_t j = 0; j < nv; ++j) s[j] *= keep[j];
        }
        if (m_new != m_old) {  // rescale the row's output by exp2(m_old - m_new) (0 the first time)
          const float alpha = std::exp2(m_old - m_new);
          w.l[r] *= alpha;
          float* o = O + r * D;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) o[d] *= alpha;
        }
        w.l[r] += sum;
        w.m[r] = m_new;
      }
      gemm_tile(M, D, n, S, ld, 1, hd.v + kb0 * p.v_strides[2], p.v_strides[2], O, D, true);
    }
    float* lse = p.lse + bh * p.Lq + q0;
    for (int64_t r = 0; r < M; ++r) {
      const float inv = 1.f / w.l[r];
      float* o = O + r * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) o[d] *= inv;
      lse[r] = (w.m[r] + std::log2(w.l[r])) * kLn2;
    }
  }
}

namespace {

// delta[i] = Σ_d dout[i, d] out[i, d] for rows [q0, q0 + M) of one head.
void row_deltas(const AttentionParams& p, const Head& hd, int64_t q0, int64_t M) {
  float* delta = p.delta + static_cast<int64_t>(hd.bh) * p.Lq + q0;
  for (int64_t r = 0; r < M; ++r) {
    const float* g = hd.dout + (q0 + r) * p.dout_strides[2];
    const float* o = hd.o + (q0 + r) * p.o_strides[2];
    float acc = 0.f;
#pragma omp simd reduction(+ : acc)
    for (int64_t d = 0; d < p.D; ++d) acc += g[d] * o[d];
    delta[r] = acc;
  }
}

// One backward tile: query rows [q0, q0 + M) of head hd against keys [kb0, kb0 + n), whose Kᵀ and
// Vᵀ are in w.kt / w.vt (row stride ld). Accumulates into dq (rows of this head) and/or dk, dv
// (rows of the key block), as asked.
void bwd_tile(const AttentionParams& p, Scratch& w, const Head& hd, int64_t q0, int64_t M, int64_t kb0, int64_t n,
              int64_t ld, float* dq, float* dk, float* dv, const vec::Exp2Range& range) {
  const int64_t D = p.D;
  const float c = p.scale * kLog2e, scale = p.scale;
  const float* Q = hd.q + q0 * p.q_strides[2];
  const float* dO = hd.dout + q0 * p.dout_strides[2];
  float* S = w.s.data();
  float* dS = w.ds.data();
  gemm_tile(M, ld, D, Q, p.q_strides[2], 1, w.kt.data(), ld, S, ld, false);
  gemm_tile(M, ld, D, dO, p.dout_strides[2], 1, w.vt.data(), ld, dS, ld, false);
  const float* lse = p.lse + static_cast<int64_t>(hd.bh) * p.Lq + q0;
  const float* delta = p.delta + static_cast<int64_t>(hd.bh) * p.Lq + q0;
  for (int64_t r = 0; r < M; ++r) {
    float* s = S + r * ld;
    float* ds = dS + r * ld;
    const int64_t nv = visible(p.causal, q0 + r, kb0, n);
    const float lse2 = lse[r] * kLog2e, dl = delta[r];
    if (p.dropout && nv > 0) {
      dropout_row(p.drop, hd.bh, static_cast<uint32_t>(q0 + r), kb0, nv, w.keep.data());
      const float* keep = w.keep.data();
#pragma omp simd
      for (int64_t j = 0; j < nv; ++j) {
        const float pr = vec::exp2_clamped(s[j] * c - lse2, range);
        s[j] = pr * keep[j];                          // P M / (1 - p), for dv
        ds[j] = pr * (ds[j] * keep[j] - dl) * scale;  // scale dS, for dq and dk
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < nv; ++j) {
        const float pr = vec::exp2_clamped(s[j] * c - lse2, range);
        s[j] = pr;
        ds[j] = pr * (ds[j] - dl) * scale;
      }
    }
    for (int64_t j = nv; j < n; ++j) s[j] = ds[j] = 0.f;
  }
  if (dv) gemm_tile(n, D, M, S, 1, ld, dO, p.dout_strides[2], dv + kb0 * D, D, true);
  if (dk) gemm_tile(n, D, M, dS, 1, ld, Q, p.q_strides[2], dk + kb0 * D, D, true);
  if (dq) gemm_tile(M, D, n, dS, ld, 1, hd.k + kb0 * p.k_strides[2], p.k_strides[2], dq + q0 * D, D, true);
}

void load_key_block(const AttentionParams& p, Scratch& w, const Head& hd, int64_t kb0, int64_t n, int64_t ld) {
  transpose_block(hd.k + kb0 * p.k_strides[2], p.k_strides[2], n, p.D, w.kt.data(), ld);
  transpose_block(hd.v + kb0 * p.v_strides[2], p.v_strides[2], n, p.D, w.vt.data(), ld);
}

}  // namespace

// Tasks (b, h, query block): delta of the block's rows, then dq over every visible key block.
void attention_bwd_dq(const AttentionParams& p, int64_t t0, int64_t t1) {
  Scratch w(p);
  const vec::Exp2Range range = vec::exp2_range();
  const int64_t nqb = (p.Lq + p.block_q - 1) / p.block_q;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t bh = t / nqb, q0 = (t % nqb) * p.block_q, M = std::min(p.block_q, p.Lq - q0);
    const Head hd = head(p, bh / p.Hq, bh % p.Hq);
    row_deltas(p, hd, q0, M);
    float* dq = p.dq + bh * p.Lq * p.D;
    const int64_t k_end = p.causal ? std::min(p.Lk, q0 + M) : p.Lk;
    for (int64_t kb0 = 0; kb0 < k_end; kb0 += p.block_k) {
      const int64_t n = std::min(p.block_k, p.Lk - kb0), ld = round_up8(n);
      load_key_block(p, w, hd, kb0, n, ld);
      bwd_tile(p, w, hd, q0, M, kb0, n, ld, dq, nullptr, nullptr, range);
    }
  }
}

// Tasks (b, kv head, key block), after attention_bwd_dq has written delta: dk and dv of the block
// summed over the group's query heads and every query block that sees it.
void attention_bwd_dkdv(const AttentionParams& p, int64_t t0, int64_t t1) {
  Scratch w(p);
  const vec::Exp2Range range = vec::exp2_range();
  const int64_t nkb = (p.Lk + p.block_k - 1) / p.block_k, group = p.Hq / p.Hkv;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t bhk = t / nkb, b = bhk / p.Hkv, hk = bhk % p.Hkv, kb0 = (t % nkb) * p.block_k;
    const int64_t n = std::min(p.block_k, p.Lk - kb0), ld = round_up8(n);
    float* dk = p.dk + bhk * p.Lk * p.D;
    float* dv = p.dv + bhk * p.Lk * p.D;
    for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
      const Head hd = head(p, b, h);
      if (h == hk * group) load_key_block(p, w, hd, kb0, n, ld);  // the group shares k and v
      const int64_t q_start = p.causal ? kb0 / p.block_q * p.block_q : 0;  // earlier rows see none of it
      for (int64_t q0 = q_start; q0 < p.Lq; q0 += p.block_q)
        bwd_tile(p, w, hd, q0, std::min(p.block_q, p.Lq - q0), kb0, n, ld, nullptr, dk, dv, range);
    }
  }
}

// Tasks (b, kv head): the whole backward of a group of heads, each tile once (5 products per tile
// instead of the split form's 7); used when there are enough such tasks to fill the threads.
void attention_bwd_fused(const AttentionParams& p, int64_t t0, int64_t t1) {
  Scratch w(p);
  const vec::Exp2Range range = vec::exp2_range();
  const int64_t group = p.Hq / p.Hkv;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t b = t / p.Hkv, hk = t % p.Hkv;
    for (int64_t h = hk * group; h < (hk + 1) * group; ++h) row_deltas(p, head(p, b, h), 0, p.Lq);
    float* dk = p.dk + t * p.Lk * p.D;
    float* dv = p.dv + t * p.Lk * p.D;
    for (int64_t kb0 = 0; kb0 < p.Lk; kb0 += p.block_k) {
      const int64_t n = std::min(p.block_k, p.Lk - kb0), ld = round_up8(n);
      load_key_block(p, w, head(p, b, hk * group), kb0, n, ld);
      for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
        const Head hd = head(p, b, h);
        float* dq = p.dq + static_cast<int64_t>(hd.bh) * p.Lq * p.D;
        const int64_t q_start = p.causal ? kb0 / p.block_q * p.block_q : 0;
        for (int64_t q0 = q_start; q0 < p.Lq; q0 += p.block_q)
          bwd_tile(p, w, hd, q0, std::min(p.block_q, p.Lq - q0), kb0, n, ld, dq, dk, dv, range);
      }
    }
  }
}

}  // namespace pyneuro::cpu::PYNEURO_CPU_ISA
