// The fused recurrent steps of the LSTM (without projection), the GRU, the Elman cell and the
// leaky integrator on the CPU (docs/rnn_contract.md), compiled once per ISA.
//
// The unfused step (rnn_kernels.cpp) is a library GEMM of the whole step followed by a pointwise
// pass; each GEMM call re-packs W_hh and pays a fixed dispatch cost, which at the sizes of a
// recurrent step (B x H x 4H = 128 x 128 x 512: ~40 µs of arithmetic on a core) is a large share,
// and the pre-activations make a round trip through memory between the two. Here W_ih and W_hh
// are packed once per call (fused_pack_weights) into panels that each produce a whole tile of the
// step, and each tile's pointwise math runs on the accumulators while they are hot (G gates: 4 for
// the LSTM, 3 for the GRU, 1 for the Elman and leaky cells; the GRU keeps n's input and recurrent parts in
// separate accumulators, micro_gru):
//
//   forward tile  (MR batch rows, U units): acc = x_t[rows] · W_ihᵀ[:, the G gates of the units]
//                 + h_{t-1}[rows] · W_hhᵀ[:, same] (MR x (I + H) x G U, one register block),
//                 then + bias, the activations and the new state, written into the reserve.
//   backward tile (MR batch rows, kUb units): dh = dy_t + dG_{t+1}[rows, :] · W_hh[:, units]
//                 (MR x G H x kUb), then the gradients of the G gates (and the LSTM's c) there.
//
// Tiles of one step are independent; the driver (csrc/cpu/rnn.cpp) hands each thread a contiguous
// range of them, numbered unit block major, so that a thread keeps re-reading the same weight
// panels (G U x (I + H) floats each, 40 KiB for the LSTM at I = 28, H = 128 on AVX-512) out of its
// own cache.
//
// Packed layouts (zero-filled past the last unit, so every tile multiplies full vectors):
//   forward  [H / U][K][G U]:     panel u, row k, column g U + j  =  W[g H + u U + j, k]
//            (W = W_ih with K = I, or W_hh with K = H)
//   backward [K / kUb][G H][kUb]: panel u, row k, column j        =  W[k, u kUb + j]
//            (W = W_hh with K = H for the steps, or W_ih with K = I for dx)
// with U = one native vector of units for the LSTM and the GRU (G gates x 1 vector), a row of
// accumulators for the Elman cell, and kUb = a row of accumulators.
//
// Memory traffic per step (floats), LSTM: the forward reads B (I + H) (x_t, h_{t-1}) + 4 H (I + H)
// (weights, from cache) + B H (c_{t-1}) and writes B 6 H (the reserve's gates, c, h); the backward
// reads B 4 H (dG_{t+1}) + 4 H H + B 8 H and writes B 5 H. Elman: reads B (I + H) + H (I + H),
// writes B H / reads B H (dG_{t+1}) + H H + B 2 H, writes B H. Leaky: reads B (I + 2 H) + H (I + H),
// writes B 2 H (u_t, h_t) / reads B H (da_{t+1}) + H H + B 6 H, writes B 4 H.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cpu/isa.h"
#include "cpu/vec_math.h"

namespace pyneuro::cpu::PYNEURO_CPU_ISA {
namespace {

using vec::fvec;

constexpr int kLanes = vec::kNativeLanes;
// Accumulators of the micro-kernel: kRows x kVecs native vectors, 6 x 4 zmm on AVX-512 (24 of 32
// registers), 6 x 2 ymm/xmm on AVX2 and SSE (12 of 16).
constexpr int kRows = 6;
constexpr int kVecs = kLanes == 16 ? 4 : 2;
constexpr int64_t kUnitsBwd = kVecs * kLanes;  // units per backward tile

inline __attribute__((always_inline)) fvec load(const float* p) {
  fvec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline __attribute__((always_inline)) void store(float* p, const fvec& v) { std::memcpy(p, &v, sizeof v); }

// One operand pair of a tile's product: A (rows with stride lda, read by broadcast) times the
// packed panel P (K rows of ldp floats, unit column stride).
struct Operand {
  int64_t K;
  const float* A;
  int64_t lda;
  const float* P;
};

// One k of a register block: c[r][·] += a[r · a_stride] P[k's row] for r < MR (the a[r] broadcast).
template <int MR, int NV>
inline __attribute__((always_inline)) void rank1_update(fvec (&c)[MR][NV], const float* a, int64_t a_stride,
                                                        const float* p_row) {
  fvec p[NV];
#pragma GCC unroll 4
  for (int j = 0; j < NV; ++j) p[j] = load(p_row + j * kLanes);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    const fvec a_r = a[r * a_stride] - fvec{};  // broadcast (x - 0 is x: no add is emitted)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) c[r][j] += a_r * p[j];
  }
}

template <int MR, int NV>
inline __attribute__((always_inline)) void store_block(const fvec (&c)[MR][NV], float* C, int64_t ldc) {
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) store(C + r * ldc + j * kLanes, c[r][j]);
  }
}

