// pyneuro._C: the compiled extension. Loading it runs the TORCH_LIBRARY registrations in
// ops.cpp / cpu/*.cpp / cuda/*_glue.cpp; the functions below only report how it was built.
#include <pybind11/pybind11.h>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

#ifndef PYNEURO_VERSION
#define PYNEURO_VERSION "unknown"
#endif

static py::dict build_info() {
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
  return info;
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "pyneuro compiled kernels (ops are reached through torch.ops.pyneuro)";
  m.def("build_info", &build_info, "How this extension was built: version, compiler, OpenMP, CUDA.");
}
