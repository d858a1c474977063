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
using vec::ivec;
typedef float v8 __attribute__((vector_size(32)));

constexpr int kLanes = vec::kNativeLanes;
// Accumulator rows x native vectors of gemm_tile: 6 x 4 zmm on AVX-512 (24 of 32 registers),
// 6 x 2 on AVX2/SSE (12 of 16); on AVX2 an odd number of vectors ends in a 4 x 3 panel (gemm_tile).
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
static inline __attribute__((always_inline)) void store(float* p, const V& v) {
  std::memcpy(p, &v, sizeof v);
}

// C[r, 0 : NV·kLanes (+ 8 with TAIL)) (+)= Σ_k A(r, k) B[k, same columns] for r < MR: NV native
// vectors plus, with TAIL, one 8-lane vector (a head dim of 16 m + 8 on AVX-512 in one pass).
// A(r, k) = A[r·ars + k·acs] (broadcast), B row-major with row stride ldb. Accumulates into C
// when `acc`.
template <int MR, int NV, bool TAIL>
static inline __attribute__((always_inline)) void micro(int64_t K, const float* A, int64_t ars, int64_t acs,
                                                        const float* B, int64_t ldb, float* C, int64_t ldc,
                                                        bool acc) {
  constexpr int NA = NV > 0 ? NV : 1;
  fvec c[MR][NA];
  v8 t[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) c[r][j] = acc ? load<fvec>(C + r * ldc + j * kLanes) : fvec{};
    if (TAIL) t[r] = acc ? load<v8>(C + r * ldc + NV * kLanes) : v8{};
  }
  for (int64_t k = 0; k < K; ++k) {
    fvec b[NA];
    v8 bt{};
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) b[j] = load<fvec>(B + k * ldb + j * kLanes);
    if (TAIL) bt = load<v8>(B + k * ldb + NV * kLanes);
    const float* a = A + k * acs;
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const float x = a[r * ars];
      const fvec ar = x - fvec{};  // a broadcast load (x - 0 is x, so no add is emitted)
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) c[r][j] += ar * b[j];
      if (TAIL) t[r] += (x - v8{}) * bt;
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) store<fvec>(C + r * ldc + j * kLanes, c[r][j]);
    if (TAIL) store<v8>(C + r * ldc + NV * kLanes, t[r]);
  }
}

// The last `rows` < MR rows of a panel, in one micro-kernel call of that many rows.
template <int MR, int NV, bool TAIL>
inline void short_strip(int64_t rows, int64_t K, const float* A, int64_t ars, int64_t acs, const float* B,
                        int64_t ldb, float* C, int64_t ldc, bool acc) {
  if constexpr (MR > 1) {
    if (rows == MR - 1) return micro<MR - 1, NV, TAIL>(K, A, ars, acs, B, ldb, C, ldc, acc);
    short_strip<MR - 1, NV, TAIL>(rows, K, A, ars, acs, B, ldb, C, ldc, acc);
  }
}

// All M rows of one column panel: full strips of MR rows, then the remainder.
template <int NV, bool TAIL, int MR = kRows>
void panel(int64_t M, int64_t K, const float* A, int64_t ars, int64_t acs, const float* B, int64_t ldb, float* C,
           int64_t ldc, bool acc) {
  int64_t r = 0;
  for (; r + MR <= M; r += MR) micro<MR, NV, TAIL>(K, A + r * ars, ars, acs, B, ldb, C + r * ldc, ldc, acc);
  if (r < M) short_strip<MR, NV, TAIL>(M - r, K, A + r * ars, ars, acs, B, ldb, C + r * ldc, ldc, acc);
}

template <bool TAIL>
void last_panel(int64_t vecs, int64_t M, int64_t K, const float* A, int64_t ars, int64_t acs, const float* B,
                int64_t ldb, float* C, int64_t ldc, bool acc) {
  if constexpr (kMaxVecs == 4) {
    if (vecs == 3) return panel<3, TAIL>(M, K, A, ars, acs, B, ldb, C, ldc, acc);
    if (vecs == 2) return panel<2, TAIL>(M, K, A, ars, acs, B, ldb, C, ldc, acc);
  }
  if (vecs == 1) return panel<1, TAIL>(M, K, A, ars, acs, B, ldb, C, ldc, acc);
  if (TAIL) panel<0, TAIL>(M, K, A, ars, acs, B, ldb, C, ldc, acc);
}

