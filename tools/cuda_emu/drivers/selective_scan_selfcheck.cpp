// The emulated selective scan as a standalone program, for sanitizer builds (a sanitized library
// cannot be loaded into Python without preloading the sanitizer runtime):
//
//   python tools/cuda_emu/build.py --target selective_scan_selfcheck --sanitize address,undefined
//   build/cuda_emu/selective_scan_selfcheck-.../selective_scan_selfcheck
//
// Runs forward and backward over a few shapes that reach every code path (channel tiles, groups,
// tails, chunk replays, N across staging blocks) under the three schedules and 2 OS workers, and
// checks that every output is finite (all start as NaN) and that the forward output matches an
// fp64 recurrence. Gradients are checked against fp64 by tests/cuda_emu; here the point is what
// the sanitizer reports: out-of-bounds or misaligned accesses (ASan/UBSan) and accesses of one
// CUDA thread racing another's with no barrier in between (TSan). Exit status 0: all clean.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda_emu/fp_convert.h"

extern "C" {
int emu_scan_n_chunks(int seqlen, int chunk_size);
long long emu_scan_bwd_workspace_floats(int, int, int, int, int, int);
int emu_scan_fwd(int, int, int, int, int, int, int, int, int, const void*, const void*, const void*,
                 const float*, const void*, const void*, const float*, const float*, const float*, void*,
                 float*, float*);
int emu_scan_bwd(int, int, int, int, int, int, int, int, int, const void*, const float*, const void*,
                 const void*, const void*, const float*, const void*, const void*, const float*,
                 const float*, const float*, const float*, void*, void*, void*, float*, void*, void*,
                 float*, float*, float*, float*);
void cuda_emu_configure(int schedule, unsigned long long seed, int workers, unsigned long long smem_limit);
const char* cuda_emu_error_message();
}

