// Batch norm + ReLU (+ 2x2 max-pool) on the CPU: the pyneuro::batch_norm_relu_fwd / _bwd ops'
// CPU registration (docs/batch_norm_contract.md). Checks the arguments
// (csrc/common/batch_norm_args.h), computes the per-channel statistics and coefficients here and
// runs the passes of csrc/cpu/isa/batch_norm_kernels.cpp over the threads:
//   forward   training: statistics (one read of x); then out (one read of x, one write of out)
//   backward  sums of dz and dz x (one read of x and dout); then dx (one more read, one write)
// Per-thread fp64 channel sums are added in thread order, so a result depends on the thread count
// but not on the schedule.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#include "common/batch_norm_args.h"
#include "cpu/isa.h"
#include "cpu/memory.h"

namespace pyneuro::cpu {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

int64_t unit_count(const BatchNormShape& s) { return s.channels_last ? s.N * (s.H / s.pool) : s.N * s.C; }

BatchNormReluParams make_params(const BatchNormShape& s, const Tensor& x) {
  BatchNormReluParams p;
  p.N = s.N, p.C = s.C, p.H = s.H, p.W = s.W, p.pool = s.pool, p.channels_last = s.channels_last;
  p.x = x.data_ptr<float>();
  return p;
}

// x[0, c, 0, 0] per channel: the shift of the sums.
std::vector<float> pivots(const BatchNormShape& s, const float* x) {
  std::vector<float> k(s.C);
  for (int64_t c = 0; c < s.C; ++c) k[c] = x[s.channels_last ? c : c * s.H * s.W];
  return k;
}

// Runs pass(p, u0, u1, a, b) over all units, each thread into its own fp64 (C,) pair, and returns
// the two sums over threads.
template <typename Pass>
std::pair<std::vector<double>, std::vector<double>> channel_sums(const BatchNormShape& s, Pass pass) {
  const int64_t threads = at::get_num_threads(), C = s.C, units = unit_count(s);
  std::vector<double> acc(threads * 2 * C, 0.0);
  const int64_t grain = std::max<int64_t>(1, units / (4 * threads));
  at::parallel_for(0, units, grain, [&](int64_t u0, int64_t u1) {
    double* mine = acc.data() + at::get_thread_num() * 2 * C;
    pass(u0, u1, mine, mine + C);
  });
  std::vector<double> a(C, 0.0), b(C, 0.0);
  for (int64_t t = 0; t < threads; ++t)
    for (int64_t c = 0; c < C; ++c) a[c] += acc[(t * 2) * C + c], b[c] += acc[(t * 2 + 1) * C + c];
  return {a, b};
}

template <typename Pass>
void over_units(const BatchNormShape& s, Pass pass) {
  const int64_t units = unit_count(s);
  at::parallel_for(0, units, std::max<int64_t>(1, units / (4 * at::get_num_threads())), pass);
}

at::MemoryFormat layout(const BatchNormShape& s) {
  return s.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

void check_stat(const char* op, const OptTensor& t, const char* name, const Tensor& x, int64_t C) {
  TORCH_CHECK_VALUE(t.has_value(), op, ": ", name, " is required when training is false");
  checks::tensor(op, *t, name, x, "x", at::kFloat, {C}, "(C,)");
}

// NCHW with pool 2 runs on channels_last copies: its windows are pairs of neighbours in short rows
// (W = 28 or 14 at MNIST), which vectorised poorly in place (even with shuffles splitting even and
// odd columns), while over channels every lane is busy. The layout copies cost ~2 passes over x
// and dx, less than the NCHW window loops lost (at (128, 24, 28, 28): fwd+bwd 9.7 ms in place,
// ~4.6 ms this way). The kernels have no NCHW pool-2 path.
bool via_channels_last(const BatchNormShape& s) { return !s.channels_last && s.pool == 2; }

// t copied into a fresh buffer of layout `format` (huge-page hinted: see memory.h).
Tensor copy_as(const Tensor& t, at::MemoryFormat format) {
  return with_huge_pages(at::empty(t.sizes(), t.options().memory_format(format))).copy_(t);
}

// z = x scale_c + shift_c for the statistics (mean, var), and invstd_c = 1 / sqrt(var_c + eps).
struct Affine {
  std::vector<double> invstd;
  std::vector<float> scale, shift;
};

Affine affine(const Tensor& weight, const Tensor& bias, const float* mean, const float* var, double eps) {
  const int64_t C = weight.numel();
  const float *w = weight.data_ptr<float>(), *b = bias.data_ptr<float>();
  Affine z{std::vector<double>(C), std::vector<float>(C), std::vector<float>(C)};
  for (int64_t c = 0; c < C; ++c) {
    z.invstd[c] = 1.0 / std::sqrt(static_cast<double>(var[c]) + eps);
    z.scale[c] = static_cast<float>(w[c] * z.invstd[c]);
    z.shift[c] = static_cast<float>(b[c] - mean[c] * (w[c] * z.invstd[c]));
  }
  return z;
}

std::tuple<Tensor, Tensor, Tensor> batch_norm_relu_fwd_cpu(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                                            const OptTensor& running_mean, const OptTensor& running_var,
                                                            bool training, double eps, int64_t pool) {
  constexpr const char* kOp = "batch_norm_relu_fwd (cpu)";
  const BatchNormShape s = check_batch_norm_relu_args(kOp, x, weight, bias, eps, pool);
  if (via_channels_last(s)) {
    auto [out, mean, var] = batch_norm_relu_fwd_cpu(copy_as(x, at::MemoryFormat::ChannelsLast), weight, bias,
                                                    running_mean, running_var, training, eps, pool);
    return {copy_as(out, at::MemoryFormat::Contiguous), mean, var};
  }
  const int64_t C = s.C, count = s.N * s.H * s.W;
  BatchNormReluParams p = make_params(s, x);
  const std::vector<float> K = pivots(s, p.x);
  p.pivot = K.data();

  Tensor mean = at::empty({C}, x.options()), var = at::empty({C}, x.options());
  float *m = mean.data_ptr<float>(), *v = var.data_ptr<float>();
  if (training) {
    TORCH_CHECK_VALUE(count > 1, kOp, ": x must have more than one value per channel when training, got shape ",
                      x.sizes());
    auto [s1, s2] = channel_sums(s, [&](int64_t u0, int64_t u1, double* a, double* b) {
      kernels().batch_norm_stats(p, u0, u1, a, b);
    });
    for (int64_t c = 0; c < C; ++c) {
      const double d = s1[c] / count;
      m[c] = static_cast<float>(K[c] + d);
      v[c] = static_cast<float>(std::max(s2[c] / count - d * d, 0.0));
    }
  } else {
    check_stat(kOp, running_mean, "running_mean", x, C);
    check_stat(kOp, running_var, "running_var", x, C);
    mean.copy_(*running_mean), var.copy_(*running_var);
  }
  const Affine z = affine(weight, bias, m, v, eps);
  p.scale = z.scale.data(), p.shift = z.shift.data();
  Tensor out = with_huge_pages(at::empty({s.N, C, s.H / pool, s.W / pool}, x.options().memory_format(layout(s))));
  p.out = out.data_ptr<float>();
  over_units(s, [&](int64_t u0, int64_t u1) { kernels().batch_norm_relu_fwd(p, u0, u1); });
  return {out, mean, var};
}

std::tuple<Tensor, Tensor, Tensor> batch_norm_relu_bwd_cpu(const Tensor& dout, const Tensor& x, const Tensor& weight,
                                                            const Tensor& bias, const Tensor& mean, const Tensor& var,
                                                            bool training, double eps, int64_t pool) {
  constexpr const char* kOp = "batch_norm_relu_bwd (cpu)";
  const BatchNormShape s = check_batch_norm_relu_args(kOp, x, weight, bias, eps, pool);
  check_batch_norm_relu_dout(kOp, s, x, dout, via_channels_last(s));
  if (via_channels_last(s)) {
    constexpr auto cl = at::MemoryFormat::ChannelsLast;
    const Tensor dout_cl = dout.is_contiguous(cl) ? dout : copy_as(dout, cl);
    auto [dx, dweight, dbias] = batch_norm_relu_bwd_cpu(dout_cl, copy_as(x, cl), weight, bias, mean, var, training,
                                                        eps, pool);
    return {copy_as(dx, at::MemoryFormat::Contiguous), dweight, dbias};
  }
  checks::tensor(kOp, mean, "mean", x, "x", at::kFloat, {s.C}, "(C,)");
  checks::tensor(kOp, var, "var", x, "x", at::kFloat, {s.C}, "(C,)");
  const int64_t C = s.C;
  const double count = static_cast<double>(s.N * s.H * s.W);
  BatchNormReluParams p = make_params(s, x);
  const std::vector<float> K = pivots(s, p.x);
  p.pivot = K.data();
  p.dout = dout.data_ptr<float>();

  const float* w = weight.data_ptr<float>();
  const float* m = mean.data_ptr<float>();
  const Affine z = affine(weight, bias, m, var.data_ptr<float>(), eps);
  const std::vector<double>& invstd = z.invstd;
  p.scale = z.scale.data(), p.shift = z.shift.data();
  auto [sg, sgx] = channel_sums(s, [&](int64_t u0, int64_t u1, double* a, double* bb) {
    kernels().batch_norm_relu_bwd_sums(p, u0, u1, a, bb);
  });

  Tensor dweight = at::empty({C}, x.options()), dbias = at::empty({C}, x.options());
  float *dw = dweight.data_ptr<float>(), *db = dbias.data_ptr<float>();
  std::vector<float> k(C), bx(C), cx(C);
  for (int64_t c = 0; c < C; ++c) {
    // sum dz (x - mean) invstd, from the sums shifted by K.
    const double dxhat = invstd[c] * (sgx[c] - (static_cast<double>(m[c]) - K[c]) * sg[c]);
    dw[c] = static_cast<float>(dxhat), db[c] = static_cast<float>(sg[c]);
    const double kc = w[c] * invstd[c];
    k[c] = static_cast<float>(kc);
    // Training: dx = k (dz - mean(dz) - xhat mean(dz xhat)); the statistics are constants otherwise.
    const double slope = training ? -kc * invstd[c] * dxhat / count : 0.0;
    bx[c] = static_cast<float>(slope);
    cx[c] = static_cast<float>(training ? -kc * sg[c] / count - slope * m[c] : 0.0);
  }
  p.dx_k = k.data(), p.dx_bx = bx.data(), p.dx_cx = cx.data();
  p.training = training;
  Tensor dx = with_huge_pages(at::empty(x.sizes(), x.options().memory_format(layout(s))));
  p.dx = dx.data_ptr<float>();
  over_units(s, [&](int64_t u0, int64_t u1) { kernels().batch_norm_relu_bwd_dx(p, u0, u1); });
  return {dx, dweight, dbias};
}

}  // namespace
}  // namespace pyneuro::cpu

TORCH_LIBRARY_IMPL(pyneuro, CPU, m) {
  m.impl("batch_norm_relu_fwd", &pyneuro::cpu::batch_norm_relu_fwd_cpu);
  m.impl("batch_norm_relu_bwd", &pyneuro::cpu::batch_norm_relu_bwd_cpu);
}
