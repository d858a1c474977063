// Argument check of pyneuro::batch_norm_relu_fwd / _bwd (docs/batch_norm_contract.md), with the
// error contract of checks.h. Header-only, so a CUDA glue can share it.
#pragma once

#include <ATen/core/Tensor.h>

#include "common/checks.h"

namespace pyneuro {

struct BatchNormShape {
  int64_t N = 0, C = 0, H = 0, W = 0, pool = 1;
  bool channels_last = false;
};

// x (N, C, H, W) fp32, contiguous in NCHW or channels_last; weight and bias (C,) fp32; pool 1 or 2.
inline BatchNormShape check_batch_norm_relu_args(const char* op, const at::Tensor& x, const at::Tensor& weight,
                                                 const at::Tensor& bias, double eps, int64_t pool) {
  checks::rank(op, x, "x", 4, "(N, C, H, W)");
  checks::dtype(op, x, "x", at::kFloat);
  BatchNormShape s;
  s.N = x.size(0), s.C = x.size(1), s.H = x.size(2), s.W = x.size(3), s.pool = pool;
  TORCH_CHECK_VALUE(pool == 1 || pool == 2, op, ": pool must be 1 or 2, got ", pool);
  TORCH_CHECK_VALUE(x.numel() > 0, op, ": x must not be empty, got shape ", x.sizes());
  TORCH_CHECK_VALUE(s.H >= pool && s.W >= pool, op, ": x's H and W must be >= pool = ", pool, ", got shape ",
                    x.sizes());
  TORCH_CHECK_VALUE(eps > 0, op, ": eps must be > 0, got ", eps);
  // Both layouts hold when C == 1 or H == W == 1: then pool 2 takes the channels_last kernels (the
  // only ones with windows), pool 1 the row-major ones.
  const bool cl = x.is_contiguous(at::MemoryFormat::ChannelsLast);
  s.channels_last = cl && (!x.is_contiguous() || pool == 2);
  TORCH_CHECK_VALUE(x.is_contiguous() || cl, op,
                    ": x must be contiguous in NCHW or channels_last layout, got strides ", x.strides(),
                    " for shape ", x.sizes());
  checks::tensor(op, weight, "weight", x, "x", at::kFloat, {s.C}, "(C,)");
  checks::tensor(op, bias, "bias", x, "x", at::kFloat, {s.C}, "(C,)");
  return s;
}

// t (the gradient of out, N x C x H/pool x W/pool) has out's shape, dtype and layout.
// `either_layout`: NCHW or channels_last are both taken (the CPU's NCHW pool-2 path runs in channels_last).
inline void check_batch_norm_relu_dout(const char* op, const BatchNormShape& s, const at::Tensor& x,
                                       const at::Tensor& dout, bool either_layout = false) {
  checks::same_device(op, dout, "dout", x, "x");
  checks::dtype(op, dout, "dout", at::kFloat);
  checks::shape(op, dout, "dout", {s.N, s.C, s.H / s.pool, s.W / s.pool}, "(N, C, H / pool, W / pool)");
  const bool cl = dout.is_contiguous(at::MemoryFormat::ChannelsLast), nchw = dout.is_contiguous();
  const bool ok = either_layout ? (cl || nchw) : (s.channels_last ? cl : nchw);
  TORCH_CHECK_VALUE(ok, op, ": dout must be contiguous in ", either_layout ? "NCHW or channels_last" : "x's",
                    " layout (", s.channels_last ? "channels_last" : "NCHW", "), got strides ", dout.strides());
}

}  // namespace pyneuro
