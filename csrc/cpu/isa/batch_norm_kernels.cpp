// Batch norm + ReLU (+ 2x2 max-pool) for a conv block's epilogue, compiled once per ISA
// (docs/batch_norm_contract.md). The driver (csrc/cpu/batch_norm.cpp) splits "units" over the
// threads and combines the per-thread channel sums; these loops do one range of units.
//
//   x (N, C, H, W) fp32, NCHW or NHWC (channels_last), z = x * scale[c] + shift[c],
//   out = maxpool_P(relu(z)), (N, C, H/P, W/P) in x's layout, P = 1 or 2 (floor: a last odd
//   row/column is in the statistics but in no window). P = 2 comes in NHWC only: the driver runs
//   NCHW x through a channels_last copy (its windows, neighbours in short rows, vectorise poorly).
//   unit: NCHW one (n, c) plane; NHWC one output row (n, i): input rows P i .. P i + P - 1, plus the
//   rows below the last window when H is odd, so that the backward's dx covers every row.
//
// Memory traffic (fp32, E = N C H W elements): forward 4E (statistics) + 4E + 4E/P^2 bytes (apply);
// backward 4E + 4E/P^2 (sums) + 8E + 4E/P^2 (dx). torch's separate batch_norm, relu and max_pool2d
// read and write the full-size tensor between each, forward and backward, and keep the pool's
// indices; at the MNIST CNN's shapes those passes cost far more than the convolutions.
//
// Sums: per unit in fp32 over at most kRowBlock positions of a channel (NHWC; NCHW: 16 x kRowBlock
// of a plane, 16 vector lanes of kRowBlock each), shifted by a pivot per channel
// (the channel's first element, so that var = E[(x-K)^2] - E[x-K]^2 does not cancel), then added
// into the caller's fp64 per-channel accumulators.
#include <algorithm>
#include <cstdint>

#include "cpu/isa.h"
#include "cpu/vec_math.h"

