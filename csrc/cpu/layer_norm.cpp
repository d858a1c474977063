// Residual add + layer norm on the CPU: the pyneuro::add_layer_norm_fwd / _bwd ops' CPU
// registration (pyneuro/ops/layernorm). fp32, rows of N contiguous features (the last dim); the
// kernels are in csrc/cpu/isa/layer_norm_kernels.cpp.
//   forward   (out, total, shift, rstd): total = (x + x_bias) + residual (an empty tensor with
//             neither x_bias nor residual: the caller has it as x), out = layer_norm(total) · weight
//             + bias; per row rstd and shift = mean - the row's first element (what the backward
//             forms t - mean from).
//   backward  (dx, dweight, dbias, dx_bias) from dout, dtotal (optional), the normalised input
//             (total, or x) and the saved statistics; dx is also the residual's gradient, and
//             dx_bias its sum over the rows.
// dweight, dbias and dx_bias are summed per chunk of kLayerNormChunkRows rows and the chunks added
// in order, so the results do not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>

#include "common/checks.h"
#include "cpu/isa.h"
#include "cpu/row_passes.h"

namespace pyneuro::cpu {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// x (..., N) fp32 with N >= 1; the others on x's device and in fp32, residual x's shape, weight and
// bias (N,).
int64_t check_layer_norm(const char* op, const Tensor& x, const OptTensor& residual, const OptTensor& weight,
                         const OptTensor& bias, const OptTensor& x_bias = std::nullopt) {
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": x must have at least one dimension (the normalised one), got a scalar");
  checks::dtype(op, x, "x", at::kFloat);
  const int64_t N = x.size(-1);
  checks::at_least(op, "the normalised size x.shape[-1]", N, 1);
  if (residual) {
    checks::same_device(op, *residual, "residual", x, "x");
    checks::dtype(op, *residual, "residual", at::kFloat);
    checks::shape(op, *residual, "residual", x.sizes(), "x's shape");
  }
  for (const auto& [t, name] : {std::pair{&weight, "weight"}, std::pair{&bias, "bias"}, std::pair{&x_bias, "x_bias"}}) {
    if (!t->has_value()) continue;
    checks::same_device(op, **t, name, x, "x");
    checks::dtype(op, **t, name, at::kFloat);
    checks::shape(op, **t, name, {N}, "(N,) with N = x.shape[-1]");
  }
  return N;
}

const float* ptr_or_null(const OptTensor& t) { return t ? t->const_data_ptr<float>() : nullptr; }