// C (M x N) (+)= A (M x K) B (K x N), N a multiple of 8; A at any strides, B and C row-major.
// Column panels outermost, so that a panel of B (K x up to 64 floats) stays in L1 over the rows.
void gemm_tile(int64_t M, int64_t N, int64_t K, const float* A, int64_t ars, int64_t acs, const float* B, int64_t ldb,
               float* C, int64_t ldc, bool acc) {
  int64_t c0 = 0;
  if constexpr (kLanes == 8) {
    // An odd number (>= 3) of 8-lane vectors, as a head dim of 24 or 50 keys padded to 56: the last
    // three vectors as one panel of 4-row strips (12 accumulators, as 6 x 2) instead of a 2-vector
    // and a 1-vector panel. The latter's 6 accumulators are too few to cover the FMA latency, and
    // it loads a broadcast per FMA: at D = 24 it took 30% of the products' time for a third of
    // their columns.
    if (N % 16 == 8 && N >= 24) {
      for (; c0 + 24 < N; c0 += 16) panel<2, false>(M, K, A, ars, acs, B + c0, ldb, C + c0, ldc, acc);
      return panel<3, false, 4>(M, K, A, ars, acs, B + c0, ldb, C + c0, ldc, acc);
    }
  }
  for (; c0 + kMaxVecs * kLanes <= N; c0 += kMaxVecs * kLanes)
    panel<kMaxVecs, false>(M, K, A, ars, acs, B + c0, ldb, C + c0, ldc, acc);
  const int64_t vecs = (N - c0) / kLanes;  // < kMaxVecs
  const bool tail = N - c0 - vecs * kLanes == 8;  // only with 16 lanes
  if (tail) {
    last_panel<true>(vecs, M, K, A, ars, acs, B + c0, ldb, C + c0, ldc, acc);
  } else {
    last_panel<false>(vecs, M, K, A, ars, acs, B + c0, ldb, C + c0, ldc, acc);
  }
}

// dst (D x ldt) = the n x D rows of src (row stride lds) transposed, 8 x 8 at a time in registers
// (D is a multiple of 8). Columns n..ldt are left alone: Scratch allocates them zeroed and a block
// of a head always has the same n, so they stay 0 and the padded score columns stay finite.
void transpose_block(const float* src, int64_t lds, int64_t n, int64_t D, float* dst, int64_t ldt) {
  typedef int32_t i8 __attribute__((vector_size(32)));
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    for (int64_t d = 0; d < D; d += 8) {
      v8 r[8];
      for (int i = 0; i < 8; ++i) r[i] = load<v8>(src + (j + i) * lds + d);
      // Interleave pairs of rows, then pairs of pairs, then the 128-bit halves: r[i][c] -> out[c][i].
      v8 a[8], b[8];
      for (int i = 0; i < 8; i += 2) {
        a[i] = __builtin_shuffle(r[i], r[i + 1], i8{0, 8, 1, 9, 4, 12, 5, 13});
        a[i + 1] = __builtin_shuffle(r[i], r[i + 1], i8{2, 10, 3, 11, 6, 14, 7, 15});
      }
      for (int i = 0; i < 8; i += 4) {
        b[i] = __builtin_shuffle(a[i], a[i + 2], i8{0, 1, 8, 9, 4, 5, 12, 13});
        b[i + 1] = __builtin_shuffle(a[i], a[i + 2], i8{2, 3, 10, 11, 6, 7, 14, 15});
        b[i + 2] = __builtin_shuffle(a[i + 1], a[i + 3], i8{0, 1, 8, 9, 4, 5, 12, 13});
        b[i + 3] = __builtin_shuffle(a[i + 1], a[i + 3], i8{2, 3, 10, 11, 6, 7, 14, 15});
      }
      for (int i = 0; i < 4; ++i) {
        store<v8>(dst + (d + i) * ldt + j, __builtin_shuffle(b[i], b[i + 4], i8{0, 1, 2, 3, 8, 9, 10, 11}));
        store<v8>(dst + (d + i + 4) * ldt + j, __builtin_shuffle(b[i], b[i + 4], i8{4, 5, 6, 7, 12, 13, 14, 15}));
      }
    }
  }
  for (int64_t d = 0; d < D; ++d) {
    float* row = dst + d * ldt;
    for (int64_t jj = j; jj < n; ++jj) row[jj] = src[jj * lds + d];
  }
}