// C[r, 0 : NV kLanes) = Σ_k A1[r, k] P1[k, ·] + Σ_k A2[r, k] P2[k, ·] for r < MR, both sums in the
// same registers (the forward's x_t W_ihᵀ + h_{t-1} W_hhᵀ; the backward passes K1 = 0). C is a
// tile buffer with row stride ldc.
template <int MR, int NV>
inline __attribute__((always_inline)) void micro(const Operand& o1, const Operand& o2, int64_t ldp, float* C,
                                                 int64_t ldc) {
  fvec c[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) c[r][j] = fvec{};
  }
#pragma GCC unroll 2
  for (const Operand* o : {&o1, &o2}) {
    for (int64_t k = 0; k < o->K; ++k) rank1_update<MR, NV>(c, o->A + k, o->lda, o->P + k * ldp);
  }
  store_block<MR, NV>(c, C, ldc);
}

// C[r, 0 : NV kLanes) += Σ_k A[k lda + r] P[k ldp + ·] for r < MR: A read down its columns (a
// weight gradient's Σ_b h[b, r] dG[b, ·], h and dG as the step left them), C accumulated in place.
// The K terms are summed from zero and then added to C: C grows over the steps, and adding each
// product to it directly rounded every one of T·B terms against the large running total (relative
// error 3-8e-6 against fp64 at T = 784; this way ≤ 1.4e-6, tests/ops/rnn/test_rnn_long_sums.py).
template <int MR, int NV>
inline __attribute__((always_inline)) void micro_acc_t(int64_t K, const float* A, int64_t lda, const float* P,
                                                       int64_t ldp, float* C, int64_t ldc) {
  fvec c[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) c[r][j] = fvec{};
  }
  for (int64_t k = 0; k < K; ++k) rank1_update<MR, NV>(c, A + k * lda, 1, P + k * ldp);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) c[r][j] += load(C + r * ldc + j * kLanes);
  }
  store_block<MR, NV>(c, C, ldc);
}

void micro_acc_t_rows(int64_t rows, int64_t K, const float* A, int64_t lda, const float* P, int64_t ldp, float* C,
                      int64_t ldc) {
  switch (rows) {
    case 6: micro_acc_t<6, kVecs>(K, A, lda, P, ldp, C, ldc); break;
    case 5: micro_acc_t<5, kVecs>(K, A, lda, P, ldp, C, ldc); break;
    case 4: micro_acc_t<4, kVecs>(K, A, lda, P, ldp, C, ldc); break;
    case 3: micro_acc_t<3, kVecs>(K, A, lda, P, ldp, C, ldc); break;
    case 2: micro_acc_t<2, kVecs>(K, A, lda, P, ldp, C, ldc); break;
    case 1: micro_acc_t<1, kVecs>(K, A, lda, P, ldp, C, ldc); break;
    default: break;
  }
}

// The same for `rows` <= kRows rows (the last row block of a step may be short).
template <int NV>
void micro_rows(int64_t rows, const Operand& o1, const Operand& o2, int64_t ldp, float* C, int64_t ldc) {
  switch (rows) {
    case 6: micro<6, NV>(o1, o2, ldp, C, ldc); break;
    case 5: micro<5, NV>(o1, o2, ldp, C, ldc); break;
    case 4: micro<4, NV>(o1, o2, ldp, C, ldc); break;
    case 3: micro<3, NV>(o1, o2, ldp, C, ldc); break;
    case 2: micro<2, NV>(o1, o2, ldp, C, ldc); break;
    case 1: micro<1, NV>(o1, o2, ldp, C, ldc); break;
    default: break;
  }
}
static_assert(kRows == 6, "micro_rows dispatches up to 6 rows");

// The GRU's forward product: x_t · [W_ir W_iz W_in] into C's vectors 0, 1, 2 and h_{t-1} ·
// [W_hr W_hz W_hn] into 0, 1, 3, so that r and z sum both while n keeps its input and recurrent
// parts apart (n = tanh(x W_inᵀ + b_in + r (h W_hnᵀ + b_hn))). One vector of units; C is a tile
// buffer of 4 vectors per row. Each pass needs only 3 accumulators per row (n's input part is
// stored before the recurrent pass reuses its registers), so MR rows take 3 MR registers: 4 rows
// on AVX2/SSE make 12 independent FMA chains per k, enough to cover the FMA latency (5 cycles x 2
// per cycle on Zen 2), where 3 rows of 4 accumulators left it 9.
template <int MR>
inline __attribute__((always_inline)) void micro_gru(const Operand& x, const Operand& h, int64_t ldp, float* C,
                                                     int64_t ldc) {
  fvec c[MR][3];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) c[r][0] = c[r][1] = c[r][2] = fvec{};