namespace pyneuro::cpu::PYNEURO_CPU_ISA {
namespace {

constexpr int64_t kChannelBlock = 64;  // channels whose fp32 partial sums live in registers/L1
constexpr int64_t kRowBlock = 256;     // positions summed in fp32 before the fp64 flush

// ReLU and max that carry NaN through, as torch.relu and max_pool2d do.
inline float relu_nan(float z) { return (z > 0.f || z != z) ? z : 0.f; }
// dx's terms through the batch statistics, k x + c, which only training has: in eval the value is
// masked to 0 by its bits, so a non-finite x (0 * inf) cannot turn dx into NaN there. Selects here
// and in the pool's routing act on bits: a float select (or a conditional multiply, which may trap)
// keeps GCC from vectorising the pooled dx loop for AVX2 and SSE, which have no masked stores.
inline float lin(bool training, float k, float x, float c) {
  return vec::select_bits(vec::mask_if(training), k * x + c, 0.f);
}
// v where cond, else +0.
inline float keep_if(bool cond, float v) { return vec::select_bits(vec::mask_if(cond), v, 0.f); }
inline float max_nan(float m, float v) { return (v > m || v != v) ? v : m; }
inline float max4_nan(float a, float b, float c, float d) { return max_nan(max_nan(max_nan(a, b), c), d); }

// One window's routing: which of its 4 elements took the max (first of equals, NaN wins as in
// max_pool2d) and the gradient g that reaches it through the pool and the ReLU (0 unless z > 0).
// Outputs by reference, not a struct: GCC vectorizes the callers' loops only then.
inline void route2(float z00, float z01, float z10, float z11, float dout, int& which, float& g) {
  // Selects, not branches: which element wins is data-dependent and unpredictable.
  float m = z00;
  which = 0;
  const bool t1 = (z01 > m) | (z01 != z01);
  m = t1 ? z01 : m, which = t1 ? 1 : which;
  const bool t2 = (z10 > m) | (z10 != z10);
  m = t2 ? z10 : m, which = t2 ? 2 : which;
  const bool t3 = (z11 > m) | (z11 != z11);
  m = t3 ? z11 : m, which = t3 ? 3 : which;
  g = m > 0.f ? dout : 0.f;
}

// The input rows [r0, r1) a unit covers (NHWC) and the output row it writes.
inline void nhwc_unit_rows(const BatchNormReluParams& p, int64_t unit, int64_t* n, int64_t* i, int64_t* r0,
                           int64_t* r1) {
  const int64_t Ho = p.H / p.pool;
  *n = unit / Ho, *i = unit % Ho;
  *r0 = *i * p.pool;
  *r1 = (*i == Ho - 1) ? p.H : *r0 + p.pool;
}

}  // namespace

// Shifted sums sum(x - K[c]) and sum((x - K[c])^2) over units [u0, u1) into s1, s2 (fp64, C each).
void batch_norm_stats(const BatchNormReluParams& p, int64_t u0, int64_t u1, double* s1, double* s2) {
  const int64_t C = p.C, HW = p.H * p.W;
  const float* K = p.pivot;
  if (!p.channels_last) {
    for (int64_t u = u0; u < u1; ++u) {  // plane (n, c)
      const int64_t c = u % C;
      const float* x = p.x + u * HW;
      const float k = K[c];
      for (int64_t h0 = 0; h0 < HW; h0 += kRowBlock * 16) {
        const int64_t h1 = std::min(HW, h0 + kRowBlock * 16);
        float a1 = 0.f, a2 = 0.f;
#pragma omp simd reduction(+ : a1, a2)
        for (int64_t e = h0; e < h1; ++e) {
          const float d = x[e] - k;
          a1 += d, a2 += d * d;
        }
        s1[c] += a1, s2[c] += a2;
      }
    }
    return;
  }
  // NHWC: units are output rows; the rows they cover tile [0, H) exactly once.
  for (int64_t u = u0; u < u1; ++u) {
    int64_t n, i, r0, r1;
    nhwc_unit_rows(p, u, &n, &i, &r0, &r1);
    const float* x = p.x + (n * p.H + r0) * p.W * C;
    const int64_t positions = (r1 - r0) * p.W;
    for (int64_t c0 = 0; c0 < C; c0 += kChannelBlock) {
      const int64_t cn = std::min(kChannelBlock, C - c0);
      for (int64_t q0 = 0; q0 < positions; q0 += kRowBlock) {
        const int64_t q1 = std::min(positions, q0 + kRowBlock);
        float a1[kChannelBlock] = {}, a2[kChannelBlock] = {};
        for (int64_t q = q0; q < q1; ++q) {
          const float* xq = x + q * C + c0;
#pragma omp simd
          for (int64_t c = 0; c < cn; ++c) {
            const float d = xq[c] - K[c0 + c];
            a1[c] += d, a2[c] += d * d;
          }
        }
        for (int64_t c = 0; c < cn; ++c) s1[c0 + c] += a1[c], s2[c0 + c] += a2[c];
      }
    }
  }
}

// out = maxpool_P(relu(x * scale + shift)) over units [u0, u1).
void batch_norm_relu_fwd(const BatchNormReluParams& p, int64_t u0, int64_t u1) {
  const int64_t C = p.C, H = p.H, W = p.W, P = p.pool, Ho = H / P, Wo = W / P;
  const float *sc = p.scale, *sh = p.shift;
  if (!p.channels_last) {  // pool 1 only (see the top)
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t c = u % C;
      const float a = sc[c], b = sh[c];
      const float* x = p.x + u * H * W;
      float* out = p.out + u * H * W;
#pragma omp simd
      for (int64_t e = 0; e < H * W; ++e) out[e] = relu_nan(x[e] * a + b);
    }
    return;
  }
  for (int64_t u = u0; u < u1; ++u) {
    int64_t n, i, r0, r1;
    nhwc_unit_rows(p, u, &n, &i, &r0, &r1);
    const float* x = p.x + (n * H + r0) * W * C;
    float* o = p.out + (n * Ho + i) * Wo * C;
    if (P == 1) {
      for (int64_t q = 0; q < W; ++q) {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) o[q * C + c] = relu_nan(x[q * C + c] * sc[c] + sh[c]);
      }
      continue;
    }
    for (int64_t j = 0; j < Wo; ++j) {
      const float* x00 = x + 2 * j * C;
      const float* x01 = x00 + C;
      const float* x10 = x00 + W * C;
      const float* x11 = x10 + C;
      float* oj = o + j * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const float a = sc[c], b = sh[c];
        oj[c] = relu_nan(max4_nan(x00[c] * a + b, x01[c] * a + b, x10[c] * a + b, x11[c] * a + b));
      }
    }
  }
}