// Columns of a score tile and of Kᵀ/Vᵀ for a block of n keys: whole native vectors (and a multiple
// of 8, which gemm_tile needs), so that the row passes run without a scalar tail.
constexpr int64_t kColumnAlign = kLanes > 8 ? kLanes : 8;
int64_t padded(int64_t n) { return (n + kColumnAlign - 1) / kColumnAlign * kColumnAlign; }

fvec lane_index() {
  fvec v;
  for (int i = 0; i < kLanes; ++i) v[i] = static_cast<float>(i);
  return v;
}
// Horizontal max and sum by halving: log2(lanes) shuffles instead of a lane-by-lane walk.
template <int Half>
static inline __attribute__((always_inline)) fvec upper_half(fvec v) {
  ivec idx;
  for (int i = 0; i < kLanes; ++i) idx[i] = (i + Half) % kLanes;
  return __builtin_shuffle(v, idx);
}
float hmax(fvec v) {
  if constexpr (kLanes >= 16) v = v > upper_half<8>(v) ? v : upper_half<8>(v);
  if constexpr (kLanes >= 8) v = v > upper_half<4>(v) ? v : upper_half<4>(v);
  v = v > upper_half<2>(v) ? v : upper_half<2>(v);
  v = v > upper_half<1>(v) ? v : upper_half<1>(v);
  return v[0];
}
float hsum(fvec v) {
  if constexpr (kLanes >= 16) v += upper_half<8>(v);
  if constexpr (kLanes >= 8) v += upper_half<4>(v);
  v += upper_half<2>(v);
  v += upper_half<1>(v);
  return v[0];
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

// Asks for the cache lines of `rows` rows of D floats, `stride` floats apart (write: about to be
// stored to). A small head's rows are a short strided run (the packed layout puts 3 H D floats
// between them), too short for the hardware prefetcher: without this, the first loads of every
// head's Q, K and V miss and stall (at L = 17, D = 24 on AVX2 a third of the forward's time).
template <bool Write = false>
inline void prefetch_rows(const float* base, int64_t rows, int64_t stride, int64_t D) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = base + r * stride;
    for (int64_t d = 0; d < D; d += 64 / sizeof(float)) __builtin_prefetch(row + d, Write, 3);
    __builtin_prefetch(row + D - 1, Write, 3);  // the line of the row's end, when it starts mid-line
  }
}

// Heads small enough that the next task's rows are fetched while this one computes: one key block
// (a larger head streams through its blocks, which the hardware prefetcher follows) of few enough
// rows that they stay in L1/L2 until used.
inline bool prefetch_next_head(const AttentionParams& p) { return p.Lk <= p.block_k && p.Lq <= p.block_q; }

