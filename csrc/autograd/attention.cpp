// The derivatives of pyneuro::attention_fwd and attention_packed_fwd, registered at the dispatcher's Autograd key: one
// torch::autograd::Function for the CPU and the CUDA kernels alike (it calls the ops through the
// dispatcher, below autograd).
//
// Why in C++ when the other ops register theirs from Python (torch.library.register_autograd):
// attention is called once per layer and step on small heads, where the wiring around the kernels
// was a measurable share of the call. On a tiny head (one thread, thread CPU time) a forward +
// backward through the Python registration cost 53 µs more than the two ops called directly (its
// Function, pytree and re-dispatch), through this one 15 µs more, most of it the autograd graph
// work that any differentiable op pays; at (128, 4, 17, 24) fp32 the measured gain was larger
// still (docs/kernels/attention.md, "Per-call cost"). pyneuro/_backends.py sees
// the kernel registered here and does not register a Python one over it; the fake (shape)
// functions stay in Python.
//
// Contract (docs/attention_contract.md): out is differentiable, lse is not; the backward
// recomputes the probabilities from lse and calls pyneuro::attention_bwd, which has no derivative
// itself (its Python registration raises when a second derivative reaches it).
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

std::tuple<Tensor, Tensor> call_fwd(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale,
                                    double dropout_p, const OptTensor& rng_state) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pyneuro::attention_fwd", "")
                             .typed<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, bool,
                                                               double, double, const OptTensor&)>();
  return op.call(q, k, v, causal, scale, dropout_p, rng_state);
}

std::tuple<Tensor, Tensor, Tensor> call_bwd(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                            const Tensor& out, const Tensor& lse, bool causal, double scale,
                                            double dropout_p, const OptTensor& rng_state) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("pyneuro::attention_bwd", "")
          .typed<std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                    const Tensor&, const Tensor&, bool, double, double,
                                                    const OptTensor&)>();
  return op.call(dout, q, k, v, out, lse, causal, scale, dropout_p, rng_state);
}

// What both forms save besides tensors, and the dout their backward hands the kernels.
void save_flags(AutogradContext* ctx, bool causal, double scale, double dropout_p) {
  ctx->saved_data["causal"] = causal;
  ctx->saved_data["scale"] = scale;
  ctx->saved_data["dropout_p"] = dropout_p;
}

struct Flags {
  bool causal;
  double scale, dropout_p;
};

Flags saved_flags(AutogradContext* ctx) {
  return {ctx->saved_data["causal"].toBool(), ctx->saved_data["scale"].toDouble(),
          ctx->saved_data["dropout_p"].toDouble()};
}

// dout in the inputs' dtype with a unit last stride (the kernels' one layout rule); zeros when no
// gradient reached out (only lse was used, and it has none).
Tensor kernel_dout(const Tensor& grad, at::ScalarType dtype, const Tensor& out) {
  Tensor dout = grad.defined() ? grad.to(dtype) : at::zeros_like(out);
  if (dout.size(-1) != 1 && dout.stride(-1) != 1) dout = dout.contiguous();
  return dout;
}

struct AttentionFunction : public torch::autograd::Function<AttentionFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                               double scale, double dropout_p, const OptTensor& rng_state) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // straight to the device kernel
    auto [out, lse] = call_fwd(q, k, v, causal, scale, dropout_p, rng_state);
    // rng_state is a plain int64 tensor: saved as data, so the backward regenerates the same mask.
    ctx->save_for_backward({q, k, v, out, lse, rng_state.value_or(Tensor())});
    save_flags(ctx, causal, scale, dropout_p);
    ctx->mark_non_differentiable({lse});
    // A backward that reaches only lse (no gradient) gets None for out, not a zero-filled tensor.
    ctx->set_materialize_grads(false);
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &q = saved[0], &k = saved[1], &v = saved[2], &out = saved[3], &lse = saved[4];
    const OptTensor rng_state = saved[5].defined() ? OptTensor(saved[5]) : std::nullopt;
    const Tensor dout = kernel_dout(grads[0], q.scalar_type(), out);
    const auto [causal, scale, dropout_p] = saved_flags(ctx);
    // Under create_graph the call goes through attention_bwd's own autograd registration (Python:
    // it raises if a second derivative ever reaches it); otherwise straight to the device kernel.
    std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
    if (!at::GradMode::is_enabled()) below_autograd.emplace();
    auto [dq, dk, dv] = call_bwd(dout, q, k, v, out, lse, causal, scale, dropout_p, rng_state);
    return {dq, dk, dv, Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

// The packed form: qkv (B, L, 3, H, D) in, out (B, L, H, D); the gradient is one dqkv.
std::tuple<Tensor, Tensor> call_packed_fwd(const Tensor& qkv, bool causal, double scale, double dropout_p,
                                           const OptTensor& rng_state) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("pyneuro::attention_packed_fwd", "")
          .typed<std::tuple<Tensor, Tensor>(const Tensor&, bool, double, double, const OptTensor&)>();
  return op.call(qkv, causal, scale, dropout_p, rng_state);
}

Tensor call_packed_bwd(const Tensor& dout, const Tensor& qkv, const Tensor& out, const Tensor& lse, bool causal,
                       double scale, double dropout_p, const OptTensor& rng_state) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pyneuro::attention_packed_bwd", "")
                             .typed<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, bool, double,
                                           double, const OptTensor&)>();
  return op.call(dout, qkv, out, lse, causal, scale, dropout_p, rng_state);
}

struct AttentionPackedFunction : public torch::autograd::Function<AttentionPackedFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& qkv, bool causal, double scale, double dropout_p,
                               const OptTensor& rng_state) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, lse] = call_packed_fwd(qkv, causal, scale, dropout_p, rng_state);
    ctx->save_for_backward({qkv, out, lse, rng_state.value_or(Tensor())});
    save_flags(ctx, causal, scale, dropout_p);
    ctx->mark_non_differentiable({lse});
    ctx->set_materialize_grads(false);
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &qkv = saved[0], &out = saved[1], &lse = saved[2];
    const OptTensor rng_state = saved[3].defined() ? OptTensor(saved[3]) : std::nullopt;
    const Tensor dout = kernel_dout(grads[0], qkv.scalar_type(), out);
    const auto [causal, scale, dropout_p] = saved_flags(ctx);
    std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
    if (!at::GradMode::is_enabled()) below_autograd.emplace();
    Tensor dqkv = call_packed_bwd(dout, qkv, out, lse, causal, scale, dropout_p, rng_state);
    return {dqkv, Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

std::tuple<Tensor, Tensor> attention_packed_fwd_autograd(const Tensor& qkv, bool causal, double scale,
                                                         double dropout_p, const OptTensor& rng_state) {
  variable_list r = AttentionPackedFunction::apply(qkv, causal, scale, dropout_p, rng_state);
  return {r[0], r[1]};
}

std::tuple<Tensor, Tensor> attention_fwd_autograd(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                                                  double scale, double dropout_p, const OptTensor& rng_state) {
  variable_list r = AttentionFunction::apply(q, k, v, causal, scale, dropout_p, rng_state);
  return {r[0], r[1]};
}

}  // namespace
}  // namespace pyneuro

TORCH_LIBRARY_IMPL(pyneuro, Autograd, m) {
  m.impl("attention_fwd", &pyneuro::attention_fwd_autograd);
  m.impl("attention_packed_fwd", &pyneuro::attention_packed_fwd_autograd);
}