#pragma GCC unroll 2
  for (int part = 0; part < 2; ++part) {
    const Operand& o = part ? h : x;
    for (int64_t k = 0; k < o.K; ++k) {
      const fvec p0 = load(o.P + k * ldp), p1 = load(o.P + k * ldp + kLanes), p2 = load(o.P + k * ldp + 2 * kLanes);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const fvec a = o.A[r * o.lda + k] - fvec{};
        c[r][0] += a * p0;
        c[r][1] += a * p1;
        c[r][2] += a * p2;
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {  // n's part of this operand: vector 2 (input) or 3 (recurrent)
      store(C + r * ldc + (2 + part) * kLanes, c[r][2]);
      c[r][2] = fvec{};
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    store(C + r * ldc, c[r][0]);
    store(C + r * ldc + kLanes, c[r][1]);
  }
}

// Rows per GRU forward tile and per register block of micro_gru: 6 x 3 vectors on AVX-512 (18 of
// 32 registers), 8 rows in blocks of 4 x 3 on AVX2 and SSE (12 of 16, with 3 for the panel row
// and 1 for the broadcast).
constexpr int64_t kGruBlock = kLanes == 16 ? 6 : 4;
constexpr int64_t kGruRows = kLanes == 16 ? 6 : 8;

void micro_gru_rows(int64_t rows, const Operand& x, const Operand& h, int64_t ldp, float* C, int64_t ldc) {
  for (int64_t r0 = 0; r0 < rows; r0 += kGruBlock) {
    const Operand xr{x.K, x.A + r0 * x.lda, x.lda, x.P}, hr{h.K, h.A + r0 * h.lda, h.lda, h.P};
    switch (std::min(kGruBlock, rows - r0)) {
      case 6: micro_gru<kGruBlock == 6 ? 6 : 1>(xr, hr, ldp, C + r0 * ldc, ldc); break;
      case 5: micro_gru<kGruBlock == 6 ? 5 : 1>(xr, hr, ldp, C + r0 * ldc, ldc); break;
      case 4: micro_gru<4>(xr, hr, ldp, C + r0 * ldc, ldc); break;
      case 3: micro_gru<3>(xr, hr, ldp, C + r0 * ldc, ldc); break;
      case 2: micro_gru<2>(xr, hr, ldp, C + r0 * ldc, ldc); break;
      case 1: micro_gru<1>(xr, hr, ldp, C + r0 * ldc, ldc); break;
      default: break;
    }
  }
}

int64_t blocks(int64_t n, int64_t per) { return (n + per - 1) / per; }

// Asks for the cache lines of [p, p + n floats) ahead of use (for writing when `write`).
inline void prefetch(const float* p, int64_t n, bool write) {
  for (int64_t i = 0; i < n; i += 64 / static_cast<int64_t>(sizeof(float))) {
    if (write) {
      __builtin_prefetch(p + i, 1);
    } else {
      __builtin_prefetch(p + i, 0);
    }
  }
}

}  // namespace

// Units per forward tile: one vector of them for the LSTM and the GRU (their 4 gate blocks fill the
// 4 vectors of a row of accumulators), a whole row of accumulators for the single-gate Elman cell.
int64_t fwd_units(int64_t G) { return G == 1 ? kVecs * kLanes : kLanes; }

int64_t fused_packed_floats(int64_t G, int64_t H, int64_t K, bool backward) {
  return backward ? blocks(K, kUnitsBwd) * G * H * kUnitsBwd : blocks(H, fwd_units(G)) * K * G * fwd_units(G);
}

void fused_pack_weights(const float* w, int64_t G, int64_t H, int64_t K, bool backward, float* packed) {
  if (backward) {  // w = W_hh (G H, H) with K = H, or W_ih (G H, I) with K = I; row-major; panels of K's columns
    for (int64_t u = 0; u < blocks(K, kUnitsBwd); ++u) {
      for (int64_t k = 0; k < G * H; ++k) {
        float* row = packed + (u * G * H + k) * kUnitsBwd;
        for (int64_t j = 0; j < kUnitsBwd; ++j) {
          const int64_t col = u * kUnitsBwd + j;
          row[j] = col < K ? w[k * K + col] : 0.f;
        }
      }
    }
    return;
  }
  // w = W_ih (G H, I) or W_hh (G H, H) row-major, K its columns.
  const int64_t U = fwd_units(G);
  for (int64_t u = 0; u < blocks(H, U); ++u) {
    for (int64_t k = 0; k < K; ++k) {
      float* row = packed + (u * K + k) * G * U;
      for (int64_t g = 0; g < G; ++g) {
        for (int64_t j = 0; j < U; ++j) {
          const int64_t unit = u * U + j;
          row[g * U + j] = unit < H ? w[(g * H + unit) * K + k] : 0.f;
        }
      }
    }
  }
}

