// The one argument check of pyneuro::selective_scan_fwd / selective_scan_bwd, shared by every
// C++ backend (csrc/cpu/selective_scan.cpp, csrc/cuda/selective_scan_glue.cpp). Header-only and
// free of CUDA. The layout it enforces is docs/selective_scan_contract.md's; the exception types
// are those of the Python validation (pyneuro/ops/scan/__init__.py, _check): TypeError for a
// dtype, ValueError for a shape, rank, layout, device, N outside [1, max_n] or chunk_size < 1.
//
// What stays backend-specific, checked by the backend before or after calling these:
//   - the device type (the CUDA glue requires CUDA tensors; the CPU op is only dispatched to
//     with CPU tensors), here only "every tensor on u's device" is checked;
//   - the backend's own max N (passed in as max_n: csrc/common/limits.h);
//   - launch limits such as the CUDA grid's batch <= 65535 and int32 sizes.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

#include "checks.h"

namespace pyneuro {

// The sizes of a checked problem. groups_B / groups_C: 0 for a constant (dim, N) operand, else G.
struct SelectiveScanShape {
  int64_t batch = 0, dim = 0, L = 0, N = 0, groups_B = 0, groups_C = 0, chunk_size = 0, n_chunks = 0;
};

namespace detail {

inline bool is_scan_input_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

// B or C: constant (dim, N) fp32 -> 0, or variable (batch, G, N, L) in u's dtype with G | dim -> G.
inline int64_t check_scan_operand(const char* op, const at::Tensor& M, const char* name, const at::Tensor& u,
                                  int64_t N) {
  const int64_t batch = u.size(0), dim = u.size(1), L = u.size(2);
  checks::same_device(op, M, name, u, "u");
  int64_t groups = 0;
  if (M.dim() == 2) {
    checks::shape(op, M, name, {dim, N}, "(dim, N) for a constant operand");
    checks::dtype(op, M, name, at::kFloat);
  } else {
    TORCH_CHECK_VALUE(M.dim() == 4, op, ": ", name,
                      " must be (dim, N) (constant) or (batch, G, N, L) (variable), got shape ", M.sizes());
    groups = M.size(1);
    TORCH_CHECK_VALUE(groups >= 1 && dim % groups == 0, op, ": ", name, " has ", groups,
                      " groups, which must divide dim = ", dim);
    checks::shape(op, M, name, {batch, groups, N, L}, "(batch, G, N, L)");
    TORCH_CHECK_TYPE(M.scalar_type() == u.scalar_type(), op, ": variable ", name, " must have u's dtype ",
                     u.scalar_type(), ", got ", M.scalar_type());
  }
  checks::contiguous(op, M, name);
  return groups;
}

}  // namespace detail

// Checks the forward's arguments (the backward's too: they come first in its schema).
// op names the op and backend in messages, e.g. "selective_scan_fwd (cpu)".
inline SelectiveScanShape check_selective_scan_args(
    const char* op, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& C, const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
    const std::optional<at::Tensor>& delta_bias, const std::optional<at::Tensor>& initial_state,
    int64_t chunk_size, int64_t max_n) {
  checks::rank(op, u, "u", 3, "(batch, dim, L)");
  TORCH_CHECK_TYPE(detail::is_scan_input_dtype(u.scalar_type()), op,
                   ": u must be float32, float16 or bfloat16, got ", u.scalar_type());
  checks::contiguous(op, u, "u");
  SelectiveScanShape s;
  s.batch = u.size(0);
  s.dim = u.size(1);
  s.L = u.size(2);
  checks::tensor(op, delta, "delta", u, "u", u.scalar_type(), u.sizes(), "(batch, dim, L)");
  checks::optional_tensor(op, z, "z", u, "u", u.scalar_type(), u.sizes(), "(batch, dim, L)");

  checks::same_device(op, A, "A", u, "u");
  checks::dtype(op, A, "A", at::kFloat);
  TORCH_CHECK_VALUE(A.dim() == 2 && A.size(0) == s.dim, op, ": A must be (dim, N) with dim = ", s.dim,
                    ", got shape ", A.sizes());
  checks::contiguous(op, A, "A");
  s.N = A.size(1);
  checks::in_range(op, "the state size N = A.shape[1]", s.N, 1, max_n);

  s.groups_B = detail::check_scan_operand(op, B, "B", u, s.N);
  s.groups_C = detail::check_scan_operand(op, C, "C", u, s.N);
  checks::optional_tensor(op, D, "D", u, "u", at::kFloat, {s.dim}, "(dim,)");
  checks::optional_tensor(op, delta_bias, "delta_bias", u, "u", at::kFloat, {s.dim}, "(dim,)");
  checks::optional_tensor(op, initial_state, "initial_state", u, "u", at::kFloat, {s.batch, s.dim, s.N},
                          "(batch, dim, N)");
  checks::at_least(op, "chunk_size", chunk_size, 1);
  s.chunk_size = chunk_size;
  s.n_chunks = (s.L + chunk_size - 1) / chunk_size;
  return s;
}

// The backward's own arguments, after check_selective_scan_args has checked the rest.
inline void check_selective_scan_bwd_args(const char* op, const SelectiveScanShape& s, const at::Tensor& u,
                                          const at::Tensor& dout, const std::optional<at::Tensor>& dlast_state,
                                          const at::Tensor& chunk_states) {
  checks::tensor(op, dout, "dout", u, "u", u.scalar_type(), u.sizes(), "(batch, dim, L)");
  checks::optional_tensor(op, dlast_state, "dlast_state", u, "u", at::kFloat, {s.batch, s.dim, s.N},
                          "(batch, dim, N)");
  checks::tensor(op, chunk_states, "chunk_states", u, "u", at::kFloat, {s.batch, s.dim, s.n_chunks, s.N},
                 "(batch, dim, ceil(L / chunk_size), N)");
}

}  // namespace pyneuro
