// CPU backend of the recurrent cells: pyneuro::lstm_fwd/_bwd, gru_*, rnn_*, leaky_* (layout,
// reserve and gradients: docs/rnn_contract.md).
//
// Where the time goes, and how each part is done (T steps, B batch, I inputs, H units, G gates):
//   - the input projection of all steps, x W_ihᵀ: ONE GEMM (T·B × I × G·H), before the loop,
//     written straight into the reserve's gate block (no pre-activation buffer);
//   - per step, the recurrent GEMM h_{t-1} W_hhᵀ (B × R × G·H), accumulated in place into that
//     step's gate block (beta = 1), then ONE fused pointwise pass (csrc/cpu/isa/rnn_kernels.cpp,
//     per ISA) that adds the bias and writes the activated gates, the state and the reserve;
//   - the backward runs the steps in reverse: a fused pointwise pass produces the gradients of
//     all gates of the step, and one GEMM sends them back to h_{t-1}, accumulating in place into
//     the next (earlier) step's incoming gradient;
//   - dx, dW_ih, dW_hh and the bias gradients: single GEMMs / reductions over all T·B rows after
//     the loop.
// All but the LSTM with a projection go further: each step's input and recurrent products and its
// pointwise pass are one kernel over (batch rows x units) tiles, against W_ih and W_hh packed once
// per call (csrc/cpu/isa/fused_step_kernels.cpp). That removes the per-step
// library call and its re-packing of W_hh, and the pre-activations' round trip through memory.
// Their backward also accumulates dW_ih, dW_hh and the bias gradients, and writes dx, step by step
// inside the reverse loop (StepWeightGrads), each step's tiles in the parallel region of the step
// before it, instead of GEMMs and reductions over all T·B rows after it.
// Every backward keeps its scratch between calls (scratch()).
// GEMMs go through torch's oneDNN matmul when torch has it (see onednn_matmul()), else BLAS sgemm
// on raw pointers (MKL's packed form when available). Nothing is dispatched through the torch
// operator registry inside the time loop and no buffer is allocated there (a oneDNN call wraps its
// operands in tensor views). Half-precision inputs are widened to fp32 once; math and state are fp32.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <dlfcn.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>
#include <tuple>

#include "common/rnn_args.h"
#include "cpu/fp_env.h"
#include "cpu/isa.h"
#include "cpu/memory.h"

namespace pyneuro::cpu {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// The BLAS sgemm that torch itself links (MKL on x86 wheels, OpenBLAS elsewhere), found at run
// time: torch does not export a raw-pointer GEMM, and a per-step at::mm would create tensors and
// go through the dispatcher T times. Fortran ABI with 32-bit integers (LP64), as torch's builds.
using SgemmFn = void (*)(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                         const int*, const float*, const int*, const float*, float*, const int*);

void* find_blas_symbol(const char* name) {
  for (const char* lib : {"libtorch_cpu.so", "libtorch_cpu.dylib"}) {
    if (void* handle = dlopen(lib, RTLD_LAZY | RTLD_NOLOAD)) {
      if (void* fn = dlsym(handle, name)) return fn;
    }
  }
  return dlsym(RTLD_DEFAULT, name);
}

at::Tensor matrix(const float* p, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(const_cast<float*>(p), {rows, cols}, {ld, 1}, at::TensorOptions().dtype(at::kFloat));
}

// torch's oneDNN GEMM, at::native::mkldnn_matmul(mat1, mat2, result, beta, alpha): result =
// beta result + alpha mat1 mat2, strided operands allowed. oneDNN's JIT GEMM (what torch.nn's CPU
// RNNs use) is up to 2x MKL's sgemm on AMD CPUs, where MKL does not pick its fastest kernels:
// measured 98 vs 45 GFLOP/s for one LSTM step (128 x 128 x 512, one Zen 4 core). Found by its
// mangled name, so that a torch without it (or with another signature) still loads this extension
// and the GEMMs fall back to BLAS. Recent torch builds take fp32 there only on CPUs that pass their
// bf16 device check (AVX-512 BW/VL/DQ or AVX-NE-CONVERT) and raise on others (an AVX2-only EPYC):
// one 2 × 2 product, tried and checked once, decides, so such a CPU gets BLAS instead of the error.
using OnednnMatmul = void (*)(const at::Tensor&, const at::Tensor&, const at::Tensor&, float, float);
OnednnMatmul onednn_matmul() {
  static const OnednnMatmul fn = []() -> OnednnMatmul {
    const auto found =
        reinterpret_cast<OnednnMatmul>(find_blas_symbol("_ZN2at6native13mkldnn_matmulERKNS_6TensorES3_S3_ff"));
    if (found == nullptr) return nullptr;
    try {
      const at::Tensor a = at::arange(4, at::kFloat).view({2, 2});
      const at::Tensor c = at::empty({2, 2}, at::kFloat);
      found(a, a, c, 0.f, 1.f);
      return at::equal(c, at::mm(a, a)) ? found : nullptr;
    } catch (const c10::Error&) {
      return nullptr;
    }
  }();
  return fn;
}

// out (M × N) = a (M × K) b (K × N) + beta out, for the GEMMs over all T·B rows.
void gemm_all_into(const at::Tensor& a, const at::Tensor& b, at::Tensor& out, float beta) {
  if (OnednnMatmul fn = onednn_matmul()) {
    fn(a, b, out, beta, 1.f);
  } else if (beta == 0.f) {
    at::mm_out(out, a, b);
  } else {
    out.addmm_(a, b, beta, 1.f);
  }
}

at::Tensor gemm_all(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
  gemm_all_into(a, b, out, 0.f);
  return out;
}

// Row-major C (M × N, row stride ldc) = op(A) op(B) + beta C, with op(A) M × K and op(B) K × N;
// `ta`/`tb` transpose a row-major stored A (K × M) / B (N × K). BLAS is column-major, and a
// row-major matrix is its column-major transpose, so this is the column-major Cᵀ = op(B)ᵀ op(A)ᵀ.
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
          float beta, float* C, int64_t ldc) {
  static const auto sgemm = reinterpret_cast<SgemmFn>(find_blas_symbol("sgemm_"));
  if (sgemm != nullptr) {
    const char op_a = ta ? 'T' : 'N', op_b = tb ? 'T' : 'N';
    const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
    const int la = static_cast<int>(ldb), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
    const float one = 1.f;
    sgemm(&op_b, &op_a, &m, &n, &k, &one, B, &la, A, &lb, &beta, C, &lc);
    return;
  }
  // No BLAS symbol in this torch build: the same product through ATen.
  at::Tensor a = ta ? matrix(A, K, M, lda).t() : matrix(A, M, K, lda);
  at::Tensor b = tb ? matrix(B, N, K, ldb).t() : matrix(B, K, N, ldb);
  at::Tensor c = matrix(C, M, N, ldc);
  if (beta == 0.f) {
    at::mm_out(c, a, b);
  } else {
    c.addmm_(a, b, beta, 1.f);
  }
}

