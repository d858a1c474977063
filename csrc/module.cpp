// pyneuro._C: the compiled extension. Loading it runs the TORCH_LIBRARY registrations in
// ops.cpp / cpu/*.cpp / cuda/*_glue.cpp; the functions below report how it was built and choose
// the CPU kernel variant (csrc/cpu/isa.h).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "common/limits.h"
#include "cpu/isa.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

#ifndef PYNEURO_VERSION
#define PYNEURO_VERSION "unknown"
#endif

namespace {

py::object optional_str(const std::optional<std::string>& s) {
  return s ? py::object(py::str(*s)) : py::object(py::none());
}

// The kernels' limits, from the constants they are compiled with (csrc/common/limits.h).
py::dict limits() {
  py::dict max_n, chunk_size, scan;
  max_n["cpu"] = pyneuro::kCpuScanMaxN;
  chunk_size["cpu"] = pyneuro::kCpuScanDefaultChunk;
#ifdef PYNEURO_WITH_CUDA
  max_n["cuda"] = pyneuro::cuda::kSelectiveScanMaxDState;
  chunk_size["cuda"] = pyneuro::cuda::kSelectiveScanDefaultChunk;
#endif
  scan["max_n"] = max_n;
  scan["chunk_size"] = chunk_size;
  py::dict all;
  all["selective_scan"] = scan;
  // Recurrent cells: the CUDA persistent forward's largest hidden size and tile shape (above it,
  // or when its grid cannot be co-resident, the per-step path runs; every backend takes any H).
  py::dict rnn;
#ifdef PYNEURO_WITH_CUDA
  py::dict persistent;
  persistent["max_h"] = pyneuro::cuda::kRnnPersistentMaxH;
  persistent["units_per_tile"] = pyneuro::cuda::kRnnPersistentUnits;
  persistent["batch_per_tile"] = pyneuro::cuda::kRnnPersistentBatch;
  rnn["cuda_persistent"] = persistent;
#endif
  all["rnn"] = rnn;
  // Attention: the head dims every compiled backend takes (a multiple of head_dim_multiple up to
  // max_head_dim), and the CPU kernels' tile (query rows x keys).
  py::dict attention, cpu_tile;
  attention["max_head_dim"] = pyneuro::kAttentionMaxHeadDim;
  attention["head_dim_multiple"] = pyneuro::kAttentionHeadDimMultiple;
  cpu_tile["block_q"] = pyneuro::kCpuAttentionBlockQ;
  cpu_tile["block_k"] = pyneuro::kCpuAttentionBlockK;
  attention["cpu_tile"] = cpu_tile;
  all["attention"] = attention;
  return all;
}

py::dict build_info() {
  py::dict info;
  info["version"] = PYNEURO_VERSION;
  info["compiler"] = PYNEURO_COMPILER;
  info["cxx_standard"] = static_cast<long>(__cplusplus);
  info["torch_version"] = PYNEURO_TORCH_VERSION;
  info["openmp"] = static_cast<bool>(PYNEURO_OPENMP_ON);
#ifdef _OPENMP
  info["openmp_max_threads"] = omp_get_max_threads();
#else
  info["openmp_max_threads"] = 1;
#endif
#ifdef PYNEURO_WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
  info["cuda_architectures"] = PYNEURO_CUDA_ARCHS;
  info["cpu_isa"] = optional_str(pyneuro::cpu::active_isa());
  info["cpu_isas"] = pyneuro::cpu::runnable_isas();
  info["cpu_isa_error"] = optional_str(pyneuro::cpu::isa_error());
  info["limits"] = limits();
  return info;
}

std::string cpu_isa() {
  const auto isa = pyneuro::cpu::active_isa();
  if (!isa) throw py::value_error(pyneuro::cpu::isa_error().value_or("no CPU ISA variant in use"));
  return *isa;
}

void set_cpu_isa(const std::string& name) {
  if (const auto refusal = pyneuro::cpu::set_isa(name)) throw py::value_error(*refusal);
}

pyneuro::cpu::VecFn vec_fn(const std::string& name) {
  using pyneuro::cpu::VecFn;
  if (name == "exp") return VecFn::kExp;
  if (name == "exp2") return VecFn::kExp2;
  if (name == "exp2_clamped") return VecFn::kExp2Clamped;
  if (name == "log1p") return VecFn::kLog1p;
  if (name == "softplus") return VecFn::kSoftplus;
  if (name == "sigmoid") return VecFn::kSigmoid;
  if (name == "tanh") return VecFn::kTanh;
  if (name == "silu") return VecFn::kSilu;
  throw py::value_error("_vec_math: unknown function '" + name +
                        "'; expected exp, exp2, exp2_clamped, log1p, softplus, sigmoid, tanh or silu");
}

// out[i] = fn(x[i]) with csrc/cpu/vec_math.h compiled for `isa`; x and out are float32 buffers
// (e.g. tensor.numpy()) of one length. For tests (tests/cpu/test_vec_math.py).
void vec_math(const std::string& name, py::buffer x, py::buffer out, const std::string& isa) {
  const pyneuro::cpu::VecFn fn = vec_fn(name);
  std::string why_not;
  const pyneuro::cpu::KernelTable* t = pyneuro::cpu::find_kernels(isa, &why_not);
  if (t == nullptr) throw py::value_error("_vec_math: " + why_not);
  const py::buffer_info xi = x.request(), oi = out.request(/*writable=*/true);
  auto check = [](const py::buffer_info& b, const char* arg) {
    if (b.format != py::format_descriptor<float>::format() || b.ndim != 1 || b.strides[0] != sizeof(float))
      throw py::value_error(std::string("_vec_math: ") + arg + " must be a contiguous 1-D float32 buffer");
  };
  check(xi, "x");
  check(oi, "out");
  if (xi.size != oi.size) throw py::value_error("_vec_math: x and out must have the same length");
  py::gil_scoped_release no_gil;
  t->vec_math(fn, static_cast<const float*>(xi.ptr), static_cast<float*>(oi.ptr), xi.size);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "pyneuro compiled kernels (ops are reached through torch.ops.pyneuro)";
  pyneuro::cpu::init_isa();  // reads PYNEURO_CPU_ISA now; a refusal is recorded, not raised
  m.def("build_info", &build_info,
        "How this extension was built: version, compiler, OpenMP, CUDA, CPU ISA variants, kernel limits.");
  m.def("cpu_isa", &cpu_isa,
        "The CPU kernel variant in use: 'baseline', 'avx2' or 'avx512'. Raises ValueError while a "
        "PYNEURO_CPU_ISA value is refused.");
  m.def("cpu_isas", &pyneuro::cpu::runnable_isas, "The CPU kernel variants this CPU runs, best last.");
  m.def("set_cpu_isa", &set_cpu_isa, py::arg("name"),
        "Use the CPU kernel variant `name` from now on (process-wide; for tests and benchmarks). "
        "Raises ValueError for an unknown variant or one this CPU cannot run.");
  m.def("_vec_math", &vec_math, py::arg("name"), py::arg("x"), py::arg("out"), py::arg("isa"),
        "Test hook: out = name(x) with csrc/cpu/vec_math.h compiled for `isa` (float32 buffers).");
}
