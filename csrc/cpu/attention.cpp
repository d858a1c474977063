// CPU backend of attention: pyneuro::attention_fwd / attention_bwd (docs/attention_contract.md).
//
// This file checks the arguments (csrc/common/attention_args.h), widens fp16/bf16 inputs to fp32
// once, fills an AttentionParams (csrc/cpu/isa.h) and splits the kernels' tasks over the threads;
// the blocked online-softmax kernels themselves are in csrc/cpu/isa/attention_kernels.cpp.
//   forward        tasks (b, h, query block)
//   backward       enough (b, kv head) pairs to fill the threads: one fused task per pair, every
//                  tile computed once; otherwise two passes, dq over (b, h, query block) and then
//                  dk/dv over (b, kv head, key block), each output owned by one task.
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

std::tuple<Tensor, Tensor> attention_fwd_cpu(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, bool causal,
                                             double scale, double dropout_p, const OptTensor& rng_state) {
  const AttentionShape s =
      check_attention_fwd_args(q_in, k_in, v_in, causal, scale, dropout_p, rng_state, "attention_fwd (cpu)");
  const KernelTable& kern = kernels();
  const Tensor q = as_f32(q_in), k = as_f32(k_in), v = as_f32(v_in);
  AttentionParams p = make_params(s, q, k, v, causal, scale, dropout_p, rng_state);
  Tensor out = at::empty({s.B, s.Hq, s.Lq, s.D}, q.options());
  Tensor lse = at::empty({s.B, s.Hq, s.Lq}, q.options());
  p.out = out.data_ptr<float>();
  p.lse = lse.data_ptr<float>();
  const int64_t query_blocks = (s.Lq + p.block_q - 1) / p.block_q;
  run_tasks(s.B * s.Hq * query_blocks, [&](int64_t t0, int64_t t1) { kern.attention_fwd(p, t0, t1); });
  return {q_in.scalar_type() == at::kFloat ? out : out.to(q_in.scalar_type()), lse};
}

std::tuple<Tensor, Tensor, Tensor> attention_bwd_cpu(const Tensor& dout_in, const Tensor& q_in, const Tensor& k_in,
                                                     const Tensor& v_in, const Tensor& out_in, const Tensor& lse,
                                                     bool causal, double scale, double dropout_p,
                                                     const OptTensor& rng_state) {
  const AttentionShape s = check_attention_bwd_args(dout_in, q_in, k_in, v_in, out_in, lse, causal, scale, dropout_p,
                                                    rng_state, "attention_bwd (cpu)");
  const KernelTable& kern = kernels();
  const Tensor q = as_f32(q_in), k = as_f32(k_in), v = as_f32(v_in), dout = as_f32(dout_in), out = as_f32(out_in);
  AttentionParams p = make_params(s, q, k, v, causal, scale, dropout_p, rng_state);
  p.dout = dout.const_data_ptr<float>(), p.o = out.const_data_ptr<float>();
  set_strides(p.dout_strides, dout), set_strides(p.o_strides, out);
  p.lse = const_cast<float*>(lse.const_data_ptr<float>());  // read only in the backward
  Tensor delta = at::empty({s.B, s.Hq, s.Lq}, q.options());
  Tensor dq = at::empty({s.B, s.Hq, s.Lq, s.D}, q.options());
  Tensor dk = at::empty({s.B, s.Hkv, s.Lk, s.D}, q.options());
  Tensor dv = at::empty({s.B, s.Hkv, s.Lk, s.D}, q.options());
  p.delta = delta.data_ptr<float>();
  p.dq = dq.data_ptr<float>(), p.dk = dk.data_ptr<float>(), p.dv = dv.data_ptr<float>();
  if (s.B * s.Hkv >= 2 * at::get_num_threads()) {
    run_tasks(s.B * s.Hkv, [&](int64_t t0, int64_t t1) { kern.attention_bwd_fused(p, t0, t1); });
  } else {
    const int64_t query_blocks = (s.Lq + p.block_q - 1) / p.block_q;
    const int64_t key_blocks = (s.Lk + p.block_k - 1) / p.block_k;
    run_tasks(s.B * s.Hq * query_blocks, [&](int64_t t0, int64_t t1) { kern.attention_bwd_dq(p, t0, t1); });
    run_tasks(s.B * s.Hkv * key_blocks, [&](int64_t t0, int64_t t1) { kern.attention_bwd_dkdv(p, t0, t1); });
  }
  const auto dt = q_in.scalar_type();
  if (dt == at::kFloat) return {dq, dk, dv};
  return {dq.to(dt), dk.to(dt), dv.to(dt)};
}

}  // namespace
}  // namespace pyneuro::cpu

TORCH_LIBRARY_IMPL(pyneuro, CPU, m) {
  m.impl("attention_fwd", &pyneuro::cpu::attention_fwd_cpu);
  m.impl("attention_bwd", &pyneuro::cpu::attention_bwd_cpu);
}
