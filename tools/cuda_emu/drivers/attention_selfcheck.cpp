// The emulated attention kernels as a standalone program, for sanitizer builds (a sanitized library
// cannot be loaded into Python without preloading the sanitizer runtime):
//
//   python tools/cuda_emu/build.py --target attention_selfcheck --sanitize address,undefined   (or thread)
//   build/cuda_emu/attention_selfcheck-.../attention_selfcheck
//
// Runs the forward and both backward paths (Lk within one key tile: one launch; longer: dk/dv then
// dq) with GQA, causal masking and dropout, in fp32 and bf16, under the three schedules, on exactly
// sized heap buffers whose inputs are random and whose outputs start as NaN; checks the return
// codes and that every output is finite. The numbers are checked against fp64 by
// tests/cuda_emu/test_emulated_attention.py; here the point is what the sanitizer reports:
// out-of-bounds or misaligned accesses (ASan/UBSan) and races between CUDA threads (TSan).
// Exit status 0: all clean.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "cuda_emu/fp_convert.h"

extern "C" {
int emu_attention_fwd(int, int, int, int, int, int, int, int, float, double, long long, long long, const void*,
                      const long long*, const void*, const long long*, const void*, const long long*, void*, float*);
int emu_attention_bwd(int, int, int, int, int, int, int, int, float, double, long long, long long, const void*,
                      const long long*, const void*, const long long*, const void*, const long long*, const void*,
                      const long long*, const void*, const long long*, const float*, void*, void*, void*);
void cuda_emu_configure(int schedule, unsigned long long seed, int workers, unsigned long long smem_limit);
const char* cuda_emu_error_message();
}

namespace {

std::mt19937 rng(1234);

// An array in the kernels' storage dtype (0 fp32, 2 bf16), exactly n elements.
struct Buf {
  std::vector<float> f;
  std::vector<uint16_t> h;
  Buf(size_t n, int dtype, float lo, float hi) {
    std::uniform_real_distribution<float> u(lo, hi);
    if (dtype == 0) for (size_t i = 0; i < n; ++i) f.push_back(u(rng));
    else for (size_t i = 0; i < n; ++i) h.push_back(cuda_emu::float_to_bf16_bits(u(rng)));
  }
  void* p() { return f.empty() ? static_cast<void*>(h.data()) : f.data(); }
  bool finite() const {
    for (float v : f) if (!std::isfinite(v)) return false;
    for (uint16_t b : h) if (!std::isfinite(cuda_emu::bf16_bits_to_float(b))) return false;
    return true;
  }
};

int failures = 0;
void check(bool ok, const char* what, int c, int dtype, int sched) {
  if (!ok) {
    std::printf("FAIL %s case %d dtype %d schedule %d: %s\n", what, c, dtype, sched, cuda_emu_error_message());
    ++failures;
  }
}

struct Case {
  int B, Hq, Hkv, Lq, Lk, D, causal;
  double p;
};
const Case kCases[] = {
    {2, 4, 2, 17, 13, 24, 1, 0.2},  // one key tile: the one-launch backward
    {1, 2, 1, 9, 70, 72, 1, 0.3},   // D bucket 128: two 64-key tiles
    {1, 1, 1, 40, 150, 32, 0, 0.0},  // two 128-key tiles, two row tiles
};

void run(int c, int dtype, int sched) {
  const Case& k = kCases[c];
  const size_t nq = size_t(k.B) * k.Hq * k.Lq * k.D, nk = size_t(k.B) * k.Hkv * k.Lk * k.D;
  const long long qs[3] = {(long long)k.Hq * k.Lq * k.D, (long long)k.Lq * k.D, k.D};
  const long long ks[3] = {(long long)k.Hkv * k.Lk * k.D, (long long)k.Lk * k.D, k.D};
  Buf q(nq, dtype, -1, 1), kk(nk, dtype, -1, 1), v(nk, dtype, -1, 1), dout(nq, dtype, -1, 1);
  Buf out(nq, dtype, NAN, NAN), dq(nq, dtype, NAN, NAN), dk(nk, dtype, NAN, NAN), dv(nk, dtype, NAN, NAN);
  std::vector<float> lse(size_t(k.B) * k.Hq * k.Lq, NAN);
  const float scale = 1.f / std::sqrt(float(k.D));
  int rc = emu_attention_fwd(dtype, k.B, k.Hq, k.Hkv, k.Lq, k.Lk, k.D, k.causal, scale, k.p, 987654321, 3, q.p(), qs,
                             kk.p(), ks, v.p(), ks, out.p(), lse.data());
  check(rc == 0, "fwd", c, dtype, sched);
  bool lse_ok = true;
  for (float x : lse) lse_ok = lse_ok && std::isfinite(x);
  check(out.finite() && lse_ok, "fwd outputs", c, dtype, sched);
  rc = emu_attention_bwd(dtype, k.B, k.Hq, k.Hkv, k.Lq, k.Lk, k.D, k.causal, scale, k.p, 987654321, 3, dout.p(), qs,
                         q.p(), qs, kk.p(), ks, v.p(), ks, out.p(), qs, lse.data(), dq.p(), dk.p(), dv.p());
  check(rc == 0, "bwd", c, dtype, sched);
  check(dq.finite() && dk.finite() && dv.finite(), "bwd outputs", c, dtype, sched);
}

}  // namespace

int main() {
  for (int sched = 0; sched < 3; ++sched) {
    cuda_emu_configure(sched, 7, 1, 0);
    for (int c = 0; c < int(sizeof(kCases) / sizeof(kCases[0])); ++c)
      for (int dtype : {0, 2}) run(c, dtype, sched);
    std::printf("%s schedule %d\n", failures ? "FAIL" : "ok ", sched);
  }
  return failures ? 1 : 0;
}
