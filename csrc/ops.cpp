// Operator schemas of the pyneuro namespace. Implementations register per dispatch key
// (CPU in csrc/cpu/, CUDA in csrc/cuda/*_glue.cpp); fake and autograd registrations live in
// Python next to each op (pyneuro/ops/<op>/__init__.py).
#include <torch/library.h>

TORCH_LIBRARY(pyneuro, m) {
  // Schemas are added per op as its compiled backends land (docs/ARCHITECTURE.md, "the recipe").

  // Selective scan (Mamba). Shapes, dtypes and results: docs/selective_scan_contract.md.
  m.def(
      "selective_scan_fwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, "
      "Tensor? delta_bias, Tensor? initial_state, bool delta_softplus, int chunk_size) "
      "-> (Tensor out, Tensor last_state, Tensor chunk_states)",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "selective_scan_bwd(Tensor dout, Tensor? dlast_state, Tensor u, Tensor delta, Tensor A, Tensor B, "
      "Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, Tensor? initial_state, Tensor chunk_states, "
      "bool delta_softplus, int chunk_size) -> (Tensor du, Tensor ddelta, Tensor dA, Tensor dB, Tensor dC, "
      "Tensor dD, Tensor dz, Tensor ddelta_bias, Tensor dinitial_state)",
      {at::Tag::pt2_compliant_tag});
}