std::tuple<Tensor, Tensor, Tensor, Tensor> add_layer_norm_fwd_cpu(const Tensor& x_in, const OptTensor& residual_in,
                                                                  const OptTensor& weight_in,
                                                                  const OptTensor& bias_in, double eps,
                                                                  const OptTensor& x_bias_in) {
  const char* op = "add_layer_norm_fwd (cpu)";
  const int64_t N = check_layer_norm(op, x_in, residual_in, weight_in, bias_in, x_bias_in);
  TORCH_CHECK_VALUE(eps >= 0.0 && std::isfinite(eps), op, ": eps must be a finite number >= 0, got ", eps);
  const Tensor x = x_in.contiguous();
  const OptTensor residual = residual_in ? OptTensor(residual_in->contiguous()) : std::nullopt;
  const OptTensor weight = weight_in ? OptTensor(weight_in->contiguous()) : std::nullopt;
  const OptTensor bias = bias_in ? OptTensor(bias_in->contiguous()) : std::nullopt;
  const OptTensor x_bias = x_bias_in ? OptTensor(x_bias_in->contiguous()) : std::nullopt;
  const bool has_total = residual || x_bias;
  const auto rows_shape = x.sizes().slice(0, x.dim() - 1);
  Tensor out = at::empty_like(x);
  Tensor total = has_total ? at::empty_like(x) : at::empty({0}, x.options());
  Tensor shift = at::empty(rows_shape, x.options()), rstd = at::empty(rows_shape, x.options());
  LayerNormParams p;
  p.rows = x.numel() / N, p.N = N, p.eps = static_cast<float>(eps);
  p.x = x.const_data_ptr<float>(), p.x_bias = ptr_or_null(x_bias), p.residual = ptr_or_null(residual);
  p.weight = ptr_or_null(weight), p.bias = ptr_or_null(bias);
  p.out = out.data_ptr<float>(), p.total = has_total ? total.data_ptr<float>() : nullptr;
  p.shift = shift.data_ptr<float>(), p.rstd = rstd.data_ptr<float>();
  const KernelTable& k = kernels();
  at::parallel_for(0, p.rows, row_grain(N), [&](int64_t r0, int64_t r1) { k.layer_norm_fwd(p, r0, r1); });
  return {out, total, shift, rstd};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> add_layer_norm_bwd_cpu(const Tensor& dout_in, const OptTensor& dtotal_in,
                                                          const Tensor& input_in, const Tensor& shift,
                                                          const Tensor& rstd, const OptTensor& weight_in,
                                                          bool has_bias, bool has_x_bias) {
  const char* op = "add_layer_norm_bwd (cpu)";
  const int64_t N = check_layer_norm(op, input_in, dtotal_in, weight_in, std::nullopt);
  checks::same_device(op, dout_in, "dout", input_in, "input");
  checks::dtype(op, dout_in, "dout", at::kFloat);
  checks::shape(op, dout_in, "dout", input_in.sizes(), "input's shape");
  const auto rows_shape = input_in.sizes().slice(0, input_in.dim() - 1);
  checks::tensor(op, shift, "shift", input_in, "input", at::kFloat, rows_shape, "input.shape[:-1]");
  checks::tensor(op, rstd, "rstd", input_in, "input", at::kFloat, rows_shape, "input.shape[:-1]");
  const Tensor input = input_in.contiguous(), dout = dout_in.contiguous();
  const OptTensor dtotal = dtotal_in ? OptTensor(dtotal_in->contiguous()) : std::nullopt;
  const OptTensor weight = weight_in ? OptTensor(weight_in->contiguous()) : std::nullopt;
  LayerNormParams p;
  p.rows = input.numel() / N, p.N = N;
  const int64_t chunks = (p.rows + kLayerNormChunkRows - 1) / kLayerNormChunkRows;
  Tensor dx = at::empty_like(input);
  Tensor dweight_part = weight ? at::empty({chunks, N}, input.options()) : Tensor();
  Tensor dbias_part = has_bias ? at::empty({chunks, N}, input.options()) : Tensor();
  Tensor dx_bias_part = has_x_bias ? at::empty({chunks, N}, input.options()) : Tensor();
  p.input = input.const_data_ptr<float>(), p.dout = dout.const_data_ptr<float>();
  p.dtotal = ptr_or_null(dtotal), p.weight = ptr_or_null(weight);
  p.shift = const_cast<float*>(shift.const_data_ptr<float>()), p.rstd = const_cast<float*>(rstd.const_data_ptr<float>());
  p.dx = dx.data_ptr<float>();
  p.dweight_part = weight ? dweight_part.data_ptr<float>() : nullptr;
  p.dbias_part = has_bias ? dbias_part.data_ptr<float>() : nullptr;
  p.dx_bias_part = has_x_bias ? dx_bias_part.data_ptr<float>() : nullptr;
  const KernelTable& k = kernels();
  at::parallel_for(0, chunks, row_grain(kLayerNormChunkRows * N),
                   [&](int64_t c0, int64_t c1) { k.layer_norm_bwd(p, c0, c1); });
  Tensor dweight = weight ? sum_chunks_in_order(dweight_part) : at::empty({0}, input.options());
  Tensor dbias = has_bias ? sum_chunks_in_order(dbias_part) : at::empty({0}, input.options());
  Tensor dx_bias = has_x_bias ? sum_chunks_in_order(dx_bias_part) : at::empty({0}, input.options());
  return {dx, dweight, dbias, dx_bias};
}

}  // namespace
}  // namespace pyneuro::cpu

TORCH_LIBRARY_IMPL(pyneuro, CPU, m) {
  m.impl("add_layer_norm_fwd", &pyneuro::cpu::add_layer_norm_fwd_cpu);
  m.impl("add_layer_norm_bwd", &pyneuro::cpu::add_layer_norm_bwd_cpu);
}
