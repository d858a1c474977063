// Recurrent cells, path 2: the persistent forward for small hidden sizes (H <= kRnnPersistentMaxH).
// One cooperative launch runs all T steps; the ideas follow FlashRNN (Pöppel et al., ICLR 2025),
// haste and cuDNN's persistent RNN (weights stay on chip, one launch per sequence, the blocks
// meet between steps) — this is our own, simpler kernel, not a port of any of them.
//
// Work split. gx = x W_ihᵀ (T, B, G·H) fp32 comes from one cuBLAS GEMM in the glue. The recurrent
// GEMM of a step, (B, H) x (H, G·H), is cut into unit tiles of U = 16 hidden units (all G gates of
// each: G·16 rows of W_hh, so a tile's cell update needs nothing from other tiles) and batch
// tiles of Bt = 16 rows. Block (x, y) owns `tiles_per_block` unit tiles (x) and the batch tiles
// y, y + gridDim.y, ...; thread (bl, jl) = (tid / 16, tid % 16) computes the G dot products of
// batch row bl and unit jl, then that unit's cell, in registers.
//
// Shared memory (dynamic): the W slice, tiles_per_block·G·16 rows x ldw (Hp = H rounded up to
// 16; ldw = Hp + 16 bytes of padding), fp32 for fp32 inputs and X for fp16/bf16, loaded once; then
//   fp32: the h tile, 16 x (Hp + 4) fp32, restaged every step; SIMT FMAs, thread (bl, jl) does its
//     G dot products with 16-byte shared loads. Padding makes ldw / 4 words odd, so the 8 lanes of
//     a quarter-warp (8 W rows) hit distinct banks; the h rows are broadcasts (2 per warp).
//   fp16/bf16: the h tile rounded to X (the GEMM operand the contract allows), 16 x ldw, and an fp32
//     output tile; tensor cores (mma.sync m16n8k16, fp32 accumulation; common.cuh): warp w owns
//     n-tile w % 2G (8 gate rows) of the 16 x G·16 product, the K range split over the idle warps
//     when 2G < 8; the cell threads then read their G sums from the output tile. Fragment loads
//     are 32-bit: row strides of ldw / 2 ≡ 4 (mod 8) words keep the 8 rows x 4 lanes conflict-free.
// H = 256, LSTM: fp32 65 + 16 KiB; fp16/bf16 33 + 8.3 + 5 KiB.
//
// Per step and block: reads Bt·H fp32 of h_{t-1} from the reserve (L2: written by every block of
// the group at step t-1), gx (Bt·G·16 fp32 per tile); writes the reserve rows and y; MACs:
// Bt·G·16·H per tile (H = 256, LSTM: 256 K). Between steps the x-blocks of one y group meet at a
// counter barrier (group_barrier, common.cuh): step t+1 needs every unit of h_t.
//
// Not done (yet): weights in registers (FlashRNN's fastest variant keeps them there; here they stay
// in shared memory and are re-read every step) and the projection LSTM (it runs path 1). The
// persistent backward is below.
#include <algorithm>
#include <type_traits>

#include "common.cuh"
#include "rnn.h"
#include "rnn_cell.h"