// Per-thread tiles: Kᵀ and Vᵀ of the key/value head in use, block by block (each block a
// D x padded(Bk) matrix), kept while consecutive tasks stay on that head (a thread's tasks are a
// contiguous range, so each head is transposed about once per thread instead of once per query
// block); two score tiles (Bq x Bk), a keep row, the running max and sum of the forward's rows.
struct Scratch {
  std::vector<float> kt, vt, s, ds, qs, keep, m, l;
  int64_t ld = 0, block_floats = 0;
  int64_t cached_k = -1, cached_v = -1;  // b · Hkv + kv head transposed into kt / vt
  explicit Scratch(const AttentionParams& p) {
    ld = padded(p.block_k);
    block_floats = p.D * ld;
    const int64_t blocks = (p.Lk + p.block_k - 1) / p.block_k;
    kt.resize(blocks * block_floats);
    if (p.dout) vt.resize(blocks * block_floats);
    s.resize(p.block_q * ld);
    ds.resize(p.block_q * ld);
    qs.resize(p.block_q * p.D);
    keep.resize(ld + 4);
    m.resize(p.block_q);
    l.resize(p.block_q);
  }
  const float* kt_block(int64_t kb0, int64_t block_k) const { return kt.data() + kb0 / block_k * block_floats; }
  const float* vt_block(int64_t kb0, int64_t block_k) const { return vt.data() + kb0 / block_k * block_floats; }
};

void transpose_head(const AttentionParams& p, const float* src, int64_t lds, float* dst, int64_t block_floats,
                    int64_t ld) {
  for (int64_t kb0 = 0; kb0 < p.Lk; kb0 += p.block_k)
    transpose_block(src + kb0 * lds, lds, std::min(p.block_k, p.Lk - kb0), p.D, dst + kb0 / p.block_k * block_floats,
                    ld);
}

// Kᵀ (and Vᵀ when with_v) of the kv head of (b, h) into w, unless already there.
void load_head(const AttentionParams& p, Scratch& w, const Head& hd, int64_t b, int64_t h, bool with_v) {
  const int64_t id = b * p.Hkv + h / (p.Hq / p.Hkv);
  if (w.cached_k != id) {
    transpose_head(p, hd.k, p.k_strides[2], w.kt.data(), w.block_floats, w.ld);
    w.cached_k = id;
  }
  if (with_v && w.cached_v != id) {
    transpose_head(p, hd.v, p.v_strides[2], w.vt.data(), w.block_floats, w.ld);
    w.cached_v = id;
  }
}


// One row of the forward's tile after S = (c Q) Kᵀ (log2 units): online-softmax update of (m, l),
// s (np columns, the first nv visible) replaced by P = exp2(S - m_new) [· keep], and the row's
// output rescaled.
inline void softmax_row(float* s, int64_t np, int64_t nv, float* m, float* l, float* o, int64_t D,
                        const float* keep, const vec::Exp2Range& range) {
  const fvec idx = lane_index(), neg_inf = fvec{} - INFINITY;
  const float nvf = static_cast<float>(nv);
  fvec vmax = neg_inf;
  for (int64_t j = 0; j < np; j += kLanes) {
    const fvec x = load<fvec>(s + j);
    vmax = (idx + static_cast<float>(j) < nvf && x > vmax) ? x : vmax;
  }
  const float m_old = *m, m_new = std::max(m_old, hmax(vmax));
  fvec vsum = fvec{};
  for (int64_t j = 0; j < np; j += kLanes) {
    const fvec e = vec::exp2_clamped(load<fvec>(s + j) - m_new, range);
    const fvec pr = idx + static_cast<float>(j) < nvf ? e : fvec{};
    vsum += pr;
    store<fvec>(s + j, keep ? pr * load<fvec>(keep + j) : pr);
  }
  if (m_new != m_old && m_old != -INFINITY) {  // rescale by exp2(m_old - m_new); O and l are 0 until then
    const float alpha = std::exp2(m_old - m_new);
    *l *= alpha;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) o[d] *= alpha;
  }
  *l += hsum(vsum);
  *m = m_new;
}

}  // namespace

