// Bias + exact GELU on the CPU: the pyneuro::bias_gelu_fwd / _bwd ops' CPU registration
// (pyneuro/ops/gelu). fp32, rows of N contiguous features (the last dim), bias (N,) optional; the
// kernels are in csrc/cpu/isa/gelu_kernels.cpp.
//   forward   out = gelu(x + bias)
//   backward  (dx, dbias) from dout and the forward's input x (dbias empty without a bias)
// dbias is summed per chunk of kGeluChunkRows rows and the chunks added in order, so the result
// does not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "common/checks.h"
#include "cpu/isa.h"
#include "cpu/row_passes.h"

namespace pyneuro::cpu {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// x (..., N) fp32 with N >= 1; bias (N,) fp32 on x's device.
int64_t check_bias_gelu(const char* op, const Tensor& x, const OptTensor& bias) {
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": x must have at least one dimension (the features), got a scalar");
  checks::dtype(op, x, "x", at::kFloat);
  const int64_t N = x.size(-1);
  checks::at_least(op, "the feature size x.shape[-1]", N, 1);
  if (bias) checks::tensor(op, *bias, "bias", x, "x", at::kFloat, {N}, "(N,) with N = x.shape[-1]");
  return N;
}

Tensor bias_gelu_fwd_cpu(const Tensor& x_in, const OptTensor& bias_in) {
  const char* op = "bias_gelu_fwd (cpu)";
  const int64_t N = check_bias_gelu(op, x_in, bias_in);
  const Tensor x = x_in.contiguous();
  const OptTensor bias = bias_in ? OptTensor(bias_in->contiguous()) : std::nullopt;
  Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  GeluParams p;
  p.rows = x.numel() / N, p.N = N;
  p.x = x.const_data_ptr<float>(), p.bias = bias ? bias->const_data_ptr<float>() : nullptr;
  p.out = out.data_ptr<float>();
  const KernelTable& k = kernels();
  at::parallel_for(0, p.rows, row_grain(N), [&](int64_t r0, int64_t r1) { k.gelu_fwd(p, r0, r1); });
  return out;
}

std::tuple<Tensor, Tensor> bias_gelu_bwd_cpu(const Tensor& dout_in, const Tensor& x_in, const OptTensor& bias_in) {
  const char* op = "bias_gelu_bwd (cpu)";
  const int64_t N = check_bias_gelu(op, x_in, bias_in);
  checks::same_device(op, dout_in, "dout", x_in, "x");
  checks::dtype(op, dout_in, "dout", at::kFloat);
  checks::shape(op, dout_in, "dout", x_in.sizes(), "x's shape");
  const Tensor x = x_in.contiguous(), dout = dout_in.contiguous();
  const OptTensor bias = bias_in ? OptTensor(bias_in->contiguous()) : std::nullopt;
  GeluParams p;
  p.rows = x.numel() / N, p.N = N;
  const int64_t chunks = (p.rows + kGeluChunkRows - 1) / kGeluChunkRows;
  Tensor dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  Tensor dbias_part = bias ? at::empty({chunks, N}, x.options()) : Tensor();
  p.x = x.const_data_ptr<float>(), p.bias = bias ? bias->const_data_ptr<float>() : nullptr;
  p.dout = dout.const_data_ptr<float>(), p.dx = dx.data_ptr<float>();
  p.dbias_part = bias ? dbias_part.data_ptr<float>() : nullptr;
  const KernelTable& k = kernels();
  at::parallel_for(0, chunks, row_grain(kGeluChunkRows * N), [&](int64_t c0, int64_t c1) { k.gelu_bwd(p, c0, c1); });
  return {dx, bias ? sum_chunks_in_order(dbias_part) : at::zeros({0}, x.options())};
}

}  // namespace
}  // namespace pyneuro::cpu

TORCH_LIBRARY_IMPL(pyneuro, CPU, m) {
  m.impl("bias_gelu_fwd", &pyneuro::cpu::bias_gelu_fwd_cpu);
  m.impl("bias_gelu_bwd", &pyneuro::cpu::bias_gelu_bwd_cpu);
}
