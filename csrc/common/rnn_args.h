// The one argument check of the recurrent-cell ops (pyneuro::lstm_fwd/_bwd, gru_*, rnn_*,
// leaky_*), shared by every C++ backend (csrc/cpu/rnn.cpp, csrc/cuda/rnn_glue.cpp). Header-only,
// free of CUDA. It enforces docs/rnn_contract.md's layout with the error contract of checks.h
// (TypeError for a dtype, ValueError for a shape, device or layout), so a direct torch.ops call
// with bad arguments fails as the Python validation (pyneuro/ops/rnn/__init__.py) would.
// The device type itself is the backend's business (the dispatcher routes by it).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

#include "checks.h"

namespace pyneuro {

enum class RnnCell { kLstm, kGru, kRnn, kLeaky };

constexpr int64_t rnn_gates(RnnCell cell) {
  return cell == RnnCell::kLstm ? 4 : cell == RnnCell::kGru ? 3 : 1;
}

// Columns of one time step of the fp32 reserve (docs/rnn_contract.md's table).
constexpr int64_t rnn_reserve_width(RnnCell cell, int64_t H, int64_t R) {
  return cell == RnnCell::kLstm ? 5 * H + R : cell == RnnCell::kGru ? 5 * H : H;
}

// Sizes of a checked problem: T steps, B batch, I inputs, H hidden units, G gates, R the width of
// the recurrent state h (LSTM: proj_size with w_hr, else H).
struct RnnShape {
  int64_t T = 0, B = 0, I = 0, H = 0, G = 0, R = 0;
  bool has_b_ih = false, has_b_hh = false, has_proj = false;
};

namespace detail {

inline bool is_rnn_dtype(at::ScalarType t) { return t == at::kFloat || t == at::kHalf || t == at::kBFloat16; }

}  // namespace detail

// The forward's arguments. `c0` is the LSTM's cell state (else absent); `extra` is the LSTM's w_hr
// (absent without projection) or the leaky cell's tau (required); `b_hh` is absent for leaky.
inline RnnShape check_rnn_fwd(const char* op, RnnCell cell, const at::Tensor& x, const at::Tensor& h0,
                              const std::optional<at::Tensor>& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                              const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
                              const std::optional<at::Tensor>& extra) {
  TORCH_CHECK_TYPE(detail::is_rnn_dtype(x.scalar_type()), op, ": x must be float32, float16 or bfloat16, got ",
                   x.scalar_type());
  checks::rank(op, x, "x", 3, "(T, batch, input_size)");
  checks::contiguous(op, x, "x");
  RnnShape s;
  s.T = x.size(0), s.B = x.size(1), s.I = x.size(2), s.G = rnn_gates(cell);
  checks::at_least(op, "T = x.shape[0]", s.T, 1);
  checks::at_least(op, "batch = x.shape[1]", s.B, 1);
  checks::at_least(op, "input_size = x.shape[2]", s.I, 1);
  checks::rank(op, w_ih, "w_ih", 2, "(gates * hidden_size, input_size)");
  TORCH_CHECK_VALUE(w_ih.size(0) >= s.G && w_ih.size(0) % s.G == 0, op, ": w_ih must have gates * hidden_size = ",
                    s.G, " * H rows, got shape ", w_ih.sizes());
  s.H = w_ih.size(0) / s.G;
  s.R = s.H;
  const auto dt = x.scalar_type();
  const char* state_name = cell == RnnCell::kLeaky ? "u0" : "h0";
  if (cell == RnnCell::kLstm && extra.has_value()) {
    checks::rank(op, *extra, "w_hr", 2, "(proj_size, hidden_size)");
    s.R = extra->size(0);
    s.has_proj = true;
    checks::at_least(op, "proj_size = w_hr.shape[0]", s.R, 1);
    checks::tensor(op, *extra, "w_hr", x, "x", dt, {s.R, s.H}, "(proj_size, hidden_size)");
  }
  if (cell == RnnCell::kLeaky) {
    TORCH_CHECK_VALUE(extra.has_value(), op, ": tau is required");
    checks::tensor(op, *extra, "tau", x, "x", dt, {s.H}, "(hidden_size,)");
    TORCH_CHECK_VALUE(!b_hh.has_value(), op, ": the leaky cell has one bias");
  }
  checks::tensor(op, w_ih, "w_ih", x, "x", dt, {s.G * s.H, s.I}, "(gates * hidden_size, input_size)");
  checks::tensor(op, w_hh, "w_hh", x, "x", dt, {s.G * s.H, s.R}, "(gates * hidden_size, state_size)");
  checks::optional_tensor(op, b_ih, cell == RnnCell::kLeaky ? "bias" : "b_ih", x, "x", dt, {s.G * s.H},
                          "(gates * hidden_size,)");
  checks::optional_tensor(op, b_hh, "b_hh", x, "x", dt, {s.G * s.H}, "(gates * hidden_size,)");
  checks::tensor(op, h0, state_name, x, "x", dt, {s.B, s.R}, "(batch, state_size)");
  if (cell == RnnCell::kLstm) {
    TORCH_CHECK_VALUE(c0.has_value(), op, ": c0 is required");
    checks::tensor(op, *c0, "c0", x, "x", dt, {s.B, s.H}, "(batch, hidden_size)");
  }
  s.has_b_ih = b_ih.has_value();
  s.has_b_hh = b_hh.has_value();
  return s;
}

// The backward's extra arguments: the incoming gradients and the forward's reserve.
inline void check_rnn_bwd(const char* op, RnnCell cell, const RnnShape& s, const at::Tensor& x, const at::Tensor& dy,
                          const std::optional<at::Tensor>& dh_n, const std::optional<at::Tensor>& dc_n,
                          const at::Tensor& reserve) {
  const auto dt = x.scalar_type();
  checks::tensor(op, dy, cell == RnnCell::kLeaky ? "dh" : "dy", x, "x", dt, {s.T, s.B, cell == RnnCell::kLeaky ? s.H : s.R},
                 "(T, batch, state_size)");
  checks::optional_tensor(op, dh_n, cell == RnnCell::kLeaky ? "du_n" : "dh_n", x, "x", dt, {s.B, s.R},
                          "(batch, state_size)");
  checks::optional_tensor(op, dc_n, "dc_n", x, "x", dt, {s.B, s.H}, "(batch, hidden_size)");
  checks::tensor(op, reserve, "reserve", x, "x", at::kFloat, {s.T, s.B, rnn_reserve_width(cell, s.H, s.R)},
                 "(T, batch, reserve width) as the forward returned it");
}

}  // namespace pyneuro