// Batch rows per forward tile: the GRU's own register blocking (micro_gru_rows), kRows otherwise.
int64_t fwd_rows(int64_t G) { return G == 3 ? kGruRows : kRows; }

int64_t fused_step_tiles(int64_t G, int64_t B, int64_t H, bool backward) {
  return blocks(B, backward ? kRows : fwd_rows(G)) * blocks(H, backward ? kUnitsBwd : fwd_units(G));
}

namespace {

// The rows and units of forward tile `tile` (unit block major), and its accumulators: acc[r][g U + j]
// = x_t[b0 + r] · W_ih[g H + u0 + j] + h_{t-1}[b0 + r] · W_hh[g H + u0 + j].
template <int G>
struct FwdTile {
  static constexpr int64_t U = G == 1 ? kVecs * kLanes : kLanes;
  int64_t b0, u0, rows, units;
  alignas(64) float acc[kRows][G * U];

  FwdTile(const FusedStep& s, int64_t tile) {
    const int64_t row_blocks = blocks(s.B, kRows);
    u0 = (tile / row_blocks) * U, b0 = (tile % row_blocks) * kRows;
    rows = std::min<int64_t>(kRows, s.B - b0), units = std::min<int64_t>(U, s.H - u0);
  }

  void multiply(const FusedStep& s) {
    // Panel u0 / U of each packed weight: K rows of G U.
    for (int64_t col = 0; col < G * U; col += kVecs * kLanes) {
      const Operand input{s.I, s.x_t + b0 * s.I, s.I, s.packed_ih + u0 * s.I * G + col};
      const Operand recurrent{s.H, s.h_prev + b0 * s.ld_h, s.ld_h, s.packed + u0 * s.H * G + col};
      micro_rows<kVecs>(rows, input, recurrent, G * U, &acc[0][col], G * U);
    }
  }
};

// Backward tile `tile`: acc[r][j] = dG_{t+1}[b0 + r] · W_hh[:, u0 + j] (zero at the last step).
struct BwdTile {
  int64_t b0, u0, rows, units;
  alignas(64) float acc[kRows][kUnitsBwd];

  BwdTile(const FusedStep& s, int64_t tile) {
    const int64_t row_blocks = blocks(s.B, kRows);
    u0 = (tile / row_blocks) * kUnitsBwd, b0 = (tile % row_blocks) * kRows;
    rows = std::min<int64_t>(kRows, s.B - b0), units = std::min<int64_t>(kUnitsBwd, s.H - u0);
  }

  void multiply(const FusedStep& s, int64_t G) {
    if (s.dgates_next == nullptr) {
      std::memset(acc, 0, sizeof acc);
      return;
    }
    const Operand none{0, nullptr, 0, nullptr};
    const Operand recurrent{G * s.H, s.dgates_next + b0 * s.ld_dgates, s.ld_dgates, s.packed + u0 * G * s.H};
    micro_rows<kVecs>(rows, none, recurrent, kUnitsBwd, &acc[0][0], kUnitsBwd);
  }
};

}  // namespace

void lstm_fused_fwd(const FusedStep& s, int64_t tile0, int64_t tile1) {
  const int64_t H = s.H, W = s.ld_reserve;
  for (int64_t index = tile0; index < tile1; ++index) {
    FwdTile<4> tile(s, index);
    const int64_t b0 = tile.b0, u0 = tile.u0, U = FwdTile<4>::U;
    // The lines the pointwise part touches, requested now so that they arrive while the product
    // runs: a tile's rows of the reserve are far apart and were last touched a whole step ago.
    for (int64_t r = 0; r < tile.rows; ++r) {
      prefetch(s.c_prev + (b0 + r) * s.ld_c + u0, tile.units, false);
      for (int64_t block = 0; block < 6; ++block) prefetch(s.reserve_t + (b0 + r) * W + block * H + u0, tile.units, true);
    }
    tile.multiply(s);
    for (int64_t r = 0; r < tile.rows; ++r) {
      const float* a = tile.acc[r];
      float* out = s.reserve_t + (b0 + r) * W + u0;  // gate g of unit u0 + j at out[g H + j]
      const float* cp = s.c_prev + (b0 + r) * s.ld_c + u0;
      const float* bias = s.bias + u0;
      const int64_t units = tile.units;
#pragma omp simd
      for (int64_t j = 0; j < units; ++j) {
        const float i = vec::sigmoid(a[j] + bias[j]);
        const float f = vec::sigmoid(a[U + j] + bias[H + j]);
        const float g = vec::tanh(a[2 * U + j] + bias[2 * H + j]);
        const float o = vec::sigmoid(a[3 * U + j] + bias[3 * H + j]);
        const float c = f * cp[j] + i * g;
        out[j] = i, out[H + j] = f, out[2 * H + j] = g, out[3 * H + j] = o, out[4 * H + j] = c;
        out[5 * H + j] = o * vec::tanh(c);
      }
    }
  }
}

