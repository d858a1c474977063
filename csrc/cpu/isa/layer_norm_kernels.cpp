// Residual add + layer norm over the last dim (pyneuro/ops/layernorm), compiled once per ISA. The
// driver (csrc/cpu/layer_norm.cpp) splits rows (forward) or chunks of kLayerNormChunkRows rows
// (backward) over the threads.
//
//   forward   per row of N: t = (x + x_bias) + residual (either optional); mean = Σt / N;
//             var = Σ(t - mean)² / N (two passes over the row, in L1: no cancellation as in
//             E[t²] - mean²); rstd = 1 / sqrt(var + eps);
//             out = (t - mean) rstd w + b. t - mean is formed as (t - k) - shift, with the row's
//             first element k as pivot and shift = mean - k, so that a row far from zero
//             (|mean| >> its spread) keeps its precision; shift is what is saved for the backward
//             (the mean rounded to fp32 would lose half an ulp of it against the spread).
//             Four rows at a time (fwd_four_rows): a row's sum is a chain of dependent adds whose
//             latency, not the adds, bounds a one-row loop; four rows run four chains.
//   backward  per row: t̂ = (t - mean) rstd, g = dout w; dt = rstd (g - mean(g) - t̂ mean(g t̂))
//             + dtotal; per chunk: dw += dout t̂, db += dout, dxb += dt (x_bias's gradient: the
//             bias of the linear layer that made x, folded in here, which saves that layer the
//             broadcast of its bias into its output and a separate pass for its gradient). Two
//             rows at a time (bwd_two_rows) when dw and db are wanted.
//
// Memory traffic (fp32, E = rows N): forward reads 2E (x, residual) and writes 2E (total, out) +
// 2 rows; backward reads 3E (dout, dtotal, total) and writes E (dx). torch's add then layer_norm
// (and, backward, layer_norm_backward then the add of the residual stream's gradient) make two
// more passes each way.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cpu/isa.h"

