// Bias + exact GELU (pyneuro/ops/gelu), compiled once per ISA. The driver (csrc/cpu/gelu.cpp)
// splits rows (forward) or chunks of kGeluChunkRows rows (backward) over the threads.
//
//   u = x + bias;  out = u Φ(u),  Φ(u) = (1 + erf(u / √2)) / 2
//   dx = dout (Φ(u) + u φ(u)),  φ(u) = exp(-u² / 2) / √(2π);  dbias = Σ_rows dx
//
// erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7, the formula torch's own vectorised gelu
// uses): for a = |u| / √2, erfc(a) ≈ q(t) exp(-a²) with t = 1 / (1 + p a) and q a degree-5
// polynomial in t. Φ is taken as 1 - erfc/2 for u >= 0 and erfc/2 below, so the negative tail does
// not cancel in 1 + erf (torch's form, which keeps about one digit at u = -5): there the error is
// the approximation's own relative error of erfc (< 0.4% down to u = -6, where gelu is ~6e-9, and
// growing slowly below). exp(-a²) is exactly φ's exponential, so the backward gets φ for one multiply.
//
// Memory traffic (fp32, E = rows N): forward reads E (x) and writes E (out); backward reads 2E
// (dout, x) and writes E (dx). torch's addmm(bias, ...) + gelu makes one more write and read of E
// forward (the bias broadcast into the GEMM's output), and the linear's backward one more read of E
// (its bias gradient, a separate sum over dx).
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cpu/isa.h"
#include "cpu/vec_math.h"

namespace pyneuro::cpu::PYNEURO_CPU_ISA {
namespace {

constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;  // 1 / √(2π)
constexpr float kMinusHalfLog2e = -0.72134752044448170f;  // exp(-u²/2) = 2^(u² · this)
constexpr float kP = 0.3275911f;
constexpr float kA1 = 0.254829592f, kA2 = -0.284496736f, kA3 = 1.421413741f, kA4 = -1.453152027f,
                kA5 = 1.061405429f;

// (Φ(u), exp(-u²/2)) for one lane; branch-free so that `omp simd` vectorises the callers. The
// exponential is exp2_clamped(-u² log2(e) / 2) (its argument is <= 0; below 2^-126, where erfc is
// long below fp32's resolution of Φ's upper half, it stays 2^-126 instead of 0, which only makes the
// far negative tail's out -u·1e-38-small instead of -0); the sign test reads the sign bit (an
// integer shift, not a float compare, which GCC would not turn into a blend; -0 takes the negative
// side, where Φ(0) = erfc(0)/2 = 1/2 as well).
PYNEURO_VEC_INLINE void normal_cdf(float u, vec::Exp2Range range, float& cdf, float& gauss) {
  const float a = std::fabs(u) * kInvSqrt2;
  const float t = 1.f / (1.f + kP * a);
  const float q = t * (kA1 + t * (kA2 + t * (kA3 + t * (kA4 + t * kA5))));
  gauss = vec::exp2_clamped(u * u * kMinusHalfLog2e, range);
  const float half_erfc = 0.5f * q * gauss;
  const auto negative = static_cast<uint32_t>(static_cast<int32_t>(vec::float_bits(u)) >> 31);
  cdf = vec::select_bits(negative, half_erfc, 1.f - half_erfc);
}

template <bool kBias>
PYNEURO_VEC_INLINE void forward_row(const float* __restrict x, const float* __restrict bias, float* __restrict out,
                                    int64_t N, vec::Exp2Range range) {
#pragma omp simd
  for (int64_t j = 0; j < N; ++j) {
    const float u = kBias ? x[j] + bias[j] : x[j];
    float cdf, gauss;
    normal_cdf(u, range, cdf, gauss);
    out[j] = u * cdf;
  }
}

// dx for one row; with dbias (the chunk's partial sums), also dbias += dx.
template <bool kBias>
PYNEURO_VEC_INLINE void backward_row(const float* __restrict dout, const float* __restrict x,
                                     const float* __restrict bias, float* __restrict dx, float* __restrict dbias,
                                     int64_t N, vec::Exp2Range range) {
#pragma omp simd
  for (int64_t j = 0; j < N; ++j) {
    const float u = kBias ? x[j] + bias[j] : x[j];
    float cdf, gauss;
    normal_cdf(u, range, cdf, gauss);
    const float d = dout[j] * (cdf + u * (kInvSqrt2Pi * gauss));
    dx[j] = d;
    if (kBias) dbias[j] += d;
  }
}

}  // namespace

void gelu_fwd(const GeluParams& p, int64_t r0, int64_t r1) {
  const int64_t N = p.N;
  const vec::Exp2Range range = vec::exp2_range();
  for (int64_t r = r0; r < r1; ++r) {
    if (p.bias) {
      forward_row<true>(p.x + r * N, p.bias, p.out + r * N, N, range);
    } else {
      forward_row<false>(p.x + r * N, nullptr, p.out + r * N, N, range);
    }
  }
}

void gelu_bwd(const GeluParams& p, int64_t c0, int64_t c1) {
  const int64_t N = p.N;
  const vec::Exp2Range range = vec::exp2_range();
  for (int64_t c = c0; c < c1; ++c) {
    float* dbias = p.dbias_part ? p.dbias_part + c * N : nullptr;
    if (dbias) std::fill(dbias, dbias + N, 0.f);
    const int64_t end = std::min(p.rows, (c + 1) * kGeluChunkRows);
    for (int64_t r = c * kGeluChunkRows; r < end; ++r) {
      if (p.bias) {
        backward_row<true>(p.dout + r * N, p.x + r * N, p.bias, p.dx + r * N, dbias, N, range);
      } else {
        backward_row<false>(p.dout + r * N, p.x + r * N, nullptr, p.dx + r * N, nullptr, N, range);
      }
    }
  }
}

}  // namespace pyneuro::cpu::PYNEURO_CPU_ISA
