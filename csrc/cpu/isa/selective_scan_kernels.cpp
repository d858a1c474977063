// Selective scan (Mamba's S6 recurrence) on the CPU: the kernels behind pyneuro::selective_scan_fwd
// / _bwd (csrc/cpu/selective_scan.cpp checks the arguments and picks the ISA variant). This file
// is compiled once per CPU ISA variant (csrc/cpu/isa.h), into namespace pyneuro::cpu::<variant>.
//
// Contract (shapes, dtypes, results): docs/selective_scan_contract.md. Per channel (b, d):
//   dt_t = softplus?(delta_t + delta_bias)       a_t = exp(dt_t * A)         (A: (dim, N))
//   x_t  = a_t * x_{t-1} + dt_t * u_t * B_t      y_t = <x_t, C_t>            (x: N floats)
//   out_t = (y_t + D * u_t) * silu(z_t)
//
// Work decomposition. Tasks are (batch row b, block of channels [d0, d1)), run in parallel with
// OpenMP. A block never straddles a group of a variable B or C, so all its channels read the same
// B/C values: per chunk of T = chunk_size steps, the (N, T) slab of B and of C is loaded once per
// block, converted to fp32 and transposed to a (T, N) "tile", making each step's N values
// contiguous. For one channel, N is padded to a multiple of 16 lanes (padding lanes have
// A = B = C = 0, so they stay 0) and the sequential time loop runs inside a loop over 16-lane
// blocks, so a block's state stays in vector registers for the whole chunk (as native-width
// vector values, vec::fvec: an array would live in memory and put a store-to-load round trip on
// the recurrence); the dot products over N are stored as 16-lane partials and summed 16 steps at
// a time (add_row_sums). exp, softplus and sigmoid come from csrc/cpu/vec_math.h (branch-free,
// vectorised, 1-3 ulp); the decay uses its exp2_clamped, ~15 vector instructions.
//
// Memory traffic. Forward: reads u, delta, z once (batch*dim*L each), B and C once per block of
// 16 channels (batch*G*N*L each), writes out, last_state and the chunk_states
// (batch*dim*ceil(L/T)*N fp32). Backward: reads u, delta, z, dout, chunk_states, B and C once per
// block (a whole group unless the batch is small); writes du, ddelta, dz, dB, dC, and
// batch*dim*N-sized partials. Scratch per thread: a few (T, Np) fp32 tiles (T = 128, N <= 256:
// under 1 MiB), plus fixed-order reduction buffers of batch*dim*N floats (A, D, bias, constant
// B/C) and n_blocks*batch*N*L floats for a variable B/C (n_blocks = G unless the batch is too
// small to make 32 tasks). Nothing grows as L*N*dim; the only per-thread buffer that depends on L
// is O(chunk_size * N).
//
// Determinism: every sum is taken in an order fixed by the shapes alone (time descending inside
// a channel, channels ascending inside a block, blocks ascending, then batch ascending), never by
// the thread schedule, so results are bitwise identical from run to run and for any number of
// threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/limits.h"
#include "cpu/isa.h"
#include "cpu/vec_math.h"

// Helpers are forced inline (and have internal linkage) so each ISA variant gets its own
// vectorised copy of them.
#define PYNEURO_INLINE inline __attribute__((always_inline))

