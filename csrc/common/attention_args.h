// The one argument check of pyneuro::attention_fwd / attention_bwd, shared by every C++ backend
// (csrc/cpu/attention.cpp, the CUDA glue). Header-only and free of CUDA. It enforces
// docs/attention_contract.md's layout with the error contract of checks.h: TypeError for a dtype,
// ValueError for a shape, rank, layout, device or value, each message naming the argument.
//
// What stays backend-specific: the device type (the dispatcher routes by it; here only "every
// tensor on q's device" is checked) and launch limits such as grid sizes.
#pragma once

#include <ATen/core/Tensor.h>

#include <cmath>
#include <cstdint>
#include <optional>

#include "checks.h"
#include "limits.h"

namespace pyneuro {

// The sizes of a checked problem: q (B, Hq, Lq, D), k and v (B, Hkv, Lk, D).
struct AttentionShape {
  int64_t B = 0, Hq = 0, Hkv = 0, Lq = 0, Lk = 0, D = 0;
  int64_t group() const { return Hq / Hkv; }  // query heads per key/value head
};

// The dropout generator's state, read from rng_state ([seed, offset], a CPU int64 tensor).
struct AttentionRng {
  int64_t seed = 0, offset = 0;
};

namespace detail {

inline bool is_attention_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

// rank 4, q's device and dtype, last stride 1 (any other strides).
inline void check_attention_operand(const char* op, const at::Tensor& t, const char* name, const at::Tensor& q,
                                    const char* described) {
  checks::rank(op, t, name, 4, described);
  checks::same_device(op, t, name, q, "q");
  TORCH_CHECK_TYPE(t.scalar_type() == q.scalar_type(), op, ": ", name, " must have q's dtype ", q.scalar_type(),
                   ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.stride(3) == 1 || t.size(3) == 1, op, ": ", name,
                    " must have a last (head_dim) stride of 1, got strides ", t.strides(), " for shape ", t.sizes());
}

inline void check_attention_scalars(const char* op, double scale, double dropout_p,
                                    const std::optional<at::Tensor>& rng_state) {
  TORCH_CHECK_VALUE(std::isfinite(scale), op, ": scale must be finite, got ", scale);
  TORCH_CHECK_VALUE(dropout_p >= 0.0 && dropout_p < 1.0, op, ": dropout_p must be in [0, 1), got ", dropout_p);
  if (dropout_p > 0.0) {
    TORCH_CHECK_VALUE(rng_state.has_value(), op, ": rng_state ([seed, offset], a CPU int64 tensor) is required when "
                      "dropout_p > 0, got None");
  }
  if (rng_state.has_value()) {
    const at::Tensor& r = *rng_state;
    TORCH_CHECK_VALUE(r.device().is_cpu(), op, ": rng_state must be on the CPU, got ", r.device());
    checks::dtype(op, r, "rng_state", at::kLong);
    checks::shape(op, r, "rng_state", {2}, "[seed, offset]");
  }
}

}  // namespace detail

// The forward's arguments (docs/attention_contract.md, "Shapes and layout"). op names the op and
// backend in messages, e.g. "attention_fwd (cpu)".
inline AttentionShape check_attention_fwd_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                               bool causal, double scale, double dropout_p,
                                               const std::optional<at::Tensor>& rng_state,
                                               const char* op = "attention_fwd") {
  (void)causal;  // any value; named so the signature mirrors the schema
  checks::rank(op, q, "q", 4, "(batch, heads, Lq, head_dim)");
  TORCH_CHECK_TYPE(detail::is_attention_dtype(q.scalar_type()), op,
                   ": q must be float32, float16 or bfloat16, got ", q.scalar_type());
  detail::check_attention_operand(op, q, "q", q, "(batch, heads, Lq, head_dim)");
  detail::check_attention_operand(op, k, "k", q, "(batch, kv_heads, Lk, head_dim)");
  detail::check_attention_operand(op, v, "v", q, "(batch, kv_heads, Lk, head_dim)");
  AttentionShape s;
  s.B = q.size(0), s.Hq = q.size(1), s.Lq = q.size(2), s.D = q.size(3);
  s.Hkv = k.size(1), s.Lk = k.size(2);
  checks::at_least(op, "batch = q.shape[0]", s.B, 1);
  checks::at_least(op, "heads = q.shape[1]", s.Hq, 1);
  checks::at_least(op, "Lq = q.shape[2]", s.Lq, 1);
  checks::at_least(op, "kv_heads = k.shape[1]", s.Hkv, 1);
  checks::at_least(op, "Lk = k.shape[2]", s.Lk, 1);
  TORCH_CHECK_VALUE(s.D >= kAttentionHeadDimMultiple && s.D <= kAttentionMaxHeadDim &&
                        s.D % kAttentionHeadDimMultiple == 0,
                    op, ": head_dim = q.shape[3] must be a multiple of ", kAttentionHeadDimMultiple, " in [",
                    kAttentionHeadDimMultiple, ", ", kAttentionMaxHeadDim, "], got ", s.D);
  TORCH_CHECK_VALUE(k.size(0) == s.B && k.size(3) == s.D, op, ": k must have shape (batch, kv_heads, Lk, head_dim) "
                    "with q's batch = ", s.B, " and head_dim = ", s.D, ", got ", k.sizes());
  TORCH_CHECK_VALUE(s.Hq % s.Hkv == 0, op, ": the query heads q.shape[1] = ", s.Hq,
                    " must be a multiple of the key/value heads k.shape[1] = ", s.Hkv);
  checks::shape(op, v, "v", k.sizes(), "k's shape");
  detail::check_attention_scalars(op, scale, dropout_p, rng_state);
  return s;
}

