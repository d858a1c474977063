// Argument checks shared by every op's C++ side, with one error contract:
//   TypeError  (TORCH_CHECK_TYPE)  for a wrong dtype,
//   ValueError (TORCH_CHECK_VALUE) for a wrong shape, rank, layout, device or value,
// each message reading "<op>: <argument> must ..., got ...". c10 turns these macros into the
// Python exception types named above; a plain TORCH_CHECK would surface as RuntimeError, which
// is reserved for failures that are not the caller's fault (a launch error, an internal bug).
// Header-only and free of CUDA, so the CPU kernels and the CUDA glue include the same checks.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>

namespace pyneuro::checks {

// t has this dtype (TypeError).
inline void dtype(const char* op, const at::Tensor& t, const char* name, at::ScalarType expected) {
  TORCH_CHECK_TYPE(t.scalar_type() == expected, op, ": ", name, " must be ", expected, ", got ", t.scalar_type());
}

// t has this many dimensions; `described` names them, e.g. "(batch, dim, L)" (ValueError).
inline void rank(const char* op, const at::Tensor& t, const char* name, int64_t expected, const char* described) {
  TORCH_CHECK_VALUE(t.dim() == expected, op, ": ", name, " must be ", expected, "-D ", described, ", got shape ",
                    t.sizes());
}

// t has exactly this shape (ValueError).
inline void shape(const char* op, const at::Tensor& t, const char* name, at::IntArrayRef expected,
                  const char* described = "") {
  TORCH_CHECK_VALUE(t.sizes() == expected, op, ": ", name, " must have shape ", described, (*described ? " = " : ""),
                    expected, ", got ", t.sizes());
}

// t is contiguous in the default (row-major) layout (ValueError).
inline void contiguous(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.is_contiguous(), op, ": ", name, " must be contiguous, got strides ", t.strides(),
                    " for shape ", t.sizes());
}

// t is on the same device as `ref` (ValueError).
inline void same_device(const char* op, const at::Tensor& t, const char* name, const at::Tensor& ref,
                        const char* ref_name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " must be on ", ref_name, "'s device ", ref.device(),
                    ", got ", t.device());
}

// lo <= value <= hi (ValueError); `what` describes the value, e.g. "the state size N = A.shape[1]".
inline void in_range(const char* op, const char* what, int64_t value, int64_t lo, int64_t hi) {
  TORCH_CHECK_VALUE(value >= lo && value <= hi, op, ": ", what, " must be in [", lo, ", ", hi, "], got ", value);
}

// value >= lo (ValueError).
inline void at_least(const char* op, const char* name, int64_t value, int64_t lo) {
  TORCH_CHECK_VALUE(value >= lo, op, ": ", name, " must be >= ", lo, ", got ", value);
}

// The usual set for a tensor argument: device, dtype, shape, contiguity, in that order.
// `ref` is the op's first tensor argument, named in messages as `ref_name`.
inline void tensor(const char* op, const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name,
                   at::ScalarType dt, at::IntArrayRef expected_shape, const char* described = "") {
  same_device(op, t, name, ref, ref_name);
  dtype(op, t, name, dt);
  shape(op, t, name, expected_shape, described);
  contiguous(op, t, name);
}

inline void optional_tensor(const char* op, const std::optional<at::Tensor>& t, const char* name, const at::Tensor& ref,
                            const char* ref_name, at::ScalarType dt, at::IntArrayRef expected_shape,
                            const char* described = "") {
  if (t.has_value()) tensor(op, *t, name, ref, ref_name, dt, expected_shape, described);
}

}  // namespace pyneuro::checks