void lstm_fused_bwd(const FusedStep& s, int64_t tile0, int64_t tile1) {
  const int64_t H = s.H, W = s.ld_reserve;
  for (int64_t index = tile0; index < tile1; ++index) {
    BwdTile tile(s, index);
    const int64_t b0 = tile.b0, u0 = tile.u0;
    for (int64_t r = 0; r < tile.rows; ++r) {  // as in the forward: the pointwise part's lines, ahead
      const int64_t b = b0 + r;
      for (int64_t block = 0; block < 5; ++block) prefetch(s.reserve_t + b * W + block * H + u0, tile.units, false);
      prefetch(s.c_prev + b * s.ld_c + u0, tile.units, false);
      prefetch(s.dh + b * H + u0, tile.units, false);
      prefetch(s.dc + b * H + u0, tile.units, true);
      for (int64_t gate = 0; gate < 4; ++gate) prefetch(s.dgates + b * s.ld_dgates + gate * H + u0, tile.units, true);
    }
    tile.multiply(s, 4);  // the gradient reaching h_t through step t+1's gates
    for (int64_t r = 0; r < tile.rows; ++r) {
      const int64_t b = b0 + r, units = tile.units;
      const float* a = tile.acc[r];
      const float* st = s.reserve_t + b * W + u0;
      const float* dy = s.dh + b * H + u0;
      const float* cp = s.c_prev + b * s.ld_c + u0;
      float* dc = s.dc + b * H + u0;
      float* dg = s.dgates + b * s.ld_dgates + u0;
#pragma omp simd
      for (int64_t j = 0; j < units; ++j) {
        const float d = a[j] + dy[j];  // the whole gradient of h_t
        const float i = st[j], f = st[H + j], g = st[2 * H + j], o = st[3 * H + j];
        const float tc = vec::tanh(st[4 * H + j]);
        const float dc_j = dc[j] + d * o * (1.f - tc * tc);  // gradient of c_t
        dg[j] = dc_j * g * i * (1.f - i);
        dg[H + j] = dc_j * cp[j] * f * (1.f - f);
        dg[2 * H + j] = dc_j * i * (1.f - g * g);
        dg[3 * H + j] = d * tc * o * (1.f - o);
        dc[j] = dc_j * f;  // on to c_{t-1}
      }
    }
  }
}

// The GRU: reserve_t rows are [r z n s_n h_t] (s_n = h_{t-1} W_hnᵀ + b_hn, the recurrent part of
// n); bias = b_ih and bias_hh = b_hh (3H each).
void gru_fused_fwd(const FusedStep& s, int64_t tile0, int64_t tile1) {
  const int64_t H = s.H, W = s.ld_reserve, U = kLanes, row_blocks = blocks(s.B, kGruRows);
  alignas(64) float acc[kGruRows][4 * kLanes];
  for (int64_t index = tile0; index < tile1; ++index) {
    const int64_t u0 = (index / row_blocks) * U, b0 = (index % row_blocks) * kGruRows;
    const int64_t rows = std::min<int64_t>(kGruRows, s.B - b0), units = std::min<int64_t>(U, H - u0);
    for (int64_t r = 0; r < rows; ++r) {  // the reserve lines the pointwise part writes, ahead (as the LSTM's)
      for (int64_t block = 0; block < 5; ++block) prefetch(s.reserve_t + (b0 + r) * W + block * H + u0, units, true);
    }
    const Operand input{s.I, s.x_t + b0 * s.I, s.I, s.packed_ih + u0 * s.I * 3};
    const Operand recurrent{H, s.h_prev + b0 * s.ld_h, s.ld_h, s.packed + u0 * H * 3};
    micro_gru_rows(rows, input, recurrent, 3 * U, &acc[0][0], 4 * U);
    for (int64_t r = 0; r < rows; ++r) {
      const float* a = acc[r];
      const float* bi = s.bias + u0;
      const float* bh = s.bias_hh + u0;
      const float* hp = s.h_prev + (b0 + r) * s.ld_h + u0;
      float* out = s.reserve_t + (b0 + r) * W + u0;
#pragma omp simd
      for (int64_t j = 0; j < units; ++j) {
        const float rr = vec::sigmoid(a[j] + bi[j] + bh[j]);
        const float z = vec::sigmoid(a[U + j] + bi[H + j] + bh[H + j]);
        const float s_n = a[3 * U + j] + bh[2 * H + j];
        const float n = vec::tanh(a[2 * U + j] + bi[2 * H + j] + rr * s_n);
        out[j] = rr, out[H + j] = z, out[2 * H + j] = n, out[3 * H + j] = s_n;
        out[4 * H + j] = (1.f - z) * n + z * hp[j];
      }
    }
  }
}

