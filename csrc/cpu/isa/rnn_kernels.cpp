// The fused pointwise step of the LSTM with a projection (docs/rnn_contract.md), compiled once per
// ISA. (The LSTM without one, the GRU, the Elman cell and the leaky integrator fuse their products
// too: fused_step_kernels.cpp.)
//
// The driver (csrc/cpu/rnn.cpp) does the GEMMs — the input projection of all steps up front, one
// recurrent GEMM per step, the weight gradients after the reverse loop — and calls one of these
// per time step on a range of batch rows [b0, b1), so that everything else a step does happens in
// one pass over its (B, 4 H) pre-activations: activations, state update, the reserve the backward
// needs, and in the backward the gradients of all gates at once. All fp32; `ld*` are row strides
// in floats (the state of step t-1 is read straight out of the reserve, whose rows are wider).
//
// Memory traffic per step and batch row (floats), forward / backward:
//   reads 4H pre + H c_prev, writes 5H + H reserve / reads 6H + H, writes 4H + H
// At H = 128 a step's working set (B = 128: ~0.5 MiB for the LSTM) stays in L2 between the GEMM
// that produced it and this pass.
#include <cstdint>
#include <type_traits>

#include "cpu/isa.h"
#include "cpu/vec_math.h"

namespace pyneuro::cpu::PYNEURO_CPU_ISA {

// The gate block of reserve_t holds x W_ihᵀ + h W_hhᵀ on entry (`bias` = b_ih + b_hh is added
// here, saving a pass) and the activated gates on exit: each element is read before it is
// overwritten, by the same iteration.
void lstm_fwd_step(const RnnRows& r, const float* bias, const float* c_prev, int64_t ld_c, float* reserve_t,
                   float* m_out) {
  const int64_t H = r.H, W = r.ld_reserve;
  for (int64_t b = r.b0; b < r.b1; ++b) {
    float* out = reserve_t + b * W;
    const float* p = out;
    const float* cp = c_prev + b * ld_c;
    // Without a projection h_t goes straight into the reserve's h block; with one, m_t goes to
    // m_out and the driver projects it (h_t = m_t W_hrᵀ).
    float* m = m_out ? m_out + b * H : out + 5 * H;
#pragma omp simd
    for (int64_t k = 0; k < H; ++k) {
      const float i = vec::sigmoid(p[k] + bias[k]), f = vec::sigmoid(p[H + k] + bias[H + k]);
      const float g = vec::tanh(p[2 * H + k] + bias[2 * H + k]), o = vec::sigmoid(p[3 * H + k] + bias[3 * H + k]);
      const float c = f * cp[k] + i * g;
      out[k] = i, out[H + k] = f, out[2 * H + k] = g, out[3 * H + k] = o, out[4 * H + k] = c;
      m[k] = o * vec::tanh(c);
    }
  }
}

void lstm_bwd_step(const RnnRows& r, const float* dm, int64_t ld_dm, const float* reserve_t, const float* c_prev,
                   int64_t ld_c, float* dc, float* dgates_t, float* m_out) {
  const int64_t H = r.H, W = r.ld_reserve;
  for (int64_t b = r.b0; b < r.b1; ++b) {
    const float* s = reserve_t + b * W;
    const float* d = dm + b * ld_dm;
    const float* cp = c_prev + b * ld_c;
    float* dcb = dc + b * H;
    float* dg = dgates_t + b * 4 * H;
    float* m = m_out ? m_out + b * H : nullptr;
    // m tested outside the loop: a store under a condition inside keeps GCC from vectorising it on
    // AVX2 and SSE (no masked stores).
    const auto pass = [&](auto with_m) {
#pragma omp simd
      for (int64_t k = 0; k < H; ++k) {
        const float i = s[k], f = s[H + k], g = s[2 * H + k], o = s[3 * H + k];
        const float tc = vec::tanh(s[4 * H + k]);
        const float dc_k = dcb[k] + d[k] * o * (1.f - tc * tc);  // gradient of c_t
        dg[k] = dc_k * g * i * (1.f - i);
        dg[H + k] = dc_k * cp[k] * f * (1.f - f);
        dg[2 * H + k] = dc_k * i * (1.f - g * g);
        dg[3 * H + k] = d[k] * tc * o * (1.f - o);
        dcb[k] = dc_k * f;  // on to c_{t-1}
        if constexpr (with_m) m[k] = o * tc;
      }
    };
    m ? pass(std::true_type{}) : pass(std::false_type{});
  }
}

}  // namespace pyneuro::cpu::PYNEURO_CPU_ISA