// Backward sums over units [u0, u1): sg[c] += sum of dz, sgx[c] += sum of dz * (x - K[c]), where dz
// is the gradient reaching z (fp64 accumulators, C each).
void batch_norm_relu_bwd_sums(const BatchNormReluParams& p, int64_t u0, int64_t u1, double* sg, double* sgx) {
  const int64_t C = p.C, H = p.H, W = p.W, P = p.pool, Ho = H / P, Wo = W / P;
  const float *sc = p.scale, *sh = p.shift, *K = p.pivot;
  if (!p.channels_last) {  // pool 1 only (see the top)
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t c = u % C;
      const float a = sc[c], b = sh[c], k = K[c];
      const float* x = p.x + u * H * W;
      const float* d = p.dout + u * H * W;
      float a1 = 0.f, a2 = 0.f;
#pragma omp simd reduction(+ : a1, a2)
      for (int64_t e = 0; e < H * W; ++e) {
        const float g = keep_if(x[e] * a + b > 0.f, d[e]);
        a1 += g, a2 += g * (x[e] - k);
      }
      sg[c] += a1, sgx[c] += a2;
    }
    return;
  }
  for (int64_t u = u0; u < u1; ++u) {
    int64_t n, i, r0, r1;
    nhwc_unit_rows(p, u, &n, &i, &r0, &r1);
    const float* x = p.x + (n * H + r0) * W * C;
    const float* d = p.dout + (n * Ho + i) * Wo * C;
    for (int64_t c0 = 0; c0 < C; c0 += kChannelBlock) {
      const int64_t cn = std::min(kChannelBlock, C - c0);
      float a1[kChannelBlock] = {}, a2[kChannelBlock] = {};
      if (P == 1) {
        for (int64_t q = 0; q < W; ++q) {
          const float* xq = x + q * C + c0;
          const float* dq = d + q * C + c0;
#pragma omp simd
          for (int64_t c = 0; c < cn; ++c) {
            const float g = keep_if(xq[c] * sc[c0 + c] + sh[c0 + c] > 0.f, dq[c]);
            a1[c] += g, a2[c] += g * (xq[c] - K[c0 + c]);
          }
        }
      } else {
        for (int64_t j = 0; j < Wo; ++j) {
          const float* x00 = x + 2 * j * C + c0;
          const float* x01 = x00 + C;
          const float* x10 = x00 + W * C;
          const float* x11 = x10 + C;
          const float* dj = d + j * C + c0;
#pragma omp simd
          for (int64_t c = 0; c < cn; ++c) {
            const float a = sc[c0 + c], b = sh[c0 + c];
            int which;
            float g;
            route2(x00[c] * a + b, x01[c] * a + b, x10[c] * a + b, x11[c] * a + b, dj[c], which, g);
            const float xs = which == 0 ? x00[c] : which == 1 ? x01[c] : which == 2 ? x10[c] : x11[c];
            a1[c] += g, a2[c] += g * (xs - K[c0 + c]);
          }
        }
      }
      for (int64_t c = 0; c < cn; ++c) sg[c0 + c] += a1[c], sgx[c0 + c] += a2[c];
    }
  }
}

