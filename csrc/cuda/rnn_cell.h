// Device math of the recurrent cells, shared by the fused per-step kernels (rnn.cu) and the
// persistent forward (rnn_persistent.cu), so both compute bit-identical cells. Included by .cu
// files only (needs common.cuh). Equations: docs/rnn_contract.md; everything here is fp32.
//
// Activations: sigmoid() is ex2.approx + rcp.approx (~1e-7 relative); tanh uses tanh_accurate
// (2σ(2v) - 1, ~1e-7 absolute), not tanh.approx (2^-11 relative would show in fp32 gradients:
// the backward differentiates through the saved activations).
#pragma once

#include "common.cuh"
#include "rnn.h"

namespace pyneuro {
namespace cuda {
namespace rnn {

__device__ __forceinline__ float ld(const void* p, int64_t i, float) { return static_cast<const float*>(p)[i]; }
__device__ __forceinline__ float ld(const void* p, int64_t i, __half) { return to_f(static_cast<const __half*>(p)[i]); }
__device__ __forceinline__ float ld(const void* p, int64_t i, __nv_bfloat16) {
  return to_f(static_cast<const __nv_bfloat16*>(p)[i]);
}
template <typename T>
__device__ __forceinline__ float ldx(const void* p, int64_t i) { return ld(p, i, T()); }
template <typename T>
__device__ __forceinline__ float ldx_or0(const void* p, int64_t i) { return p ? ld(p, i, T()) : 0.f; }
template <typename T>
__device__ __forceinline__ void stx(void* p, int64_t i, float v) { static_cast<T*>(p)[i] = from_f<T>(v); }

__device__ __forceinline__ float tanh_f(float v) { return tanh_accurate(v); }

// LSTM: pre-activations of i f g o (input + recurrent + biases) and c_{t-1} -> activations, c_t, m_t.
struct LstmStep { float i, f, g, o, c, m; };
__device__ __forceinline__ LstmStep lstm_step(float pi, float pf, float pg, float po, float c_prev) {
  LstmStep s;
  s.i = sigmoid(pi); s.f = sigmoid(pf); s.g = tanh_f(pg); s.o = sigmoid(po);
  s.c = fmaf(s.f, c_prev, s.i * s.g);
  s.m = s.o * tanh_f(s.c);
  return s;
}

// GRU: a_* = x W_ihᵀ + b_ih, s_* = h W_hhᵀ + b_hh, h_{t-1} -> r z n, h_t.
struct GruStep { float r, z, n, h; };
__device__ __forceinline__ GruStep gru_step(float ar, float az, float an, float sr, float sz, float sn, float h_prev) {
  GruStep s;
  s.r = sigmoid(ar + sr); s.z = sigmoid(az + sz);
  s.n = tanh_f(fmaf(s.r, sn, an));
  s.h = fmaf(s.z, h_prev - s.n, s.n);  // (1 - z) n + z h
  return s;
}

__device__ __forceinline__ float rnn_act(float pre, bool relu) { return relu ? fmaxf(pre, 0.f) : tanh_f(pre); }

// leaky: u_t = (1 - α) u_{t-1} + α a_t  with α = 1/τ, written u_{t-1} + α (a_t - u_{t-1}).
__device__ __forceinline__ float leaky_step(float a, float u_prev, float alpha) { return fmaf(alpha, a - u_prev, u_prev); }

}  // namespace rnn
}  // namespace cuda
}  // namespace pyneuro
