// CPU backend of attention: pyneuro::attention_fwd / attention_bwd (docs/attention_contract.md).
//
// This file checks the arguments (csrc/common/attention_args.h), widens fp16/bf16 inputs to fp32
// once, fills an AttentionParams (csrc/cpu/isa.h) and splits the kernels' tasks over the threads;
// the blocked online-softmax kernels themselves are in csrc/cpu/isa/attention_kernels.cpp.
//   forward        tasks (b, h, query block)
//   backward       enough (b, kv head) pairs to fill the threads: one fused task per pair, every
//                  tile computed once; otherwise two passes, dq over (b, h, query block) and then
//                  dk/dv over (b, kv head, key block), each output owned by one task.
// The packed ops (attention_packed_fwd/_bwd) run the same kernels on views of qkv (B, L, 3, H, D):
// the kernels read and write every operand at its own strides.
// Either way no two tasks write the same output and every sum runs in a fixed order, so results
// do not depend on the thread count or schedule.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "common/attention_args.h"
#include "common/limits.h"
#include "cpu/isa.h"
#include "cpu/philox.h"

namespace pyneuro::cpu {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

Tensor as_f32(const Tensor& t) { return t.scalar_type() == at::kFloat ? t : t.to(at::kFloat); }

void set_strides(int64_t* dst, const Tensor& t) {
  for (int i = 0; i < 3; ++i) dst[i] = t.stride(i);
}

AttentionParams make_params(const AttentionShape& s, const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                            double scale, double dropout_p, const OptTensor& rng_state) {
  AttentionParams p;
  p.B = s.B, p.Hq = s.Hq, p.Hkv = s.Hkv, p.Lq = s.Lq, p.Lk = s.Lk, p.D = s.D;
  p.block_q = std::min(s.Lq, kCpuAttentionBlockQ);
  p.block_k = std::min(s.Lk, kCpuAttentionBlockK);
  p.causal = causal;
  p.scale = static_cast<float>(scale);
  p.dropout = dropout_p > 0.0;
  if (p.dropout) {
    const AttentionRng rng = attention_rng(rng_state);
    p.drop = philox::dropout_params(rng.seed, rng.offset, dropout_p);
  }
  p.q = q.const_data_ptr<float>(), p.k = k.const_data_ptr<float>(), p.v = v.const_data_ptr<float>();
  set_strides(p.q_strides, q), set_strides(p.k_strides, k), set_strides(p.v_strides, v);
  return p;
}

template <typename F>
void run_tasks(int64_t tasks, const F& body) {
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) { body(t0, t1); });
}

// The forward on fp32 views q, k, v (B, H, L, D): writes out (fp32, q's shape, any strides with the
// last 1) and returns lse.
Tensor run_fwd(const AttentionShape& s, const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale,
               double dropout_p, const OptTensor& rng_state, Tensor& out) {
  AttentionParams p = make_params(s, q, k, v, causal, scale, dropout_p, rng_state);
  Tensor lse = at::empty({s.B, s.Hq, s.Lq}, q.options());
  p.out = out.data_ptr<float>();
  set_strides(p.out_strides, out);
  p.lse = lse.data_ptr<float>();
  const int64_t query_blocks = (s.Lq + p.block_q - 1) / p.block_q;
  const KernelTable& kern = kernels();
  run_tasks(s.B * s.Hq * query_blocks, [&](int64_t t0, int64_t t1) { kern.attention_fwd(p, t0, t1); });
  return lse;
}

// The backward on fp32 views: writes dq, dk, dv (shaped as q, k, v, any strides with the last 1).
void run_bwd(const AttentionShape& s, const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
             const Tensor& out, const Tensor& lse, bool causal, double scale, double dropout_p,
             const OptTensor& rng_state, Tensor& dq, Tensor& dk, Tensor& dv) {
  const KernelTable& kern = kernels();
  AttentionParams p = make_params(s, q, k, v, causal, scale, dropout_p, rng_state);
  p.dout = dout.const_data_ptr<float>(), p.o = out.const_data_ptr<float>();
  set_strides(p.dout_strides, dout), set_strides(p.o_strides, out);
  p.lse = const_cast<float*>(lse.const_data_ptr<float>());  // read only in the backward
  Tensor delta = at::empty({s.B, s.Hq, s.Lq}, q.options());
  p.delta = delta.data_ptr<float>();
  p.dq = dq.data_ptr<float>(), p.dk = dk.data_ptr<float>(), p.dv = dv.data_ptr<float>();
  set_strides(p.dq_strides, dq), set_strides(p.dk_strides, dk), set_strides(p.dv_strides, dv);
  if (s.B * s.Hkv >= 2 * at::get_num_threads()) {
    run_tasks(s.B * s.Hkv, [&](int64_t t0, int64_t t1) { kern.attention_bwd_fused(p, t0, t1); });
  } else {
    const int64_t query_blocks = (s.Lq + p.block_q - 1) / p.block_q;
    const int64_t key_blocks = (s.Lk + p.block_k - 1) / p.block_k;
    run_tasks(s.B * s.Hq * query_blocks, [&](int64_t t0, int64_t t1) { kern.attention_bwd_dq(p, t0, t1); });
    run_tasks(s.B * s.Hkv * key_blocks, [&](int64_t t0, int64_t t1) { kern.attention_bwd_dkdv(p, t0, t1); });
  }
}