namespace {

struct Case {
  int batch, dim, L, N, groups_B, groups_C, chunk, dtype;  // dtype: 0 fp32, 1 fp16, 2 bf16
};

// A (batch, dim, L)-like array in the kernel's storage dtype, and its values as fp32.
struct Stored {
  std::vector<uint16_t> bits16;
  std::vector<float> f32, values;
  const void* data() const { return bits16.empty() ? static_cast<const void*>(f32.data()) : bits16.data(); }
};

Stored store(const std::vector<float>& v, int dtype) {
  Stored s;
  if (dtype == 0) {
    s.f32 = s.values = v;
    return s;
  }
  for (float x : v) {
    const uint16_t b = dtype == 1 ? cuda_emu::float_to_half_bits(x) : cuda_emu::float_to_bf16_bits(x);
    s.bits16.push_back(b);
    s.values.push_back(dtype == 1 ? cuda_emu::half_bits_to_float(b) : cuda_emu::bf16_bits_to_float(b));
  }
  return s;
}

float stored_value(const std::vector<uint16_t>& bits, const std::vector<float>& f32, size_t i, int dtype) {
  if (dtype == 0) return f32[i];
  return dtype == 1 ? cuda_emu::half_bits_to_float(bits[i]) : cuda_emu::bf16_bits_to_float(bits[i]);
}

bool all_finite(const std::vector<float>& v) {
  for (float x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

bool all_finite16(const std::vector<uint16_t>& v, int dtype) {
  for (size_t i = 0; i < v.size(); ++i)
    if (!std::isfinite(stored_value(v, {}, i, dtype))) return false;
  return true;
}

// Returns an empty string when fine, else what failed.
std::string run_case(const Case& c, int schedule, int workers) {
  std::mt19937 rng(1234 + c.L * 7 + c.N);
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> uniform;
  auto randn = [&](size_t n, float scale = 1.f, float shift = 0.f) {
    std::vector<float> v(n);
    for (float& x : v) x = normal(rng) * scale + shift;
    return v;
  };
  const size_t BDL = size_t(c.batch) * c.dim * c.L, DN = size_t(c.dim) * c.N, BDN = size_t(c.batch) * DN;
  const size_t nB = c.groups_B ? size_t(c.batch) * c.groups_B * c.N * c.L : DN;
  const size_t nC = c.groups_C ? size_t(c.batch) * c.groups_C * c.N * c.L : DN;
  const Stored u = store(randn(BDL), c.dtype), delta = store(randn(BDL, 0.5f, -1.f), c.dtype),
               z = store(randn(BDL), c.dtype), dout = store(randn(BDL), c.dtype);
  const Stored B = store(randn(nB), c.groups_B ? c.dtype : 0), C = store(randn(nC), c.groups_C ? c.dtype : 0);
  std::vector<float> A(DN);
  for (float& a : A) a = -2.f * uniform(rng) - 0.2f;
  const std::vector<float> D = randn(c.dim), bias = randn(c.dim, 0.3f), x0 = randn(BDN), dlast = randn(BDN);

  const float nan = std::nanf("");
  const int n_chunks = emu_scan_n_chunks(c.L, c.chunk);
  const size_t elem = c.dtype == 0 ? 4 : 2;
  std::vector<unsigned char> out(BDL * elem, 0xff), du(BDL * elem, 0xff), ddelta(BDL * elem, 0xff),
      dz(BDL * elem, 0xff), dB(nB * (c.groups_B ? elem : 4), 0xff), dC(nC * (c.groups_C ? elem : 4), 0xff);
  std::vector<float> last(BDN, nan), chunk_states(BDN * n_chunks, nan), dA(DN, nan), dD(c.dim, nan),
      dbias(c.dim, nan), dx0(BDN, nan),
      ws(emu_scan_bwd_workspace_floats(c.batch, c.dim, c.L, c.N, c.groups_B, c.groups_C), nan);

  cuda_emu_configure(schedule, 99, workers, 0);
  const int head[] = {c.batch, c.dim, c.L, c.N, c.groups_B, c.groups_C, c.chunk, 1, c.dtype};
  int rc = emu_scan_fwd(head[0], head[1], head[2], head[3], head[4], head[5], head[6], head[7], head[8],
                        u.data(), delta.data(), z.data(), A.data(), B.data(), C.data(), D.data(), bias.data(),
                        x0.data(), out.data(), last.data(), chunk_states.data());
  if (rc != 0) return "forward failed: " + std::string(cuda_emu_error_message());
  rc = emu_scan_bwd(head[0], head[1], head[2], head[3], head[4], head[5], head[6], head[7], head[8],
                    dout.data(), dlast.data(), u.data(), delta.data(), z.data(), A.data(), B.data(), C.data(),
                    D.data(), bias.data(), x0.data(), chunk_states.data(), du.data(), ddelta.data(), dz.data(),
                    dA.data(), dB.data(), dC.data(), dD.data(), dbias.data(), dx0.data(), ws.data());
  if (rc != 0) return "backward failed: " + std::string(cuda_emu_error_message());

  auto finite_bytes = [&](const std::vector<unsigned char>& v, bool in_dtype) {
    if (!in_dtype || c.dtype == 0) {
      std::vector<float> f(v.size() / 4);
      std::memcpy(f.data(), v.data(), v.size());
      return all_finite(f);
    }
    std::vector<uint16_t> h(v.size() / 2);
    std::memcpy(h.data(), v.data(), v.size());
    return all_finite16(h, c.dtype);
  };
  std::string bad;
  for (auto [name, ok] : {std::pair<const char*, bool>{"out", finite_bytes(out, true)},
                          {"du", finite_bytes(du, true)}, {"ddelta", finite_bytes(ddelta, true)},
                          {"dz", finite_bytes(dz, true)}, {"dB", finite_bytes(dB, c.groups_B > 0)},
                          {"dC", finite_bytes(dC, c.groups_C > 0)}, {"last_state", all_finite(last)},
                          {"chunk_states", all_finite(chunk_states)}, {"dA", all_finite(dA)},
                          {"dD", all_finite(dD)}, {"ddelta_bias", all_finite(dbias)},
                          {"dinitial_state", all_finite(dx0)}})
    if (!ok) bad += std::string(bad.empty() ? "" : ", ") + name;
  if (!bad.empty()) return "non-finite (unwritten?) elements in " + bad;

  // fp64 forward from the stored inputs: out = (Σ_n C·x + D·u)·silu(z).
  double max_ref = 0, max_err = 0;
  const int cpg_B = c.groups_B ? c.dim / c.groups_B : c.dim, cpg_C = c.groups_C ? c.dim / c.groups_C : c.dim;
  for (int b = 0; b < c.batch; ++b)
    for (int d = 0; d < c.dim; ++d) {
      std::vector<double> x(x0.begin() + (size_t(b) * c.dim + d) * c.N, x0.begin() + (size_t(b) * c.dim + d + 1) * c.N);
      for (int t = 0; t < c.L; ++t) {
        const size_t i = (size_t(b) * c.dim + d) * c.L + t;
        const double v = double(delta.values[i]) + bias[d];
        const double dt = v > 20 ? v : std::log1p(std::exp(v));
        double y = 0;
        for (int n = 0; n < c.N; ++n) {
          const double Bv = c.groups_B ? B.values[((size_t(b) * c.groups_B + d / cpg_B) * c.N + n) * c.L + t]
                                       : B.values[size_t(d) * c.N + n];
          const double Cv = c.groups_C ? C.values[((size_t(b) * c.groups_C + d / cpg_C) * c.N + n) * c.L + t]
                                       : C.values[size_t(d) * c.N + n];
          x[n] = std::exp(dt * A[size_t(d) * c.N + n]) * x[n] + dt * Bv * u.values[i];
          y += Cv * x[n];
        }
        const double zz = z.values[i];
        const double ref = (y + D[d] * u.values[i]) * zz / (1 + std::exp(-zz));
        float got;
        if (c.dtype == 0) std::memcpy(&got, out.data() + 4 * i, 4);
        else {
          uint16_t h;
          std::memcpy(&h, out.data() + 2 * i, 2);
          got = stored_value({h}, {}, 0, c.dtype);
        }
        max_ref = std::max(max_ref, std::fabs(ref));
        max_err = std::max(max_err, std::fabs(got - ref));
      }
    }
  const double tol = (c.dtype == 0 ? 0 : c.dtype == 1 ? 1.0 / 2048 : 1.0 / 256) + 4e-6;
  if (max_err > tol * max_ref)
    return "forward normwise error " + std::to_string(max_err / max_ref) + " > " + std::to_string(tol);
  return "";
}

}  // namespace

int main() {
  const Case cases[] = {
      {1, 33, 65, 17, 1, 1, 64, 0},     // 2 channel tiles, tile + 1, N across a staging block
      {2, 66, 130, 16, 2, 0, 100, 1},   // G = 2, constant C, 2-tile chunks (replay), fp16
      {1, 5, 7, 1, 0, 0, 1, 2},         // constant B/C, one step per chunk, bf16
      {1, 3, 65, 256, 1, 1, 64, 0},     // N at the limit
  };
  const char* schedules[] = {"forward", "reverse", "random"};
  int failures = 0, k = 0;
  for (const Case& c : cases) {
    const int schedule = k % 3, workers = 1 + k % 2;
    ++k;
    const std::string err = run_case(c, schedule, workers);
    std::printf("%s batch=%d dim=%d L=%d N=%d G=(%d,%d) chunk=%d dtype=%d schedule=%s workers=%d%s%s\n",
                err.empty() ? "ok  " : "FAIL", c.batch, c.dim, c.L, c.N, c.groups_B, c.groups_C, c.chunk, c.dtype,
                schedules[schedule], workers, err.empty() ? "" : ": ", err.c_str());
    failures += !err.empty();
  }
  return failures == 0 ? 0 : 1;
}