// dh_t = dy_t + carry + d_rec_{t+1} · W_hh, with carry = dh_{t+1} z_{t+1} (the direct path
// h_t -> h_{t+1}, updated in place to dh_t z_t for the step before). Writes the row [da_n da_r da_z
// r da_n] (4 H, ld_dgates apart): its first 3 H are d_input_t, the gradient of x W_ihᵀ + b_ih with
// the gates in the order n, r, z, and its last 3 H d_rec_t, that of h W_hhᵀ + b_hh in PyTorch's
// order r, z, n, so that the gradients r and z share stay one copy (dgates_next is d_rec_{t+1}).
void gru_fused_bwd(const FusedStep& s, int64_t tile0, int64_t tile1) {
  const int64_t H = s.H, W = s.ld_reserve;
  for (int64_t index = tile0; index < tile1; ++index) {
    BwdTile tile(s, index);
    // The pointwise part's lines, requested before the product as in the LSTM's backward: without
    // this, its first loads (dy_t, the carry, the reserve) stalled for most of the pass's time.
    for (int64_t r = 0; r < tile.rows; ++r) {
      const int64_t b = tile.b0 + r, u0 = tile.u0;
      for (int64_t block = 0; block < 4; ++block) prefetch(s.reserve_t + b * W + block * H + u0, tile.units, false);
      prefetch(s.h_prev + b * s.ld_h + u0, tile.units, false);
      prefetch(s.dh + b * H + u0, tile.units, false);
      prefetch(s.dc + b * H + u0, tile.units, true);
      for (int64_t block = 0; block < 4; ++block) prefetch(s.dgates + b * s.ld_dgates + block * H + u0, tile.units, true);
    }
    tile.multiply(s, 3);
    for (int64_t r = 0; r < tile.rows; ++r) {
      const int64_t b = tile.b0 + r, u0 = tile.u0, units = tile.units;
      const float* a = tile.acc[r];
      const float* st = s.reserve_t + b * W + u0;
      const float* hp = s.h_prev + b * s.ld_h + u0;
      const float* dy = s.dh + b * H + u0;
      float* carry = s.dc + b * H + u0;
      float* dg = s.dgates + b * s.ld_dgates + u0;
#pragma omp simd
      for (int64_t j = 0; j < units; ++j) {
        const float d = a[j] + dy[j] + carry[j];  // the whole gradient of h_t
        const float rr = st[j], z = st[H + j], n = st[2 * H + j], s_n = st[3 * H + j];
        const float da_n = d * (1.f - z) * (1.f - n * n);
        const float da_r = da_n * s_n * rr * (1.f - rr);
        const float da_z = d * (hp[j] - n) * z * (1.f - z);
        dg[j] = da_n, dg[H + j] = da_r, dg[2 * H + j] = da_z, dg[3 * H + j] = da_n * rr;
        carry[j] = d * z;
      }
    }
  }
}

// The weight, bias and input gradients of one backward step (GradStep, csrc/cpu/isa.h), in four sets
// of tiles, each numbered row block major (consecutive tiles share the broadcast operand's lines):
//   kRecurrentWeights  dW_hhᵀ[j0 : +6, g0 : +kUb] += h_{t-1}[:, j0 : +6]ᵀ d_rec[:, g0 : +kUb]    (6 x B x kUb)
//   kInputWeights      dW_ihᵀ[i0 : +6, g0 : +kUb] += x_t[:, i0 : +6]ᵀ d_input[:, g0 : +kUb]      (6 x B x kUb)
//   kInput             dx_t[b0 : +6, i0 : +kUb]    = d_input[b0 : +6, :] W_ih[:, i0 : +kUb]     (6 x G H x kUb)
//   kBias              db_input[g0 : +kUb] += Σ_b d_input[b, g0 : +kUb] (and db_rec of d_rec, if apart)
// Per step they read B (H + I) + 2 B G H floats, which the step's tiles wrote one parallel region
// before (from L2/L3), and W_ih's panels; the (H + I) x G H accumulators stay in the caches of the
// thread that owns them, as the driver hands each thread the same share of every set at every step.
int64_t fused_grad_width() { return kUnitsBwd; }

int64_t fused_grad_tiles(const GradStep& g, GradPart part) {
  switch (part) {
    case GradPart::kRecurrentWeights: return blocks(g.H, kRows) * blocks(g.G * g.H, kUnitsBwd);
    case GradPart::kInputWeights: return blocks(g.I, kRows) * blocks(g.G * g.H, kUnitsBwd);
    case GradPart::kInput: return g.dx_t == nullptr ? 0 : blocks(g.B, kRows) * blocks(g.I, kUnitsBwd);
    case GradPart::kBias: return blocks(g.G * g.H, kUnitsBwd);
  }
  return 0;
}

