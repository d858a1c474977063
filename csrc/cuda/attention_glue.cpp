// Torch glue of the CUDA attention (built only when torch has CUDA): checks the arguments
// (csrc/common/attention_args.h, shared with the CPU backend, plus the CUDA device and the grid
// limits), reads rng_state ([seed, offset], a CPU tensor) on the host, allocates the contiguous
// outputs and runs attention.cu's launchers on the current stream. Registers the CUDA
// implementations of pyneuro::attention_fwd / attention_bwd (schemas: csrc/ops.cpp; contract:
// docs/attention_contract.md). Inputs keep their strides (last stride 1): the kernels read them.
//
// PYNEURO_CUDA_GLUE_EMULATION (tools/cuda_emu, target attention_glue; never in the real build):
// this same file on CPU tensors with the kernels running on cuda_emu, registered as
// pyneuro_emu_attention::attention_fwd/_bwd with no CUDA guard or stream (tests/cuda_emu/test_emulated_attention.py).
#include <ATen/ATen.h>
#if !defined(PYNEURO_CUDA_GLUE_EMULATION)
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#endif
#include <torch/library.h>

#include <climits>
#include <optional>
#include <tuple>

#include "../common/attention_args.h"
#include "attention.h"

namespace {

using namespace pyneuro::cuda;
using OptT = std::optional<at::Tensor>;

#if defined(PYNEURO_CUDA_GLUE_EMULATION)
struct DeviceGuard {
  explicit DeviceGuard(const at::Device&) {}
};
cudaStream_t current_stream() { return nullptr; }
constexpr bool kNeedsCudaTensors = false;
#else
using DeviceGuard = c10::cuda::CUDAGuard;
cudaStream_t current_stream() { return at::cuda::getCurrentCUDAStream(); }
constexpr bool kNeedsCudaTensors = true;
#endif

AttnDtype dtype_of(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf ? AttnDtype::kFloat16
         : t.scalar_type() == at::kBFloat16 ? AttnDtype::kBFloat16 : AttnDtype::kFloat32;
}

AttnStrides strides_of(const at::Tensor& t) { return AttnStrides{t.stride(0), t.stride(1), t.stride(2)}; }

// The CUDA-only checks: every tensor operand on a CUDA device (same device: the shared check),
// sizes within the kernels' int indices and grid.
void check_cuda(const char* op, const at::Tensor& q, const pyneuro::AttentionShape& s) {
  TORCH_CHECK_VALUE(q.is_cuda() || !kNeedsCudaTensors, op, ": q must be a CUDA tensor for the cuda backend, got one on ", q.device());
  TORCH_CHECK_VALUE(s.B <= INT_MAX && s.Hq <= INT_MAX && s.Lq <= INT_MAX && s.Lk <= INT_MAX, op,
                    ": batch, heads, Lq and Lk must each be < 2^31 on the cuda backend, got q ", q.sizes());
  const char* why = attention_unsupported(int(s.B), int(s.Hq), int(s.Hkv), int(s.Lq), int(s.Lk), int(s.D));
  TORCH_CHECK_VALUE(*why == '\0', op, ": ", why, " on the cuda backend, got q ", q.sizes());
}

void launched(const char* op, cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, op, ": kernel launch failed: ", cudaGetErrorName(err), " (",
              cudaGetErrorString(err), ")");
}

template <typename P>
void fill_common(P& p, const pyneuro::AttentionShape& s, const at::Tensor& q, const at::Tensor& k,
                 const at::Tensor& v, bool causal, double scale, double dropout_p, const OptT& rng_state) {
  p.dtype = dtype_of(q);
  p.B = int(s.B); p.Hq = int(s.Hq); p.Hkv = int(s.Hkv); p.Lq = int(s.Lq); p.Lk = int(s.Lk); p.D = int(s.D);
  p.causal = causal;
  p.scale = float(scale);
  p.dropout = dropout_p > 0.0;
  if (p.dropout) {
    const pyneuro::AttentionRng rng = pyneuro::attention_rng(rng_state);
    p.drop = pyneuro::philox::dropout_params(rng.seed, rng.offset, dropout_p);
  }
  p.q = q.data_ptr(); p.k = k.data_ptr(); p.v = v.data_ptr();
  p.q_st = strides_of(q); p.k_st = strides_of(k); p.v_st = strides_of(v);
}

std::tuple<at::Tensor, at::Tensor> attention_fwd_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                      bool causal, double scale, double dropout_p,
                                                      const OptT& rng_state) {
  constexpr const char* op = "attention_fwd (cuda)";
  const pyneuro::AttentionShape s = pyneuro::check_attention_fwd_args(q, k, v, causal, scale, dropout_p, rng_state, op);
  check_cuda(op, q, s);
  const DeviceGuard guard(q.device());
  at::Tensor out = at::empty(q.sizes(), q.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor lse = at::empty({s.B, s.Hq, s.Lq}, q.options().dtype(at::kFloat));
  AttentionFwdParams p;
  fill_common(p, s, q, k, v, causal, scale, dropout_p, rng_state);
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  launched(op, attention_fwd(p, current_stream()));
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_bwd_cuda(const at::Tensor& dout, const at::Tensor& q,
                                                                  const at::Tensor& k, const at::Tensor& v,
                                                                  const at::Tensor& out, const at::Tensor& lse,
                                                                  bool causal, double scale, double dropout_p,
                                                                  const OptT& rng_state) {
  constexpr const char* op = "attention_bwd (cuda)";
  const pyneuro::AttentionShape s =
      pyneuro::check_attention_bwd_args(dout, q, k, v, out, lse, causal, scale, dropout_p, rng_state, op);
  check_cuda(op, q, s);
  const DeviceGuard guard(q.device());
  const auto contiguous = q.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor dq = at::empty(q.sizes(), contiguous);
  at::Tensor dk = at::empty(k.sizes(), contiguous);
  at::Tensor dv = at::empty(v.sizes(), contiguous);
  AttentionBwdParams p;
  fill_common(p, s, q, k, v, causal, scale, dropout_p, rng_state);
  p.dout = dout.data_ptr(); p.out = out.data_ptr(); p.lse = lse.data_ptr<float>();
  p.dout_st = strides_of(dout); p.out_st = strides_of(out);
  p.dq = dq.data_ptr(); p.dk = dk.data_ptr(); p.dv = dv.data_ptr();
  launched(op, attention_bwd(p, current_stream()));
  return {dq, dk, dv};
}

}  // namespace

#if defined(PYNEURO_CUDA_GLUE_EMULATION)
// A namespace of its own: a fragment of the rnn glue's pyneuro_emu, loaded before it, made the
// process crash at exit.
TORCH_LIBRARY(pyneuro_emu_attention, m) {
  m.def("attention_fwd(Tensor q, Tensor k, Tensor v, bool causal, float scale, float dropout_p, Tensor? rng_state) "
        "-> (Tensor out, Tensor lse)", &attention_fwd_cuda);
  m.def("attention_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, bool causal, float scale, "
        "float dropout_p, Tensor? rng_state) -> (Tensor dq, Tensor dk, Tensor dv)", &attention_bwd_cuda);
}
#else
TORCH_LIBRARY_IMPL(pyneuro, CUDA, m) {
  m.impl("attention_fwd", &attention_fwd_cuda);
  m.impl("attention_bwd", &attention_bwd_cuda);
}
#endif