namespace pyneuro::cpu::PYNEURO_CPU_ISA {

namespace {

// out = ((t - k) - shift) rstd w + b over one row, for whichever of w and b are present.
inline void normalise_row(const float* t, float k, float shift, float rstd, const float* w, const float* b,
                          float* out, int64_t N) {
  if (w && b) {
#pragma omp simd
    for (int64_t j = 0; j < N; ++j) out[j] = ((t[j] - k) - shift) * rstd * w[j] + b[j];
  } else if (w) {
#pragma omp simd
    for (int64_t j = 0; j < N; ++j) out[j] = ((t[j] - k) - shift) * rstd * w[j];
  } else if (b) {
#pragma omp simd
    for (int64_t j = 0; j < N; ++j) out[j] = ((t[j] - k) - shift) * rstd + b[j];
  } else {
#pragma omp simd
    for (int64_t j = 0; j < N; ++j) out[j] = ((t[j] - k) - shift) * rstd;
  }
}

// Element i of x's rows plus whichever of x_bias (at feature j) and residual are present: the
// residual stream's total, formed as the layer's (x + x_bias) + residual.
template <bool kXBias, bool kResidual>
[[gnu::always_inline]] inline float total_at(const float* x, const float* x_bias, const float* res, int64_t i, int64_t j) {
  float t = x[i];
  if constexpr (kXBias) t += x_bias[j];
  if constexpr (kResidual) t += res[i];
  return t;
}

// Rows r .. r + 3 (all of them in [0, rows)). A row's sum is a chain of dependent vector adds (12 at
// N = 96, ~40 cycles with the final horizontal add), and so is its sum of squares: one row at a
// time, those latencies and not the adds bound the loop. Four rows interleaved run four chains at
// once. Each row's sums are formed in the same order as by the one-row loop (lanes j mod the
// vector width, then across lanes), so a row's result does not depend on which path took it.
template <bool kXBias, bool kResidual>
void fwd_four_rows(const LayerNormParams& p, int64_t r) {
  const int64_t N = p.N;
  const float inv_n = 1.f / static_cast<float>(N);
  const float* x = p.x + r * N;
  const float* t = x;  // the four rows to normalise, N apart
  float k0, k1, k2, k3, s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
  if constexpr (kXBias || kResidual) {
    const float* res = kResidual ? p.residual + r * N : nullptr;
    const float* xb = p.x_bias;
    float* total = p.total + r * N;
    const auto at = [&](int64_t i, int64_t j) { return total_at<kXBias, kResidual>(x, xb, res, i, j); };
    k0 = at(0, 0), k1 = at(N, 0), k2 = at(2 * N, 0), k3 = at(3 * N, 0);
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int64_t j = 0; j < N; ++j) {
      total[j] = at(j, j), total[N + j] = at(N + j, j), total[2 * N + j] = at(2 * N + j, j);
      total[3 * N + j] = at(3 * N + j, j);
      s0 += total[j] - k0, s1 += total[N + j] - k1, s2 += total[2 * N + j] - k2, s3 += total[3 * N + j] - k3;
    }
    t = total;
  } else {
    k0 = x[0], k1 = x[N], k2 = x[2 * N], k3 = x[3 * N];
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int64_t j = 0; j < N; ++j) {
      s0 += t[j] - k0, s1 += t[N + j] - k1, s2 += t[2 * N + j] - k2, s3 += t[3 * N + j] - k3;
    }
  }
  const float m0 = s0 * inv_n, m1 = s1 * inv_n, m2 = s2 * inv_n, m3 = s3 * inv_n;  // shifts: mean - k
  float q0 = 0.f, q1 = 0.f, q2 = 0.f, q3 = 0.f;
#pragma omp simd reduction(+ : q0, q1, q2, q3)
  for (int64_t j = 0; j < N; ++j) {
    const float d0 = (t[j] - k0) - m0, d1 = (t[N + j] - k1) - m1;
    const float d2 = (t[2 * N + j] - k2) - m2, d3 = (t[3 * N + j] - k3) - m3;
    q0 += d0 * d0, q1 += d1 * d1, q2 += d2 * d2, q3 += d3 * d3;
  }
  const float k[4] = {k0, k1, k2, k3}, shift[4] = {m0, m1, m2, m3}, sq[4] = {q0, q1, q2, q3};
  for (int i = 0; i < 4; ++i) {
    const float rstd = 1.f / std::sqrt(sq[i] * inv_n + p.eps);
    p.shift[r + i] = shift[i], p.rstd[r + i] = rstd;
    normalise_row(t + i * N, k[i], shift[i], rstd, p.weight, p.bias, p.out + (r + i) * N, N);
  }
}

template <bool kXBias, bool kResidual>
void fwd_row(const LayerNormParams& p, int64_t r) {
  const int64_t N = p.N;
  const float inv_n = 1.f / static_cast<float>(N);
  const float* x = p.x + r * N;
  const float* t = x;
  float sum = 0.f, k;  // k: the row's pivot
  if constexpr (kXBias || kResidual) {  // the add and the sum in one pass
    const float* res = kResidual ? p.residual + r * N : nullptr;
    const float* xb = p.x_bias;
    float* total = p.total + r * N;
    k = total_at<kXBias, kResidual>(x, xb, res, 0, 0);
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < N; ++j) {
      total[j] = total_at<kXBias, kResidual>(x, xb, res, j, j);
      sum += total[j] - k;
    }
    t = total;
  } else {
    k = x[0];
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < N; ++j) sum += t[j] - k;
  }
  const float shift = sum * inv_n;  // mean - k
  float sq = 0.f;
#pragma omp simd reduction(+ : sq)
  for (int64_t j = 0; j < N; ++j) sq += ((t[j] - k) - shift) * ((t[j] - k) - shift);
  const float rstd = 1.f / std::sqrt(sq * inv_n + p.eps);
  p.shift[r] = shift, p.rstd[r] = rstd;
  normalise_row(t, k, shift, rstd, p.weight, p.bias, p.out + r * N, N);
}