Tensor as_dtype(const Tensor& t, at::ScalarType dt) { return dt == at::kFloat ? t : t.to(dt); }

std::tuple<Tensor, Tensor> attention_fwd_cpu(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, bool causal,
                                             double scale, double dropout_p, const OptTensor& rng_state) {
  const AttentionShape s =
      check_attention_fwd_args(q_in, k_in, v_in, causal, scale, dropout_p, rng_state, "attention_fwd (cpu)");
  const Tensor q = as_f32(q_in), k = as_f32(k_in), v = as_f32(v_in);
  Tensor out = at::empty({s.B, s.Hq, s.Lq, s.D}, q.options());
  Tensor lse = run_fwd(s, q, k, v, causal, scale, dropout_p, rng_state, out);
  return {as_dtype(out, q_in.scalar_type()), lse};
}

std::tuple<Tensor, Tensor, Tensor> attention_bwd_cpu(const Tensor& dout_in, const Tensor& q_in, const Tensor& k_in,
                                                     const Tensor& v_in, const Tensor& out_in, const Tensor& lse,
                                                     bool causal, double scale, double dropout_p,
                                                     const OptTensor& rng_state) {
  const AttentionShape s = check_attention_bwd_args(dout_in, q_in, k_in, v_in, out_in, lse, causal, scale, dropout_p,
                                                    rng_state, "attention_bwd (cpu)");
  const Tensor q = as_f32(q_in), k = as_f32(k_in), v = as_f32(v_in), dout = as_f32(dout_in), out = as_f32(out_in);
  Tensor dq = at::empty({s.B, s.Hq, s.Lq, s.D}, q.options());
  Tensor dk = at::empty({s.B, s.Hkv, s.Lk, s.D}, q.options());
  Tensor dv = at::empty({s.B, s.Hkv, s.Lk, s.D}, q.options());
  run_bwd(s, dout, q, k, v, out, lse, causal, scale, dropout_p, rng_state, dq, dk, dv);
  const auto dt = q_in.scalar_type();
  return {as_dtype(dq, dt), as_dtype(dk, dt), as_dtype(dv, dt)};
}

// Packed form: q, k, v are the (B, H, L, D) views qkv[:, :, i].transpose(1, 2), read in place; out
// (B, L, H, D) and dqkv (B, L, 3, H, D) are written through the same kind of views.
Tensor head_view(const Tensor& blhd) { return blhd.transpose(1, 2); }  // (B, L, H, D) -> (B, H, L, D)

// The q, k, v (or dq, dk, dv) views of a packed (B, L, 3, H, D) tensor.
std::tuple<Tensor, Tensor, Tensor> head_views(const Tensor& packed) {
  return {head_view(packed.select(2, 0)), head_view(packed.select(2, 1)), head_view(packed.select(2, 2))};
}

std::tuple<Tensor, Tensor> attention_packed_fwd_cpu(const Tensor& qkv_in, bool causal, double scale,
                                                    double dropout_p, const OptTensor& rng_state) {
  const char* op = "attention_packed_fwd (cpu)";
  check_attention_packed_qkv(op, qkv_in);
  const Tensor qkv = as_f32(qkv_in);
  const auto [q, k, v] = head_views(qkv);
  const AttentionShape s = check_attention_fwd_args(q, k, v, causal, scale, dropout_p, rng_state, op);
  Tensor out = at::empty({s.B, s.Lq, s.Hq, s.D}, qkv.options());
  Tensor out_heads = head_view(out);
  Tensor lse = run_fwd(s, q, k, v, causal, scale, dropout_p, rng_state, out_heads);
  return {as_dtype(out, qkv_in.scalar_type()), lse};
}

Tensor attention_packed_bwd_cpu(const Tensor& dout_in, const Tensor& qkv_in, const Tensor& out_in, const Tensor& lse,
                                bool causal, double scale, double dropout_p, const OptTensor& rng_state) {
  const char* op = "attention_packed_bwd (cpu)";
  check_attention_packed_qkv(op, qkv_in);
  checks::rank(op, dout_in, "dout", 4, "(batch, L, heads, head_dim)");
  checks::rank(op, out_in, "out", 4, "(batch, L, heads, head_dim)");
  const Tensor qkv = as_f32(qkv_in);
  const auto [q, k, v] = head_views(qkv);
  const Tensor dout = head_view(as_f32(dout_in)), out = head_view(as_f32(out_in));
  const AttentionShape s = check_attention_bwd_args(dout, q, k, v, out, lse, causal, scale, dropout_p, rng_state, op);
  Tensor dqkv = at::empty(qkv.sizes(), qkv.options());
  auto [dq, dk, dv] = head_views(dqkv);
  run_bwd(s, dout, q, k, v, out, lse, causal, scale, dropout_p, rng_state, dq, dk, dv);
  return as_dtype(dqkv, qkv_in.scalar_type());
}

}  // namespace
}  // namespace pyneuro::cpu

TORCH_LIBRARY_IMPL(pyneuro, CPU, m) {
  m.impl("attention_fwd", &pyneuro::cpu::attention_fwd_cpu);
  m.impl("attention_bwd", &pyneuro::cpu::attention_bwd_cpu);
  m.impl("attention_packed_fwd", &pyneuro::cpu::attention_packed_fwd_cpu);
  m.impl("attention_packed_bwd", &pyneuro::cpu::attention_packed_bwd_cpu);
}
