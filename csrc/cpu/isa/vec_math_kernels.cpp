// The test entry of csrc/cpu/vec_math.h (pyneuro._C._vec_math): y = fn(x) in this ISA variant,
// through the same `omp simd` loops the kernels use, so what is tested is the vectorised code.
#include <cstdint>

#include "cpu/isa.h"
#include "cpu/vec_math.h"

namespace pyneuro::cpu::PYNEURO_CPU_ISA {
namespace {

template <typename Fn>
void apply(const float* __restrict__ x, float* __restrict__ y, int64_t n, Fn fn) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = fn(x[i]);
}

}  // namespace

void vec_math(VecFn fn, const float* x, float* y, int64_t n) {
  switch (fn) {
    case VecFn::kExp: apply(x, y, n, [](float v) { return vec::exp(v); }); break;
    case VecFn::kExp2: apply(x, y, n, [](float v) { return vec::exp2(v); }); break;
    case VecFn::kExp2Clamped: {
      const vec::Exp2Range range = vec::exp2_range();
      apply(x, y, n, [range](float v) { return vec::exp2_clamped(v, range); });
      break;
    }
    case VecFn::kLog1p: apply(x, y, n, [](float v) { return vec::log1p(v); }); break;
    case VecFn::kSoftplus: apply(x, y, n, [](float v) { return vec::softplus(v); }); break;
    case VecFn::kSigmoid: apply(x, y, n, [](float v) { return vec::sigmoid(v); }); break;
    case VecFn::kTanh: apply(x, y, n, [](float v) { return vec::tanh(v); }); break;
    case VecFn::kSilu: apply(x, y, n, [](float v) { return vec::silu(v); }); break;
  }
}

}  // namespace pyneuro::cpu::PYNEURO_CPU_ISA
