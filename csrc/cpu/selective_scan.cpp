// Selective scan on the CPU: the pyneuro::selective_scan_fwd / _bwd ops' CPU registration.
// Checks the arguments (csrc/common/selective_scan_args.h), then runs the kernels of the CPU ISA
// variant in use (csrc/cpu/isa.h); the kernels themselves are csrc/cpu/isa/selective_scan_kernels.cpp.
#include <torch/library.h>

#include "common/limits.h"
#include "common/selective_scan_args.h"
#include "cpu/isa.h"

namespace pyneuro::cpu {
namespace {

cpu::ScanFwdResult selective_scan_fwd_cpu(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                          const at::Tensor& B, const at::Tensor& C, const std::optional<at::Tensor>& D,
                                          const std::optional<at::Tensor>& z,
                                          const std::optional<at::Tensor>& delta_bias,
                                          const std::optional<at::Tensor>& initial_state, bool delta_softplus,
                                          int64_t chunk_size) {
  constexpr const char* kOp = "selective_scan_fwd (cpu)";
  const SelectiveScanShape s = check_selective_scan_args(kOp, u, delta, A, B, C, D, z, delta_bias, initial_state,
                                                         chunk_size, kCpuScanMaxN);
  return kernels().selective_scan_fwd(s, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus);
}

cpu::ScanBwdResult selective_scan_bwd_cpu(const at::Tensor& dout, const std::optional<at::Tensor>& dlast_state,
                                          const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                          const at::Tensor& B, const at::Tensor& C, const std::optional<at::Tensor>& D,
                                          const std::optional<at::Tensor>& z,
                                          const std::optional<at::Tensor>& delta_bias,
                                          const std::optional<at::Tensor>& initial_state,
                                          const at::Tensor& chunk_states, bool delta_softplus, int64_t chunk_size) {
  constexpr const char* kOp = "selective_scan_bwd (cpu)";
  const SelectiveScanShape s = check_selective_scan_args(kOp, u, delta, A, B, C, D, z, delta_bias, initial_state,
                                                         chunk_size, kCpuScanMaxN);
  check_selective_scan_bwd_args(kOp, s, u, dout, dlast_state, chunk_states);
  return kernels().selective_scan_bwd(s, dout, dlast_state, u, delta, A, B, C, D, z, delta_bias, initial_state,
                                      chunk_states, delta_softplus);
}

}  // namespace
}  // namespace pyneuro::cpu

TORCH_LIBRARY_IMPL(pyneuro, CPU, m) {
  m.impl("selective_scan_fwd", &pyneuro::cpu::selective_scan_fwd_cpu);
  m.impl("selective_scan_bwd", &pyneuro::cpu::selective_scan_bwd_cpu);
}