namespace pyneuro {
namespace cuda {
namespace {

constexpr int kU = kRnnPersistentUnits;   // 16 units per tile
constexpr int kBt = kRnnPersistentBatch;  // 16 batch rows per tile
constexpr int kThreads = kU * kBt;        // 256
static_assert(kU == 16 && kBt == 16, "thread mapping assumes 16 x 16");

__host__ __device__ constexpr int gates_of(RnnCellKind c) { return c == RnnCellKind::kLstm ? 4 : c == RnnCellKind::kGru ? 3 : 1; }

// Shared storage of W: fp32 for fp32, else the input dtype (fp32 math after widening).
template <typename X> struct WStore { using type = X; };

__host__ __device__ inline int padded_h(int H) { return (H + 15) / 16 * 16; }
template <typename WT> __host__ __device__ inline int ldw_of(int H) { return padded_h(H) + 16 / int(sizeof(WT)); }
__host__ __device__ inline int ldh_of(int H) { return padded_h(H) + 4; }

// fp16/bf16 (tensor cores): warp w computes n-tile w % (2G) (8 of the tile's G·16 gate rows) over
// the k-steps w / (2G), w / (2G) + kparts, ...; with fewer than 8 n-tiles (RNN, leaky: 2) the K
// range is split over kparts = 8 / (2G) warps and the partial sums meet in shared memory.
__host__ __device__ constexpr int mma_kparts(int G) { return 2 * G >= 8 ? 1 : 8 / (2 * G); }
// Row stride (floats) of the MMA output tile: ≡ 16 (mod 32) so that the two batch rows a warp of
// cell threads reads fall in different banks.
__host__ __device__ constexpr int ldo_of(int G) { return G * kU + (G * kU % 32 == 0 ? 16 : 0); }

template <typename WT>
size_t smem_bytes_t(int G, int H, int tiles_per_block) {
  const size_t w = size_t(tiles_per_block) * G * kU * ldw_of<WT>(H) * sizeof(WT);
  if (sizeof(WT) == 4) return w + size_t(kBt) * ldh_of(H) * sizeof(float);
  // the h tile as the A operand (X, row stride ldw) + the MMA output tile (fp32)
  return w + size_t(kBt) * ldw_of<WT>(H) * sizeof(WT) + size_t(mma_kparts(G)) * kBt * ldo_of(G) * sizeof(float);
}

// Dot products of one h row with G weight rows over k < Hp (zero-padded), fp32 accumulation.
__device__ __forceinline__ void load8(const float* p, float (&v)[8]) {
  const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}
template <typename T>
__device__ __forceinline__ void load8(const T* p, float (&v)[8]) { load_vec16(p, v); }

template <int G, typename WT>
__device__ __forceinline__ void dots(float (&acc)[G], const float* __restrict__ hrow, const WT* __restrict__ w0,
                                     int ldw16, int Hp) {
#pragma unroll
  for (int g = 0; g < G; ++g) acc[g] = 0.f;
#pragma unroll 2
  for (int k = 0; k < Hp; k += 8) {
    float hv[8];
    load8(hrow + k, hv);
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float wv[8];
      load8(w0 + g * ldw16 + k, wv);
#pragma unroll
      for (int q = 0; q < 8; ++q) acc[g] = fmaf(hv[q], wv[q], acc[g]);
    }
  }
}

template <RnnCellKind kCell, typename X>
__global__ void __launch_bounds__(kThreads, 1) rnn_persistent_fwd_kernel(const RnnPersistentFwdParams p) {
  using namespace rnn;
  using WT = typename WStore<X>::type;
  constexpr int G = gates_of(kCell);
  const int H = p.H, B = p.B, Hp = padded_h(H);
  const int ldw = ldw_of<WT>(H), ldh = ldh_of(H);
  const int64_t GH = int64_t(G) * H;
  const int64_t W = kCell == RnnCellKind::kLstm ? 5 * int64_t(H) + H : kCell == RnnCellKind::kGru ? 5 * int64_t(H) : H;
  const int so = kCell == RnnCellKind::kLstm ? 5 * H : kCell == RnnCellKind::kGru ? 4 * H : 0;  // h_t / u_t column
  const int ntiles = (H + kU - 1) / kU, nbt = (B + kBt - 1) / kBt;
  const int tid = threadIdx.x, bl = tid / kU, jl = tid % kU;

  constexpr bool kMma = !std::is_same<X, float>::value;
  extern __shared__ float4 smem_f4[];
  WT* const ws = reinterpret_cast<WT*>(smem_f4);
  // fp32: the h tile (fp32, row stride ldh). fp16/bf16: the h tile as X (row stride ldw), then the
  // MMA output tile (kparts x 16 x ldo fp32).
  float* const hs = reinterpret_cast<float*>(ws + size_t(p.tiles_per_block) * G * kU * ldw);
  WT* const ha = reinterpret_cast<WT*>(hs);
  float* const outs = reinterpret_cast<float*>(ha + size_t(kBt) * ldw);
  constexpr int kParts = mma_kparts(G), ldo = ldo_of(G);
  const int warp = tid / kWarpSize, lane = tid % kWarpSize;

  // W_hh rows of this block's unit tiles, once: smem row (q·G + g)·16 + jj holds W_hh[g·H + u·16 + jj].
  const int rows = p.tiles_per_block * G * kU;
  const WT* w_hh = static_cast<const WT*>(p.w_hh);
  for (int e = tid; e < rows * Hp; e += kThreads) {  // rows·Hp <= 16·64·256: int, no 64-bit division
    const int r = e / Hp, k = e % Hp;
    const int q = r / (G * kU), g = r / kU % G, jj = r % kU;
    const int unit = (blockIdx.x * p.tiles_per_block + q) * kU + jj;
    ws[size_t(r) * ldw + k] = (unit < H && k < H) ? w_hh[(int64_t(g) * H + unit) * H + k] : from_f<WT>(0.f);
  }
  // (padding columns [Hp, ldw) are never read)

  const X* state0 = static_cast<const X*>(p.state0);
  for (int t = 0; t < p.T; ++t) {
    const bool last = t == p.T - 1;
    const float* res_prev = p.reserve + int64_t(t - 1) * B * W;  // valid for t > 0
    float* res_t = p.reserve + int64_t(t) * B * W;
    for (int bt = blockIdx.y; bt < nbt; bt += gridDim.y) {
      const int b0 = bt * kBt;
      // h_{t-1} (leaky: tanh(u_{t-1})) for rows b0.., zero outside [0, B) x [0, H). The previous
      // use of hs ended at the __syncthreads below (or the barrier).
      for (int e = tid; e < kBt * Hp; e += kThreads) {
        const int r = e / Hp, k = e % Hp, b = b0 + r;
        float v = 0.f;
        if (b < B && k < H) {
          v = t == 0 ? to_f(state0[int64_t(b) * H + k]) : ldcg(res_prev + int64_t(b) * W + so + k);
          if (kCell == RnnCellKind::kLeaky) v = tanh_f(v);
        }
        if constexpr (kMma) ha[r * ldw + k] = from_f<WT>(v);  // the GEMM operand in X (contract)
        else hs[r * ldh + k] = v;
      }
      __syncthreads();
      const int b = b0 + bl;
      for (int q = 0; q < p.tiles_per_block; ++q) {
        const int u = blockIdx.x * p.tiles_per_block + q;
        if (u >= ntiles) break;  // uniform over the block
        const int j = u * kU + jl;
        float acc[G];
        if constexpr (kMma) {
          // Tensor cores: (16 x Hp) h tile times the tile's (Hp x G·16) weights, into `outs`.
          const int nt = warp % (2 * G), kp = warp / (2 * G);
          if (kp < kParts) {  // warp-uniform
            float d[4] = {0.f, 0.f, 0.f, 0.f};
            const WT* bt = ws + size_t(q * G * kU + nt * 8) * ldw;
            for (int ks = kp; ks < Hp / 16; ks += kParts) mma_16x8x16_smem(d, ha + ks * 16, ldw, bt + ks * 16, ldw);
            const int g8 = lane / 4, c = nt * 8 + 2 * (lane % 4);
            float* o = outs + (kp * kBt + g8) * ldo + c;
            o[0] = d[0]; o[1] = d[1]; o[8 * ldo] = d[2]; o[8 * ldo + 1] = d[3];
          }
          __syncthreads();
#pragma unroll
          for (int g = 0; g < G; ++g) {
            acc[g] = 0.f;
#pragma unroll
            for (int kq = 0; kq < kParts; ++kq) acc[g] += outs[(kq * kBt + bl) * ldo + g * kU + jl];
          }
          __syncthreads();  // outs is rewritten by the next unit tile
        } else {
          dots<G>(acc, hs + bl * ldh, ws + size_t(q * G * kU + jl) * ldw, kU * ldw, Hp);
        }
        if (b >= B || j >= H) continue;
        const float* gx = p.gx + (int64_t(t) * B + b) * GH;
        float* res = res_t + int64_t(b) * W;
        const float* prev = res_prev + int64_t(b) * W;
        const int64_t bj = int64_t(b) * H + j;
        const int64_t yj = (int64_t(t) * B + b) * H + j;
        if constexpr (kCell == RnnCellKind::kLstm) {
          float pre[4];
#pragma unroll
          for (int g = 0; g < 4; ++g) {
            const int64_t k = int64_t(g) * H + j;
            pre[g] = gx[k] + acc[g] + ldx_or0<X>(p.b_ih, k) + ldx_or0<X>(p.b_hh, k);
          }
          const float c_prev = t > 0 ? prev[4 * int64_t(H) + j] : ldx<X>(p.c0, bj);
          const LstmStep s = lstm_step(pre[0], pre[1], pre[2], pre[3], c_prev);
          res[j] = s.i; res[H + j] = s.f; res[2 * int64_t(H) + j] = s.g; res[3 * int64_t(H) + j] = s.o;
          res[4 * int64_t(H) + j] = s.c;
          res[5 * int64_t(H) + j] = s.m;
          stx<X>(p.y, yj, s.m);
          if (last) { stx<X>(p.h_n, bj, s.m); stx<X>(p.c_n, bj, s.c); }
        } else if constexpr (kCell == RnnCellKind::kGru) {
          float a[3], s[3];
#pragma unroll
          for (int g = 0; g < 3; ++g) {
            const int64_t k = int64_t(g) * H + j;
            a[g] = gx[k] + ldx_or0<X>(p.b_ih, k);
            s[g] = acc[g] + ldx_or0<X>(p.b_hh, k);
          }
          const float h_prev = t > 0 ? prev[4 * int64_t(H) + j] : to_f(state0[bj]);
          const GruStep st = gru_step(a[0], a[1], a[2], s[0], s[1], s[2], h_prev);
          res[j] = st.r; res[H + j] = st.z; res[2 * int64_t(H) + j] = st.n; res[3 * int64_t(H) + j] = s[2];
          res[4 * int64_t(H) + j] = st.h;
          stx<X>(p.y, yj, st.h);
          if (last) stx<X>(p.h_n, bj, st.h);
        } else if constexpr (kCell == RnnCellKind::kLeaky) {
          const float a = gx[j] + acc[0] + ldx_or0<X>(p.b_ih, j);
          const float u_prev = t > 0 ? prev[j] : to_f(state0[bj]);
          const float uu = leaky_step(a, u_prev, 1.f / ldx<X>(p.tau, j));
          res[j] = uu;
          stx<X>(p.y, yj, tanh_f(uu));
          if (last) stx<X>(p.h_n, bj, uu);
        } else {
          const float h = rnn_act(gx[j] + acc[0] + ldx_or0<X>(p.b_ih, j) + ldx_or0<X>(p.b_hh, j),
                                  kCell == RnnCellKind::kRnnRelu);
          res[j] = h;
          stx<X>(p.y, yj, h);
          if (last) stx<X>(p.h_n, bj, h);
        }
      }
      __syncthreads();  // hs is restaged for the next batch tile
    }
    // Step t+1 reads h_t of every unit tile of the group's batch tiles.
    if (!last) group_barrier(p.barrier + blockIdx.y, unsigned(t + 1) * gridDim.x);
  }
}

// ---- the persistent backward ----------------------------------------------------------------------
// Same grid as the forward: block (x, y) owns unit tiles (x) and batch tiles (y, y + gridDim.y, ...),
// thread (bl, jl) the unit (b, j). Per step t = T-1 .. 0 (then once more, t = -1, for dh0):
//   drec(b, j) = Σ_r dS_{t+1}[b][r] W_hh[r][j] over the G·H gate rows: the block's 16 W_hh columns
//     stay in shared memory (transposed: 16 rows x G·H, fp32 or X), dS_{t+1} (written by every
//     x-block of the group at step t+1) is staged 16 rows x kKc columns at a time;
//   then cell_backward_unit (rnn_cell.h), exactly the per-step kernel's math, writing dA_t, dS_t.
// Shared memory: tiles_per_block·16 x (G·H rounded to 16, + 16 bytes) W + 16 x (kKc + 4) fp32;
// H = 256, LSTM: 64.3 + 16.3 KiB (fp32), 32.3 + 16.3 KiB (fp16/bf16). Per step and block: reads
// 16·G·H fp32 of dS (L2), the reserve rows, dy; writes dA (and GRU's dS); 16·16·G·H FMAs per tile
// (SIMT fp32 for every dtype: the gradients are not rounded to 16 bits for tensor cores).
constexpr int kKc = 256;  // dS columns staged per chunk: bounds shared memory at any H

template <typename WT> __host__ __device__ inline int ldk_of(int G, int H) { return padded_h(G * H) + 16 / int(sizeof(WT)); }

template <typename WT>
size_t bwd_smem_bytes_t(int G, int H, int tiles_per_block) {
  return size_t(tiles_per_block) * kU * ldk_of<WT>(G, H) * sizeof(WT) + size_t(kBt) * (kKc + 4) * sizeof(float);
}

template <RnnCellKind kCell, typename X>
__global__ void __launch_bounds__(kThreads, 1) rnn_persistent_bwd_kernel(const RnnPersistentBwdParams p) {
  using namespace rnn;
  using WT = typename WStore<X>::type;
  constexpr int G = gates_of(kCell);
  constexpr int ldc = kKc + 4;
  const int H = p.H, B = p.B, T = p.T, GH = G * H, GHp = padded_h(G * H);
  const int ldk = ldk_of<WT>(G, H);
  const int64_t W = kCell == RnnCellKind::kLstm ? 6 * int64_t(H) : kCell == RnnCellKind::kGru ? 5 * int64_t(H) : H;
  const int ntiles = (H + kU - 1) / kU, nbt = (B + kBt - 1) / kBt;
  const int tid = threadIdx.x, bl = tid / kU, jl = tid % kU;

  extern __shared__ float4 smem_f4[];
  WT* const ws = reinterpret_cast<WT*>(smem_f4);
  float* const cs = reinterpret_cast<float*>(ws + size_t(p.tiles_per_block) * kU * ldk);

  // W_hh's columns of this block's units, transposed: ws row q·16 + jj = W_hh[:, unit] (zero past H, G·H).
  const int rows = p.tiles_per_block * kU;
  const WT* w_hh = static_cast<const WT*>(p.w_hh);
  for (int e = tid; e < rows * GHp; e += kThreads) {  // <= 16·16·1024: int
    const int r = e / GHp, k = e % GHp;
    const int unit = (blockIdx.x * p.tiles_per_block + r / kU) * kU + r % kU;
    ws[size_t(r) * ldk + k] = (unit < H && k < GH) ? w_hh[int64_t(k) * H + unit] : from_f<WT>(0.f);
  }

  for (int t = T - 1; t >= -1; --t) {
    const bool last = t == T - 1;
    for (int bt = blockIdx.y; bt < nbt; bt += gridDim.y) {
      const int b0 = bt * kBt, b = b0 + bl;
      for (int q = 0; q < p.tiles_per_block; ++q) {
        const int u = blockIdx.x * p.tiles_per_block + q;
        if (u >= ntiles) break;  // uniform over the block
        const int j = u * kU + jl;
        float drec = 0.f;
        if (!last) {
          const float* dS_next = p.dS + (int64_t(t) + 1) * B * GH;
          for (int c0 = 0; c0 < GHp; c0 += kKc) {
            const int kc = imin(kKc, GHp - c0);  // a multiple of 16
            for (int e = tid; e < kBt * kc; e += kThreads) {
              const int r = e / kc, k = e % kc, bb = b0 + r, col = c0 + k;
              cs[r * ldc + k] = (bb < B && col < GH) ? ldcg(dS_next + int64_t(bb) * GH + col) : 0.f;
            }
            __syncthreads();
            float a[1];
            dots<1>(a, cs + bl * ldc, ws + size_t(q * kU + jl) * ldk + c0, 0, kc);
            drec += a[0];
            __syncthreads();  // cs is restaged
          }
        }
        if (b >= B || j >= H) continue;
        const int64_t bj = int64_t(b) * H + j;
        if (t < 0) {  // the gradient reaching h_{-1} through W_hh; the glue finishes dh0 / du0
          p.drec[bj] = drec;
          continue;
        }
        const int64_t row = int64_t(t) * B + b;
        float dh = ldx<X>(p.dy, row * H + j) + drec;
        if (last) dh += ldx_or0<X>(p.dh_n, bj);
        cell_backward_unit<kCell, X>(last, H, b, j, p.reserve + row * W, t > 0 ? p.reserve + (row - B) * W : nullptr,
                                     dh, p.last_in, p.state0, p.c0, p.tau, p.carry, p.dA + row * GH,
                                     kCell == RnnCellKind::kGru ? p.dS + row * GH : nullptr, nullptr, p.dtau_acc);
      }
    }
    // Step t-1 reads dS_t of every unit of the group's batch tiles.
    if (t >= 0) group_barrier(p.barrier + blockIdx.y, unsigned(T - t) * gridDim.x);
  }
}

template <bool kBwd, RnnCellKind kCell, typename X>
void* kernel_ptr() {
  if constexpr (kBwd) return reinterpret_cast<void*>(&rnn_persistent_bwd_kernel<kCell, X>);
  else return reinterpret_cast<void*>(&rnn_persistent_fwd_kernel<kCell, X>);
}

template <bool kBwd, typename X>
void* pick_kernel_x(RnnCellKind cell) {
  return with_cell(cell, static_cast<void*>(nullptr),
                   [](auto c) { return kernel_ptr<kBwd, decltype(c)::value, X>(); });
}

template <bool kBwd>
void* pick_kernel(RnnCellKind cell, RnnDtype dtype) {
  switch (dtype) {
    case RnnDtype::kFloat32: return pick_kernel_x<kBwd, float>(cell);
    case RnnDtype::kFloat16: return pick_kernel_x<kBwd, __half>(cell);
    case RnnDtype::kBFloat16: return pick_kernel_x<kBwd, __nv_bfloat16>(cell);
  }
  return nullptr;
}

// One cooperative launch of the (cell, dtype) instance of the forward or backward kernel (typed
// kernel pointers: the emulator unpacks the argument array by the kernel's parameter types).
template <bool kBwd, RnnCellKind kCell, typename X, typename P>
cudaError_t launch_t(const P& p, size_t smem, cudaStream_t stream) {
  auto* k = [] {
    if constexpr (kBwd) return &rnn_persistent_bwd_kernel<kCell, X>;
    else return &rnn_persistent_fwd_kernel<kCell, X>;
  }();
  PYNEURO_CUDA_TRY(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  void* args[] = {const_cast<P*>(&p)};
  PYNEURO_CUDA_TRY(cudaLaunchCooperativeKernel(k, dim3(p.blocks_x, p.blocks_y), dim3(kThreads), args, smem, stream));
  PYNEURO_CUDA_CHECK_LAUNCH();
  return cudaSuccess;
}

template <bool kBwd, typename X, typename P>
cudaError_t launch_x(const P& p, size_t smem, cudaStream_t stream) {
  return with_cell(p.cell, cudaErrorInvalidValue,
                   [&](auto c) { return launch_t<kBwd, decltype(c)::value, X>(p, smem, stream); });
}

template <bool kBwd, typename P>
cudaError_t launch(const P& p, size_t smem, cudaStream_t stream) {
  switch (p.dtype) {
    case RnnDtype::kFloat32: return launch_x<kBwd, float>(p, smem, stream);
    case RnnDtype::kFloat16: return launch_x<kBwd, __half>(p, smem, stream);
    case RnnDtype::kBFloat16: return launch_x<kBwd, __nv_bfloat16>(p, smem, stream);
  }
  return cudaErrorInvalidValue;
}

// The launch shape: one unit tile per block along H unless max_blocks_x caps it, all batch tiles
// side by side as far as the co-resident capacity goes (the rest loop inside the blocks).
template <typename SmemOf>
RnnPersistentPlan make_plan(int B, int H, int device, int max_blocks_x, void* kernel, SmemOf smem_of) {
  RnnPersistentPlan plan;
  if (H < 1 || B < 1 || H > kRnnPersistentMaxH) {
    plan.why_not = "H is above the persistent kernel's limit (kRnnPersistentMaxH)";
    return plan;
  }
  int coop = 0, sms = 0, optin = 0;
  if (cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device) != cudaSuccess || !coop) {
    cudaGetLastError();
    plan.why_not = "the device does not support cooperative launches";
    return plan;
  }
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
    cudaGetLastError();
    plan.why_not = "device attributes could not be read";
    return plan;
  }
  const int ntiles = (H + kU - 1) / kU, nbt = (B + kBt - 1) / kBt;
  int bx = max_blocks_x > 0 ? std::min(ntiles, max_blocks_x) : ntiles;
  const int tpb = (ntiles + bx - 1) / bx;
  bx = (ntiles + tpb - 1) / tpb;
  const size_t smem = smem_of(tpb);
  if (smem > size_t(optin)) {
    plan.why_not = "the weight slice does not fit in shared memory";
    return plan;
  }
  int per_sm = 0;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)) != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem) != cudaSuccess) {
    cudaGetLastError();
    plan.why_not = "the occupancy query failed";
    return plan;
  }
  const int64_t capacity = int64_t(per_sm) * sms;
  if (capacity < bx) {
    plan.why_not = "the unit tiles' blocks cannot all be co-resident";
    return plan;
  }
  plan.ok = true;
  plan.blocks_x = bx;
  plan.blocks_y = int(std::min<int64_t>({int64_t(nbt), capacity / bx, 65535}));
  plan.tiles_per_block = tpb;
  plan.smem_bytes = smem;
  return plan;
}

