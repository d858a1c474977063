// The derivative of pyneuro::add_layer_norm_fwd at the dispatcher's Autograd key (as attention's,
// csrc/autograd/attention.cpp: a transformer calls it twice per layer and step, so the per-call
// cost of a Python autograd registration would be a visible share). Outputs out and total are
// differentiable, shift and rstd are not; the backward calls pyneuro::add_layer_norm_bwd, which
// has no derivative (its Python registration raises when a second derivative reaches it).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

namespace pyneuro {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::tuple<Tensor, Tensor, Tensor, Tensor> call_fwd(const Tensor& x, const OptTensor& residual, const OptTensor& weight,
                                                    const OptTensor& bias, double eps, const OptTensor& x_bias) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pyneuro::add_layer_norm_fwd", "")
                             .typed<std::tuple<Tensor, Tensor, Tensor, Tensor>(
                                 const Tensor&, const OptTensor&, const OptTensor&, const OptTensor&, double,
                                 const OptTensor&)>();
  return op.call(x, residual, weight, bias, eps, x_bias);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> call_bwd(const Tensor& dout, const OptTensor& dtotal, const Tensor& input,
                                                    const Tensor& shift, const Tensor& rstd, const OptTensor& weight,
                                                    bool has_bias, bool has_x_bias) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pyneuro::add_layer_norm_bwd", "")
                             .typed<std::tuple<Tensor, Tensor, Tensor, Tensor>(
                                 const Tensor&, const OptTensor&, const Tensor&, const Tensor&, const Tensor&,
                                 const OptTensor&, bool, bool)>();
  return op.call(dout, dtotal, input, shift, rstd, weight, has_bias, has_x_bias);
}

struct AddLayerNormFunction : public torch::autograd::Function<AddLayerNormFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const OptTensor& residual,
                               const OptTensor& weight, const OptTensor& bias, double eps,
                               const OptTensor& x_bias) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, total, shift, rstd] = call_fwd(x, residual, weight, bias, eps, x_bias);
    // The normalised rows: total, or x itself with neither residual nor x_bias (then total is empty).
    const bool has_total = residual || x_bias;
    ctx->save_for_backward({has_total ? total : x, shift, rstd, weight.value_or(Tensor())});
    ctx->saved_data["has_residual"] = residual.has_value();
    ctx->saved_data["has_total"] = has_total;
    ctx->saved_data["has_bias"] = bias.has_value();
    ctx->saved_data["has_x_bias"] = x_bias.has_value();
    ctx->mark_non_differentiable({shift, rstd});
    ctx->set_materialize_grads(false);
    return {out, total, shift, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &input = saved[0], &shift = saved[1], &rstd = saved[2];
    const OptTensor weight = saved[3].defined() ? OptTensor(saved[3]) : std::nullopt;
    const bool has_residual = ctx->saved_data["has_residual"].toBool();
    const bool has_total = ctx->saved_data["has_total"].toBool();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const bool has_x_bias = ctx->saved_data["has_x_bias"].toBool();
    const Tensor dout = grads[0].defined() ? grads[0] : at::zeros_like(input);
    const OptTensor dtotal = has_total && grads[1].defined() ? OptTensor(grads[1]) : std::nullopt;
    std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
    if (!at::GradMode::is_enabled()) below_autograd.emplace();
    auto [dx, dweight, dbias, dx_bias] = call_bwd(dout, dtotal, input, shift, rstd, weight, has_bias, has_x_bias);
    return {dx,      has_residual ? dx : Tensor(), weight ? dweight : Tensor(), has_bias ? dbias : Tensor(),
            Tensor(), has_x_bias ? dx_bias : Tensor()};
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor> add_layer_norm_fwd_autograd(const Tensor& x, const OptTensor& residual,
                                                                       const OptTensor& weight, const OptTensor& bias,
                                                                       double eps, const OptTensor& x_bias) {
  variable_list r = AddLayerNormFunction::apply(x, residual, weight, bias, eps, x_bias);
  return {r[0], r[1], r[2], r[3]};
}

}  // namespace
}  // namespace pyneuro

TORCH_LIBRARY_IMPL(pyneuro, Autograd, m) { m.impl("add_layer_norm_fwd", &pyneuro::add_layer_norm_fwd_autograd); }