void fused_grad_step(const GradStep& g, GradPart part, int64_t tile0, int64_t tile1) {
  const int64_t GH = g.G * g.H;
  if (part == GradPart::kBias) {
    for (int64_t index = tile0; index < tile1; ++index) {
      const int64_t c0 = index * kUnitsBwd;
      for (int source = 0; source < (g.d_rec == g.d_input ? 1 : 2); ++source) {
        const float* P = (source ? g.d_rec : g.d_input) + c0;
        float* sum = (source ? g.db_rec : g.db_input) + c0;
        float* lost = sum + g.ld_w;  // what rounding dropped from `sum` so far (Kahan)
        fvec acc[kVecs] = {};        // from zero, then added to the running sum (as micro_acc_t)
        for (int64_t b = 0; b < g.B; ++b) {
#pragma GCC unroll 4
          for (int j = 0; j < kVecs; ++j) acc[j] += load(P + b * g.ld_d + j * kLanes);
        }
#pragma GCC unroll 4
        for (int j = 0; j < kVecs; ++j) {
          const fvec total = load(sum + j * kLanes), y = acc[j] - load(lost + j * kLanes), next = total + y;
          store(lost + j * kLanes, (next - total) - y);
          store(sum + j * kLanes, next);
        }
      }
    }
    return;
  }
  if (part == GradPart::kInput) {
    const int64_t col_blocks = blocks(g.I, kUnitsBwd);
    alignas(64) float acc[kRows][kUnitsBwd];
    const Operand none{0, nullptr, 0, nullptr};
    for (int64_t index = tile0; index < tile1; ++index) {
      const int64_t b0 = (index / col_blocks) * kRows, i0 = (index % col_blocks) * kUnitsBwd;
      const int64_t rows = std::min<int64_t>(kRows, g.B - b0), cols = std::min(kUnitsBwd, g.I - i0);
      const Operand input{GH, g.d_input + b0 * g.ld_d, g.ld_d, g.packed_ih + i0 * GH};
      micro_rows<kVecs>(rows, none, input, kUnitsBwd, &acc[0][0], kUnitsBwd);
      for (int64_t r = 0; r < rows; ++r) std::memcpy(g.dx_t + (b0 + r) * g.I + i0, acc[r], cols * sizeof(float));
    }
    return;
  }
  const bool recurrent = part == GradPart::kRecurrentWeights;
  const float* A = recurrent ? g.h_prev : g.x_t;
  const int64_t lda = recurrent ? g.ld_h : g.I, units = recurrent ? g.H : g.I;
  const float* P = recurrent ? g.d_rec : g.d_input;
  float* C = recurrent ? g.dw_hh_t : g.dw_ih_t;
  const int64_t col_blocks = blocks(GH, kUnitsBwd);
  for (int64_t index = tile0; index < tile1; ++index) {
    const int64_t r0 = (index / col_blocks) * kRows, c0 = (index % col_blocks) * kUnitsBwd;
    micro_acc_t_rows(std::min<int64_t>(kRows, units - r0), g.B, A + r0, lda, P + c0, g.ld_d, C + r0 * g.ld_w + c0,
                     g.ld_w);
  }
}

// The Elman cell, h_t = act(x_t W_ihᵀ + h_{t-1} W_hhᵀ + b): reserve_t is h_t itself (B x H).
void rnn_fused_fwd(const FusedStep& s, bool relu, int64_t tile0, int64_t tile1) {
  const int64_t H = s.H;
  for (int64_t index = tile0; index < tile1; ++index) {
    FwdTile<1> tile(s, index);
    tile.multiply(s);
    for (int64_t r = 0; r < tile.rows; ++r) {
      const int64_t units = tile.units;
      const float* a = tile.acc[r];
      const float* bias = s.bias + tile.u0;
      float* h = s.reserve_t + (tile.b0 + r) * H + tile.u0;
      if (relu) {  // max(q, 0) on the bits (vectorises), NaN kept as torch.relu keeps it
#pragma omp simd
        for (int64_t j = 0; j < units; ++j) {
          const float q = a[j] + bias[j];
          h[j] = vec::keep_nan(vec::select_bits(vec::mask_if((vec::float_bits(q) >> 31) != 0u), 0.f, q), q);
        }
      } else {
#pragma omp simd
        for (int64_t j = 0; j < units; ++j) h[j] = vec::tanh(a[j] + bias[j]);
      }
    }
  }
}

