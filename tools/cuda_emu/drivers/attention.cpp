// C API over csrc/cuda/attention.{h,cu} for ctypes (tests/cuda_emu/emu_attention.py): fills the
// parameter structs from flat arguments the way attention_glue.cpp does from tensors (strides of
// the (B, H, L) dims in elements, the dropout parameters from [seed, offset] and p) and calls the
// real launchers, which run on cuda_emu. The caller owns every buffer. Returns the cudaError_t, or
// cudaErrorInvalidValue when attention_unsupported refuses the shape.
#include "attention.h"

using namespace pyneuro::cuda;

namespace {
AttnStrides strides(const long long* s) { return AttnStrides{s[0], s[1], s[2]}; }

template <typename P>
bool fill_common(P& p, int dtype, int B, int Hq, int Hkv, int Lq, int Lk, int D, int causal, float scale,
                 double dropout_p, long long seed, long long offset) {
  if (*attention_unsupported(B, Hq, Hkv, Lq, Lk, D) != '\0') return false;
  p.dtype = static_cast<AttnDtype>(dtype);
  p.B = B; p.Hq = Hq; p.Hkv = Hkv; p.Lq = Lq; p.Lk = Lk; p.D = D;
  p.causal = causal != 0;
  p.scale = scale;
  p.dropout = dropout_p > 0.0;
  if (p.dropout) p.drop = pyneuro::philox::dropout_params(seed, offset, dropout_p);
  return true;
}
}  // namespace

extern "C" {

int emu_attention_fwd(int dtype, int B, int Hq, int Hkv, int Lq, int Lk, int D, int causal, float scale,
                      double dropout_p, long long seed, long long offset, const void* q, const long long* q_st,
                      const void* k, const long long* k_st, const void* v, const long long* v_st, void* out,
                      float* lse) {
  AttentionFwdParams p;
  if (!fill_common(p, dtype, B, Hq, Hkv, Lq, Lk, D, causal, scale, dropout_p, seed, offset))
    return cudaErrorInvalidValue;
  p.q = q; p.k = k; p.v = v;
  p.q_st = strides(q_st); p.k_st = strides(k_st); p.v_st = strides(v_st);
  p.out = out; p.lse = lse;
  return attention_fwd(p, nullptr);
}

int emu_attention_bwd(int dtype, int B, int Hq, int Hkv, int Lq, int Lk, int D, int causal, float scale,
                      double dropout_p, long long seed, long long offset, const void* dout, const long long* dout_st,
                      const void* q, const long long* q_st, const void* k, const long long* k_st, const void* v,
                      const long long* v_st, const void* out, const long long* out_st, const float* lse, void* dq,
                      void* dk, void* dv) {
  AttentionBwdParams p;
  if (!fill_common(p, dtype, B, Hq, Hkv, Lq, Lk, D, causal, scale, dropout_p, seed, offset))
    return cudaErrorInvalidValue;
  p.dout = dout; p.q = q; p.k = k; p.v = v; p.out = out; p.lse = lse;
  p.dout_st = strides(dout_st); p.q_st = strides(q_st); p.k_st = strides(k_st); p.v_st = strides(v_st);
  p.out_st = strides(out_st);
  p.dq = dq; p.dk = dk; p.dv = dv;
  return attention_bwd(p, nullptr);
}

}  // extern "C"