template <typename P>
bool valid_shape(const P& p) {
  return p.B >= 1 && p.H >= 1 && p.H <= kRnnPersistentMaxH && p.T >= 1 && p.blocks_x >= 1 && p.blocks_y >= 1 &&
         p.tiles_per_block >= 1 && int64_t(p.blocks_x) * p.tiles_per_block * kU >= p.H;
}

}  // namespace

size_t rnn_persistent_fwd_smem_bytes(RnnCellKind cell, RnnDtype dtype, int H, int tiles_per_block) {
  const int G = gates_of(cell);
  return dtype == RnnDtype::kFloat32 ? smem_bytes_t<float>(G, H, tiles_per_block)
                                     : smem_bytes_t<__half>(G, H, tiles_per_block);
}

size_t rnn_persistent_bwd_smem_bytes(RnnCellKind cell, RnnDtype dtype, int H, int tiles_per_block) {
  const int G = gates_of(cell);
  return dtype == RnnDtype::kFloat32 ? bwd_smem_bytes_t<float>(G, H, tiles_per_block)
                                     : bwd_smem_bytes_t<__half>(G, H, tiles_per_block);
}

RnnPersistentPlan rnn_persistent_fwd_plan(RnnCellKind cell, RnnDtype dtype, int B, int H, int device,
                                          int max_blocks_x) {
  return make_plan(B, H, device, max_blocks_x, pick_kernel<false>(cell, dtype),
                   [&](int tpb) { return rnn_persistent_fwd_smem_bytes(cell, dtype, H, tpb); });
}

RnnPersistentPlan rnn_persistent_bwd_plan(RnnCellKind cell, RnnDtype dtype, int B, int H, int device,
                                          int max_blocks_x) {
  return make_plan(B, H, device, max_blocks_x, pick_kernel<true>(cell, dtype),
                   [&](int tpb) { return rnn_persistent_bwd_smem_bytes(cell, dtype, H, tpb); });
}

cudaError_t rnn_persistent_fwd(const RnnPersistentFwdParams& p, cudaStream_t stream) {
  if (!valid_shape(p)) return cudaErrorInvalidValue;
  return launch<false>(p, rnn_persistent_fwd_smem_bytes(p.cell, p.dtype, p.H, p.tiles_per_block), stream);
}

cudaError_t rnn_persistent_bwd(const RnnPersistentBwdParams& p, cudaStream_t stream) {
  if (!valid_shape(p)) return cudaErrorInvalidValue;
  return launch<true>(p, rnn_persistent_bwd_smem_bytes(p.cell, p.dtype, p.H, p.tiles_per_block), stream);
}

}  // namespace cuda
}  // namespace pyneuro