// The backward's arguments: the forward's plus dout (q's shape, any strides with the last 1), out
// (q's shape and dtype) and lse ((B, Hq, Lq) fp32, contiguous), as the forward returned them.
inline AttentionShape check_attention_bwd_args(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                               const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                                               bool causal, double scale, double dropout_p,
                                               const std::optional<at::Tensor>& rng_state,
                                               const char* op = "attention_bwd") {
  const AttentionShape s = check_attention_fwd_args(q, k, v, causal, scale, dropout_p, rng_state, op);
  detail::check_attention_operand(op, dout, "dout", q, "(batch, heads, Lq, head_dim)");
  checks::shape(op, dout, "dout", q.sizes(), "q's shape");
  detail::check_attention_operand(op, out, "out", q, "(batch, heads, Lq, head_dim)");
  checks::shape(op, out, "out", q.sizes(), "q's shape");
  checks::tensor(op, lse, "lse", q, "q", at::kFloat, {s.B, s.Hq, s.Lq}, "(batch, heads, Lq)");
  return s;
}

// The packed form's qkv: (batch, L, 3, heads, head_dim), q, k and v at index 0, 1, 2 of dim 2 (the
// layout of one (L, 3 E) input projection viewed per head), any strides with the last 1. Its three
// views (batch, heads, L, head_dim) then go through the checks above.
inline void check_attention_packed_qkv(const char* op, const at::Tensor& qkv) {
  checks::rank(op, qkv, "qkv", 5, "(batch, L, 3, heads, head_dim)");
  TORCH_CHECK_VALUE(qkv.size(2) == 3, op, ": qkv must have shape (batch, L, 3, heads, head_dim), got ", qkv.sizes());
  TORCH_CHECK_VALUE(qkv.stride(4) == 1 || qkv.size(4) == 1, op,
                    ": qkv must have a last (head_dim) stride of 1, got strides ", qkv.strides());
}

// [seed, offset] of a checked rng_state (zeros when absent, i.e. dropout_p == 0). Reads two int64
// from CPU memory.
inline AttentionRng attention_rng(const std::optional<at::Tensor>& rng_state) {
  AttentionRng r;
  if (!rng_state.has_value()) return r;
  const at::Tensor c = rng_state->contiguous();
  const int64_t* p = c.const_data_ptr<int64_t>();
  r.seed = p[0];
  r.offset = p[1];
  return r;
}

}  // namespace pyneuro