// A weight used by every step's GEMM, C (M × N) = A (M × K) op(W) + beta C, with W packed once
// into MKL's internal GEMM layout (cblas_sgemm_pack) when torch's BLAS is MKL. An unpacked sgemm
// re-packs W at every call: for the recurrent GEMM of a small batch (M = 32, W 256 × 1024) that
// copy moves as many bytes as the product reads. Without MKL it is the plain gemm() above.
class StepWeight {
 public:
  // Below this many multiply-adds a oneDNN call's fixed cost (~15 µs: descriptors, primitive
  // cache) outweighs its faster kernel; BLAS takes those (a 100³ step is ~10 µs of work).
  static constexpr int64_t kOnednnMinWork = int64_t{1} << 20;

  // W is row-major, stored (N × K) when `transposed` (op(W) = Wᵀ, as W_hh in h W_hhᵀ), else (K × N).
  StepWeight(const float* W, int64_t ldw, bool transposed, int64_t M, int64_t N, int64_t K)
      : W_(W), ldw_(ldw), transposed_(transposed), M_(M), N_(N), K_(K) {
    weight_ = transposed ? matrix(W, N, K, ldw).t() : matrix(W, K, N, ldw);
    if (onednn_matmul() != nullptr && M * N * K >= kOnednnMinWork) return;
    const Api& api = mkl();
    if (api.pack == nullptr) return;
    const size_t bytes = api.get_size(kBMatrix, static_cast<int>(M), static_cast<int>(N), static_cast<int>(K));
    packed_ = at::empty({static_cast<int64_t>((bytes + sizeof(float) - 1) / sizeof(float))}, at::kFloat);
    api.pack(kRowMajor, kBMatrix, transposed ? kTrans : kNoTrans, static_cast<int>(M), static_cast<int>(N),
             static_cast<int>(K), 1.f, W, static_cast<int>(ldw), packed_.data_ptr<float>());
  }

  void multiply(const float* A, int64_t lda, float beta, float* C, int64_t ldc) const {
    if (onednn_matmul() != nullptr && M_ * N_ * K_ >= kOnednnMinWork) {
      const at::Tensor c = matrix(C, M_, N_, ldc);
      onednn_matmul()(matrix(A, M_, K_, lda), weight_, c, beta, 1.f);
      return;
    }
    if (!packed_.defined()) {
      gemm(false, transposed_, M_, N_, K_, A, lda, W_, ldw_, beta, C, ldc);
      return;
    }
    mkl().compute(kRowMajor, kNoTrans, kPacked, static_cast<int>(M_), static_cast<int>(N_), static_cast<int>(K_), A,
                  static_cast<int>(lda), packed_.const_data_ptr<float>(), static_cast<int>(N_), beta, C,
                  static_cast<int>(ldc));
  }

 private:
  // MKL's CBLAS enum values (mkl_cblas.h), and its packed-GEMM entry points with 32-bit ints.
  static constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kBMatrix = 162;
  struct Api {
    size_t (*get_size)(int, int, int, int) = nullptr;
    void (*pack)(int, int, int, int, int, int, float, const float*, int, float*) = nullptr;
    void (*compute)(int, int, int, int, int, int, const float*, int, const float*, int, float, float*, int) = nullptr;
  };
  static const Api& mkl() {
    static const Api api = [] {
      Api a;
      a.get_size = reinterpret_cast<decltype(a.get_size)>(find_blas_symbol("cblas_sgemm_pack_get_size"));
      a.pack = reinterpret_cast<decltype(a.pack)>(find_blas_symbol("cblas_sgemm_pack"));
      a.compute = reinterpret_cast<decltype(a.compute)>(find_blas_symbol("cblas_sgemm_compute"));
      if (!a.get_size || !a.pack || !a.compute) a = Api{};
      return a;
    }();
    return api;
  }

  const float* W_;
  at::Tensor weight_;  // W as op(W), a (K × N) view, for oneDNN
  int64_t ldw_;
  bool transposed_;
  int64_t M_, N_, K_;
  at::Tensor packed_;
};

// The fused pointwise pass of one step, split over batch rows: enough rows per task that a task
// moves ~64 KiB, below which the fork costs more than the pass.
template <typename F>
void for_rows(int64_t B, int64_t floats_per_row, const F& step) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(floats_per_row, 1));
  at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
    const FlushSubnormals flush;
    step(b0, b1);
  });
}

// The tiles of one fused step, split over threads in contiguous ranges (a thread keeps its weight
// panels in cache): enough tiles per task for ~2^20 multiply-adds (~10 µs on one core), below
// which the fork costs more than the work. `work` is the step's multiply-adds.
template <typename F>
void for_tiles(int64_t tiles, int64_t work, const F& run) {
  const int64_t per_tile = std::max<int64_t>(1, work / std::max<int64_t>(tiles, 1));
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 20) / per_tile);
  at::parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
    const FlushSubnormals flush;  // see fp_env.h: fading gradients must not hit microcode assists
    run(t0, t1);
  });
}

// One parallel region over several sets of tiles (a backward step's, and the gradient tiles of the
// step after it): thread p of n takes the p-th n-th of every set, the same share at every step, so
// that it keeps re-reading the same weight panels and accumulating into the same part of dW. Fewer
// threads when the region has less than ~2^20 multiply-adds per thread (`work`, as for_tiles).
template <size_t N, typename F>
void for_tile_sets(const std::array<int64_t, N>& counts, int64_t work, const F& run) {
  const int64_t threads = std::clamp<int64_t>(work >> 20, 1, at::get_num_threads());
  at::parallel_for(0, threads, 1, [&](int64_t p0, int64_t p1) {
    const FlushSubnormals flush;
    for (int64_t p = p0; p < p1; ++p) {
      for (size_t set = 0; set < N; ++set) {
        const int64_t t0 = counts[set] * p / threads, t1 = counts[set] * (p + 1) / threads;
        if (t0 < t1) run(set, t0, t1);
      }
    }
  });
}

// The per-step GEMMs pass sizes and strides to BLAS as 32-bit ints.
void check_blas_sizes(const char* op, const RnnShape& s) {
  const int64_t widest = std::max({s.B, s.I, 6 * s.H + s.R});
  TORCH_CHECK_VALUE(widest <= INT32_MAX, op, ": batch, input_size and 6 * hidden_size + state_size must stay below 2^31 "
                    "for the CPU backend's BLAS calls, got ", widest);
}