// Tasks (b, h, query block). out rows: O accumulates in place, scaled by 1/l at the end.
void attention_fwd(const AttentionParams& p, int64_t t0, int64_t t1) {
  Scratch w(p);
  const int64_t D = p.D, nqb = (p.Lq + p.block_q - 1) / p.block_q, ld = w.ld;
  const float c = p.scale * kLog2e;
  const vec::Exp2Range range = vec::exp2_range();
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t bh = t / nqb, q0 = (t % nqb) * p.block_q, M = std::min(p.block_q, p.Lq - q0);
    const int64_t b = bh / p.Hq, h = bh % p.Hq;
    const Head hd = head(p, b, h);
    if (t + 1 < t1 && prefetch_next_head(p)) {  // one query block per head here: task t + 1 is head bh + 1
      const int64_t nb = (bh + 1) / p.Hq, nh = (bh + 1) % p.Hq;
      const Head next = head(p, nb, nh);
      prefetch_rows(next.q, p.Lq, p.q_strides[2], D);
      if (next.k != hd.k) prefetch_rows(next.k, p.Lk, p.k_strides[2], D), prefetch_rows(next.v, p.Lk, p.v_strides[2], D);
      prefetch_rows<true>(p.out + nb * p.out_strides[0] + nh * p.out_strides[1], p.Lq, p.out_strides[2], D);
    }
    load_head(p, w, hd, b, h, false);
    // c Q, contiguous: the scores come out in log2 units, with no multiply in the row passes.
    const float* Q = hd.q + q0 * p.q_strides[2];
    float* Qs = w.qs.data();
    for (int64_t r = 0; r < M; ++r)
      for (int64_t d = 0; d < D; d += 8) store<v8>(Qs + r * D + d, load<v8>(Q + r * p.q_strides[2] + d) * c);
    const int64_t ldo = p.out_strides[2];
    float* O = p.out + b * p.out_strides[0] + h * p.out_strides[1] + q0 * ldo;  // the first block's P V, rescaled after
    std::fill(w.m.begin(), w.m.begin() + M, -INFINITY);
    std::fill(w.l.begin(), w.l.begin() + M, 0.f);
    const int64_t k_end = p.causal ? std::min(p.Lk, q0 + M) : p.Lk;
    for (int64_t kb0 = 0; kb0 < k_end; kb0 += p.block_k) {
      const int64_t n = std::min(p.block_k, p.Lk - kb0);
      float* S = w.s.data();
      gemm_tile(M, padded(n), D, Qs, D, 1, w.kt_block(kb0, p.block_k), ld, S, ld, false);
      for (int64_t r = 0; r < M; ++r) {
        const int64_t nv = visible(p.causal, q0 + r, kb0, n);
        const float* keep = nullptr;
        if (p.dropout) {  // w.keep only ever holds 0 or 1/(1-p): columns past nv multiply a 0
          if (nv > 0) dropout_row(p.drop, hd.bh, static_cast<uint32_t>(q0 + r), kb0, nv, w.keep.data());
          keep = w.keep.data();
        }
        softmax_row(S + r * ld, padded(n), nv, &w.m[r], &w.l[r], O + r * ldo, D, keep, range);
      }
      gemm_tile(M, D, n, S, ld, 1, hd.v + kb0 * p.v_strides[2], p.v_strides[2], O, ldo, kb0 > 0);
    }
    float* lse = p.lse + bh * p.Lq + q0;
    for (int64_t r = 0; r < M; ++r) {
      const float inv = 1.f / w.l[r];
      float* o = O + r * ldo;
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
    v8 acc = v8{};  // D is a multiple of 8
    for (int64_t d = 0; d < p.D; d += 8) acc += load<v8>(g + d) * load<v8>(o + d);
    delta[r] = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  }
}

