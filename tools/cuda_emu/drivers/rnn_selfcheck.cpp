// The emulated recurrent-cell kernels as a standalone program, for sanitizer builds (a sanitized
// library cannot be loaded into Python without preloading the sanitizer runtime):
//
//   python tools/cuda_emu/build.py --target rnn_selfcheck --sanitize address,undefined   (or thread)
//   build/cuda_emu/rnn_selfcheck-.../rnn_selfcheck
//
// Runs the per-step forward and backward cells and the persistent forward and backward (one block
// along H, two batch tiles) of every cell in fp32 and bf16, under the three schedules, on exactly
// sized heap buffers whose inputs are random and whose outputs start as NaN; checks the return
// codes and that every output is finite. The numbers are checked against fp64 by tests/cuda_emu;
// here the point is what the sanitizer reports: out-of-bounds or misaligned accesses (ASan/UBSan)
// and accesses of one CUDA thread racing another's with no barrier between (TSan).
// Exit status 0: all clean.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "cuda_emu/fp_convert.h"

extern "C" {
int emu_rnn_cell_fwd(int, int, int, int, int, int, int, const float*, const float*, const void*, const void*,
                     const void*, const void*, const void*, const float*, float*, void*, void*, void*, void*);
int emu_rnn_cell_bwd(int, int, int, int, int, int, int, const float*, const void*, const float*, const void*,
                     const void*, const void*, const void*, const void*, float*, float*, float*, float*, float*);
int emu_rnn_persistent_fwd(int, int, int, int, int, int, const float*, const void*, const void*, const void*,
                           const void*, const void*, const void*, float*, void*, void*, void*, unsigned*, int*);
int emu_rnn_persistent_bwd(int, int, int, int, int, int, const float*, const void*, const void*, const void*,
                           const void*, const void*, const void*, const void*, float*, float*, float*, float*,
                           float*, unsigned*, int*);
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
std::vector<float> nan_f32(size_t n) { return std::vector<float>(n, NAN); }
Buf nan_x(size_t n, int dtype) { return Buf(n, dtype, NAN, NAN); }
bool finite(const std::vector<float>& v) {
  for (float x : v) if (!std::isfinite(x)) return false;
  return true;
}

int failures = 0;
void check(bool ok, const char* what, int cell, int dtype, int sched) {
  if (!ok) {
    std::printf("FAIL %s cell %d dtype %d schedule %d: %s\n", what, cell, dtype, sched, cuda_emu_error_message());
    ++failures;
  }
}

void run(int cell, int dtype, int sched) {
  const int T = 3, B = 18, H = 20, G = cell == 0 ? 4 : cell == 1 ? 3 : 1, R = H;
  const int W = cell == 0 ? 6 * H : cell == 1 ? 5 * H : H;
  const size_t GH = size_t(G) * H;
  Buf gx(T * B * GH, 0, -1, 1), gh(B * GH, 0, -1, 1), b_ih(GH, dtype, -.2f, .2f), b_hh(GH, dtype, -.2f, .2f);
  Buf tau(H, dtype, 1, 8), h0(B * H, dtype, -.5f, .5f), c0(B * H, dtype, -.5f, .5f), w_hh(GH * H, dtype, -.2f, .2f);
  const void* bhh = cell == 4 ? nullptr : b_hh.p();
  const void* c0p = cell == 0 ? c0.p() : nullptr;
  const void* taup = cell == 4 ? tau.p() : nullptr;
  // per-step forward
  std::vector<float> reserve = nan_f32(size_t(T) * B * W);
  Buf y = nan_x(size_t(T) * B * R, dtype), h_n = nan_x(B * R, dtype), c_n = nan_x(B * H, dtype);
  const size_t ysz = (dtype == 0 ? 4 : 2) * size_t(B) * R;
  for (int t = 0; t < T; ++t) {
    const int rc = emu_rnn_cell_fwd(cell, dtype, B, H, R, t, T, static_cast<float*>(gx.p()) + t * B * GH,
                                    static_cast<float*>(gh.p()), b_ih.p(), bhh, taup, h0.p(), c0p,
                                    t > 0 ? reserve.data() + (t - 1) * B * W : nullptr, reserve.data() + t * B * W,
                                    static_cast<char*>(y.p()) + t * ysz, nullptr, h_n.p(), cell == 0 ? c_n.p() : nullptr);
    check(rc == 0, "cell fwd", cell, dtype, sched);
  }
  check(finite(reserve) && y.finite() && h_n.finite(), "cell fwd outputs", cell, dtype, sched);
  // persistent forward
  std::vector<float> reserve2 = nan_f32(size_t(T) * B * W);
  Buf y2 = nan_x(size_t(T) * B * R, dtype), h_n2 = nan_x(B * R, dtype), c_n2 = nan_x(B * H, dtype);
  std::vector<unsigned> barrier(2, 0);
  int plan[4];
  int rc = emu_rnn_persistent_fwd(cell, dtype, B, H, T, 1, static_cast<float*>(gx.p()), w_hh.p(), b_ih.p(), bhh,
                                  taup, h0.p(), c0p, reserve2.data(), y2.p(), h_n2.p(), cell == 0 ? c_n2.p() : nullptr,
                                  barrier.data(), plan);
  check(rc == 0 && finite(reserve2) && y2.finite(), "persistent fwd", cell, dtype, sched);
  // per-step backward on the persistent forward's reserve
  Buf dy(size_t(T) * B * R, dtype, -1, 1), dh_n(B * R, dtype, -1, 1), dc_n(B * H, dtype, -1, 1);
  std::vector<float> carry = nan_f32(B * H), drec(B * R, 0.1f), dA = nan_f32(T * B * GH), dS = nan_f32(T * B * GH);
  std::vector<float> dtau(B * H, 0.f);
  const size_t dysz = ysz;
  for (int t = T - 1; t >= 0; --t) {
    rc = emu_rnn_cell_bwd(cell, dtype, B, H, R, t, T, reserve2.data(), static_cast<char*>(dy.p()) + t * dysz,
                          t < T - 1 ? drec.data() : nullptr, cell == 4 ? nullptr : dh_n.p(),
                          cell == 0 || cell == 4 ? dc_n.p() : nullptr, h0.p(), c0p, taup, carry.data(),
                          dA.data() + t * B * GH, cell == 1 ? dS.data() + t * B * GH : nullptr, nullptr,
                          cell == 4 ? dtau.data() : nullptr);
    check(rc == 0, "cell bwd", cell, dtype, sched);
  }
  check(finite(dA), "cell bwd outputs", cell, dtype, sched);
  // persistent backward
  std::vector<float> carry2 = nan_f32(B * H), drec2 = nan_f32(B * H), dA2 = nan_f32(T * B * GH);
  std::vector<float> dS2 = cell == 1 ? nan_f32(T * B * GH) : std::vector<float>();
  std::vector<float> dtau2(B * H, 0.f);
  std::vector<unsigned> barrier2(2, 0);
  rc = emu_rnn_persistent_bwd(cell, dtype, B, H, T, 1, reserve2.data(), dy.p(), cell == 4 ? nullptr : dh_n.p(),
                              cell == 0 || cell == 4 ? dc_n.p() : nullptr, w_hh.p(), h0.p(), c0p, taup, carry2.data(),
                              drec2.data(), dA2.data(), cell == 1 ? dS2.data() : dA2.data(),
                              cell == 4 ? dtau2.data() : nullptr, barrier2.data(), plan);
  check(rc == 0 && finite(dA2) && finite(drec2), "persistent bwd", cell, dtype, sched);
}

}  // namespace

int main() {
  for (int sched = 0; sched < 3; ++sched) {
    cuda_emu_configure(sched, 7, 1, 0);
    for (int cell = 0; cell < 5; ++cell)
      for (int dtype : {0, 2}) run(cell, dtype, sched);
    std::printf("ok schedule %d\n", sched);
  }
  if (failures) std::printf("%d failures\n", failures);
  return failures ? 1 : 0;
}