// Scratch that a call fills and drops (the gate and state gradients, packed weights): kept per
// thread and per slot between calls, so that the next call of the same size finds its pages already
// mapped instead of faulting them in again (glibc hands buffers of many MiB back to the kernel on
// free). Never returned to the caller, not even as a view. Buffers above 256 MiB are not kept.
enum class Scratch {
  kGateGrads, kStates, kPackedForward, kPackedInput, kPackedBackward, kPackedInputBackward, kCount
};

Tensor scratch(Scratch slot, at::IntArrayRef sizes) {
  constexpr int64_t kMaxKeptBytes = int64_t{256} << 20;
  thread_local std::array<Tensor, static_cast<size_t>(Scratch::kCount)> kept;
  const int64_t n = c10::multiply_integers(sizes);
  Tensor& buffer = kept[static_cast<size_t>(slot)];
  if (!buffer.defined() || buffer.numel() < n) {
    Tensor fresh_buffer = with_huge_pages(at::empty({n}, at::TensorOptions().dtype(at::kFloat)));
    if (n * static_cast<int64_t>(sizeof(float)) > kMaxKeptBytes) return fresh_buffer.view(sizes);
    buffer = fresh_buffer;
  }
  return buffer.narrow(0, 0, n).view(sizes);
}

Tensor f32(const Tensor& t) { return t.to(at::kFloat).contiguous(); }
Tensor f32_copy(const Tensor& t) { return t.to(at::kFloat, /*non_blocking=*/false, /*copy=*/true).contiguous(); }
float* ptr(Tensor& t) { return t.data_ptr<float>(); }
const float* ptr(const Tensor& t) { return t.const_data_ptr<float>(); }

// A fresh output of dtype `dt` holding `src` (outputs may alias neither inputs nor each other).
Tensor fresh(const Tensor& src, at::ScalarType dt) {
  return at::empty(src.sizes(), src.options().dtype(dt)).copy_(src);
}

Tensor absent_grad(const Tensor& x) { return at::empty({0}, x.options()); }

Tensor grad_or_absent(const Tensor& g, const OptTensor& input, const Tensor& x) {
  return input.has_value() ? fresh(g, x.scalar_type()) : absent_grad(x);
}

// out (T·B rows, G·H columns, possibly a column block of a wider buffer) = x W_ihᵀ for all steps at
// once. The forwards write it straight into the reserve (or the state buffer) and let each step
// complete and activate its slice in place, adding the bias there: no pre-activation buffer, no
// separate bias pass.
void input_projection(const Tensor& x, const Tensor& w_ih, Tensor out) {
  gemm_all_into(f32(x).view({x.size(0) * x.size(1), x.size(2)}), f32(w_ih).t(), out, 0.f);
}

// b_ih + b_hh (either may be absent) as one fp32 vector of n.
Tensor combined_bias(const OptTensor& b_ih, const OptTensor& b_hh, int64_t n, const at::TensorOptions& options) {
  Tensor bias = at::zeros({n}, options);
  if (b_ih) bias.add_(f32(*b_ih));
  if (b_hh) bias.add_(f32(*b_hh));
  return bias;
}

// dx = dpre W_ih (absent unless `input_grad`) and dW_ih = dpreᵀ x over all T·B rows.
std::pair<Tensor, Tensor> input_grads(const Tensor& dpre, const Tensor& x, const Tensor& w_ih, bool input_grad) {
  const Tensor flat = dpre.view({-1, dpre.size(2)});
  Tensor dw_ih = gemm_all(flat.t(), f32(x).view({x.size(0) * x.size(1), x.size(2)}));
  if (!input_grad) return {absent_grad(x), dw_ih.to(x.scalar_type())};
  Tensor dx = gemm_all(flat, f32(w_ih)).view({x.size(0), x.size(1), x.size(2)});
  return {dx.to(x.scalar_type()), dw_ih.to(x.scalar_type())};
}

// dW_hh = Σ_t dpre_tᵀ h_{t-1}: step 0 against the initial state, the rest against the states the
// forward kept (`states`: (T, B, ≥R) with the R-wide state starting at column `col`).
Tensor recurrent_weight_grad(const Tensor& dpre, const Tensor& h0, const Tensor& states, int64_t col, int64_t R) {
  const int64_t T = dpre.size(0), B = dpre.size(1), GH = dpre.size(2);
  Tensor dw = gemm_all(dpre[0].t(), h0);
  if (T > 1) {
    const Tensor prev = states.narrow(0, 0, T - 1).narrow(2, col, R).reshape({(T - 1) * B, R});
    gemm_all_into(dpre.narrow(0, 1, T - 1).reshape({(T - 1) * B, GH}).t(), prev, dw, 1.f);
  }
  return dw;
}

// ---------------------------------------------------------------------------------------------
// LSTM
// ---------------------------------------------------------------------------------------------
namespace {

// W_ih and W_hh in the forward panels of the fused step (G gates), in per-thread scratch.
std::pair<Tensor, Tensor> packed_forward_weights(const KernelTable& k, int64_t G, const Tensor& wih, const Tensor& whh) {
  const int64_t H = whh.size(1), I = wih.size(1);
  Tensor packed_ih = scratch(Scratch::kPackedInput, {k.fused_packed_floats(G, H, I, /*backward=*/false)});
  Tensor packed_hh = scratch(Scratch::kPackedForward, {k.fused_packed_floats(G, H, H, /*backward=*/false)});
  k.fused_pack_weights(ptr(wih), G, H, I, /*backward=*/false, ptr(packed_ih));
  k.fused_pack_weights(ptr(whh), G, H, H, /*backward=*/false, ptr(packed_hh));
  return {packed_ih, packed_hh};
}

Tensor packed_backward_weights(const KernelTable& k, int64_t G, const Tensor& whh) {
  const int64_t H = whh.size(1);
  Tensor packed = scratch(Scratch::kPackedBackward, {k.fused_packed_floats(G, H, H, /*backward=*/true)});
  k.fused_pack_weights(ptr(whh), G, H, H, /*backward=*/true, ptr(packed));
  return packed;
}

// The gate gradients of all T steps of a fused backward, (T, B, G H), followed by the floats that
// the gradient tiles may read past the last row (GradStep), zeroed.
Tensor padded_gate_grads(const KernelTable& k, Scratch slot, int64_t T, int64_t B, int64_t GH) {
  const int64_t n = T * B * GH, pad = k.fused_grad_width();
  Tensor buffer = scratch(slot, {n + pad});
  buffer.narrow(0, n, pad).zero_();
  return buffer.narrow(0, 0, n).view({T, B, GH});
}

// dW_ih, dW_hh, the bias gradients and dx of a fused backward, computed step by step inside its
// reverse loop (fused_grad_step, csrc/cpu/isa/fused_step_kernels.cpp): the tiles of step t+1's
// gradients run in the parallel region of step t's tiles, while dG_{t+1} is still in cache. After
// the loop, GEMMs over all T·B rows did this; at (28, 128, 28, 128) on an AVX2 EPYC they ran at half
// the rate of the steps' own products (skinny operands: I = 28; a K of T·B rows that every call
// packs again). `states` holds h_t at column `h_col` of its (T, B, W) rows; `gate_grads` (T, B, L)
// holds each step's d_rec at column `rec_col` and d_input at `input_col` of its rows.
class StepWeightGrads {
 public:
  StepWeightGrads(const KernelTable& k, int64_t G, const Tensor& xf, const Tensor& w_ih, const Tensor& h0f,
                  const Tensor& states, int64_t h_col, const Tensor& gate_grads, int64_t rec_col, int64_t input_col,
                  bool input_grad)
      : k_(k), xf_(xf), h0f_(h0f), states_(states), gate_grads_(gate_grads), h_col_(h_col), rec_col_(rec_col),
        input_col_(input_col) {
    const int64_t T = xf.size(0), B = xf.size(1), I = xf.size(2), H = h0f.size(1), width = k.fused_grad_width();
    base_.B = B, base_.H = H, base_.I = I, base_.G = G, base_.ld_w = (G * H + width - 1) / width * width;
    base_.ld_d = gate_grads.size(2);
    dw_hh_t_ = at::zeros({H, base_.ld_w}, xf.options());
    dw_ih_t_ = at::zeros({I, base_.ld_w}, xf.options());
    db_ = at::zeros({2, 2, base_.ld_w}, xf.options());  // of d_input, of d_rec (the GRU's): sum, lost
    if (input_grad) {
      dx_ = at::empty({T, B, I}, xf.options());
      packed_ih_ = scratch(Scratch::kPackedInputBackward, {k.fused_packed_floats(G, H, I, /*backward=*/true)});
      k.fused_pack_weights(ptr(f32(w_ih)), G, H, I, /*backward=*/true, ptr(packed_ih_));
    }
  }