// One backward tile: query rows [q0, q0 + M) of head hd against keys [kb0, kb0 + n), whose Kᵀ and
// Vᵀ are in w (load_head). Accumulates into dq (rows of this head) and/or dk, dv (rows of the key
// block), as asked.
// dq, dk, dv point at row 0 of the head's gradients (rows at p.dq_strides[2] ... apart).
// first_dkdv: this is the key block's first tile (dk, dv are written, not accumulated); dq rows are
// written by their first key block (kb0 = 0, which every query row sees).
void bwd_tile(const AttentionParams& p, Scratch& w, const Head& hd, int64_t q0, int64_t M, int64_t kb0, int64_t n,
              float* dq, float* dk, float* dv, bool first_dkdv, const vec::Exp2Range& range) {
  const int64_t D = p.D, ld = w.ld, np = padded(n);
  const float c = p.scale * kLog2e, scale = p.scale;
  const float* Q = hd.q + q0 * p.q_strides[2];
  const float* dO = hd.dout + q0 * p.dout_strides[2];
  float* S = w.s.data();
  float* dS = w.ds.data();
  gemm_tile(M, np, D, Q, p.q_strides[2], 1, w.kt_block(kb0, p.block_k), ld, S, ld, false);
  gemm_tile(M, np, D, dO, p.dout_strides[2], 1, w.vt_block(kb0, p.block_k), ld, dS, ld, false);
  const float* lse = p.lse + static_cast<int64_t>(hd.bh) * p.Lq + q0;
  const float* delta = p.delta + static_cast<int64_t>(hd.bh) * p.Lq + q0;
  const fvec idx = lane_index();
  for (int64_t r = 0; r < M; ++r) {
    float* s = S + r * ld;
    float* ds = dS + r * ld;
    const int64_t nv = visible(p.causal, q0 + r, kb0, n);
    const float nvf = static_cast<float>(nv), lse2 = lse[r] * kLog2e, dl = delta[r];
    if (p.dropout) {  // w.keep only ever holds 0 or 1/(1-p): columns past nv multiply a 0
      if (nv > 0) dropout_row(p.drop, hd.bh, static_cast<uint32_t>(q0 + r), kb0, nv, w.keep.data());
    }
    for (int64_t j = 0; j < np; j += kLanes) {
      const fvec e = vec::exp2_clamped(load<fvec>(s + j) * c - lse2, range);
      const fvec pr = idx + static_cast<float>(j) < nvf ? e : fvec{};  // P, 0 where masked
      fvec dp = load<fvec>(ds + j);
      fvec pd = pr;
      if (p.dropout) {
        const fvec keep = load<fvec>(w.keep.data() + j);
        pd = pr * keep;  // P M / (1 - p), for dv
        dp = dp * keep;
      }
      store<fvec>(s + j, pd);
      store<fvec>(ds + j, pr * (dp - dl) * scale);  // scale dS, for dq and dk
    }
  }
  const int64_t ldq = p.dq_strides[2], ldk = p.dk_strides[2], ldv = p.dv_strides[2];
  if (dv) gemm_tile(n, D, M, S, 1, ld, dO, p.dout_strides[2], dv + kb0 * ldv, ldv, !first_dkdv);
  if (dk) gemm_tile(n, D, M, dS, 1, ld, Q, p.q_strides[2], dk + kb0 * ldk, ldk, !first_dkdv);
  if (dq) gemm_tile(M, D, n, dS, ld, 1, hd.k + kb0 * p.k_strides[2], p.k_strides[2], dq + q0 * ldq, ldq, kb0 > 0);
}

// Every row the fused backward's task (b, hk) reads or writes: k, v, dk, dv of the kv head, and q,
// dout, o, dq of each query head of its group.
void prefetch_group(const AttentionParams& p, int64_t b, int64_t hk) {
  const int64_t D = p.D, group = p.Hq / p.Hkv;
  const Head first = head(p, b, hk * group);
  prefetch_rows(first.k, p.Lk, p.k_strides[2], D);
  prefetch_rows(first.v, p.Lk, p.v_strides[2], D);
  prefetch_rows<true>(p.dk + b * p.dk_strides[0] + hk * p.dk_strides[1], p.Lk, p.dk_strides[2], D);
  prefetch_rows<true>(p.dv + b * p.dv_strides[0] + hk * p.dv_strides[1], p.Lk, p.dv_strides[2], D);
  for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
    const Head hd = head(p, b, h);
    prefetch_rows(hd.q, p.Lq, p.q_strides[2], D);
    prefetch_rows(hd.dout, p.Lq, p.dout_strides[2], D);
    prefetch_rows(hd.o, p.Lq, p.o_strides[2], D);
    prefetch_rows<true>(p.dq + b * p.dq_strides[0] + h * p.dq_strides[1], p.Lq, p.dq_strides[2], D);
  }
}

