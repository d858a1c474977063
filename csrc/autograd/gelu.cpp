// The derivative of pyneuro::bias_gelu_fwd at the dispatcher's Autograd key, in C++ as
// add_layer_norm's (csrc/autograd/layer_norm.cpp): a transformer calls it once per layer and step.
// The backward calls pyneuro::bias_gelu_bwd, which has no derivative (its Python registration
// raises when a second derivative reaches it).
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

Tensor call_fwd(const Tensor& x, const OptTensor& bias) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pyneuro::bias_gelu_fwd", "")
                             .typed<Tensor(const Tensor&, const OptTensor&)>();
  return op.call(x, bias);
}

std::tuple<Tensor, Tensor> call_bwd(const Tensor& dout, const Tensor& x, const OptTensor& bias) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pyneuro::bias_gelu_bwd", "")
                             .typed<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const OptTensor&)>();
  return op.call(dout, x, bias);
}

struct BiasGeluFunction : public torch::autograd::Function<BiasGeluFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const OptTensor& bias) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({x, bias.value_or(Tensor())});
    return call_fwd(x, bias);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const OptTensor bias = saved[1].defined() ? OptTensor(saved[1]) : std::nullopt;
    std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
    if (!at::GradMode::is_enabled()) below_autograd.emplace();
    auto [dx, dbias] = call_bwd(grads[0], saved[0], bias);
    return {dx, bias ? dbias : Tensor()};
  }
};

Tensor bias_gelu_fwd_autograd(const Tensor& x, const OptTensor& bias) { return BiasGeluFunction::apply(x, bias); }

}  // namespace
}  // namespace pyneuro

TORCH_LIBRARY_IMPL(pyneuro, Autograd, m) { m.impl("bias_gelu_fwd", &pyneuro::bias_gelu_fwd_autograd); }