  // Backward step t: its `tiles` tiles (run_step(t0, t1), `step_work` multiply-adds) in one parallel
  // region with the gradient tiles of step t+1 (none at the last step); at t = 0 then step 0's
  // gradient tiles, alone. Call for t = T-1 down to 0.
  template <typename F>
  void reverse_step(int64_t t, int64_t tiles, int64_t step_work, const F& run_step) {
    if (t == xf_.size(0) - 1) {
      for_tiles(tiles, step_work, run_step);
    } else {
      run_with_grads(grads_of_step(t + 1), tiles, step_work, run_step);
    }
    if (t == 0) run_with_grads(grads_of_step(0), 0, 0, [](int64_t, int64_t) {});
  }

  Tensor dw_ih(at::ScalarType dt) const { return fresh(dw_ih_t_.narrow(1, 0, base_.G * base_.H).t(), dt); }
  Tensor dw_hh(at::ScalarType dt) const { return fresh(dw_hh_t_.narrow(1, 0, base_.G * base_.H).t(), dt); }
  Tensor dx(const Tensor& x) const { return dx_.defined() ? dx_.to(x.scalar_type()) : absent_grad(x); }
  // The bias gradients, fp32: the column sums of every step's d_input, and of d_rec (the GRU's only).
  Tensor db_input() const { return db_[0][0].narrow(0, 0, base_.G * base_.H); }
  Tensor db_rec() const { return db_[1][0].narrow(0, 0, base_.G * base_.H); }

 private:
  GradStep grads_of_step(int64_t t) {
    GradStep g = base_;
    const int64_t B = g.B, W = states_.size(2);
    const float* rows = ptr(gate_grads_) + t * B * g.ld_d;
    g.d_rec = rows + rec_col_, g.d_input = rows + input_col_;
    g.h_prev = t ? ptr(states_) + (t - 1) * B * W + h_col_ : ptr(h0f_), g.ld_h = t ? W : g.H;
    g.x_t = ptr(xf_) + t * B * g.I;
    g.dw_hh_t = ptr(dw_hh_t_), g.dw_ih_t = ptr(dw_ih_t_);
    g.db_input = ptr(db_), g.db_rec = g.db_input + 2 * g.ld_w;
    if (dx_.defined()) g.packed_ih = ptr(packed_ih_), g.dx_t = ptr(dx_) + t * B * g.I;
    return g;
  }

  template <typename F>
  void run_with_grads(const GradStep& grads, int64_t tiles, int64_t step_work, const F& run_step) const {
    const std::array<int64_t, 5> counts{tiles, k_.fused_grad_tiles(grads, GradPart::kRecurrentWeights),
                                        k_.fused_grad_tiles(grads, GradPart::kInputWeights),
                                        k_.fused_grad_tiles(grads, GradPart::kInput),
                                        k_.fused_grad_tiles(grads, GradPart::kBias)};
    const int64_t GH = base_.G * base_.H;
    const int64_t work = step_work + base_.B * GH * (base_.H + base_.I + (dx_.defined() ? base_.I : 0) + 1);
    for_tile_sets(counts, work, [&](size_t set, int64_t t0, int64_t t1) {
      if (set == 0) {
        run_step(t0, t1);
      } else {
        k_.fused_grad_step(grads, static_cast<GradPart>(set - 1), t0, t1);
      }
    });
  }

