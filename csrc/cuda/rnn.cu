// Recurrent cells, path 1 (any size): the fused pointwise kernels of one time step. The GEMMs
// (x W_ihᵀ for all steps, h_{t-1} W_hhᵀ per step, the weight gradients at the end) run in the
// glue through torch (cuBLAS); see rnn.h for the whole schedule and rnn_cell.h for the math.
//
// Both kernels: one thread per (b, j), b < B, j < H, consecutive threads along j (coalesced rows),
// a grid-stride loop. fp32 math and state whatever X is. Per step, with G gates, W the reserve
// width (LSTM 5H+R, GRU 5H, else H) and x = sizeof(X):
//   rnn_cell_fwd: reads gx, gh (2·B·G·H fp32), biases (G·H x, cached), the previous state
//     (B·H fp32 from the reserve, or x at t = 0); writes the reserve row (B·W fp32) and y (B·R x).
//     LSTM, 4 gates: ~41·B·H bytes per step for fp32 (8 gate reads + 6 reserve + 1 y, 4 bytes).
//   rnn_cell_bwd: reads the reserve row (B·W) and the previous state, dy/drec (B·R), the carry;
//     writes dA (B·G·H fp32; GRU also dS), the carry, leaky's dτ partials, LSTM-projection's m_t.
// Both are memory-bound (a few FLOPs per byte); the per-step GEMM dominates for H >= 256.
#include "rnn.h"

#include <algorithm>

#include "common.cuh"
#include "rnn_cell.h"

namespace pyneuro {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <RnnCellKind kCell, typename X>
__global__ void __launch_bounds__(kThreads) rnn_cell_fwd_kernel(const RnnCellFwdParams p) {
  using namespace rnn;
  const int H = p.H;
  constexpr int G = kCell == RnnCellKind::kLstm ? 4 : kCell == RnnCellKind::kGru ? 3 : 1;
  const int64_t GH = int64_t(G) * H;
  const int64_t W = kCell == RnnCellKind::kLstm ? 5 * int64_t(H) + p.R : kCell == RnnCellKind::kGru ? 5 * int64_t(H) : H;
  const bool last = p.t == p.T - 1;
  // 32-bit index math (B·G·H < 2^31, the launchers check): a 64-bit division is a call that spills.
  const unsigned n = unsigned(p.B) * unsigned(H);
  for (unsigned e = blockIdx.x * kThreads + threadIdx.x; e < n; e += gridDim.x * kThreads) {
    const unsigned bu = e / unsigned(H);
    const int j = int(e - bu * unsigned(H));
    const int64_t b = bu;
    const float* gx = p.gx + b * GH;
    const float* gh = p.gh + b * GH;
    float* res = p.reserve + b * W;
    const float* prev = p.reserve_prev ? p.reserve_prev + b * W : nullptr;
    if constexpr (kCell == RnnCellKind::kLstm) {
      float pre[4];
#pragma unroll
      for (int g = 0; g < 4; ++g) {
        const int64_t k = int64_t(g) * H + j;
        pre[g] = gx[k] + gh[k] + ldx_or0<X>(p.b_ih, k) + ldx_or0<X>(p.b_hh, k);
      }
      const float c_prev = prev ? prev[4 * int64_t(H) + j] : ldx<X>(p.c0, b * H + j);
      const LstmStep s = lstm_step(pre[0], pre[1], pre[2], pre[3], c_prev);
      res[j] = s.i; res[H + j] = s.f; res[2 * int64_t(H) + j] = s.g; res[3 * int64_t(H) + j] = s.o;
      res[4 * int64_t(H) + j] = s.c;
      if (p.y) {  // no projection: h_t = m_t
        res[5 * int64_t(H) + j] = s.m;
        stx<X>(p.y, b * H + j, s.m);
        if (last) stx<X>(p.h_n, b * H + j, s.m);
      } else {
        stx<X>(p.m, b * H + j, s.m);
      }
      if (last) stx<X>(p.c_n, b * H + j, s.c);
    } else if constexpr (kCell == RnnCellKind::kGru) {
      float a[3], s[3];
#pragma unroll
      for (int g = 0; g < 3; ++g) {
        const int64_t k = int64_t(g) * H + j;
        a[g] = gx[k] + ldx_or0<X>(p.b_ih, k);
        s[g] = gh[k] + ldx_or0<X>(p.b_hh, k);
      }
      const float h_prev = prev ? prev[4 * int64_t(H) + j] : ldx<X>(p.state0, b * H + j);
      const GruStep st = gru_step(a[0], a[1], a[2], s[0], s[1], s[2], h_prev);
      res[j] = st.r; res[H + j] = st.z; res[2 * int64_t(H) + j] = st.n; res[3 * int64_t(H) + j] = s[2];
      res[4 * int64_t(H) + j] = st.h;
      stx<X>(p.y, b * H + j, st.h);
      if (last) stx<X>(p.h_n, b * H + j, st.h);
    } else if constexpr (kCell == RnnCellKind::kLeaky) {
      const float a = gx[j] + gh[j] + ldx_or0<X>(p.b_ih, j);
      const float u_prev = prev ? prev[j] : ldx<X>(p.state0, b * H + j);
      const float u = leaky_step(a, u_prev, 1.f / ldx<X>(p.tau, j));
      res[j] = u;
      stx<X>(p.y, b * H + j, tanh_f(u));
      if (last) stx<X>(p.h_n, b * H + j, u);  // u_n: the internal state
    } else {
      const float pre = gx[j] + gh[j] + ldx_or0<X>(p.b_ih, j) + ldx_or0<X>(p.b_hh, j);
      const float h = rnn_act(pre, kCell == RnnCellKind::kRnnRelu);
      res[j] = h;
      stx<X>(p.y, b * H + j, h);
      if (last) stx<X>(p.h_n, b * H + j, h);
    }
  }
}

template <RnnCellKind kCell, typename X>
__global__ void __launch_bounds__(kThreads) rnn_cell_bwd_kernel(const RnnCellBwdParams p) {
  using namespace rnn;
  const int H = p.H;
  constexpr int G = kCell == RnnCellKind::kLstm ? 4 : kCell == RnnCellKind::kGru ? 3 : 1;
  const int64_t GH = int64_t(G) * H;
  const int64_t W = kCell == RnnCellKind::kLstm ? 5 * int64_t(H) + p.R : kCell == RnnCellKind::kGru ? 5 * int64_t(H) : H;
  const bool last = p.t == p.T - 1;
  // 32-bit index math (B·G·H < 2^31, the launchers check): a 64-bit division is a call that spills.
  const unsigned n = unsigned(p.B) * unsigned(H);
  const float* row_t = p.reserve + int64_t(p.t) * p.B * W;
  const float* row_prev = p.t > 0 ? row_t - int64_t(p.B) * W : nullptr;
  for (unsigned e = blockIdx.x * kThreads + threadIdx.x; e < n; e += gridDim.x * kThreads) {
    const unsigned bu = e / unsigned(H);
    const int j = int(e - bu * unsigned(H));
    const int64_t b = bu;
    const int64_t bj = b * H + j;  // (b, j) of every (B, H) operand (R = H except the projection's dm)
    const float* res = row_t + b * W;
    const float* prev = row_prev ? row_prev + b * W : nullptr;
    // Gradient reaching this step's output state.
    float dh = ldx_or0<X>(p.dy, bj) + (p.drec ? p.drec[bj] : 0.f);
    if (last) dh += ldx_or0<X>(p.dh_n, bj);
    cell_backward_unit<kCell, X>(last, H, b, j, res, prev, dh, p.dc_n, p.state0, p.c0, p.tau, p.carry,
                                 p.dA + b * GH, kCell == RnnCellKind::kGru ? p.dS + b * GH : nullptr, p.m, p.dtau_acc);
  }
}

int grid_for(int64_t n) { return int(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, 8192))); }
bool fits_index(int B, int H, RnnCellKind c) { return int64_t(B) * H * rnn_cell_gates(c) < (int64_t(1) << 31); }