template <bool kXBias, bool kResidual>
void fwd_rows(const LayerNormParams& p, int64_t r0, int64_t r1) {
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) fwd_four_rows<kXBias, kResidual>(p, r);
  for (; r < r1; ++r) fwd_row<kXBias, kResidual>(p, r);
}

// acc += row over N features (a chunk's partial column sums).
inline void add_row(float* __restrict acc, const float* __restrict row, int64_t N) {
#pragma omp simd
  for (int64_t j = 0; j < N; ++j) acc[j] += row[j];
}

// Rows r and r + 1 of a chunk, when weight, dweight and dbias are all wanted (the transformer's case;
// dtotal with HasTotal; dx_bias's partial dxb with HasXBias): the two rows' two sums run as four
// independent chains (see fwd_four_rows), then one pass writes both rows' dx and adds their dw, db
// (and dxb) terms, loading and storing those once per two rows. Two rows, not four: each row keeps five constants in
// registers through the loops, and four rows' twenty would spill AVX2's sixteen. Every sum is
// formed in the one-row loop's order.
template <bool HasTotal, bool HasXBias>
void bwd_two_rows(const LayerNormParams& p, int64_t r, float* dw, float* db, float* dxb) {
  const int64_t N = p.N;
  const float inv_n = 1.f / static_cast<float>(N);
  const float* t = p.input + r * N;
  const float* dout = p.dout + r * N;
  const float* w = p.weight;
  const float k0 = t[0], k1 = t[N], m0 = p.shift[r], m1 = p.shift[r + 1], v0 = p.rstd[r], v1 = p.rstd[r + 1];
  float g0 = 0.f, g1 = 0.f, h0 = 0.f, h1 = 0.f;
#pragma omp simd reduction(+ : g0, g1, h0, h1)
  for (int64_t j = 0; j < N; ++j) {
    const float a0 = dout[j] * w[j], a1 = dout[N + j] * w[j];
    g0 += a0, g1 += a1;
    h0 += a0 * (((t[j] - k0) - m0) * v0), h1 += a1 * (((t[N + j] - k1) - m1) * v1);
  }
  const float mg0 = g0 * inv_n, mg1 = g1 * inv_n, mh0 = h0 * inv_n, mh1 = h1 * inv_n;
  float* dx = p.dx + r * N;
  const float* dtotal = p.dtotal + r * N;  // read only with HasTotal
#pragma omp simd
  for (int64_t j = 0; j < N; ++j) {
    const float th0 = ((t[j] - k0) - m0) * v0, th1 = ((t[N + j] - k1) - m1) * v1;
    const float d0 = v0 * (dout[j] * w[j] - mg0 - th0 * mh0), d1 = v1 * (dout[N + j] * w[j] - mg1 - th1 * mh1);
    const float dx0 = HasTotal ? d0 + dtotal[j] : d0, dx1 = HasTotal ? d1 + dtotal[N + j] : d1;
    dx[j] = dx0, dx[N + j] = dx1;
    dw[j] = (dw[j] + dout[j] * th0) + dout[N + j] * th1;
    db[j] = (db[j] + dout[j]) + dout[N + j];
    if constexpr (HasXBias) dxb[j] = (dxb[j] + dx0) + dx1;
  }
}

}  // namespace

void layer_norm_fwd(const LayerNormParams& p, int64_t r0, int64_t r1) {
  if (p.x_bias) {
    p.residual ? fwd_rows<true, true>(p, r0, r1) : fwd_rows<true, false>(p, r0, r1);
  } else {
    p.residual ? fwd_rows<false, true>(p, r0, r1) : fwd_rows<false, false>(p, r0, r1);
  }
}

