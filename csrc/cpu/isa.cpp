// The choice of CPU kernel variant (see isa.h): what this CPU runs, PYNEURO_CPU_ISA, set_isa().
#include "cpu/isa.h"

#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <mutex>

namespace pyneuro::cpu {
namespace {

constexpr const char* kEnvVar = "PYNEURO_CPU_ISA";

struct Variant {
  KernelTable table;
  // Features the variant's -march assumes, as __builtin_cpu_supports names them.
  std::vector<const char*> features;
};

const std::vector<Variant>& variants() {  // worst first
  static const std::vector<Variant> all = {
#define PYNEURO_TABLE_ROW(isa) \
  Variant{KernelTable{#isa, &isa::selective_scan_fwd, &isa::selective_scan_bwd, &isa::vec_math,             \
                      &isa::lstm_fwd_step, &isa::lstm_bwd_step, &isa::fused_packed_floats,                       \
                      &isa::fused_pack_weights, &isa::fused_step_tiles, &isa::lstm_fused_fwd,                 \
                      &isa::lstm_fused_bwd, &isa::gru_fused_fwd, &isa::gru_fused_bwd, &isa::rnn_fused_fwd,   \
                      &isa::rnn_fused_bwd, &isa::fused_grad_width, &isa::fused_grad_tiles,                  \
                      &isa::fused_grad_step,                                                                  \
                      &isa::leaky_fused_fwd, &isa::leaky_fused_bwd,                                         \
                      &isa::attention_fwd, &isa::attention_bwd_dq, &isa::attention_bwd_dkdv,                  \
                      &isa::attention_bwd_fused, &isa::batch_norm_stats, &isa::batch_norm_relu_fwd,          \
                      &isa::batch_norm_relu_bwd_sums, &isa::batch_norm_relu_bwd_dx, &isa::layer_norm_fwd,     \
                      &isa::layer_norm_bwd, &isa::gelu_fwd, &isa::gelu_bwd},                                  \
          {}},
      PYNEURO_FOR_EACH_CPU_ISA(PYNEURO_TABLE_ROW)
#undef PYNEURO_TABLE_ROW
  };
  static const std::vector<Variant> with_features = [] {
    std::vector<Variant> v = all;
#if defined(PYNEURO_CPU_MULTI_ISA)
    // x86-64-v3 also implies LZCNT and MOVBE, which GCC cannot query by name; every CPU with
    // AVX2 + BMI2 has them.
    const std::vector<const char*> v3 = {"avx", "avx2", "fma", "bmi", "bmi2", "f16c"};
    for (Variant& variant : v) {
      const std::string isa = variant.table.isa;
      if (isa == "avx2") variant.features = v3;
      if (isa == "avx512") {
        variant.features = v3;
        variant.features.insert(variant.features.end(),
                                {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"});
      }
    }
#endif
    return v;
  }();
  return with_features;
}

bool cpu_has(const char* feature) {
#if defined(PYNEURO_CPU_MULTI_ISA)
  __builtin_cpu_init();
  // __builtin_cpu_supports needs a literal, hence the list.
#define PYNEURO_FEATURE(name) \
  if (std::string(feature) == #name) return __builtin_cpu_supports(#name);
  PYNEURO_FEATURE(avx) PYNEURO_FEATURE(avx2) PYNEURO_FEATURE(fma) PYNEURO_FEATURE(bmi) PYNEURO_FEATURE(bmi2)
  PYNEURO_FEATURE(f16c) PYNEURO_FEATURE(avx512f) PYNEURO_FEATURE(avx512bw) PYNEURO_FEATURE(avx512cd)
  PYNEURO_FEATURE(avx512dq) PYNEURO_FEATURE(avx512vl)
#undef PYNEURO_FEATURE
#endif
  (void)feature;
  return false;
}

// Comma-separated features of v this CPU lacks ("" if it runs v).
std::string missing_features(const Variant& v) {
  std::string missing;
  for (const char* f : v.features) {
    if (!cpu_has(f)) missing += (missing.empty() ? "" : ", ") + std::string(f);
  }
  return missing;
}

std::string known_names() {
  std::string names;
  for (const auto& v : variants()) names += (names.empty() ? "" : ", ") + std::string(v.table.isa);
  return names;
}

struct State {
  std::mutex mutex;  // guards error; active is read without it
  std::atomic<const KernelTable*> active{nullptr};
  std::string error;
};

State& state() {
  static State s;
  return s;
}

const KernelTable* best() {
  const KernelTable* found = &variants().front().table;
  for (const auto& v : variants()) {
    if (missing_features(v).empty()) found = &v.table;
  }
  return found;
}

std::once_flag env_read;

void read_env() {
  State& s = state();
  const char* value = std::getenv(kEnvVar);
  if (value == nullptr || *value == '\0') {
    s.active = best();
    return;
  }
  std::string why_not;
  const KernelTable* t = find_kernels(value, &why_not);
  std::lock_guard<std::mutex> lock(s.mutex);
  if (t) {
    s.active = t;
  } else {
    s.error = std::string(kEnvVar) + "=" + value + " is refused: " + why_not + " (unset " + kEnvVar +
              " for the best variant, or call pyneuro._C.set_cpu_isa)";
  }
}

}  // namespace

void init_isa() { std::call_once(env_read, read_env); }

const KernelTable* find_kernels(const std::string& isa, std::string* why_not) {
  for (const auto& v : variants()) {
    if (isa != v.table.isa) continue;
    const std::string missing = missing_features(v);
    if (missing.empty()) return &v.table;
    if (why_not) *why_not = "this CPU lacks " + missing + ", which the " + isa + " variant needs";
    return nullptr;
  }
  if (why_not) *why_not = "unknown CPU ISA '" + isa + "'; this build has " + known_names();
  return nullptr;
}

const KernelTable& kernels() {
  init_isa();
  const KernelTable* t = state().active.load(std::memory_order_acquire);
  if (t == nullptr) {
    std::lock_guard<std::mutex> lock(state().mutex);
    TORCH_CHECK_VALUE(false, state().error);
  }
  return *t;
}

std::vector<std::string> runnable_isas() {
  std::vector<std::string> names;
  for (const auto& v : variants()) {
    if (missing_features(v).empty()) names.emplace_back(v.table.isa);
  }
  return names;
}

std::optional<std::string> active_isa() {
  init_isa();
  const KernelTable* t = state().active.load(std::memory_order_acquire);
  if (t == nullptr) return std::nullopt;
  return std::string(t->isa);
}

std::optional<std::string> isa_error() {
  init_isa();
  std::lock_guard<std::mutex> lock(state().mutex);
  if (state().error.empty()) return std::nullopt;
  return state().error;
}

std::optional<std::string> set_isa(const std::string& isa) {
  init_isa();
  std::string why_not;
  const KernelTable* t = find_kernels(isa, &why_not);
  if (t == nullptr) return "set_cpu_isa('" + isa + "') is refused: " + why_not;
  std::lock_guard<std::mutex> lock(state().mutex);
  state().error.clear();
  state().active.store(t, std::memory_order_release);
  return std::nullopt;
}

}  // namespace pyneuro::cpu