namespace pyneuro::cpu::PYNEURO_CPU_ISA {
namespace {

using vec::exp2_clamped;
using vec::kLog2e;
using vec::sigmoid;
using vec::softplus;

constexpr int64_t kForwardBlockWidth = 16;  // channels sharing one B/C tile in the forward
constexpr int64_t kMinBackwardTasks = 32;   // split a group's channels below this many tasks

// Per-step dot products over N are not summed inside the time loop (a horizontal sum per step
// costs ~10 instructions and sits in the loop's critical resources): each step stores its kLanes
// partial products, and add_row_sums reduces W = kNativeLanes steps at a time afterwards. Each
// row's kLanes partials are first added into one native vector; then a tree transposes as it
// adds: each level halves the lanes per row and doubles the rows per vector, W - 1 adds and
// 2 (W - 1) shuffles for W rows. Everything is a native-width vector (GCC spills vectors wider
// than the ISA's), so every variant gets its own lowering: W = 4, 8 or 16.
constexpr int64_t kLanes = 16;  // N is padded to a multiple of this inside the kernels
constexpr int kVecs = kLanes / vec::kNativeLanes;  // native vectors per block of kLanes
// Loops over a block's native vectors are unrolled, so their arrays become registers.
#define PYNEURO_UNROLL _Pragma("GCC unroll 16")
using vec::fvec;
using vec::ivec;
using vec::kNativeLanes;
using vec::load_vec;
using vec::store_vec;
#if defined(__clang__)
#define PYNEURO_SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else  // GCC before 12 has no __builtin_shufflevector
#define PYNEURO_SHUFFLE(a, b, ...) __builtin_shuffle(a, b, ivec{__VA_ARGS__})
#endif

// One tree level: a and b each hold rows of 2h lanes; the result holds twice the rows, of h lanes.
#if defined(__AVX512F__)  // W = 16
PYNEURO_INLINE fvec fold8(fvec a, fvec b) {
  return PYNEURO_SHUFFLE(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
         PYNEURO_SHUFFLE(a, b, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
}
PYNEURO_INLINE fvec fold4(fvec a, fvec b) {
  return PYNEURO_SHUFFLE(a, b, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
         PYNEURO_SHUFFLE(a, b, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
}
PYNEURO_INLINE fvec fold2(fvec a, fvec b) {
  return PYNEURO_SHUFFLE(a, b, 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
         PYNEURO_SHUFFLE(a, b, 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
}
PYNEURO_INLINE fvec fold1(fvec a, fvec b) {
  return PYNEURO_SHUFFLE(a, b, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
         PYNEURO_SHUFFLE(a, b, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}
#elif defined(__AVX__)  // W = 8
PYNEURO_INLINE fvec fold4(fvec a, fvec b) {
  return PYNEURO_SHUFFLE(a, b, 0, 1, 2, 3, 8, 9, 10, 11) + PYNEURO_SHUFFLE(a, b, 4, 5, 6, 7, 12, 13, 14, 15);
}
PYNEURO_INLINE fvec fold2(fvec a, fvec b) {
  return PYNEURO_SHUFFLE(a, b, 0, 1, 4, 5, 8, 9, 12, 13) + PYNEURO_SHUFFLE(a, b, 2, 3, 6, 7, 10, 11, 14, 15);
}
PYNEURO_INLINE fvec fold1(fvec a, fvec b) {
  return PYNEURO_SHUFFLE(a, b, 0, 2, 4, 6, 8, 10, 12, 14) + PYNEURO_SHUFFLE(a, b, 1, 3, 5, 7, 9, 11, 13, 15);
}
#else  // W = 4
PYNEURO_INLINE fvec fold2(fvec a, fvec b) {
  return PYNEURO_SHUFFLE(a, b, 0, 1, 4, 5) + PYNEURO_SHUFFLE(a, b, 2, 3, 6, 7);
}
PYNEURO_INLINE fvec fold1(fvec a, fvec b) {
  return PYNEURO_SHUFFLE(a, b, 0, 2, 4, 6) + PYNEURO_SHUFFLE(a, b, 1, 3, 5, 7);
}
#endif

// out[t] += sum over l of P[t, l] for t < T; P is (T, kLanes).
PYNEURO_INLINE void add_row_sums(const float* __restrict__ P, int64_t T, float* __restrict__ out) {
  constexpr int W = kNativeLanes;
  int64_t t = 0;
  for (; t + W <= T; t += W) {
    fvec v[W];  // v[r]: row t + r folded to W lanes
    PYNEURO_UNROLL for (int r = 0; r < W; ++r) {
      v[r] = load_vec(P + (t + r) * kLanes);
      PYNEURO_UNROLL for (int j = 1; j < kVecs; ++j) v[r] += load_vec(P + (t + r) * kLanes + j * W);
    }
    int rows = W;  // vectors left; each level halves them
#if defined(__AVX512F__)
    PYNEURO_UNROLL for (int i = 0; i < rows / 2; ++i) v[i] = fold8(v[2 * i], v[2 * i + 1]);
    rows /= 2;
#endif
#if defined(__AVX__)
    PYNEURO_UNROLL for (int i = 0; i < rows / 2; ++i) v[i] = fold4(v[2 * i], v[2 * i + 1]);
    rows /= 2;
#endif
    PYNEURO_UNROLL for (int i = 0; i < rows / 2; ++i) v[i] = fold2(v[2 * i], v[2 * i + 1]);
    rows /= 2;
    store_vec(out + t, fold1(v[0], v[1]) + load_vec(out + t));  // lane i: row t + i
  }
  for (; t < T; ++t) {  // the last T % W rows
    float sum = 0.f;
    for (int64_t l = 0; l < kLanes; ++l) sum += P[t * kLanes + l];
    out[t] += sum;
  }
}

// ---------------------------------------------------------------------------------------------
// The problem as the kernels see it.

// B or C: variable (batch, G, N, L) in the input dtype, or constant (dim, N) fp32.
template <typename scalar_t>
struct Operand {
  const scalar_t* var = nullptr;
  int64_t groups = 0;
  int64_t channels_per_group = 0;  // 0 when constant
  bool variable() const { return var != nullptr; }
};

template <typename scalar_t>
struct Problem {
  int64_t batch = 0, dim = 0, L = 0, N = 0, chunk = 0, n_chunks = 0;
  int64_t Np = 0;  // N rounded up to kLanes; padding lanes have A = B = C = 0, so their state stays 0
  const scalar_t* u = nullptr;
  const scalar_t* delta = nullptr;
  const scalar_t* z = nullptr;           // optional
  const float* D = nullptr;              // optional
  const float* delta_bias = nullptr;     // optional
  const float* initial_state = nullptr;  // optional, (batch, dim, N)
  const float* A_pad = nullptr;          // (dim, Np)
  const float* A_log2e_pad = nullptr;    // (dim, Np): A * log2(e)
  const float* B_const_pad = nullptr;    // (dim, Np) when B is constant
  const float* C_const_pad = nullptr;
  Operand<scalar_t> B, C;
  bool softplus = false;
  int64_t seq_offset(int64_t b, int64_t d) const { return (b * dim + d) * L; }
};

// One channel over one chunk of T steps, all fp32, N padded. Row t of B starts at
// B + t * B_step (B_step = N for a tile, 0 for a constant B whose single row is reused).
struct ChannelChunk {
  int64_t T = 0, N = 0;
  const float* A = nullptr;
  const float* A_log2e = nullptr;  // A * log2(e): exp(dt A) = 2^(dt A_log2e)
  const float* B = nullptr;
  int64_t B_step = 0;
  const float* C = nullptr;
  int64_t C_step = 0;
  float D = 0.f, delta_bias = 0.f;
  bool softplus = false;
  const float* u = nullptr;      // (T,)
  const float* delta = nullptr;  // (T,), raw (before bias and softplus)
  const float* z = nullptr;      // (T,) or null
};

// What the backward of one channel-chunk reads and writes besides ChannelChunk. dA, dB and dC
// accumulate; dB/dC rows use the same step convention as B/C.
struct ChannelChunkGrad {
  const float* dout = nullptr;     // (T,)
  float* g = nullptr;              // (N,): in, a_{t1} dL/dx_{t1} for the first step t1 after the
                                   // chunk (dlast_state for the last chunk); out, dL/dx before it
  float* dA = nullptr;             // (N,)
  float* dB = nullptr;
  int64_t dB_step = 0;
  float* dC = nullptr;
  int64_t dC_step = 0;
  float* du = nullptr;      // (T,) out
  float* ddelta = nullptr;  // (T,) out, w.r.t. the raw delta
  float* dz = nullptr;      // (T,) out when z is given
  float dD = 0.f, ddelta_bias = 0.f;  // accumulate
};

// Per-thread scratch, allocated once per call and thread: O(chunk * N) floats.
struct Workspace {
  std::vector<float> u, delta, z, dout, dt, dtu, dgate, y, dy, du, ddelta, dz, g_dot_B, w_dot_A;  // (T,)
  std::vector<float> B_tile, C_tile, decay, dB_tile, dC_tile;              // (T, Np)
  std::vector<float> states;                                               // (T + 1, Np)
  std::vector<float> y_parts, gB_parts, wA_parts;                          // (T, kLanes)
  std::vector<float> carry;                                                // (block width, Np)
  Workspace(int64_t chunk, int64_t Np, int64_t block_width, bool backward) {
    for (auto* v : {&u, &delta, &z, &dt, &dtu, &y}) v->resize(chunk);
    for (auto* v : {&B_tile, &C_tile}) v->resize(chunk * Np);  // zeros: padding columns stay 0
    y_parts.resize(chunk * kLanes);
    carry.resize(block_width * Np);
    if (backward) {
      for (auto* v : {&dout, &dgate, &dy, &du, &ddelta, &dz, &g_dot_B, &w_dot_A}) v->resize(chunk);
      for (auto* v : {&decay, &dB_tile, &dC_tile}) v->resize(chunk * Np);
      states.resize((chunk + 1) * Np);
      for (auto* v : {&gB_parts, &wA_parts}) v->resize(chunk * kLanes);
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Hot kernels: one channel, one chunk, fp32 only (conversions happen in the loads and stores).

// dt_t and, for the backward, d(dt_t)/d(delta_t): sigmoid(delta_t + bias) under softplus, else 1.
PYNEURO_INLINE void compute_dt(const ChannelChunk& cc, float* __restrict__ dt, float* __restrict__ ddt_ddelta) {
  const int64_t T = cc.T;
  const float* __restrict__ delta = cc.delta;
  const float bias = cc.delta_bias;
  if (cc.softplus) {
#pragma omp simd
    for (int64_t t = 0; t < T; ++t) dt[t] = softplus(delta[t] + bias);
    if (ddt_ddelta) {
#pragma omp simd
      for (int64_t t = 0; t < T; ++t) ddt_ddelta[t] = sigmoid(delta[t] + bias);
    }
  } else {
#pragma omp simd
    for (int64_t t = 0; t < T; ++t) dt[t] = delta[t] + bias;
    if (ddt_ddelta) std::fill(ddt_ddelta, ddt_ddelta + T, 1.f);
  }
}

// The kernels below run the time loop inside a loop over blocks of kLanes state elements, so a
// block's state lives in vector registers for the whole chunk; per step, a block's dot products
// over its lanes are stored as kLanes partials and summed afterwards by add_row_sums.

// Forward of one channel over one chunk. state (N): x before the chunk in, after it out.
// Writes out (T). Per step and 16 state elements: one vector 2^x, 3 multiply-adds, 4 loads/stores.
void forward_channel_chunk(const ChannelChunk& cc, Workspace& ws, float* __restrict__ state, float* __restrict__ out) {
  const int64_t T = cc.T, N = cc.N;
  const float* __restrict__ u = cc.u;
  const float* __restrict__ z = cc.z;
  float* __restrict__ dt = ws.dt.data();
  float* __restrict__ dtu = ws.dtu.data();
  float* __restrict__ y_parts = ws.y_parts.data();  // (T, kLanes): x_t * C_t of one block
  compute_dt(cc, dt, nullptr);
#pragma omp simd
  for (int64_t t = 0; t < T; ++t) {
    dtu[t] = dt[t] * u[t];
    out[t] = 0.f;
  }
  const vec::Exp2Range exp2_bounds = vec::exp2_range();
  for (int64_t n0 = 0; n0 < N; n0 += kLanes) {
    fvec A2[kVecs], x[kVecs];  // x: the block's state, in registers for the whole chunk
    PYNEURO_UNROLL for (int j = 0; j < kVecs; ++j) {
      A2[j] = load_vec(cc.A_log2e + n0 + j * kNativeLanes);
      x[j] = load_vec(state + n0 + j * kNativeLanes);
    }
    for (int64_t t = 0; t < T; ++t) {
      const float* __restrict__ Bt = cc.B + t * cc.B_step + n0;
      const float* __restrict__ Ct = cc.C + t * cc.C_step + n0;
      PYNEURO_UNROLL for (int j = 0; j < kVecs; ++j) {
        // exp is off the state's dependency chain: out-of-order execution overlaps it with the FMAs.
        x[j] = exp2_clamped(dt[t] * A2[j], exp2_bounds) * x[j] + dtu[t] * load_vec(Bt + j * kNativeLanes);
        store_vec(y_parts + t * kLanes + j * kNativeLanes, x[j] * load_vec(Ct + j * kNativeLanes));
      }
    }
    PYNEURO_UNROLL for (int j = 0; j < kVecs; ++j) store_vec(state + n0 + j * kNativeLanes, x[j]);
    add_row_sums(y_parts, T, out);
  }
  const float D = cc.D;
  if (z) {
#pragma omp simd
    for (int64_t t = 0; t < T; ++t) out[t] = (out[t] + D * u[t]) * (z[t] * sigmoid(z[t]));
  } else {
#pragma omp simd
    for (int64_t t = 0; t < T; ++t) out[t] = out[t] + D * u[t];
  }
}

// Backward of one channel over one chunk: recompute x_t from the chunk's starting state, then
// run the reverse scan. Per step and 16 state elements: one vector 2^x, ~14 multiply-adds,
// ~14 loads/stores.
void backward_channel_chunk(const ChannelChunk& cc, ChannelChunkGrad& gr, Workspace& ws) {
  const int64_t T = cc.T, N = cc.N;
  const float* __restrict__ u = cc.u;
  const float* __restrict__ z = cc.z;
  const float* __restrict__ dout = gr.dout;
  float* __restrict__ du = gr.du;
  float* __restrict__ ddelta = gr.ddelta;
  float* __restrict__ dz = gr.dz;
  float* __restrict__ dt = ws.dt.data();
  float* __restrict__ dtu = ws.dtu.data();
  float* __restrict__ ddt_ddelta = ws.dgate.data();
  float* __restrict__ decay = ws.decay.data();  // decay[t] = a_t = exp(dt_t A)
  float* __restrict__ X = ws.states.data();     // X[t] = x_{t-1}: X[0] the state before the chunk
                                                // (the caller's), X[t + 1] the state after step t
  float* __restrict__ y = ws.y.data();
  float* __restrict__ dy = ws.dy.data();
  float* __restrict__ g_dot_B = ws.g_dot_B.data();
  float* __restrict__ w_dot_A = ws.w_dot_A.data();
  float* __restrict__ y_parts = ws.y_parts.data();    // (T, kLanes) per block: x_t * C_t,
  float* __restrict__ gB_parts = ws.gB_parts.data();  //   g_t * B_t
  float* __restrict__ wA_parts = ws.wA_parts.data();  //   and (g_t a_t x_{t-1}) * A
  compute_dt(cc, dt, ddt_ddelta);
#pragma omp simd
  for (int64_t t = 0; t < T; ++t) {
    dtu[t] = dt[t] * u[t];
    y[t] = g_dot_B[t] = w_dot_A[t] = 0.f;
  }

  // dy = dL/dy through out = (y + D u) * silu(z).
  const float D = cc.D;
  float dD = 0.f;
  if (z) {
#pragma omp simd
    for (int64_t t = 0; t < T; ++t) dy[t] = dout[t] * z[t] * sigmoid(z[t]);
  } else {
    std::copy_n(dout, T, dy);
  }
#pragma omp simd reduction(+ : dD)
  for (int64_t t = 0; t < T; ++t) dD += dy[t] * u[t];
  gr.dD += dD;

  // Recompute the chunk's states and decays from its first state, with dC_t += dy_t x_t (and
  // y_t, which only dz needs).
  const vec::Exp2Range exp2_bounds = vec::exp2_range();
  for (int64_t n0 = 0; n0 < N; n0 += kLanes) {
    fvec A2[kVecs], x[kVecs];
    PYNEURO_UNROLL for (int j = 0; j < kVecs; ++j) {
      A2[j] = load_vec(cc.A_log2e + n0 + j * kNativeLanes);
      x[j] = load_vec(X + n0 + j * kNativeLanes);
    }
    for (int64_t t = 0; t < T; ++t) {
      const float* __restrict__ Bt = cc.B + t * cc.B_step + n0;
      const float* __restrict__ Ct = cc.C + t * cc.C_step + n0;
      float* __restrict__ dCt = gr.dC + t * gr.dC_step + n0;
      PYNEURO_UNROLL for (int j = 0; j < kVecs; ++j) {
        const int o = j * kNativeLanes;
        const fvec at = exp2_clamped(dt[t] * A2[j], exp2_bounds);
        x[j] = at * x[j] + dtu[t] * load_vec(Bt + o);
        store_vec(decay + t * N + n0 + o, at);
        store_vec(X + (t + 1) * N + n0 + o, x[j]);
        store_vec(y_parts + t * kLanes + o, x[j] * load_vec(Ct + o));
        store_vec(dCt + o, load_vec(dCt + o) + dy[t] * x[j]);
      }
    }
    if (z) add_row_sums(y_parts, T, y);
  }
  if (z) {
#pragma omp simd
    for (int64_t t = 0; t < T; ++t) {
      const float s = sigmoid(z[t]);
      dz[t] = dout[t] * (y[t] + D * u[t]) * s * (1.f + z[t] * (1.f - s));
    }
  }

  // Reverse scan, with g_t = dL/dx_t = a_{t+1} g_{t+1} + dy_t C_t:
  //   dB_t += g_t dt_t u_t      dA += dt_t (g_t a_t x_{t-1})
  //   du_t = dt_t <g_t, B_t> + D dy_t      d(dt_t) = <g_t a_t x_{t-1}, A> + u_t <g_t, B_t>
  for (int64_t n0 = 0; n0 < N; n0 += kLanes) {
    fvec A[kVecs], g[kVecs], dA_acc[kVecs];
    PYNEURO_UNROLL for (int j = 0; j < kVecs; ++j) {
      A[j] = load_vec(cc.A + n0 + j * kNativeLanes);
      g[j] = load_vec(gr.g + n0 + j * kNativeLanes);
      dA_acc[j] = fvec{};
    }
    for (int64_t t = T - 1; t >= 0; --t) {
      const float* __restrict__ at = decay + t * N + n0;
      const float* __restrict__ Bt = cc.B + t * cc.B_step + n0;
      const float* __restrict__ Ct = cc.C + t * cc.C_step + n0;
      const float* __restrict__ xp = X + t * N + n0;  // x_{t-1}
      float* __restrict__ dBt = gr.dB + t * gr.dB_step + n0;
      PYNEURO_UNROLL for (int j = 0; j < kVecs; ++j) {
        const int o = j * kNativeLanes;
        const fvec a = load_vec(at + o);
        const fvec gn = g[j] + dy[t] * load_vec(Ct + o);
        const fvec w = gn * a * load_vec(xp + o);  // dL/d(a_t) * a_t
        store_vec(dBt + o, load_vec(dBt + o) + gn * dtu[t]);
        dA_acc[j] += w * dt[t];
        store_vec(gB_parts + t * kLanes + o, gn * load_vec(Bt + o));
        store_vec(wA_parts + t * kLanes + o, w * A[j]);
        g[j] = gn * a;
      }
    }
    add_row_sums(gB_parts, T, g_dot_B);
    add_row_sums(wA_parts, T, w_dot_A);
    PYNEURO_UNROLL for (int j = 0; j < kVecs; ++j) {
      store_vec(gr.g + n0 + j * kNativeLanes, g[j]);
      store_vec(gr.dA + n0 + j * kNativeLanes, load_vec(gr.dA + n0 + j * kNativeLanes) + dA_acc[j]);
    }
  }

  float dbias = 0.f;
#pragma omp simd reduction(+ : dbias)
  for (int64_t t = 0; t < T; ++t) {
    du[t] = dt[t] * g_dot_B[t] + D * dy[t];
    ddelta[t] = (w_dot_A[t] + u[t] * g_dot_B[t]) * ddt_ddelta[t];
    dbias += ddelta[t];
  }
  gr.ddelta_bias += dbias;
}

// ---------------------------------------------------------------------------------------------
// Loads and stores (dtype conversion, layout, padding).

// A chunk of one channel's sequence as fp32: the input itself when it is fp32, else converted
// into buf.
template <typename scalar_t>
const float* load_seq(const scalar_t* __restrict__ src, float* __restrict__ buf, int64_t T) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return src;
  } else {
    for (int64_t t = 0; t < T; ++t) buf[t] = static_cast<float>(src[t]);
    return buf;
  }
}

// Where a kernel writes a chunk of an output sequence: the output itself when it is fp32, else
// buf, copied out by store_seq.
template <typename scalar_t>
float* seq_out(scalar_t* dst, float* buf) {
  if constexpr (std::is_same_v<scalar_t, float>) return dst;
  else return buf;
}

template <typename scalar_t>
void store_seq(scalar_t* __restrict__ dst, const float* __restrict__ src, int64_t T) {
  if constexpr (!std::is_same_v<scalar_t, float>) {
    for (int64_t t = 0; t < T; ++t) dst[t] = static_cast<scalar_t>(src[t]);
  }
}

// tile[t, n] = slab[n, t] for t < T, n < N: a variable B/C's (N, T) slab at one (b, g, t0),
// fp32, rows Np apart (padding columns are left as they are: zero).
template <typename scalar_t>
void load_tile(float* __restrict__ tile, const scalar_t* __restrict__ slab, int64_t N, int64_t Np, int64_t L,
               int64_t T) {
  for (int64_t n = 0; n < N; ++n) {
    const scalar_t* __restrict__ row = slab + n * L;
    for (int64_t t = 0; t < T; ++t) tile[t * Np + n] = static_cast<float>(row[t]);
  }
}

// slab[n, t] = tile[t, n]: the inverse of load_tile, into an fp32 (N, L) slab.
void store_tile(float* __restrict__ slab, const float* __restrict__ tile, int64_t N, int64_t Np, int64_t L,
                int64_t T) {
  for (int64_t n = 0; n < N; ++n) {
    float* __restrict__ row = slab + n * L;
    for (int64_t t = 0; t < T; ++t) row[t] = tile[t * Np + n];
  }
}

// dst (Np) = src (N) followed by zeros, or all zeros when src is null.
inline void load_padded(float* dst, const float* src, int64_t N, int64_t Np) {
  if (src) std::copy_n(src, N, dst);
  else std::fill_n(dst, N, 0.f);
  std::fill(dst + N, dst + Np, 0.f);
}

// (rows, N) fp32 -> (rows, Np) with zero padding.
at::Tensor pad_lanes(const at::Tensor& t, int64_t Np) {
  return at::constant_pad_nd(t, {0, Np - t.size(-1)}, 0).contiguous();
}

// ---------------------------------------------------------------------------------------------
// Channel blocks.

using Block = std::pair<int64_t, int64_t>;  // channels [first, second)

// The widest blocks that stay inside one group of each variable operand (cpg = channels per
// group, 0 for a constant operand), each then cut into `pieces(width)` near-equal parts.
template <typename Pieces>
std::vector<Block> channel_blocks(int64_t dim, int64_t cpg_B, int64_t cpg_C, Pieces pieces) {
  std::vector<Block> blocks;
  int64_t d0 = 0;
  while (d0 < dim) {
    int64_t d1 = dim;
    if (cpg_B) d1 = std::min(d1, (d0 / cpg_B + 1) * cpg_B);
    if (cpg_C) d1 = std::min(d1, (d0 / cpg_C + 1) * cpg_C);
    const int64_t width = d1 - d0, parts = std::clamp<int64_t>(pieces(width), 1, width);
    for (int64_t p = 0; p < parts; ++p) blocks.emplace_back(d0 + width * p / parts, d0 + width * (p + 1) / parts);
    d0 = d1;
  }
  return blocks;
}

int64_t max_width(const std::vector<Block>& blocks) {
  int64_t w = 0;
  for (const auto& blk : blocks) w = std::max(w, blk.second - blk.first);
  return w;
}

template <typename scalar_t>
ChannelChunk channel_view(const Problem<scalar_t>& p, Workspace& ws, int64_t b, int64_t d, int64_t t0,
                          int64_t T) {
  const int64_t Np = p.Np, off = p.seq_offset(b, d) + t0;
  ChannelChunk cc;
  cc.T = T;
  cc.N = Np;
  cc.A = p.A_pad + d * Np;
  cc.A_log2e = p.A_log2e_pad + d * Np;
  cc.B = p.B.variable() ? ws.B_tile.data() : p.B_const_pad + d * Np;
  cc.B_step = p.B.variable() ? Np : 0;
  cc.C = p.C.variable() ? ws.C_tile.data() : p.C_const_pad + d * Np;
  cc.C_step = p.C.variable() ? Np : 0;
  cc.D = p.D ? p.D[d] : 0.f;
  cc.delta_bias = p.delta_bias ? p.delta_bias[d] : 0.f;
  cc.softplus = p.softplus;
  cc.u = load_seq(p.u + off, ws.u.data(), T);
  cc.delta = load_seq(p.delta + off, ws.delta.data(), T);
  cc.z = p.z ? load_seq(p.z + off, ws.z.data(), T) : nullptr;
  return cc;
}

template <typename scalar_t>
void load_tiles(const Problem<scalar_t>& p, Workspace& ws, int64_t b, int64_t d, int64_t t0, int64_t T) {
  const int64_t N = p.N, Np = p.Np, L = p.L;
  if (p.B.variable()) {
    const int64_t g = d / p.B.channels_per_group;
    load_tile(ws.B_tile.data(), p.B.var + (b * p.B.groups + g) * N * L + t0, N, Np, L, T);
  }
  if (p.C.variable()) {
    const int64_t g = d / p.C.channels_per_group;
    load_tile(ws.C_tile.data(), p.C.var + (b * p.C.groups + g) * N * L + t0, N, Np, L, T);
  }
}

// ---------------------------------------------------------------------------------------------
// Drivers.

template <typename scalar_t>
void forward_impl(const Problem<scalar_t>& p, scalar_t* out, float* last_state, float* chunk_states) {
  const int64_t N = p.N, Np = p.Np;
  const auto blocks = channel_blocks(p.dim, p.B.channels_per_group, p.C.channels_per_group,
                                     [](int64_t w) { return (w + kForwardBlockWidth - 1) / kForwardBlockWidth; });
  const int64_t n_blocks = static_cast<int64_t>(blocks.size());

#pragma omp parallel num_threads(at::get_num_threads()) if (p.batch * n_blocks > 1)
  {
    Workspace ws(p.chunk, Np, max_width(blocks), /*backward=*/false);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < p.batch * n_blocks; ++task) {
      const int64_t b = task / n_blocks;
      const auto [d0, d1] = blocks[task % n_blocks];
      float* state = ws.carry.data();  // (d1 - d0, Np)
      for (int64_t d = d0; d < d1; ++d) {
        load_padded(state + (d - d0) * Np, p.initial_state ? p.initial_state + (b * p.dim + d) * N : nullptr, N, Np);
      }
      for (int64_t k = 0; k < p.n_chunks; ++k) {
        const int64_t t0 = k * p.chunk, T = std::min(p.chunk, p.L - t0);
        load_tiles(p, ws, b, d0, t0, T);
        for (int64_t d = d0; d < d1; ++d) {
          float* x = state + (d - d0) * Np;
          std::copy_n(x, N, chunk_states + ((b * p.dim + d) * p.n_chunks + k) * N);
          scalar_t* out_seq = out + p.seq_offset(b, d) + t0;
          float* out_f = seq_out(out_seq, ws.y.data());
          forward_channel_chunk(channel_view(p, ws, b, d, t0, T), ws, x, out_f);
          store_seq(out_seq, out_f, T);
        }
      }
      for (int64_t d = d0; d < d1; ++d) std::copy_n(state + (d - d0) * Np, N, last_state + (b * p.dim + d) * N);
    }
  }
}

// Backward blocks: the widest group-aligned blocks (so dB/dC of a group is summed inside one
// task, in channel order, without atomics), split further only when batch * blocks < 32. The
// split depends on the shapes alone, so the summation order (and the result) does not depend
// on the number of threads.
std::vector<Block> backward_blocks(int64_t batch, int64_t dim, int64_t cpg_B, int64_t cpg_C) {
  const int64_t base = static_cast<int64_t>(channel_blocks(dim, cpg_B, cpg_C, [](int64_t) { return 1; }).size());
  if (batch == 0 || base == 0) return {};  // no task (batch or dim is 0): nothing to split
  const int64_t split = (kMinBackwardTasks + batch * base - 1) / (batch * base);
  return channel_blocks(dim, cpg_B, cpg_C, [split](int64_t) { return split; });
}

struct BackwardOut {
  float* dA_part;     // (batch, dim, Np): per-(b, d) sums over time
  float* dB_part;     // variable: (batch, n_blocks, N, L) per-block sums over channels; constant: (batch, dim, Np)
  float* dC_part;     // same for C
  float* dD_part;     // (batch, dim)
  float* dbias_part;  // (batch, dim)
  float* dinitial;    // (batch, dim, N) or null
};

template <typename scalar_t>
void backward_impl(const Problem<scalar_t>& p, const scalar_t* dout, const float* dlast, const float* chunk_states,
                   const std::vector<Block>& blocks, scalar_t* du, scalar_t* ddelta, scalar_t* dz,
                   const BackwardOut& o) {
  const int64_t N = p.N, Np = p.Np, L = p.L, dim = p.dim;
  const int64_t n_blocks = static_cast<int64_t>(blocks.size());

#pragma omp parallel num_threads(at::get_num_threads()) if (p.batch * n_blocks > 1)
  {
    Workspace ws(p.chunk, Np, max_width(blocks), /*backward=*/true);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < p.batch * n_blocks; ++task) {
      const int64_t b = task / n_blocks, j = task % n_blocks;
      const auto [d0, d1] = blocks[j];
      float* g = ws.carry.data();  // (d1 - d0, Np): carried across chunks, see ChannelChunkGrad::g
      for (int64_t d = d0; d < d1; ++d) load_padded(g + (d - d0) * Np, dlast ? dlast + (b * dim + d) * N : nullptr, N, Np);
      for (int64_t k = p.n_chunks - 1; k >= 0; --k) {
        const int64_t t0 = k * p.chunk, T = std::min(p.chunk, L - t0);
        load_tiles(p, ws, b, d0, t0, T);
        if (p.B.variable()) std::fill_n(ws.dB_tile.data(), T * Np, 0.f);
        if (p.C.variable()) std::fill_n(ws.dC_tile.data(), T * Np, 0.f);
        for (int64_t d = d0; d < d1; ++d) {
          const int64_t bd = b * dim + d, off = p.seq_offset(b, d) + t0;
          const ChannelChunk cc = channel_view(p, ws, b, d, t0, T);
          load_padded(ws.states.data(), chunk_states + (bd * p.n_chunks + k) * N, N, Np);  // X[0]
          ChannelChunkGrad gr;
          gr.dout = load_seq(dout + off, ws.dout.data(), T);
          gr.g = g + (d - d0) * Np;
          gr.dA = o.dA_part + bd * Np;
          gr.dB = p.B.variable() ? ws.dB_tile.data() : o.dB_part + bd * Np;
          gr.dB_step = p.B.variable() ? Np : 0;
          gr.dC = p.C.variable() ? ws.dC_tile.data() : o.dC_part + bd * Np;
          gr.dC_step = p.C.variable() ? Np : 0;
          gr.du = seq_out(du + off, ws.du.data());
          gr.ddelta = seq_out(ddelta + off, ws.ddelta.data());
          gr.dz = p.z ? seq_out(dz + off, ws.dz.data()) : nullptr;
          backward_channel_chunk(cc, gr, ws);
          o.dD_part[bd] += gr.dD;
          o.dbias_part[bd] += gr.ddelta_bias;
          store_seq(du + off, gr.du, T);
          store_seq(ddelta + off, gr.ddelta, T);
          if (p.z) store_seq(dz + off, gr.dz, T);
        }
        if (p.B.variable()) store_tile(o.dB_part + (b * n_blocks + j) * N * L + t0, ws.dB_tile.data(), N, Np, L, T);
        if (p.C.variable()) store_tile(o.dC_part + (b * n_blocks + j) * N * L + t0, ws.dC_tile.data(), N, Np, L, T);
      }
      if (o.dinitial) {
        for (int64_t d = d0; d < d1; ++d) std::copy_n(g + (d - d0) * Np, N, o.dinitial + (b * dim + d) * N);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Fixed-order reductions of the per-task partial sums.

// out[i] = sum over b of part[b, i] (b ascending), part: (batch, inner).
at::Tensor sum_over_batch(const at::Tensor& part) {
  const int64_t batch = part.size(0), inner = part.numel() / std::max<int64_t>(batch, 1);
  at::Tensor out = at::zeros(part.sizes().slice(1), part.options());
  const float* src = part.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, inner, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t i = begin; i < end; ++i) dst[i] += src[b * inner + i];
  });
  return out;
}

// dM[b, g] = sum of the block partials part[b, j] over the blocks j of group g (j ascending),
// cast to the operand's dtype. part: (batch, n_blocks, N, L) fp32.
at::Tensor reduce_blocks(const at::Tensor& part, const std::vector<Block>& blocks, int64_t groups,
                         int64_t cpg, at::ScalarType dtype) {
  const int64_t batch = part.size(0), n_blocks = part.size(1), slab = part.size(2) * part.size(3);
  if (n_blocks == groups) return part.view({batch, groups, part.size(2), part.size(3)}).to(dtype);
  at::Tensor out = at::zeros({batch, groups, part.size(2), part.size(3)}, part.options());
  const float* src = part.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, batch * groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t b = bg / groups, g = bg % groups;
      float* o = dst + bg * slab;
      for (int64_t j = 0; j < n_blocks; ++j) {
        if (blocks[j].first / cpg != g) continue;
        const float* s = src + (b * n_blocks + j) * slab;
        for (int64_t i = 0; i < slab; ++i) o[i] += s[i];
      }
    }
  });
  return out.to(dtype);
}

int64_t round_up_lanes(int64_t N) { return (N + kLanes - 1) / kLanes * kLanes; }

// A and the constant B/C with N padded to Np: they must outlive the Problem that points at them.
struct PaddedParams {
  at::Tensor A, A_log2e, B_const, C_const;
  PaddedParams(const at::Tensor& A_, const at::Tensor& B, const at::Tensor& C, int64_t Np)
      : A(pad_lanes(A_, Np)),
        A_log2e(A * kLog2e),
        B_const(B.dim() == 2 ? pad_lanes(B, Np) : at::Tensor()),
        C_const(C.dim() == 2 ? pad_lanes(C, Np) : at::Tensor()) {}
};

template <typename scalar_t>
Problem<scalar_t> make_problem(const at::Tensor& u, const at::Tensor& delta, const PaddedParams& padded,
                               const at::Tensor& B, const at::Tensor& C, const std::optional<at::Tensor>& D,
                               const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& delta_bias,
                               const std::optional<at::Tensor>& initial_state, bool delta_softplus, int64_t N,
                               int64_t chunk) {
  Problem<scalar_t> p;
  p.batch = u.size(0);
  p.dim = u.size(1);
  p.L = u.size(2);
  p.N = N;
  p.Np = round_up_lanes(N);
  p.chunk = chunk;
  p.n_chunks = (p.L + chunk - 1) / chunk;
  p.u = u.const_data_ptr<scalar_t>();
  p.delta = delta.const_data_ptr<scalar_t>();
  p.z = z ? z->const_data_ptr<scalar_t>() : nullptr;
  p.D = D ? D->const_data_ptr<float>() : nullptr;
  p.delta_bias = delta_bias ? delta_bias->const_data_ptr<float>() : nullptr;
  p.initial_state = initial_state ? initial_state->const_data_ptr<float>() : nullptr;
  p.A_pad = padded.A.const_data_ptr<float>();
  p.A_log2e_pad = padded.A_log2e.const_data_ptr<float>();
  p.B_const_pad = padded.B_const.defined() ? padded.B_const.const_data_ptr<float>() : nullptr;
  p.C_const_pad = padded.C_const.defined() ? padded.C_const.const_data_ptr<float>() : nullptr;
  auto operand = [&](const at::Tensor& M) {
    Operand<scalar_t> o;
    if (M.dim() == 4) {
      o.var = M.const_data_ptr<scalar_t>();
      o.groups = M.size(1);
      o.channels_per_group = p.dim / o.groups;
    }
    return o;
  };
  p.B = operand(B);
  p.C = operand(C);
  p.softplus = delta_softplus;
  return p;
}

template <typename Fn>
void dispatch_input_type(at::ScalarType dtype, const Fn& fn) {
  switch (dtype) {
    case at::kFloat: fn(float{}); break;
    case at::kHalf: fn(at::Half{}); break;
    case at::kBFloat16: fn(at::BFloat16{}); break;
    default: TORCH_CHECK_TYPE(false, "selective_scan (cpu): unsupported input dtype ", dtype);
  }
}

at::Tensor empty_grad(const at::Tensor& like) { return at::empty({0}, like.options().dtype(at::kFloat)); }

// (..., Np) -> (..., N), contiguous.
at::Tensor unpad_lanes(const at::Tensor& t, int64_t N) { return t.narrow(-1, 0, N).contiguous(); }

}  // namespace

// ---------------------------------------------------------------------------------------------
// The ops' bodies, after csrc/cpu/selective_scan.cpp has checked the arguments.

ScanFwdResult selective_scan_fwd(const SelectiveScanShape& s, const at::Tensor& u, const at::Tensor& delta,
                                 const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
                                 const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
                                 const std::optional<at::Tensor>& delta_bias,
                                 const std::optional<at::Tensor>& initial_state, bool delta_softplus) {
  const int64_t batch = s.batch, dim = s.dim, L = s.L, N = s.N, chunk_size = s.chunk_size;
  const auto f32 = u.options().dtype(at::kFloat);
  at::Tensor out = at::empty_like(u);
  at::Tensor last_state = initial_state ? initial_state->clone() : at::zeros({batch, dim, N}, f32);
  at::Tensor chunk_states = at::empty({batch, dim, s.n_chunks, N}, f32);
  if (L == 0 || batch == 0 || dim == 0) return {out, last_state, chunk_states};
  const PaddedParams padded(A, B, C, round_up_lanes(N));
  dispatch_input_type(u.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    const auto p = make_problem<scalar_t>(u, delta, padded, B, C, D, z, delta_bias, initial_state, delta_softplus,
                                          N, chunk_size);
    forward_impl(p, out.data_ptr<scalar_t>(), last_state.data_ptr<float>(), chunk_states.data_ptr<float>());
  });
  return {out, last_state, chunk_states};
}

ScanBwdResult selective_scan_bwd(const SelectiveScanShape& s, const at::Tensor& dout,
                                 const std::optional<at::Tensor>& dlast_state, const at::Tensor& u,
                                 const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
                                 const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
                                 const std::optional<at::Tensor>& delta_bias,
                                 const std::optional<at::Tensor>& initial_state, const at::Tensor& chunk_states,
                                 bool delta_softplus) {
  const int64_t batch = s.batch, dim = s.dim, L = s.L, N = s.N, Np = round_up_lanes(N), chunk_size = s.chunk_size;
  const auto f32 = u.options().dtype(at::kFloat);
  at::Tensor du = at::empty_like(u), ddelta = at::empty_like(delta);
  at::Tensor dz = z ? at::empty_like(*z) : empty_grad(u);
  const int64_t cpg_B = B.dim() == 4 ? dim / B.size(1) : 0, cpg_C = C.dim() == 4 ? dim / C.size(1) : 0;
  const auto blocks = backward_blocks(batch, dim, cpg_B, cpg_C);
  const int64_t n_blocks = static_cast<int64_t>(blocks.size());
  // Partial sums, each written by exactly one task, then reduced in a fixed order.
  at::Tensor dA_part = at::zeros({batch, dim, Np}, f32);
  at::Tensor dB_part = B.dim() == 4 ? at::zeros({batch, n_blocks, N, L}, f32) : at::zeros({batch, dim, Np}, f32);
  at::Tensor dC_part = C.dim() == 4 ? at::zeros({batch, n_blocks, N, L}, f32) : at::zeros({batch, dim, Np}, f32);
  at::Tensor dD_part = at::zeros({batch, dim}, f32), dbias_part = at::zeros({batch, dim}, f32);
  at::Tensor dinitial = initial_state ? at::empty({batch, dim, N}, f32) : empty_grad(u);
  if (L == 0) {  // no step: only the state passes through
    du.zero_();
    ddelta.zero_();
    if (z) dz.zero_();
    if (initial_state) {
      if (dlast_state) dinitial.copy_(*dlast_state);
      else dinitial.zero_();
    }
  } else if (batch > 0 && dim > 0) {
    const PaddedParams padded(A, B, C, Np);
    dispatch_input_type(u.scalar_type(), [&](auto tag) {
      using scalar_t = decltype(tag);
      const auto p = make_problem<scalar_t>(u, delta, padded, B, C, D, z, delta_bias, initial_state, delta_softplus,
                                            N, chunk_size);
      BackwardOut o{dA_part.data_ptr<float>(), dB_part.data_ptr<float>(), dC_part.data_ptr<float>(),
                    dD_part.data_ptr<float>(), dbias_part.data_ptr<float>(),
                    initial_state ? dinitial.data_ptr<float>() : nullptr};
      backward_impl(p, dout.const_data_ptr<scalar_t>(), dlast_state ? dlast_state->const_data_ptr<float>() : nullptr,
                    chunk_states.const_data_ptr<float>(), blocks, du.data_ptr<scalar_t>(),
                    ddelta.data_ptr<scalar_t>(), z ? dz.data_ptr<scalar_t>() : nullptr, o);
    });
  }
  at::Tensor dA = unpad_lanes(sum_over_batch(dA_part), N);
  at::Tensor dB = B.dim() == 4 ? reduce_blocks(dB_part, blocks, B.size(1), cpg_B, B.scalar_type())
                               : unpad_lanes(sum_over_batch(dB_part), N);
  at::Tensor dC = C.dim() == 4 ? reduce_blocks(dC_part, blocks, C.size(1), cpg_C, C.scalar_type())
                               : unpad_lanes(sum_over_batch(dC_part), N);
  at::Tensor dD = D ? sum_over_batch(dD_part) : empty_grad(u);
  at::Tensor ddelta_bias = delta_bias ? sum_over_batch(dbias_part) : empty_grad(u);
  return {du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial};
}

}  // namespace pyneuro::cpu::PYNEURO_CPU_ISA