// Rows [kb0, kb0 + n) of a head's dk and dv set to 0 (keys that no query sees).
void zero_key_rows(const AttentionParams& p, float* dk, float* dv, int64_t kb0, int64_t n) {
  for (int64_t j = kb0; j < kb0 + n; ++j) {
    std::fill(dk + j * p.dk_strides[2], dk + j * p.dk_strides[2] + p.D, 0.f);
    std::fill(dv + j * p.dv_strides[2], dv + j * p.dv_strides[2] + p.D, 0.f);
  }
}

}  // namespace

// Tasks (b, h, query block): delta of the block's rows, then dq over every visible key block.
void attention_bwd_dq(const AttentionParams& p, int64_t t0, int64_t t1) {
  Scratch w(p);
  const vec::Exp2Range range = vec::exp2_range();
  const int64_t nqb = (p.Lq + p.block_q - 1) / p.block_q;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t bh = t / nqb, q0 = (t % nqb) * p.block_q, M = std::min(p.block_q, p.Lq - q0);
    const int64_t b = bh / p.Hq, h = bh % p.Hq;
    const Head hd = head(p, b, h);
    load_head(p, w, hd, b, h, true);
    row_deltas(p, hd, q0, M);
    float* dq = p.dq + b * p.dq_strides[0] + h * p.dq_strides[1];
    const int64_t k_end = p.causal ? std::min(p.Lk, q0 + M) : p.Lk;
    for (int64_t kb0 = 0; kb0 < k_end; kb0 += p.block_k)
      bwd_tile(p, w, hd, q0, M, kb0, std::min(p.block_k, p.Lk - kb0), dq, nullptr, nullptr, false, range);
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
    const int64_t n = std::min(p.block_k, p.Lk - kb0);
    float* dk = p.dk + b * p.dk_strides[0] + hk * p.dk_strides[1];
    float* dv = p.dv + b * p.dv_strides[0] + hk * p.dv_strides[1];
    const int64_t q_start = p.causal ? kb0 / p.block_q * p.block_q : 0;  // earlier rows see none of it
    if (q_start >= p.Lq) zero_key_rows(p, dk, dv, kb0, n);  // causal, Lk > Lq: no query sees these keys
    for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
      const Head hd = head(p, b, h);
      load_head(p, w, hd, b, h, true);  // the group shares k and v: transposed once
      for (int64_t q0 = q_start; q0 < p.Lq; q0 += p.block_q)
        bwd_tile(p, w, hd, q0, std::min(p.block_q, p.Lq - q0), kb0, n, nullptr, dk, dv,
                 h == hk * group && q0 == q_start, range);
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
    float* dk = p.dk + b * p.dk_strides[0] + hk * p.dk_strides[1];
    float* dv = p.dv + b * p.dv_strides[0] + hk * p.dv_strides[1];
    if (t + 1 < t1 && prefetch_next_head(p)) prefetch_group(p, (t + 1) / p.Hkv, (t + 1) % p.Hkv);
    for (int64_t h = hk * group; h < (hk + 1) * group; ++h) row_deltas(p, head(p, b, h), 0, p.Lq);
    load_head(p, w, head(p, b, hk * group), b, hk * group, true);
    for (int64_t kb0 = 0; kb0 < p.Lk; kb0 += p.block_k) {
      const int64_t n = std::min(p.block_k, p.Lk - kb0);
      const int64_t q_start = p.causal ? kb0 / p.block_q * p.block_q : 0;
      if (q_start >= p.Lq) zero_key_rows(p, dk, dv, kb0, n);  // causal, Lk > Lq: no query sees these keys
      for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
        const Head hd = head(p, b, h);
        float* dq = p.dq + b * p.dq_strides[0] + h * p.dq_strides[1];
        for (int64_t q0 = q_start; q0 < p.Lq; q0 += p.block_q)
          bwd_tile(p, w, hd, q0, std::min(p.block_q, p.Lq - q0), kb0, n, dq, dk, dv,
                   h == hk * group && q0 == q_start, range);
      }
    }
  }
}

}  // namespace pyneuro::cpu::PYNEURO_CPU_ISA