template <bool kBwd, typename X, typename P>
cudaError_t launch_cell(const P& p, cudaStream_t stream) {
  const int grid = grid_for(int64_t(p.B) * p.H);
  const cudaError_t err = with_cell(p.cell, cudaErrorInvalidValue, [&](auto cell) {
    constexpr RnnCellKind kCell = decltype(cell)::value;
    if constexpr (kBwd) rnn_cell_bwd_kernel<kCell, X><<<grid, kThreads, 0, stream>>>(p);
    else rnn_cell_fwd_kernel<kCell, X><<<grid, kThreads, 0, stream>>>(p);
    return cudaSuccess;
  });
  if (err != cudaSuccess) return err;
  PYNEURO_CUDA_CHECK_LAUNCH();
  return cudaSuccess;
}

}  // namespace

cudaError_t rnn_cell_fwd(const RnnCellFwdParams& p, cudaStream_t stream) {
  if (p.B < 1 || p.H < 1 || !fits_index(p.B, p.H, p.cell)) return cudaErrorInvalidValue;
  switch (p.dtype) {
    case RnnDtype::kFloat32: return launch_cell<false, float>(p, stream);
    case RnnDtype::kFloat16: return launch_cell<false, __half>(p, stream);
    case RnnDtype::kBFloat16: return launch_cell<false, __nv_bfloat16>(p, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t rnn_cell_bwd(const RnnCellBwdParams& p, cudaStream_t stream) {
  if (p.B < 1 || p.H < 1 || !fits_index(p.B, p.H, p.cell)) return cudaErrorInvalidValue;
  switch (p.dtype) {
    case RnnDtype::kFloat32: return launch_cell<true, float>(p, stream);
    case RnnDtype::kFloat16: return launch_cell<true, __half>(p, stream);
    case RnnDtype::kBFloat16: return launch_cell<true, __nv_bfloat16>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace pyneuro
