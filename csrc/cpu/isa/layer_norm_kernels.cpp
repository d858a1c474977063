// Residual add + layer norm over the last dim (pyneuro/ops/layernorm), compiled once per ISA. The
// driver (csrc/cpu/layer_norm.cpp) splits rows (forward) or chunks of kLayerNormChunkRows rows
// (backward) over the threads.
//
//   forward   per row of N: t = x + residual; mean = Σt / N; var = Σ(t - mean)² / N (two passes
//             over the row, in L1: no cancellation as in E[t²] - mean²); rstd = 1 / sqrt(var + eps);
//             out = (t - mean) rstd w + b. t - mean is formed as (t - k) - shift, with the row's
//             first element k as pivot and shift = mean - k, so that a row far from zero
//             (|mean| >> its spread) keeps its precision; shift is what is saved for the backward
//             (the mean rounded to fp32 would lose half an ulp of it against the spread).
//   backward  per row: t̂ = (t - mean) rstd, g = dout w; dt = rstd (g - mean(g) - t̂ mean(g t̂))
//             + dtotal; per chunk: dw += dout t̂, db += dout.
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

void layer_norm_fwd(const LayerNormParams& p, int64_t r0, int64_t r1) {
  const int64_t N = p.N;
  const float inv_n = 1.f / static_cast<float>(N);
  for (int64_t r = r0; r < r1; ++r) {
    const float* x = p.x + r * N;
    const float* t = x;
    const float* res = p.residual ? p.residual + r * N : nullptr;
    const float k = res ? x[0] + res[0] : x[0];  // the row's pivot
    float sum = 0.f;
    if (res) {  // the add and the sum in one pass
      float* total = p.total + r * N;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < N; ++j) {
        total[j] = x[j] + res[j];
        sum += total[j] - k;
      }
      t = total;
    } else {
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < N; ++j) sum += t[j] - k;
    }
    const float shift = sum * inv_n;  // mean - k
    float sq = 0.f;
#pragma omp simd reduction(+ : sq)
    for (int64_t j = 0; j < N; ++j) sq += ((t[j] - k) - shift) * ((t[j] - k) - shift);
    const float rstd = 1.f / std::sqrt(sq * inv_n + p.eps);
    p.shift[r] = shift, p.rstd[r] = rstd;
    float* out = p.out + r * N;
    const float* w = p.weight;
    const float* b = p.bias;
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
}

void layer_norm_bwd(const LayerNormParams& p, int64_t c0, int64_t c1) {
  const int64_t N = p.N;
  const float inv_n = 1.f / static_cast<float>(N);
  for (int64_t c = c0; c < c1; ++c) {
    float* dw = p.dweight_part ? p.dweight_part + c * N : nullptr;
    float* db = p.dbias_part ? p.dbias_part + c * N : nullptr;
    if (dw) std::fill(dw, dw + N, 0.f);
    if (db) std::fill(db, db + N, 0.f);
    const int64_t end = std::min(p.rows, (c + 1) * kLayerNormChunkRows);
    for (int64_t r = c * kLayerNormChunkRows; r < end; ++r) {
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
      if (db) {
#pragma omp simd
        for (int64_t j = 0; j < N; ++j) db[j] += dout[j];
      }
    }
  }
}

}  // namespace pyneuro::cpu::PYNEURO_CPU_ISA