  const KernelTable& k_;
  Tensor xf_, h0f_, states_, gate_grads_;
  int64_t h_col_, rec_col_, input_col_;
  GradStep base_;
  Tensor dw_hh_t_, dw_ih_t_, db_, dx_, packed_ih_;
};

// The LSTM without a projection: the fused step of csrc/cpu/isa/fused_step_kernels.cpp. The input
// projection happens inside each step's tiles, so the reserve is written once, by the steps.
void lstm_fwd_fused(const KernelTable& k, const Tensor& x, const Tensor& h0f, const Tensor& c0f, const Tensor& w_ih,
                    const Tensor& whh, const Tensor& bias, Tensor& reserve) {
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = whh.size(1), W = reserve.size(2);
  const Tensor xf = f32(x);
  const auto [packed_ih, packed_hh] = packed_forward_weights(k, 4, f32(w_ih), whh);
  const int64_t tiles = k.fused_step_tiles(4, B, H, /*backward=*/false);
  float* res = ptr(reserve);
  for (int64_t t = 0; t < T; ++t) {
    FusedStep step;
    step.B = B, step.H = H, step.I = I, step.ld_reserve = W;
    step.packed = ptr(packed_hh), step.packed_ih = ptr(packed_ih), step.bias = ptr(bias);
    step.x_t = ptr(xf) + t * B * I;
    step.reserve_t = res + t * B * W;
    step.h_prev = t ? step.reserve_t - B * W + 5 * H : ptr(h0f), step.ld_h = t ? W : H;
    step.c_prev = t ? step.reserve_t - B * W + 4 * H : ptr(c0f), step.ld_c = t ? W : H;
    for_tiles(tiles, B * 4 * H * (H + I), [&](int64_t t0, int64_t t1) { k.lstm_fused_fwd(step, t0, t1); });
  }
}

// With a projection (h_t = m_t W_hrᵀ, R wide): all steps' input projection first, straight into
// the reserve's gate block, then per step the recurrent GEMM into it, the pointwise pass into m_t
// and the projection GEMM.
void lstm_fwd_projected(const KernelTable& k, const RnnShape& s, const Tensor& x, const Tensor& h0f,
                        const Tensor& c0f, const Tensor& w_ih, const Tensor& whh, const Tensor& whr,
                        const Tensor& bias, Tensor& reserve) {
  const int64_t T = s.T, B = s.B, H = s.H, R = s.R, W = reserve.size(2);
  input_projection(x, w_ih, reserve.view({T * B, W}).narrow(1, 0, 4 * H));
  Tensor m = at::empty({B, H}, reserve.options());
  const StepWeight recurrent(ptr(whh), R, /*transposed=*/true, B, 4 * H, R);
  const StepWeight projection(ptr(whr), H, /*transposed=*/true, B, R, H);
  float* res = ptr(reserve);
  for (int64_t t = 0; t < T; ++t) {
    float* res_t = res + t * B * W;
    const float* h_prev = t ? res_t - B * W + 5 * H : ptr(h0f);
    const float* c_prev = t ? res_t - B * W + 4 * H : ptr(c0f);
    recurrent.multiply(h_prev, t ? W : R, 1.f, res_t, W);  // += h_{t-1} W_hhᵀ
    for_rows(B, 10 * H, [&](int64_t b0, int64_t b1) {
      k.lstm_fwd_step({b0, b1, H, W}, ptr(bias), c_prev, t ? W : H, res_t, ptr(m));
    });
    projection.multiply(ptr(m), H, 0.f, res_t + 5 * H, W);
  }
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_fwd(const Tensor& x, const Tensor& h0, const Tensor& c0,
                                                    const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                                                    const OptTensor& b_hh, const OptTensor& w_hr) {
  const RnnShape s = check_rnn_fwd("lstm_fwd", RnnCell::kLstm, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr);
  check_blas_sizes("lstm_fwd", s);
  const auto& k = kernels();
  const int64_t T = s.T, B = s.B, H = s.H, R = s.R, W = rnn_reserve_width(RnnCell::kLstm, H, R);
  Tensor reserve = with_huge_pages(at::empty({T, B, W}, x.options().dtype(at::kFloat)));
  const Tensor bias = combined_bias(b_ih, b_hh, 4 * H, reserve.options());
  const Tensor h0f = f32(h0), c0f = f32(c0), whh = f32(w_hh);
  if (s.has_proj) {
    lstm_fwd_projected(k, s, x, h0f, c0f, w_ih, whh, f32(*w_hr), bias, reserve);
  } else {
    lstm_fwd_fused(k, x, h0f, c0f, w_ih, whh, bias, reserve);
  }
  const auto dt = x.scalar_type();
  return {fresh(reserve.narrow(2, 5 * H, R), dt), fresh(reserve[T - 1].narrow(1, 5 * H, R), dt),
          fresh(reserve[T - 1].narrow(1, 4 * H, H), dt), reserve};
}

namespace {

// The reverse loop of the fused step: dG (T, B, 4H), the carried dc and the weight gradients
// (`grads`); returns dh0 = dG_0 W_hh. `dyf` is dy in fp32 (read, not copied: the fused step adds
// dG_{t+1} W_hh to it in registers).
Tensor lstm_bwd_fused_loop(const KernelTable& k, const Tensor& dyf, const OptTensor& dh_n, const Tensor& c0f,
                           const Tensor& whh, const Tensor& reserve, Tensor& dc, Tensor& dG, StepWeightGrads& grads) {
  const int64_t T = dG.size(0), B = dG.size(1), H = whh.size(1), W = reserve.size(2);
  const Tensor packed = packed_backward_weights(k, 4, whh);
  const Tensor dh_last = dh_n ? dyf[T - 1] + dh_n->to(at::kFloat) : Tensor();
  const int64_t tiles = k.fused_step_tiles(4, B, H, /*backward=*/true);
  const float* res = ptr(reserve);
  for (int64_t t = T - 1; t >= 0; --t) {
    FusedStep step;
    step.B = B, step.H = H, step.ld_reserve = W, step.packed = ptr(packed);
    step.reserve_t = const_cast<float*>(res + t * B * W);  // read only
    step.c_prev = t ? res + (t - 1) * B * W + 4 * H : ptr(c0f), step.ld_c = t ? W : H;
    step.dgates_next = t < T - 1 ? ptr(dG) + (t + 1) * B * 4 * H : nullptr;
    step.dh = t == T - 1 && dh_last.defined() ? ptr(dh_last) : ptr(dyf) + t * B * H;
    step.dc = ptr(dc), step.dgates = ptr(dG) + t * B * 4 * H, step.ld_dgates = 4 * H;
    grads.reverse_step(t, tiles, B * 4 * H * H, [&](int64_t t0, int64_t t1) { k.lstm_fused_bwd(step, t0, t1); });
  }
  return gemm_all(dG[0], whh);
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_bwd(
    const Tensor& dy, const OptTensor& dh_n, const OptTensor& dc_n, const Tensor& x, const Tensor& h0,
    const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
    const OptTensor& w_hr, const Tensor& reserve, bool input_grad) {
  const RnnShape s = check_rnn_fwd("lstm_bwd", RnnCell::kLstm, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr);
  check_blas_sizes("lstm_bwd", s);
  check_rnn_bwd("lstm_bwd", RnnCell::kLstm, s, x, dy, dh_n, dc_n, reserve);
  const auto& k = kernels();
  const int64_t T = s.T, B = s.B, H = s.H, R = s.R, W = rnn_reserve_width(RnnCell::kLstm, H, R);
  const auto dt = x.scalar_type();
  Tensor dc = dc_n ? f32_copy(*dc_n) : at::zeros({B, H}, reserve.options());
  const Tensor c0f = f32(c0), h0f = f32(h0), whh = f32(w_hh);
  if (!s.has_proj) {
    Tensor dG = padded_gate_grads(k, Scratch::kGateGrads, T, B, 4 * H);
    // dx only when asked for: the first layer's input (images, tokens) needs none, and its product
    // (T·B x 4H x I) is ~9% of the backward at (28, 128, 28, 128).
    StepWeightGrads grads(k, 4, f32(x), w_ih, h0f, reserve, 5 * H, dG, 0, 0, input_grad);
    const Tensor dh0 = lstm_bwd_fused_loop(k, f32(dy), dh_n, c0f, whh, reserve, dc, dG, grads);
    const Tensor db = grads.db_input();
    return {grads.dx(x), fresh(dh0, dt), fresh(dc, dt), grads.dw_ih(dt), grads.dw_hh(dt), grad_or_absent(db, b_ih, x),
            grad_or_absent(db, b_hh, x), absent_grad(x)};
  }
  // With a projection: the pointwise pass per step, then the step's GEMMs. dH[t] collects the
  // whole gradient of h_t: dy_t, then (from step t+1) dG_{t+1} W_hh in place.
  Tensor dG = at::empty({T, B, 4 * H}, reserve.options());
  Tensor dH = f32_copy(dy);
  if (dh_n) dH[T - 1].add_(dh_n->to(at::kFloat));
  Tensor dh0 = at::zeros({B, R}, reserve.options());
  const Tensor whr = f32(*w_hr);
  Tensor m_all = at::empty({T, B, H}, reserve.options());  // m_t, for dW_hr
  Tensor dm = at::empty({B, H}, reserve.options());
  const StepWeight recurrent(ptr(whh), R, /*transposed=*/false, B, R, 4 * H);
  const StepWeight projection(ptr(whr), H, /*transposed=*/false, B, H, R);
  const float* res = ptr(reserve);
  for (int64_t t = T - 1; t >= 0; --t) {
    float* dH_t = ptr(dH) + t * B * R;
    float* dG_t = ptr(dG) + t * B * 4 * H;
    const float* res_t = res + t * B * W;
    projection.multiply(dH_t, R, 0.f, ptr(dm), H);  // dm_t = dh_t W_hr
    const float* c_prev = t ? res_t - B * W + 4 * H : ptr(c0f);
    for_rows(B, 12 * H, [&](int64_t b0, int64_t b1) {
      k.lstm_bwd_step({b0, b1, H, W}, ptr(dm), H, res_t, c_prev, t ? W : H, ptr(dc), dG_t, ptr(m_all) + t * B * H);
    });
    float* dh_prev = t ? dH_t - B * R : ptr(dh0);
    recurrent.multiply(dG_t, 4 * H, 1.f, dh_prev, R);  // += dG_t W_hh
  }
  auto [dx, dw_ih] = input_grads(dG, x, w_ih, input_grad);
  Tensor dw_hh = recurrent_weight_grad(dG, h0f, reserve, 5 * H, R).to(dt);
  const Tensor db = dG.view({T * B, 4 * H}).sum(0);
  Tensor dw_hr = gemm_all(dH.view({T * B, R}).t(), m_all.view({T * B, H})).to(dt);
  return {dx, fresh(dh0, dt), fresh(dc, dt), dw_ih, dw_hh, grad_or_absent(db, b_ih, x), grad_or_absent(db, b_hh, x),
          dw_hr};
}

// ---------------------------------------------------------------------------------------------
// GRU
// ---------------------------------------------------------------------------------------------
// The GRU runs on the fused step too (csrc/cpu/isa/fused_step_kernels.cpp); its tiles keep the
// input and recurrent parts of n apart, as n = tanh(x W_inᵀ + b_in + r (h W_hnᵀ + b_hn)) needs.
std::tuple<Tensor, Tensor, Tensor> gru_fwd(const Tensor& x, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
                                           const OptTensor& b_ih, const OptTensor& b_hh) {
  const RnnShape s = check_rnn_fwd("gru_fwd", RnnCell::kGru, x, h0, std::nullopt, w_ih, w_hh, b_ih, b_hh, std::nullopt);
  check_blas_sizes("gru_fwd", s);
  const auto& k = kernels();
  const int64_t T = s.T, B = s.B, I = s.I, H = s.H, W = rnn_reserve_width(RnnCell::kGru, H, H);
  Tensor reserve = with_huge_pages(at::empty({T, B, W}, x.options().dtype(at::kFloat)));
  const Tensor bih = combined_bias(b_ih, std::nullopt, 3 * H, reserve.options());
  const Tensor bhh = combined_bias(std::nullopt, b_hh, 3 * H, reserve.options());
  const Tensor xf = f32(x), h0f = f32(h0);
  const auto [packed_ih, packed_hh] = packed_forward_weights(k, 3, f32(w_ih), f32(w_hh));
  const int64_t tiles = k.fused_step_tiles(3, B, H, /*backward=*/false);
  float* res = ptr(reserve);
  for (int64_t t = 0; t < T; ++t) {
    FusedStep step;
    step.B = B, step.H = H, step.I = I, step.ld_reserve = W;
    step.packed = ptr(packed_hh), step.packed_ih = ptr(packed_ih), step.bias = ptr(bih), step.bias_hh = ptr(bhh);
    step.x_t = ptr(xf) + t * B * I;
    step.reserve_t = res + t * B * W;
    step.h_prev = t ? step.reserve_t - B * W + 4 * H : ptr(h0f), step.ld_h = t ? W : H;
    for_tiles(tiles, B * 3 * H * (H + I), [&](int64_t t0, int64_t t1) { k.gru_fused_fwd(step, t0, t1); });
  }
  const auto dt = x.scalar_type();
  return {fresh(reserve.narrow(2, 4 * H, H), dt), fresh(reserve[T - 1].narrow(1, 4 * H, H), dt), reserve};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_bwd(const Tensor& dy, const OptTensor& dh_n,
                                                                   const Tensor& x, const Tensor& h0,
                                                                   const Tensor& w_ih, const Tensor& w_hh,
                                                                   const OptTensor& b_ih, const OptTensor& b_hh,
                                                                   const Tensor& reserve, bool input_grad) {
  const RnnShape s = check_rnn_fwd("gru_bwd", RnnCell::kGru, x, h0, std::nullopt, w_ih, w_hh, b_ih, b_hh, std::nullopt);
  check_blas_sizes("gru_bwd", s);
  check_rnn_bwd("gru_bwd", RnnCell::kGru, s, x, dy, dh_n, std::nullopt, reserve);
  const auto& k = kernels();
  const int64_t T = s.T, B = s.B, H = s.H, GH = 3 * H, W = rnn_reserve_width(RnnCell::kGru, H, H);
  const Tensor dyf = f32(dy), h0f = f32(h0), whh = f32(w_hh);
  const Tensor dh_last = dh_n ? dyf[T - 1] + dh_n->to(at::kFloat) : Tensor();
  // Per step and batch row [da_n da_r da_z r da_n] (gru_fused_bwd): its first 3 H are d_input, the
  // gradient of x W_ihᵀ + b_ih with the gates in the order n, r, z, its last 3 H d_rec, that of
  // h W_hhᵀ + b_hh (r, z, n).
  const int64_t L = 4 * H;
  Tensor dG = padded_gate_grads(k, Scratch::kGateGrads, T, B, L);
  Tensor carry = at::zeros({B, H}, reserve.options());  // dh_{t+1} z_{t+1}: the direct path into h_t
  const Tensor packed = packed_backward_weights(k, 3, whh);
  auto nrz = [&](const Tensor& rzn) {  // gate blocks r, z, n (dim 0) -> n, r, z, and back with rzn()
    return at::cat({rzn.narrow(0, 2 * H, H), rzn.narrow(0, 0, 2 * H)});
  };
  auto rzn = [&](const Tensor& nrz) { return at::cat({nrz.narrow(0, H, 2 * H), nrz.narrow(0, 0, H)}); };
  StepWeightGrads grads(k, 3, f32(x), nrz(w_ih), h0f, reserve, 4 * H, dG, /*rec_col=*/H, /*input_col=*/0, input_grad);
  const int64_t tiles = k.fused_step_tiles(3, B, H, /*backward=*/true);
  const float* res = ptr(reserve);
  for (int64_t t = T - 1; t >= 0; --t) {
    FusedStep step;
    step.B = B, step.H = H, step.ld_reserve = W, step.packed = ptr(packed);
    step.reserve_t = const_cast<float*>(res + t * B * W);  // read only
    step.h_prev = t ? res + (t - 1) * B * W + 4 * H : ptr(h0f), step.ld_h = t ? W : H;
    step.dgates_next = t < T - 1 ? ptr(dG) + (t + 1) * B * L + H : nullptr;  // d_rec_{t+1}
    step.dh = t == T - 1 && dh_last.defined() ? ptr(dh_last) : ptr(dyf) + t * B * H;
    step.dc = ptr(carry), step.dgates = ptr(dG) + t * B * L, step.ld_dgates = L;
    grads.reverse_step(t, tiles, B * GH * H, [&](int64_t t0, int64_t t1) { k.gru_fused_bwd(step, t0, t1); });
  }
  const Tensor dh0 = gemm_all(dG[0].narrow(1, H, GH), whh).add_(carry);
  const auto dt = x.scalar_type();
  const Tensor db_ih = rzn(grads.db_input()), db_hh = grads.db_rec();
  return {grads.dx(x), fresh(dh0, dt), rzn(grads.dw_ih(dt)), grads.dw_hh(dt), grad_or_absent(db_ih, b_ih, x),
          grad_or_absent(db_hh, b_hh, x)};
}

// ---------------------------------------------------------------------------------------------
// Elman RNN (tanh / relu)
// ---------------------------------------------------------------------------------------------
// The Elman cell runs on the fused step (csrc/cpu/isa/fused_step_kernels.cpp), as the LSTM: each
// step's input and recurrent products and the activation in one pass over tiles; the reserve is h_t.
std::tuple<Tensor, Tensor, Tensor> rnn_fwd(const Tensor& x, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
                                           const OptTensor& b_ih, const OptTensor& b_hh, bool relu) {
  const RnnShape s = check_rnn_fwd("rnn_fwd", RnnCell::kRnn, x, h0, std::nullopt, w_ih, w_hh, b_ih, b_hh, std::nullopt);
  check_blas_sizes("rnn_fwd", s);
  const auto& k = kernels();
  const int64_t T = s.T, B = s.B, I = s.I, H = s.H;
  Tensor reserve = with_huge_pages(at::empty({T, B, H}, x.options().dtype(at::kFloat)));  // h_t
  const Tensor bias = combined_bias(b_ih, b_hh, H, reserve.options());
  const Tensor xf = f32(x), h0f = f32(h0);
  const auto [packed_ih, packed_hh] = packed_forward_weights(k, 1, f32(w_ih), f32(w_hh));
  const int64_t tiles = k.fused_step_tiles(1, B, H, /*backward=*/false);
  for (int64_t t = 0; t < T; ++t) {
    FusedStep step;
    step.B = B, step.H = H, step.I = I, step.ld_reserve = H;
    step.packed = ptr(packed_hh), step.packed_ih = ptr(packed_ih), step.bias = ptr(bias);
    step.x_t = ptr(xf) + t * B * I;
    step.reserve_t = ptr(reserve) + t * B * H;
    step.h_prev = t ? step.reserve_t - B * H : ptr(h0f), step.ld_h = H;
    for_tiles(tiles, B * H * (H + I), [&](int64_t t0, int64_t t1) { k.rnn_fused_fwd(step, relu, t0, t1); });
  }
  const auto dt = x.scalar_type();
  return {fresh(reserve, dt), fresh(reserve[T - 1], dt), reserve};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> rnn_bwd(const Tensor& dy, const OptTensor& dh_n,
                                                                   const Tensor& x, const Tensor& h0,
                                                                   const Tensor& w_ih, const Tensor& w_hh,
                                                                   const OptTensor& b_ih, const OptTensor& b_hh,
                                                                   const Tensor& reserve, bool relu, bool input_grad) {
  const RnnShape s = check_rnn_fwd("rnn_bwd", RnnCell::kRnn, x, h0, std::nullopt, w_ih, w_hh, b_ih, b_hh, std::nullopt);
  check_blas_sizes("rnn_bwd", s);
  check_rnn_bwd("rnn_bwd", RnnCell::kRnn, s, x, dy, dh_n, std::nullopt, reserve);
  const auto& k = kernels();
  const int64_t T = s.T, B = s.B, H = s.H;
  const Tensor dyf = f32(dy), h0f = f32(h0), whh = f32(w_hh);
  const Tensor dh_last = dh_n ? dyf[T - 1] + dh_n->to(at::kFloat) : Tensor();
  Tensor dpre = padded_gate_grads(k, Scratch::kGateGrads, T, B, H);
  const Tensor packed = packed_backward_weights(k, 1, whh);
  StepWeightGrads grads(k, 1, f32(x), w_ih, h0f, reserve, 0, dpre, 0, 0, input_grad);
  const int64_t tiles = k.fused_step_tiles(1, B, H, /*backward=*/true);
  for (int64_t t = T - 1; t >= 0; --t) {
    FusedStep step;
    step.B = B, step.H = H, step.ld_reserve = H, step.packed = ptr(packed);
    step.reserve_t = const_cast<float*>(ptr(reserve) + t * B * H);  // read only
    step.dgates_next = t < T - 1 ? ptr(dpre) + (t + 1) * B * H : nullptr;
    step.dh = t == T - 1 && dh_last.defined() ? ptr(dh_last) : ptr(dyf) + t * B * H;
    step.dgates = ptr(dpre) + t * B * H, step.ld_dgates = H;
    grads.reverse_step(t, tiles, B * H * H, [&](int64_t t0, int64_t t1) { k.rnn_fused_bwd(step, relu, t0, t1); });
  }
  const auto dt = x.scalar_type();
  const Tensor dh0 = gemm_all(dpre[0], whh);
  const Tensor db = grads.db_input();
  return {grads.dx(x), fresh(dh0, dt), grads.dw_ih(dt), grads.dw_hh(dt), grad_or_absent(db, b_ih, x),
          grad_or_absent(db, b_hh, x)};
}

// ---------------------------------------------------------------------------------------------
// Leaky integrator
// ---------------------------------------------------------------------------------------------
// The leaky cell runs on the fused step (csrc/cpu/isa/fused_step_kernels.cpp) as the Elman cell
// does, with the leak in the tiles' pointwise part; the reserve is u_t, y is tanh(u_t).
std::tuple<Tensor, Tensor, Tensor> leaky_fwd(const Tensor& x, const Tensor& u0, const Tensor& w_ih, const Tensor& w_hh,
                                             const OptTensor& bias, const Tensor& tau) {
  const RnnShape s = check_rnn_fwd("leaky_fwd", RnnCell::kLeaky, x, u0, std::nullopt, w_ih, w_hh, bias, std::nullopt, tau);
  check_blas_sizes("leaky_fwd", s);
  const auto& k = kernels();
  const int64_t T = s.T, B = s.B, I = s.I, H = s.H;
  Tensor reserve = with_huge_pages(at::empty({T, B, H}, x.options().dtype(at::kFloat)));  // u_t
  Tensor h = at::empty({T, B, H}, reserve.options());  // tanh(u_t): y, and the next step's product operand
  const Tensor b = combined_bias(bias, std::nullopt, H, reserve.options());
  const Tensor xf = f32(x), u0f = f32(u0), alpha = f32(tau).reciprocal();
  const Tensor h0 = u0f.tanh();
  const auto [packed_ih, packed_hh] = packed_forward_weights(k, 1, f32(w_ih), f32(w_hh));
  const int64_t tiles = k.fused_step_tiles(1, B, H, /*backward=*/false);
  for (int64_t t = 0; t < T; ++t) {
    FusedStep step;
    step.B = B, step.H = H, step.I = I, step.ld_reserve = H;
    step.packed = ptr(packed_hh), step.packed_ih = ptr(packed_ih), step.bias = ptr(b), step.alpha = ptr(alpha);
    step.x_t = ptr(xf) + t * B * I;
    step.reserve_t = ptr(reserve) + t * B * H, step.h_t = ptr(h) + t * B * H;
    step.h_prev = t ? step.h_t - B * H : ptr(h0), step.ld_h = H;
    step.c_prev = t ? step.reserve_t - B * H : ptr(u0f), step.ld_c = H;
    for_tiles(tiles, B * H * (H + I), [&](int64_t t0, int64_t t1) { k.leaky_fused_fwd(step, t0, t1); });
  }
  const auto dt = x.scalar_type();
  return {dt == at::kFloat ? h : fresh(h, dt), fresh(reserve[T - 1], dt), reserve};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> leaky_bwd(const Tensor& dh, const OptTensor& du_n,
                                                                     const Tensor& x, const Tensor& u0,
                                                                     const Tensor& w_ih, const Tensor& w_hh,
                                                                     const OptTensor& bias, const Tensor& tau,
                                                                     const Tensor& reserve, bool input_grad) {
  const RnnShape s = check_rnn_fwd("leaky_bwd", RnnCell::kLeaky, x, u0, std::nullopt, w_ih, w_hh, bias, std::nullopt, tau);
  check_blas_sizes("leaky_bwd", s);
  check_rnn_bwd("leaky_bwd", RnnCell::kLeaky, s, x, dh, du_n, std::nullopt, reserve);
  const auto& k = kernels();
  const int64_t T = s.T, B = s.B, H = s.H;
  const Tensor dhf = f32(dh), u0f = f32(u0), whh = f32(w_hh), alpha = f32(tau).reciprocal();
  const Tensor h0 = u0f.tanh();
  // (1 - α) g_{t+1}, the gradient reaching u_t along the leak; at T it is du_n itself.
  Tensor carry = du_n ? f32_copy(*du_n) : at::zeros({B, H}, reserve.options());
  Tensor da = padded_gate_grads(k, Scratch::kGateGrads, T, B, H);
  Tensor h = scratch(Scratch::kStates, {T, B, H});  // tanh(u_t), row t written by step t+1's tiles
  Tensor dtau_rows = at::zeros({B, H}, reserve.options());
  const Tensor packed = packed_backward_weights(k, 1, whh);
  StepWeightGrads grads(k, 1, f32(x), w_ih, h0, h, 0, da, 0, 0, input_grad);
  const int64_t tiles = k.fused_step_tiles(1, B, H, /*backward=*/true);
  for (int64_t t = T - 1; t >= 0; --t) {
    FusedStep step;
    step.B = B, step.H = H, step.ld_reserve = H, step.packed = ptr(packed), step.alpha = ptr(alpha);
    step.reserve_t = const_cast<float*>(ptr(reserve) + t * B * H);  // read only
    step.c_prev = t ? step.reserve_t - B * H : ptr(u0f), step.ld_c = H;
    step.h_t = t < T - 1 ? ptr(h) + t * B * H : nullptr;
    step.h_prev_out = t ? ptr(h) + (t - 1) * B * H : nullptr;
    step.carry = ptr(carry), step.dtau = ptr(dtau_rows);
    step.dgates_next = t < T - 1 ? ptr(da) + (t + 1) * B * H : nullptr;
    step.dh = ptr(dhf) + t * B * H;
    step.dgates = ptr(da) + t * B * H, step.ld_dgates = H;
    grads.reverse_step(t, tiles, B * H * H, [&](int64_t t0, int64_t t1) { k.leaky_fused_bwd(step, t0, t1); });
  }
  const Tensor dh0 = gemm_all(da[0], whh);  // the gradient of tanh(u0)
  const Tensor du0 = dh0 * (1 - h0 * h0) + carry;
  const auto dt = x.scalar_type();
  return {grads.dx(x), fresh(du0, dt), grads.dw_ih(dt), grads.dw_hh(dt), grad_or_absent(grads.db_input(), bias, x),
          fresh(dtau_rows.sum(0), dt)};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyneuro, CPU, m) {
  m.impl("lstm_fwd", &lstm_fwd);
  m.impl("lstm_bwd", &lstm_bwd);
  m.impl("gru_fwd", &gru_fwd);
  m.impl("gru_bwd", &gru_bwd);
  m.impl("rnn_fwd", &rnn_fwd);
  m.impl("rnn_bwd", &rnn_bwd);
  m.impl("leaky_fwd", &leaky_fwd);
  m.impl("leaky_bwd", &leaky_bwd);
}

}  // namespace pyneuro::cpu