void layer_norm_bwd(const LayerNormParams& p, int64_t c0, int64_t c1) {
  const int64_t N = p.N;
  const float inv_n = 1.f / static_cast<float>(N);
  for (int64_t c = c0; c < c1; ++c) {
    float* dw = p.dweight_part ? p.dweight_part + c * N : nullptr;
    float* db = p.dbias_part ? p.dbias_part + c * N : nullptr;
    float* dxb = p.dx_bias_part ? p.dx_bias_part + c * N : nullptr;
    if (dw) std::fill(dw, dw + N, 0.f);
    if (db) std::fill(db, db + N, 0.f);
    if (dxb) std::fill(dxb, dxb + N, 0.f);
    const int64_t end = std::min(p.rows, (c + 1) * kLayerNormChunkRows);
    int64_t r = c * kLayerNormChunkRows;
    if (p.weight && dw && db) {
      for (; r + 2 <= end; r += 2) {
        if (dxb) {
          p.dtotal ? bwd_two_rows<true, true>(p, r, dw, db, dxb) : bwd_two_rows<false, true>(p, r, dw, db, dxb);
        } else {
          p.dtotal ? bwd_two_rows<true, false>(p, r, dw, db, dxb) : bwd_two_rows<false, false>(p, r, dw, db, dxb);
        }
      }
    }
    for (; r < end; ++r) {
      const float* t = p.input + r * N;
      const float* dout = p.dout + r * N;
      const float k = t[0], shift = p.shift[r], rstd = p.rstd[r];  // t - mean as the forward formed it
      const float* w = p.weight;
      float sum_g = 0.f, sum_gt = 0.f;
      if (w) {
#pragma omp simd reduction(+ : sum_g, sum_gt)
        for (int64_t j = 0; j < N; ++j) {
          const float g = dout[j] * w[j];
          sum_g += g, sum_gt += g * (((t[j] - k) - shift) * rstd);
        }
      } else {
#pragma omp simd reduction(+ : sum_g, sum_gt)
        for (int64_t j = 0; j < N; ++j) sum_g += dout[j], sum_gt += dout[j] * (((t[j] - k) - shift) * rstd);
      }
      const float mg = sum_g * inv_n, mgt = sum_gt * inv_n;
      float* dx = p.dx + r * N;
      const float* dtotal = p.dtotal ? p.dtotal + r * N : nullptr;
      if (w && dw && db && dtotal) {  // the transformer's case: dx, dw and db in one pass
#pragma omp simd
        for (int64_t j = 0; j < N; ++j) {
          const float th = ((t[j] - k) - shift) * rstd;
          dx[j] = rstd * (dout[j] * w[j] - mg - th * mgt) + dtotal[j];
          dw[j] += dout[j] * th;
          db[j] += dout[j];
        }
        if (dxb) add_row(dxb, dx, N);
        continue;
      }
      // One loop per combination of weight and dtotal, each tested outside it: a load under a
      // condition inside keeps GCC from vectorising the loop on AVX2 and SSE (no masked loads).
      const auto dx_pass = [&](auto has_weight, auto has_total) {
#pragma omp simd
        for (int64_t j = 0; j < N; ++j) {
          const float th = ((t[j] - k) - shift) * rstd;
          float g = dout[j];
          if constexpr (has_weight) g *= w[j];
          const float d = rstd * (g - mg - th * mgt);
          if constexpr (has_total) {
            dx[j] = d + dtotal[j];
          } else {
            dx[j] = d;
          }
        }
      };
      using yes = std::true_type;
      using no = std::false_type;
      if (w) {
        dtotal ? dx_pass(yes{}, yes{}) : dx_pass(yes{}, no{});
      } else {
        dtotal ? dx_pass(no{}, yes{}) : dx_pass(no{}, no{});
      }
      if (dw) {
#pragma omp simd
        for (int64_t j = 0; j < N; ++j) dw[j] += dout[j] * (((t[j] - k) - shift) * rstd);
      }
      if (db) add_row(db, dout, N);
      if (dxb) add_row(dxb, dx, N);
    }
  }
}

}  // namespace pyneuro::cpu::PYNEURO_CPU_ISA
