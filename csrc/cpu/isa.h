// CPU instruction-set variants of the kernels, and the choice between them.
//
// Every file in csrc/cpu/isa/ is compiled once per variant (CMakeLists.txt), each time with its
// own -march and with PYNEURO_CPU_ISA naming the namespace its definitions go into:
//   baseline  plain x86-64 (SSE2), or the compiler's default on other architectures
//   avx2      x86-64-v3: AVX2, FMA, BMI1/2, F16C            (x86-64 builds only)
//   avx512    x86-64-v4: v3 + AVX-512 F/BW/CD/DQ/VL         (x86-64 builds only)
// The ops call kernels() and get the table of the variant in use: by default the best one the
// CPU runs, or the one PYNEURO_CPU_ISA names (read when the extension loads). A value that is
// unknown or needs features this CPU lacks is refused, not silently replaced: the refusal is
// recorded, every CPU op then raises ValueError with it, and build_info() reports it
// ("cpu_isa": None, "cpu_isa_error": the message) until set_isa() picks a runnable variant.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "common/selective_scan_args.h"
#include "cpu/philox.h"

// The variants built (CMake's PYNEURO_CPU_EXTRA_ISAS: all of them but in make sanitize's build).
#if defined(PYNEURO_CPU_WITH_AVX2)
#define PYNEURO_CPU_ISA_AVX2(X) X(avx2)
#else
#define PYNEURO_CPU_ISA_AVX2(X)
#endif
#if defined(PYNEURO_CPU_WITH_AVX512)
#define PYNEURO_CPU_ISA_AVX512(X) X(avx512)
#else
#define PYNEURO_CPU_ISA_AVX512(X)
#endif
#define PYNEURO_FOR_EACH_CPU_ISA(X) X(baseline) PYNEURO_CPU_ISA_AVX2(X) PYNEURO_CPU_ISA_AVX512(X)