// dx = k[c] dz + bx[c] x + cx[c] over units [u0, u1) (every element: those in no window, or not
// the max of theirs, have dz = 0).
void batch_norm_relu_bwd_dx(const BatchNormReluParams& p, int64_t u0, int64_t u1) {
  const int64_t C = p.C, H = p.H, W = p.W, P = p.pool, Ho = H / P, Wo = W / P;
  const float *sc = p.scale, *sh = p.shift, *kg = p.dx_k, *kx = p.dx_bx, *k1 = p.dx_cx;
  const bool t = p.training;  // the statistics' terms exist in training only
  if (!p.channels_last) {  // pool 1 only (see the top)
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t c = u % C;
      const float a = sc[c], b = sh[c], gk = kg[c], bx = kx[c], cx = k1[c];
      const float* x = p.x + u * H * W;
      const float* d = p.dout + u * H * W;
      float* dx = p.dx + u * H * W;
#pragma omp simd
      for (int64_t e = 0; e < H * W; ++e) {
        const float g = keep_if(x[e] * a + b > 0.f, d[e]);
        dx[e] = gk * g + lin(t, bx, x[e], cx);
      }
    }
    return;
  }
  for (int64_t u = u0; u < u1; ++u) {
    int64_t n, i, r0, r1;
    nhwc_unit_rows(p, u, &n, &i, &r0, &r1);
    const float* x = p.x + (n * H + r0) * W * C;
    const float* d = p.dout + (n * Ho + i) * Wo * C;
    float* dx = p.dx + (n * H + r0) * W * C;
    if (P == 1) {
      for (int64_t q = 0; q < W; ++q) {
        const float* xq = x + q * C;
        const float* dq = d + q * C;
        float* o = dx + q * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const float g = keep_if(xq[c] * sc[c] + sh[c] > 0.f, dq[c]);
          o[c] = kg[c] * g + lin(t, kx[c], xq[c], k1[c]);
        }
      }
      continue;
    }
    for (int64_t j = 0; j < Wo; ++j) {
      const int64_t e00 = 2 * j * C, e01 = e00 + C, e10 = e00 + W * C, e11 = e10 + C;
      const float* dj = d + j * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const float a = sc[c], b = sh[c];
        const float v00 = x[e00 + c], v01 = x[e01 + c], v10 = x[e10 + c], v11 = x[e11 + c];
        int which;
        float g;
        route2(v00 * a + b, v01 * a + b, v10 * a + b, v11 * a + b, dj[c], which, g);
        g *= kg[c];
        dx[e00 + c] = lin(t, kx[c], v00, k1[c]) + keep_if(which == 0, g);
        dx[e01 + c] = lin(t, kx[c], v01, k1[c]) + keep_if(which == 1, g);
        dx[e10 + c] = lin(t, kx[c], v10, k1[c]) + keep_if(which == 2, g);
        dx[e11 + c] = lin(t, kx[c], v11, k1[c]) + keep_if(which == 3, g);
      }
    }
    // Elements in no window: the odd last column of the window rows, and the odd last row (the
    // last unit's r1 = H covers it).
    const int64_t tail_col = (W % 2) ? W - 1 : -1;
    for (int64_t r = r0; r < r1; ++r) {
      const bool whole_row = r >= r0 + 2;
      for (int64_t q = whole_row ? 0 : tail_col; q >= 0 && q < W; q = whole_row ? q + 1 : W) {
        const int64_t e = ((r - r0) * W + q) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) dx[e + c] = lin(t, kx[c], x[e + c], k1[c]);
      }
    }
  }
}

}  // namespace pyneuro::cpu::PYNEURO_CPU_ISA
