// The LSTM's fused recurrent step on the CPU (docs/rnn_contract.md), compiled once per ISA.
//
// The unfused step (rnn_kernels.cpp) is a library GEMM of the whole step followed by a pointwise
// pass; each GEMM call re-packs W_hh and pays a fixed dispatch cost, which at the sizes of a
// recurrent step (B x H x 4H = 128 x 128 x 512: ~40 µs of arithmetic on a core) is a large share,
// and the pre-activations make a round trip through memory between the two. Here W_ih and W_hh
// are packed once per call (lstm_pack_weights) into panels that each produce a whole tile of the
// step, and each tile's pointwise math runs on the accumulators while they are hot:
//
//   forward tile  (MR batch rows, kU units): acc = x_t[rows] · W_ihᵀ[:, the 4 gates of the units]
//                 + h_{t-1}[rows] · W_hhᵀ[:, same] (MR x (I + H) x 4 kU, one register block),
//                 then + bias, the activations, c_t and h_t, written into the reserve.
//   backward tile (MR batch rows, kUb units): dh = dy_t + dG_{t+1}[rows, :] · W_hh[:, units]
//                 (MR x 4H x kUb), then the gradients of the 4 gates and of c for those units.
//
// Tiles of one step are independent; the driver (csrc/cpu/rnn.cpp) hands each thread a contiguous
// range of them, numbered unit block major, so that a thread keeps re-reading the same weight
// panels (4 kU x (I + H) floats each, 40 KiB at I = 28, H = 128 on AVX-512) out of its own cache.
//
// Packed layouts (zero-filled past the last unit, so every tile multiplies full vectors):
//   forward  [H / kU][K][4 kU]:    panel u, row k, column g kU + j  =  W[g H + u kU + j, k]
//            (W = W_ih with K = I, or W_hh with K = H)
//   backward [H / kUb][4 H][kUb]:  panel u, row k, column j         =  W_hh[k, u kUb + j]
// with kU = one native vector of lanes and kUb = as many as the micro-kernel holds in a row.
//
// Memory traffic per step (floats): the forward reads B (I + H) (x_t, h_{t-1}) + 4 H (I + H)
// (weights, from cache) + B H (c_{t-1}) and writes B 6 H (the reserve's gates, c, h); the backward
// reads B 4 H (dG_{t+1}) + 4 H H + B 8 H and writes B 5 H.
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
constexpr int64_t kUnitsFwd = kLanes;          // units per forward tile (x 4 gates = 4 vectors)
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
    const float* A = o->A;
    const float* P = o->P;
    const int64_t lda = o->lda;
    for (int64_t k = 0; k < o->K; ++k) {
      fvec p[NV];
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) p[j] = load(P + k * ldp + j * kLanes);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const fvec a = A[r * lda + k] - fvec{};  // broadcast (x - 0 is x: no add is emitted)
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) c[r][j] += a * p[j];
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) store(C + r * ldc + j * kLanes, c[r][j]);
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

int64_t lstm_packed_floats(int64_t H, int64_t K, bool backward) {
  return backward ? blocks(H, kUnitsBwd) * 4 * H * kUnitsBwd : blocks(H, kUnitsFwd) * K * 4 * kUnitsFwd;
}

void lstm_pack_weights(const float* w, int64_t H, int64_t K, bool backward, float* packed) {
  if (backward) {  // w = W_hh, (4H, H) row-major; K is H
    for (int64_t u = 0; u < blocks(H, kUnitsBwd); ++u) {
      for (int64_t k = 0; k < 4 * H; ++k) {
        float* row = packed + (u * 4 * H + k) * kUnitsBwd;
        for (int64_t j = 0; j < kUnitsBwd; ++j) {
          const int64_t unit = u * kUnitsBwd + j;
          row[j] = unit < H ? w[k * H + unit] : 0.f;
        }
      }
    }
    return;
  }
  // w = W_ih (4H, I) or W_hh (4H, H) row-major, K its columns.
  for (int64_t u = 0; u < blocks(H, kUnitsFwd); ++u) {
    for (int64_t k = 0; k < K; ++k) {
      float* row = packed + (u * K + k) * 4 * kUnitsFwd;
      for (int64_t g = 0; g < 4; ++g) {
        for (int64_t j = 0; j < kUnitsFwd; ++j) {
          const int64_t unit = u * kUnitsFwd + j;
          row[g * kUnitsFwd + j] = unit < H ? w[(g * H + unit) * K + k] : 0.f;
        }
      }
    }
  }
}

int64_t lstm_step_tiles(int64_t B, int64_t H, bool backward) {
  return blocks(B, kRows) * blocks(H, backward ? kUnitsBwd : kUnitsFwd);
}

