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


// The backward of one unit (b, j) at step t, shared by the per-step kernel (rnn.cu) and the
// persistent backward (rnn_persistent.cu). `dh`: the gradient reaching h_t (dy_t + the recurrent
// part + dh_n at the last step; LSTM with projection: dm_t). res/prev: reserve rows of (t, b) and
// (t-1, b), prev null at t = 0 (then state0/c0, X, are the previous state). `last_in`: the LSTM's
// dc_n or the leaky cell's du_n (X or null), read at the last step instead of the carry. `carry`
// (B, H) fp32 at (b, j), read (not at the last step) and rewritten: LSTM dc_{t-1} = dc_t f_t;
// GRU dh_t z_t (the direct part of dh_{t-1}); leaky (1 - α) g_t. dA/dS: rows (t, b) of the input-
// and recurrent-side pre-activation gradients (dS: GRU only); m: LSTM projection's m_t row or null;
// dtau_acc (leaky, (B, H)) += g_t (u_{t-1} - u_t) / τ.
template <RnnCellKind kCell, typename X>
__device__ __forceinline__ void cell_backward_unit(bool last, int H, int64_t b, int j, const float* res,
                                                   const float* prev, float dh, const void* last_in,
                                                   const void* state0, const void* c0, const void* tau,
                                                   float* carry, float* dA, float* dS, float* m, float* dtau_acc) {
  const int64_t bj = b * H + j;
  const int64_t H1 = H, H2 = 2 * int64_t(H), H3 = 3 * int64_t(H), H4 = 4 * int64_t(H);
  if constexpr (kCell == RnnCellKind::kLstm) {
    const float i = res[j], f = res[H1 + j], g = res[H2 + j], o = res[H3 + j];
    const float c = res[H4 + j];
    const float c_prev = prev ? prev[H4 + j] : ldx<X>(c0, bj);
    const float tc = tanh_f(c);
    const float dc = (last ? ldx_or0<X>(last_in, bj) : carry[bj]) + dh * o * (1.f - tc * tc);
    dA[j] = dc * g * i * (1.f - i);
    dA[H1 + j] = dc * c_prev * f * (1.f - f);
    dA[H2 + j] = dc * i * (1.f - g * g);
    dA[H3 + j] = dh * tc * o * (1.f - o);
    carry[bj] = dc * f;
    if (m) m[bj] = o * tc;
  } else if constexpr (kCell == RnnCellKind::kGru) {
    const float r = res[j], z = res[H1 + j], nn = res[H2 + j], sn = res[H3 + j];
    const float h_prev = prev ? prev[H4 + j] : ldx<X>(state0, bj);
    if (!last) dh += carry[bj];
    const float dan = dh * (1.f - z) * (1.f - nn * nn);
    const float dar = dan * sn * r * (1.f - r);
    const float daz = dh * (h_prev - nn) * z * (1.f - z);
    dA[j] = dar; dA[H1 + j] = daz; dA[H2 + j] = dan;
    dS[j] = dar; dS[H1 + j] = daz; dS[H2 + j] = dan * r;
    carry[bj] = dh * z;
  } else if constexpr (kCell == RnnCellKind::kLeaky) {
    const float u = res[j];
    const float h = tanh_f(u);
    const float t = ldx<X>(tau, j);
    const float alpha = 1.f / t;
    const float g = (last ? ldx_or0<X>(last_in, bj) : carry[bj]) + dh * (1.f - h * h);
    const float u_prev = prev ? prev[j] : ldx<X>(state0, bj);
    dA[j] = alpha * g;
    dtau_acc[bj] += g * (u_prev - u) / t;
    carry[bj] = (1.f - alpha) * g;
  } else {
    const float h = res[j];
    dA[j] = kCell == RnnCellKind::kRnnRelu ? (h > 0.f ? dh : 0.f) : dh * (1.f - h * h);
  }
}

}  // namespace rnn
}  // namespace cuda
}  // namespace pyneuro