void rnn_fused_bwd(const FusedStep& s, bool relu, int64_t tile0, int64_t tile1) {
  const int64_t H = s.H;
  for (int64_t index = tile0; index < tile1; ++index) {
    BwdTile tile(s, index);
    tile.multiply(s, 1);
    for (int64_t r = 0; r < tile.rows; ++r) {
      const int64_t b = tile.b0 + r, units = tile.units;
      const float* a = tile.acc[r];
      const float* h = s.reserve_t + b * H + tile.u0;
      const float* dy = s.dh + b * H + tile.u0;
      float* dpre = s.dgates + b * s.ld_dgates + tile.u0;
      if (relu) {  // d where h > 0 (bits in [1, +inf]; NaN and negatives excluded, as torch's mask)
#pragma omp simd
        for (int64_t j = 0; j < units; ++j)
          dpre[j] = vec::select_bits(vec::mask_if(vec::float_bits(h[j]) - 1u < 0x7f800000u), a[j] + dy[j], 0.f);
      } else {
#pragma omp simd
        for (int64_t j = 0; j < units; ++j) dpre[j] = (a[j] + dy[j]) * (1.f - h[j] * h[j]);
      }
    }
  }
}

// The leaky integrator (MTRNN, PV-RNN): the Elman cell's tiles with a leak between the product
// and the state. Forward: a = x_t W_ihᵀ + tanh(u_{t-1}) W_hhᵀ + bias, u_t = (1 - α) u_{t-1} + α a
// (into the reserve), h_t = tanh(u_t) (the output, and the next step's product operand).
void leaky_fused_fwd(const FusedStep& s, int64_t tile0, int64_t tile1) {
  const int64_t H = s.H;
  for (int64_t index = tile0; index < tile1; ++index) {
    FwdTile<1> tile(s, index);
    tile.multiply(s);
    for (int64_t r = 0; r < tile.rows; ++r) {
      const int64_t b = tile.b0 + r, u0 = tile.u0, units = tile.units;
      const float* a = tile.acc[r];
      const float* bias = s.bias + u0;
      const float* alpha = s.alpha + u0;
      const float* up = s.c_prev + b * s.ld_c + u0;
      float* u = s.reserve_t + b * H + u0;
      float* h = s.h_t + b * H + u0;
#pragma omp simd
      for (int64_t j = 0; j < units; ++j) {
        // As the definition writes it: u + α (a - u) would turn an infinite state into NaN.
        const float v = (1.f - alpha[j]) * up[j] + alpha[j] * (a[j] + bias[j]);
        u[j] = v;
        h[j] = vec::tanh(v);
      }
    }
  }
}

// Backward tile: d = dh_t + da_{t+1} W_hh (the gradient of h_t), g_t = d (1 - h_t²) + (1 - α) g_{t+1}
// (the gradient of u_t, the second term along the leak), da_t = α g_t. h_t is tanh(u_t) as step t+1
// left it in h_t; this tile computes tanh(u_{t-1}) for step t-1 and for dW_hh, which the gradient
// tiles of step t read while step t-1's tiles run (so it cannot be step t-1's own work).
void leaky_fused_bwd(const FusedStep& s, int64_t tile0, int64_t tile1) {
  const int64_t H = s.H;
  alignas(64) float h_last[kUnitsBwd];
  for (int64_t index = tile0; index < tile1; ++index) {
    BwdTile tile(s, index);
    tile.multiply(s, 1);
    for (int64_t r = 0; r < tile.rows; ++r) {
      const int64_t b = tile.b0 + r, u0 = tile.u0, units = tile.units;
      const float* a = tile.acc[r];
      const float* dy = s.dh + b * H + u0;
      const float* u = s.reserve_t + b * H + u0;
      const float* up = s.c_prev + b * s.ld_c + u0;
      const float* alpha = s.alpha + u0;
      float* carry = s.carry + b * H + u0;
      float* dtau = s.dtau + b * H + u0;
      float* da = s.dgates + b * s.ld_dgates + u0;
      const float* h = s.h_t ? s.h_t + b * H + u0 : h_last;
      if (!s.h_t) {  // the last step: no later step computed tanh(u_t)
#pragma omp simd
        for (int64_t j = 0; j < units; ++j) h_last[j] = vec::tanh(u[j]);
      }
#pragma omp simd
      for (int64_t j = 0; j < units; ++j) {
        const float g = (a[j] + dy[j]) * (1.f - h[j] * h[j]) + carry[j];
        da[j] = alpha[j] * g;
        dtau[j] += g * (up[j] - u[j]) * alpha[j];  // ∂u_t/∂τ = (u_{t-1} - u_t) / τ
        carry[j] = (1.f - alpha[j]) * g;
      }
      if (s.h_prev_out) {
        float* h_prev = s.h_prev_out + b * H + u0;
#pragma omp simd
        for (int64_t j = 0; j < units; ++j) h_prev[j] = vec::tanh(up[j]);
      }
    }
  }
}

}  // namespace pyneuro::cpu::PYNEURO_CPU_ISA