namespace pyneuro::cpu {

using ScanFwdResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using ScanBwdResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                 at::Tensor, at::Tensor>;

// The functions of csrc/cpu/vec_math.h, for the test entry point _vec_math.
enum class VecFn { kExp, kExp2, kExp2Clamped, kLog1p, kSoftplus, kSigmoid, kTanh, kSilu };

// A recurrent step's batch rows [b0, b1) and sizes (csrc/cpu/isa/rnn_kernels.cpp): H hidden units,
// ld_reserve the reserve's row stride in floats (docs/rnn_contract.md).
struct RnnRows {
  int64_t b0 = 0, b1 = 0, H = 0, ld_reserve = 0;
};

// One step of a fused recurrence (csrc/cpu/isa/fused_step_kernels.cpp): the LSTM without a
// projection (G = 4 gates), the GRU (G = 3), the Elman cell or the leaky integrator (G = 1); the
// state h is H wide. All fp32; `ld*` are row strides in floats. The forward reads x_t (B x I),
// h_prev (and the LSTM's c_prev, the leaky cell's u_{t-1}), and writes the step's reserve (LSTM: the
// activated gates, c_t, h_t; Elman: h_t; leaky: u_t, and tanh(u_t) into h_t). The backward reads
// reserve_t (and c_prev), dh (the gradient of h_t from outside the recurrence: dy_t, plus dh_n at
// the last step) and dgates_next (dG_{t+1}, null at the last step), writes dgates (dG_t, B x G H;
// the GRU's 4 H rows hold the gradients of both of its pre-activations, see gru_fused_bwd) and, for
// the LSTM, carries dc (B x H) from c_t's gradient to c_{t-1}'s in place (the GRU carries dh_t z_t
// there, its direct path to h_{t-1}; the leaky cell (1 - α) g_t, its path along the leak, in carry).
struct FusedStep {
  int64_t B = 0, H = 0, I = 0, ld_reserve = 0;
  const float* packed = nullptr;     // fused_pack_weights(w_hh, G, H, H, backward) of this direction
  const float* packed_ih = nullptr;  // forward: fused_pack_weights(w_ih, G, H, I, false)
  const float* bias = nullptr;       // forward: b_ih + b_hh (G H); the GRU's b_ih alone
  const float* bias_hh = nullptr;    // forward, GRU: b_hh
  const float* x_t = nullptr;        // forward: row stride I
  const float* h_prev = nullptr;
  int64_t ld_h = 0;
  const float* c_prev = nullptr;  // the LSTM's c_{t-1}, the leaky cell's u_{t-1}
  int64_t ld_c = 0;
  float* reserve_t = nullptr;
  const float* dgates_next = nullptr;
  const float* dh = nullptr;
  float* dc = nullptr;
  float* dgates = nullptr;
  int64_t ld_dgates = 0;  // row stride of dgates and dgates_next: G H, the GRU's 4 H
  // The leaky cell (row stride H): alpha = 1/τ (H). h_t: forward, tanh(u_t) out; backward, tanh(u_t)
  // in (null at the last step: computed from u_t), as step t+1 wrote it to h_prev_out.
  const float* alpha = nullptr;
  float* h_t = nullptr;
  float* h_prev_out = nullptr;  // backward: tanh(u_{t-1}) out, for step t-1 and dW_hh (null at t = 0)
  float* carry = nullptr;       // backward: (1 - α) g_{t+1} in, (1 - α) g_t out (B x H)
  float* dtau = nullptr;        // backward: += g_t (u_{t-1} - u_t) α, per batch row (B x H)
};

// The weight gradients and the input gradient of one step t of a fused recurrence's backward
// (csrc/cpu/isa/fused_step_kernels.cpp, fused_grad_step), computed while the next (earlier) step's
// tiles run: both only read dG_t. Row strides are ld_d for d_rec and d_input, I for x_t and dx_t,
// ld_w for the accumulators. A tile reads d_rec and d_input up to fused_grad_width() - 1 floats past
// a row's G H: the buffers must hold that many floats past their last row.
enum class GradPart { kRecurrentWeights, kInputWeights, kInput, kBias };
struct GradStep {
  int64_t B = 0, H = 0, I = 0, G = 0;
  const float* d_rec = nullptr;    // (B, G H): gradient of h_{t-1} W_hhᵀ + b_hh
  const float* d_input = nullptr;  // (B, G H): of x_t W_ihᵀ + b_ih (d_rec itself but for the GRU)
  int64_t ld_d = 0;
  const float* h_prev = nullptr;   // h_{t-1}, row stride ld_h
  int64_t ld_h = 0;
  const float* x_t = nullptr;
  float* dw_hh_t = nullptr;  // (H, ld_w): += h_{t-1}ᵀ d_rec, i.e. dW_hhᵀ
  float* dw_ih_t = nullptr;  // (I, ld_w): += x_tᵀ d_input, i.e. dW_ihᵀ
  int64_t ld_w = 0;          // G H rounded up to a multiple of fused_grad_width()
  const float* packed_ih = nullptr;  // fused_pack_weights(w_ih, G, H, I, backward = true)
  float* dx_t = nullptr;             // = d_input W_ih, or null when the input needs no gradient
  // (2, ld_w), a compensated (Kahan) sum and what it lost: += the column sums of d_input, and of
  // d_rec when it is not d_input. A bias gradient sums T·B terms against a growing total.
  float* db_input = nullptr;
  float* db_rec = nullptr;
};

// One attention call for the kernels of csrc/cpu/isa/attention_kernels.cpp (docs/attention_contract.md),
// all fp32 (csrc/cpu/attention.cpp widens half inputs once). q, k, v, dout and out are read through
// their (batch, head, row) strides, the last stride being 1; out, lse, dq, dk, dv and delta are
// contiguous. Work is split into tasks: forward and dq (b, h, query block), dk/dv (b, kv head, key
// block), fused backward (b, kv head); the driver hands each thread a range [t0, t1) of them.
struct AttentionParams {
  int64_t B = 0, Hq = 0, Hkv = 0, Lq = 0, Lk = 0, D = 0;
  int64_t block_q = 0, block_k = 0;  // rows of a query block, keys of a key block
  bool causal = false;
  float scale = 1.f;
  bool dropout = false;
  philox::DropoutParams drop;
  const float *q = nullptr, *k = nullptr, *v = nullptr;
  int64_t q_strides[3] = {}, k_strides[3] = {}, v_strides[3] = {};  // batch, head, row
  float* out = nullptr;   // forward: (B, Hq, Lq, D) at out_strides
  int64_t out_strides[3] = {};
  float* lse = nullptr;   // forward writes, backward reads: (B, Hq, Lq), contiguous
  const float *dout = nullptr, *o = nullptr;  // backward: dout and the forward's out
  int64_t dout_strides[3] = {}, o_strides[3] = {};
  // backward outputs, shaped as q, k, v, at their own strides (the packed form writes all three
  // into one (B, L, 3, H, D) gradient)
  float *dq = nullptr, *dk = nullptr, *dv = nullptr;
  int64_t dq_strides[3] = {}, dk_strides[3] = {}, dv_strides[3] = {};
  float* delta = nullptr;  // backward scratch: rowsum(dout * out), (B, Hq, Lq)
};

// Batch norm + ReLU (+ 2x2 max-pool), csrc/cpu/isa/batch_norm_kernels.cpp (docs/batch_norm_contract.md):
// x (N, C, H, W) fp32, NCHW or NHWC; z = x scale[c] + shift[c]; out (N, C, H/pool, W/pool) in x's
// layout. Units: NCHW (n, c) planes, NHWC output rows (n, i). The backward's dx = dx_k[c] dz +
// dx_bx[c] x + dx_cx[c], dz being the gradient that reaches z through the pool and the ReLU.
struct BatchNormReluParams {
  int64_t N = 0, C = 0, H = 0, W = 0, pool = 1;
  bool channels_last = false;
  bool training = false;  // backward: dx has terms through the batch statistics
  const float* x = nullptr;
  const float *scale = nullptr, *shift = nullptr;
  const float* pivot = nullptr;  // per channel: the shift of the statistics' sums (x[0, c, 0, 0])
  float* out = nullptr;
  const float* dout = nullptr;
  float* dx = nullptr;
  const float *dx_k = nullptr, *dx_bx = nullptr, *dx_cx = nullptr;
};

// Residual add + layer norm over the last dim, csrc/cpu/isa/layer_norm_kernels.cpp
// (pyneuro/ops/layernorm): rows of N contiguous fp32 features. Forward: total = (x + x_bias) +
// residual (x_bias (N,) and residual optional: with neither, total is x and not written), out =
// (total - mean) rstd weight + bias (weight, bias optional), per row rstd and shift = mean - the
// row's first element (the pivot the kernels form t - mean with). Backward: dx = the gradient
// reaching total (through out, plus dtotal when given); dweight, dbias and dx_bias (= Σ dx) summed
// per chunk of kLayerNormChunkRows rows into partials (chunk c at c N), which the driver adds in
// chunk order.
struct LayerNormParams {
  int64_t rows = 0, N = 0;
  float eps = 1e-5f;
  const float *x = nullptr, *x_bias = nullptr, *residual = nullptr, *weight = nullptr, *bias = nullptr;
  float *out = nullptr, *total = nullptr, *shift = nullptr, *rstd = nullptr;
  const float *dout = nullptr, *dtotal = nullptr, *input = nullptr;  // input: the normalised rows (total or x)
  float *dx = nullptr, *dweight_part = nullptr, *dbias_part = nullptr, *dx_bias_part = nullptr;
};
constexpr int64_t kLayerNormChunkRows = 32;

// Bias + exact GELU, csrc/cpu/isa/gelu_kernels.cpp (pyneuro/ops/gelu): rows of N contiguous fp32
// features, u = x + bias (bias optional). Forward: out = u Φ(u). Backward: dx = dout (Φ(u) + u φ(u)),
// dbias summed per chunk of kGeluChunkRows rows into partials (chunk c at c N), added in chunk order
// by the driver.
struct GeluParams {
  int64_t rows = 0, N = 0;
  const float *x = nullptr, *bias = nullptr, *dout = nullptr;
  float *out = nullptr, *dx = nullptr, *dbias_part = nullptr;
};
constexpr int64_t kGeluChunkRows = 32;

// What each variant defines (csrc/cpu/isa/*.cpp). Arguments are checked before these are called
// (csrc/common/selective_scan_args.h); `s` holds the checked sizes.
#define PYNEURO_DECLARE_CPU_KERNELS(isa)                                                                          \
  namespace isa {                                                                                                 \
  ScanFwdResult selective_scan_fwd(const SelectiveScanShape& s, const at::Tensor& u, const at::Tensor& delta,     \
                                   const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,                 \
                                   const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,        \
                                   const std::optional<at::Tensor>& delta_bias,                                   \
                                   const std::optional<at::Tensor>& initial_state, bool delta_softplus);          \
  ScanBwdResult selective_scan_bwd(const SelectiveScanShape& s, const at::Tensor& dout,                           \
                                   const std::optional<at::Tensor>& dlast_state, const at::Tensor& u,             \
                                   const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,             \
                                   const at::Tensor& C, const std::optional<at::Tensor>& D,                       \
                                   const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& delta_bias, \
                                   const std::optional<at::Tensor>& initial_state, const at::Tensor& chunk_states, \
                                   bool delta_softplus);                                                          \
  void vec_math(VecFn fn, const float* x, float* y, int64_t n);                                                   \
  void attention_fwd(const AttentionParams& p, int64_t t0, int64_t t1);                                           \
  void attention_bwd_dq(const AttentionParams& p, int64_t t0, int64_t t1);                                        \
  void attention_bwd_dkdv(const AttentionParams& p, int64_t t0, int64_t t1);                                      \
  void attention_bwd_fused(const AttentionParams& p, int64_t t0, int64_t t1);                                     \
  void batch_norm_stats(const BatchNormReluParams& p, int64_t u0, int64_t u1, double* s1, double* s2);             \
  void batch_norm_relu_fwd(const BatchNormReluParams& p, int64_t u0, int64_t u1);                                  \
  void batch_norm_relu_bwd_sums(const BatchNormReluParams& p, int64_t u0, int64_t u1, double* sg, double* sgx);    \
  void batch_norm_relu_bwd_dx(const BatchNormReluParams& p, int64_t u0, int64_t u1);                               \
  void layer_norm_fwd(const LayerNormParams& p, int64_t r0, int64_t r1);                                            \
  void layer_norm_bwd(const LayerNormParams& p, int64_t c0, int64_t c1);                                            \
  void gelu_fwd(const GeluParams& p, int64_t r0, int64_t r1);                                                       \
  void gelu_bwd(const GeluParams& p, int64_t c0, int64_t c1);                                                       \
  void lstm_fwd_step(const RnnRows& r, const float* bias, const float* c_prev, int64_t ld_c, float* reserve_t,    \
                     float* m_out);                                                                               \
  void lstm_bwd_step(const RnnRows& r, const float* dm, int64_t ld_dm, const float* reserve_t, const float* c_prev, \
                     int64_t ld_c, float* dc, float* dgates_t, float* m_out);                                     \
  int64_t fused_packed_floats(int64_t G, int64_t H, int64_t K, bool backward);                                     \
  void fused_pack_weights(const float* w, int64_t G, int64_t H, int64_t K, bool backward, float* packed);         \
  int64_t fused_step_tiles(int64_t G, int64_t B, int64_t H, bool backward);                                       \
  void lstm_fused_fwd(const FusedStep& s, int64_t tile0, int64_t tile1);                                          \
  void lstm_fused_bwd(const FusedStep& s, int64_t tile0, int64_t tile1);                                          \
  void gru_fused_fwd(const FusedStep& s, int64_t tile0, int64_t tile1);                                           \
  void gru_fused_bwd(const FusedStep& s, int64_t tile0, int64_t tile1);                                           \
  void rnn_fused_fwd(const FusedStep& s, bool relu, int64_t tile0, int64_t tile1);                                \
  int64_t fused_grad_width();                                                                                     \
  int64_t fused_grad_tiles(const GradStep& g, GradPart part);                                                     \
  void fused_grad_step(const GradStep& g, GradPart part, int64_t tile0, int64_t tile1);                           \
  void rnn_fused_bwd(const FusedStep& s, bool relu, int64_t tile0, int64_t tile1);                                \
  void leaky_fused_fwd(const FusedStep& s, int64_t tile0, int64_t tile1);                                         \
  void leaky_fused_bwd(const FusedStep& s, int64_t tile0, int64_t tile1);                                         \
  }
PYNEURO_FOR_EACH_CPU_ISA(PYNEURO_DECLARE_CPU_KERNELS)
#undef PYNEURO_DECLARE_CPU_KERNELS

struct KernelTable {
  const char* isa;
  decltype(&baseline::selective_scan_fwd) selective_scan_fwd;
  decltype(&baseline::selective_scan_bwd) selective_scan_bwd;
  decltype(&baseline::vec_math) vec_math;
  decltype(&baseline::lstm_fwd_step) lstm_fwd_step;
  decltype(&baseline::lstm_bwd_step) lstm_bwd_step;
  decltype(&baseline::fused_packed_floats) fused_packed_floats;
  decltype(&baseline::fused_pack_weights) fused_pack_weights;
  decltype(&baseline::fused_step_tiles) fused_step_tiles;
  decltype(&baseline::lstm_fused_fwd) lstm_fused_fwd;
  decltype(&baseline::lstm_fused_bwd) lstm_fused_bwd;
  decltype(&baseline::gru_fused_fwd) gru_fused_fwd;
  decltype(&baseline::gru_fused_bwd) gru_fused_bwd;
  decltype(&baseline::rnn_fused_fwd) rnn_fused_fwd;
  decltype(&baseline::rnn_fused_bwd) rnn_fused_bwd;
  decltype(&baseline::fused_grad_width) fused_grad_width;
  decltype(&baseline::fused_grad_tiles) fused_grad_tiles;
  decltype(&baseline::fused_grad_step) fused_grad_step;
  decltype(&baseline::leaky_fused_fwd) leaky_fused_fwd;
  decltype(&baseline::leaky_fused_bwd) leaky_fused_bwd;
  decltype(&baseline::attention_fwd) attention_fwd;
  decltype(&baseline::attention_bwd_dq) attention_bwd_dq;
  decltype(&baseline::attention_bwd_dkdv) attention_bwd_dkdv;
  decltype(&baseline::attention_bwd_fused) attention_bwd_fused;
  decltype(&baseline::batch_norm_stats) batch_norm_stats;
  decltype(&baseline::batch_norm_relu_fwd) batch_norm_relu_fwd;
  decltype(&baseline::batch_norm_relu_bwd_sums) batch_norm_relu_bwd_sums;
  decltype(&baseline::batch_norm_relu_bwd_dx) batch_norm_relu_bwd_dx;
  decltype(&baseline::layer_norm_fwd) layer_norm_fwd;
  decltype(&baseline::layer_norm_bwd) layer_norm_bwd;
  decltype(&baseline::gelu_fwd) gelu_fwd;
  decltype(&baseline::gelu_bwd) gelu_bwd;
};

// The variant in use; raises ValueError (c10::ValueError) if PYNEURO_CPU_ISA was refused.
const KernelTable& kernels();
// The variant of this name if the CPU runs it, else the reason it cannot be used.
const KernelTable* find_kernels(const std::string& isa, std::string* why_not);

// For build_info() and the Python hooks (csrc/module.cpp).
std::vector<std::string> runnable_isas();     // best last
std::optional<std::string> active_isa();      // none while a PYNEURO_CPU_ISA refusal stands
std::optional<std::string> isa_error();       // that refusal
std::optional<std::string> set_isa(const std::string& isa);  // the refusal, or none once switched
void init_isa();                              // reads PYNEURO_CPU_ISA (once; also done lazily)

}  // namespace pyneuro::cpu
