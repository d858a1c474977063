// Operator schemas of the pyneuro namespace. Implementations register per dispatch key
// (CPU in csrc/cpu/, CUDA in csrc/cuda/*_glue.cpp); fake and autograd registrations live in
// Python next to each op (pyneuro/ops/<op>/__init__.py), except attention's derivative, which is
// registered in C++ (csrc/autograd/attention.cpp).
#include <torch/library.h>

TORCH_LIBRARY(pyneuro, m) {
  // Schemas are added per op as its compiled backends land (docs/ARCHITECTURE.md, "the recipe").

  // Selective scan (Mamba). Shapes, dtypes and results: docs/selective_scan_contract.md.
  m.def(
      "selective_scan_fwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, "
      "Tensor? delta_bias, Tensor? initial_state, bool delta_softplus, int chunk_size) "
      "-> (Tensor out, Tensor last_state, Tensor chunk_states)",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "selective_scan_bwd(Tensor dout, Tensor? dlast_state, Tensor u, Tensor delta, Tensor A, Tensor B, "
      "Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, Tensor? initial_state, Tensor chunk_states, "
      "bool delta_softplus, int chunk_size) -> (Tensor du, Tensor ddelta, Tensor dA, Tensor dB, Tensor dC, "
      "Tensor dD, Tensor dz, Tensor ddelta_bias, Tensor dinitial_state)",
      {at::Tag::pt2_compliant_tag});

  // Recurrent cells, one layer and one direction. Layout, reserve and gradients:
  // docs/rnn_contract.md.
  m.def(
      "lstm_fwd(Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "Tensor? w_hr) -> (Tensor y, Tensor h_n, Tensor c_n, Tensor reserve)",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "lstm_bwd(Tensor dy, Tensor? dh_n, Tensor? dc_n, Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, "
      "Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, Tensor reserve, bool input_grad=True) -> (Tensor dx, Tensor dh0, "
      "Tensor dc0, Tensor dw_ih, Tensor dw_hh, Tensor db_ih, Tensor db_hh, Tensor dw_hr)",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "gru_fwd(Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh) "
      "-> (Tensor y, Tensor h_n, Tensor reserve)",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "gru_bwd(Tensor dy, Tensor? dh_n, Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor reserve, bool input_grad=True) -> (Tensor dx, Tensor dh0, Tensor dw_ih, Tensor dw_hh, "
      "Tensor db_ih, Tensor db_hh)",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "rnn_fwd(Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, bool relu) "
      "-> (Tensor y, Tensor h_n, Tensor reserve)",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "rnn_bwd(Tensor dy, Tensor? dh_n, Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor reserve, bool relu, bool input_grad=True) -> (Tensor dx, Tensor dh0, Tensor dw_ih, "
      "Tensor dw_hh, Tensor db_ih, Tensor db_hh)",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "leaky_fwd(Tensor x, Tensor u0, Tensor w_ih, Tensor w_hh, Tensor? bias, Tensor tau) "
      "-> (Tensor h, Tensor u_n, Tensor reserve)",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "leaky_bwd(Tensor dh, Tensor? du_n, Tensor x, Tensor u0, Tensor w_ih, Tensor w_hh, Tensor? bias, "
      "Tensor tau, Tensor reserve, bool input_grad=True) -> (Tensor dx, Tensor du0, Tensor dw_ih, Tensor dw_hh, "
      "Tensor dbias, Tensor dtau)",
      {at::Tag::pt2_compliant_tag});

  // Attention in SDPA's layout, with grouped-query heads, causal masking, in-kernel dropout and the
  // log-sum-exp saved for the backward. Layout, dropout mask and gradients: docs/attention_contract.md.
  m.def(
      "attention_fwd(Tensor q, Tensor k, Tensor v, bool causal, float scale, float dropout_p, "
      "Tensor? rng_state) -> (Tensor out, Tensor lse)",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "attention_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, bool causal, "
      "float scale, float dropout_p, Tensor? rng_state) -> (Tensor dq, Tensor dk, Tensor dv)",
      {at::Tag::pt2_compliant_tag});
  // The same on a packed qkv (batch, L, 3, heads, head_dim), out (batch, L, heads, head_dim): the
  // layout of a self-attention's input projection, whose gradient comes back as one tensor (no
  // head-split copies, no concatenation of dq, dk, dv).
  m.def(
      "attention_packed_fwd(Tensor qkv, bool causal, float scale, float dropout_p, Tensor? rng_state) "
      "-> (Tensor out, Tensor lse)",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "attention_packed_bwd(Tensor dout, Tensor qkv, Tensor out, Tensor lse, bool causal, float scale, "
      "float dropout_p, Tensor? rng_state) -> Tensor dqkv",
      {at::Tag::pt2_compliant_tag});

  // Residual add + layer norm over the last dim (pre-/post-norm transformer blocks): total = x (+
  // x_bias) (+ residual) (empty when x alone: the caller has it), out = layer_norm(total) * weight +
  // bias, and per row rstd and shift = mean - the row's first element for the backward, which
  // returns (dx, dweight, dbias, dx_bias): dx is also the residual's gradient, dx_bias its column
  // sum (x_bias is the bias of the linear layer that made x, folded in); each of the last three
  // empty when not wanted. pyneuro/ops/layernorm has the contract.
  m.def(
      "add_layer_norm_fwd(Tensor x, Tensor? residual, Tensor? weight, Tensor? bias, float eps, "
      "Tensor? x_bias=None) -> (Tensor out, Tensor total, Tensor shift, Tensor rstd)",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "add_layer_norm_bwd(Tensor dout, Tensor? dtotal, Tensor input, Tensor shift, Tensor rstd, Tensor? weight, "
      "bool has_bias, bool has_x_bias=False) -> (Tensor dx, Tensor dweight, Tensor dbias, Tensor dx_bias)",
      {at::Tag::pt2_compliant_tag});

  // Bias + exact GELU (a transformer MLP's first linear layer run without its bias, then this):
  // out = gelu(x + bias) over rows of the last dim; the backward returns (dx, dbias) (dbias empty
  // without a bias) from dout and the forward's x. pyneuro/ops/gelu has the contract.
  m.def("bias_gelu_fwd(Tensor x, Tensor? bias) -> Tensor out", {at::Tag::pt2_compliant_tag});
  m.def("bias_gelu_bwd(Tensor dout, Tensor x, Tensor? bias) -> (Tensor dx, Tensor dbias)",
        {at::Tag::pt2_compliant_tag});

  // Batch norm + ReLU (+ 2x2 max-pool), a conv block's epilogue in one pass each way. The forward
  // returns the statistics it normalised with (batch or running); the caller updates the running
  // ones. Layout and gradients: docs/batch_norm_contract.md.
  m.def(
      "batch_norm_relu_fwd(Tensor x, Tensor weight, Tensor bias, Tensor? running_mean, Tensor? running_var, "
      "bool training, float eps, int pool) -> (Tensor out, Tensor mean, Tensor var)",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "batch_norm_relu_bwd(Tensor dout, Tensor x, Tensor weight, Tensor bias, Tensor mean, Tensor var, "
      "bool training, float eps, int pool) -> (Tensor dx, Tensor dweight, Tensor dbias)",
      {at::Tag::pt2_compliant_tag});
}
