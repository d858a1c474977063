// Operator schemas of the pyneuro namespace. Implementations register per dispatch key
// (CPU in csrc/cpu/, CUDA in csrc/cuda/*_glue.cpp); fake and autograd registrations live in
// Python next to each op (pyneuro/ops/<op>/__init__.py).
#include <torch/library.h>

TORCH_LIBRARY(pyneuro, m) {
  // Schemas are added per op as its compiled backends land (see DESIGN.md, "Ops").
}