void lstm_fused_fwd(const LstmStep& s, int64_t tile0, int64_t tile1) {
  const int64_t H = s.H, W = s.ld_reserve, row_blocks = blocks(s.B, kRows);
  alignas(64) float acc[kRows][4 * kUnitsFwd];
  for (int64_t tile = tile0; tile < tile1; ++tile) {
    const int64_t u0 = (tile / row_blocks) * kUnitsFwd, b0 = (tile % row_blocks) * kRows;
    const int64_t rows = std::min<int64_t>(kRows, s.B - b0), units = std::min<int64_t>(kUnitsFwd, H - u0);
    // The lines the pointwise part touches, requested now so that they arrive while the product
    // runs: a tile's rows of the reserve are far apart and were last touched a whole step ago.
    for (int64_t r = 0; r < rows; ++r) {
      prefetch(s.c_prev + (b0 + r) * s.ld_c + u0, units, false);
      for (int64_t block = 0; block < 6; ++block) prefetch(s.reserve_t + (b0 + r) * W + block * H + u0, units, true);
    }
    // Panel u0 / kU of each packed weight: K rows of 4 kU.
    for (int64_t col = 0; col < 4 * kUnitsFwd; col += kVecs * kLanes) {
      const Operand input{s.I, s.x_t + b0 * s.I, s.I, s.packed_ih + u0 * s.I * 4 + col};
      const Operand recurrent{H, s.h_prev + b0 * s.ld_h, s.ld_h, s.packed + u0 * H * 4 + col};
      micro_rows<kVecs>(rows, input, recurrent, 4 * kUnitsFwd, &acc[0][col], 4 * kUnitsFwd);
    }
    for (int64_t r = 0; r < rows; ++r) {
      const float* a = acc[r];
      float* out = s.reserve_t + (b0 + r) * W + u0;  // gate g of unit u0 + j at out[g H + j]
      const float* cp = s.c_prev + (b0 + r) * s.ld_c + u0;
      const float* bias = s.bias + u0;
#pragma omp simd
      for (int64_t j = 0; j < units; ++j) {
        const float i = vec::sigmoid(a[j] + bias[j]);
        const float f = vec::sigmoid(a[kUnitsFwd + j] + bias[H + j]);
        const float g = vec::tanh(a[2 * kUnitsFwd + j] + bias[2 * H + j]);
        const float o = vec::sigmoid(a[3 * kUnitsFwd + j] + bias[3 * H + j]);
        const float c = f * cp[j] + i * g;
        out[j] = i, out[H + j] = f, out[2 * H + j] = g, out[3 * H + j] = o, out[4 * H + j] = c;
        out[5 * H + j] = o * vec::tanh(c);
      }
    }
  }
}

void lstm_fused_bwd(const LstmStep& s, int64_t tile0, int64_t tile1) {
  const int64_t H = s.H, W = s.ld_reserve, row_blocks = blocks(s.B, kRows);
  alignas(64) float acc[kRows][kUnitsBwd];
  for (int64_t tile = tile0; tile < tile1; ++tile) {
    const int64_t u0 = (tile / row_blocks) * kUnitsBwd, b0 = (tile % row_blocks) * kRows;
    const int64_t rows = std::min<int64_t>(kRows, s.B - b0), units = std::min<int64_t>(kUnitsBwd, H - u0);
    for (int64_t r = 0; r < rows; ++r) {  // as in the forward: the pointwise part's lines, ahead
      const int64_t b = b0 + r;
      for (int64_t block = 0; block < 5; ++block) prefetch(s.reserve_t + b * W + block * H + u0, units, false);
      prefetch(s.c_prev + b * s.ld_c + u0, units, false);
      prefetch(s.dh + b * H + u0, units, false);
      prefetch(s.dc + b * H + u0, units, true);
      for (int64_t gate = 0; gate < 4; ++gate) prefetch(s.dgates + b * 4 * H + gate * H + u0, units, true);
    }
    if (s.dgates_next != nullptr) {  // the gradient reaching h_t through step t+1's gates
      const Operand none{0, nullptr, 0, nullptr};
      const Operand recurrent{4 * H, s.dgates_next + b0 * 4 * H, 4 * H, s.packed + u0 * 4 * H};
      micro_rows<kVecs>(rows, none, recurrent, kUnitsBwd, &acc[0][0], kUnitsBwd);
    } else {
      std::memset(acc, 0, sizeof acc);
    }
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t b = b0 + r;
      const float* a = acc[r];
      const float* st = s.reserve_t + b * W + u0;
      const float* dy = s.dh + b * H + u0;
      const float* cp = s.c_prev + b * s.ld_c + u0;
      float* dc = s.dc + b * H + u0;
      float* dg = s.dgates + b * 4 * H + u0;
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

}  // namespace pyneuro::cpu::PYNEURO_CPU_ISA
