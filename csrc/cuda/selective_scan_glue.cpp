// Torch glue for the CUDA selective scan (built only when torch has CUDA): validates the tensors,
// allocates outputs and the backward workspace, fills the plain parameter structs of
// selective_scan.h and launches on the current stream. Registers the CUDA implementations of
// pyneuro::selective_scan_fwd / selective_scan_bwd (schemas in csrc/ops.cpp; shapes and semantics
// in docs/selective_scan_contract.md).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <optional>
#include <tuple>

#include "../common/selective_scan_args.h"
#include "selective_scan.h"

namespace {

using pyneuro::SelectiveScanShape;
using pyneuro::cuda::kSelectiveScanMaxDState;
using pyneuro::cuda::ScanDtype;
using pyneuro::cuda::SelectiveScanBwdParams;
using pyneuro::cuda::SelectiveScanFwdParams;

// Messages read "selective_scan: <argument> ..." (csrc/common/checks.h: TypeError for a dtype,
// ValueError for the rest); a failed launch is a RuntimeError that names the backend.
constexpr const char* kOp = "selective_scan";

struct Problem {
  int batch, dim, L, N, groups_B, groups_C, chunk_size, n_chunks;
  ScanDtype dtype;
};

// The shared argument check (csrc/common/selective_scan_args.h) plus what only this backend
// needs: CUDA tensors (the shared check puts every tensor on u's device), batch within grid.y and
// sizes within int32. Returns the sizes as the kernels take them.
Problem check_inputs(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                     const at::Tensor& B, const at::Tensor& C, const std::optional<at::Tensor>& D,
                     const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& delta_bias,
                     const std::optional<at::Tensor>& initial_state, int64_t chunk_size) {
  TORCH_CHECK_VALUE(u.is_cuda(), kOp, ": u must be a CUDA tensor for the cuda backend, got one on ",
                    u.device());
  const SelectiveScanShape s = pyneuro::check_selective_scan_args(
      kOp, u, delta, A, B, C, D, z, delta_bias, initial_state, chunk_size, kSelectiveScanMaxDState);
  TORCH_CHECK_VALUE(s.batch <= 65535, kOp, ": batch = u.shape[0] must be <= 65535 on the cuda backend (grid.y), got ",
                    s.batch);
  TORCH_CHECK_VALUE(s.dim <= INT_MAX && s.L <= INT_MAX, kOp,
                    ": dim and L (u.shape[1:]) must fit in int32 on the cuda backend, got ", s.dim, " and ", s.L);
  Problem pr;
  pr.dtype = u.scalar_type() == at::kHalf       ? ScanDtype::kFloat16
             : u.scalar_type() == at::kBFloat16 ? ScanDtype::kBFloat16
                                                : ScanDtype::kFloat32;  // the check allows no other
  pr.batch = static_cast<int>(s.batch);
  pr.dim = static_cast<int>(s.dim);
  pr.L = static_cast<int>(s.L);
  pr.N = static_cast<int>(s.N);
  pr.groups_B = static_cast<int>(s.groups_B);
  pr.groups_C = static_cast<int>(s.groups_C);
  // Chunks longer than the sequence store the same single state; clamping keeps it in int.
  pr.chunk_size = static_cast<int>(std::min<int64_t>(chunk_size, std::max<int64_t>(s.L, 1)));
  pr.n_chunks = static_cast<int>((s.L + pr.chunk_size - 1) / pr.chunk_size);
  return pr;
}

template <typename T>
const T* opt_ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() ? static_cast<const T*>(t->data_ptr()) : nullptr;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> selective_scan_fwd_cuda(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& C, const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
    const std::optional<at::Tensor>& delta_bias, const std::optional<at::Tensor>& initial_state,
    bool delta_softplus, int64_t chunk_size) {
  const Problem pr = check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state, chunk_size);
  const c10::cuda::CUDAGuard guard(u.device());
  const auto f32 = u.options().dtype(at::kFloat);
  at::Tensor out = at::empty_like(u);
  at::Tensor last_state = at::empty({pr.batch, pr.dim, pr.N}, f32);
  at::Tensor chunk_states = at::empty({pr.batch, pr.dim, pr.n_chunks, pr.N}, f32);
  if (pr.L == 0 || pr.batch == 0 || pr.dim == 0) {  // nothing to scan: x_L = x_0
    if (initial_state.has_value()) last_state.copy_(*initial_state);
    else last_state.zero_();
    return {out, last_state, chunk_states};
  }
  SelectiveScanFwdParams p;
  p.batch = pr.batch; p.dim = pr.dim; p.seqlen = pr.L; p.dstate = pr.N;
  p.groups_B = pr.groups_B; p.groups_C = pr.groups_C;
  p.chunk_size = pr.chunk_size; p.n_chunks = pr.n_chunks;
  p.delta_softplus = delta_softplus;
  p.dtype = pr.dtype;
  p.u = u.data_ptr(); p.delta = delta.data_ptr();
  p.z = z.has_value() ? z->data_ptr() : nullptr;
  p.A = A.data_ptr<float>(); p.B = B.data_ptr(); p.C = C.data_ptr();
  p.D = opt_ptr<float>(D); p.delta_bias = opt_ptr<float>(delta_bias);
  p.initial_state = opt_ptr<float>(initial_state);
  p.out = out.data_ptr();
  p.last_state = last_state.data_ptr<float>();
  p.chunk_states = chunk_states.data_ptr<float>();
  const cudaError_t err = pyneuro::cuda::selective_scan_fwd(p, at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, kOp, " (cuda backend): forward launch failed: ", cudaGetErrorName(err), " (",
              cudaGetErrorString(err), ")");
  return {out, last_state, chunk_states};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor, at::Tensor>
selective_scan_bwd_cuda(const at::Tensor& dout, const std::optional<at::Tensor>& dlast_state,
                        const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                        const at::Tensor& B, const at::Tensor& C,
                        const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
                        const std::optional<at::Tensor>& delta_bias,
                        const std::optional<at::Tensor>& initial_state,
                        const at::Tensor& chunk_states, bool delta_softplus, int64_t chunk_size) {
  const Problem pr = check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state, chunk_size);
  SelectiveScanShape s;
  s.batch = pr.batch; s.dim = pr.dim; s.L = pr.L; s.N = pr.N; s.n_chunks = pr.n_chunks;
  pyneuro::check_selective_scan_bwd_args(kOp, s, u, dout, dlast_state, chunk_states);
  const c10::cuda::CUDAGuard guard(u.device());
  const auto f32 = u.options().dtype(at::kFloat);
  const auto absent = [&] { return at::empty({0}, f32); };  // gradient of an input not given
  at::Tensor du = at::empty_like(u);
  at::Tensor ddelta = at::empty_like(delta);
  at::Tensor dA = at::empty_like(A);
  at::Tensor dB = at::empty_like(B);
  at::Tensor dC = at::empty_like(C);
  at::Tensor dD = D.has_value() ? at::empty({pr.dim}, f32) : absent();
  at::Tensor dz = z.has_value() ? at::empty_like(*z) : absent();
  at::Tensor ddelta_bias = delta_bias.has_value() ? at::empty({pr.dim}, f32) : absent();
  at::Tensor dinitial_state = initial_state.has_value() ? at::empty({pr.batch, pr.dim, pr.N}, f32) : absent();
  if (pr.L == 0 || pr.batch == 0 || pr.dim == 0) {  // no steps: only x_0 -> x_L = x_0 remains
    dA.zero_(); dB.zero_(); dC.zero_(); dD.zero_(); ddelta_bias.zero_();
    if (initial_state.has_value()) {
      if (dlast_state.has_value()) dinitial_state.copy_(*dlast_state);
      else dinitial_state.zero_();
    }
    return {du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state};
  }
  SelectiveScanBwdParams p;
  p.batch = pr.batch; p.dim = pr.dim; p.seqlen = pr.L; p.dstate = pr.N;
  p.groups_B = pr.groups_B; p.groups_C = pr.groups_C;
  p.chunk_size = pr.chunk_size; p.n_chunks = pr.n_chunks;
  p.delta_softplus = delta_softplus;
  p.dtype = pr.dtype;
  p.dout = dout.data_ptr();
  p.dlast_state = opt_ptr<float>(dlast_state);
  p.u = u.data_ptr(); p.delta = delta.data_ptr();
  p.z = z.has_value() ? z->data_ptr() : nullptr;
  p.A = A.data_ptr<float>(); p.B = B.data_ptr(); p.C = C.data_ptr();
  p.D = opt_ptr<float>(D); p.delta_bias = opt_ptr<float>(delta_bias);
  p.initial_state = opt_ptr<float>(initial_state);
  p.chunk_states = chunk_states.data_ptr<float>();
  p.du = du.data_ptr(); p.ddelta = ddelta.data_ptr();
  p.dz = z.has_value() ? dz.data_ptr() : nullptr;
  p.dA = dA.data_ptr<float>(); p.dB = dB.data_ptr(); p.dC = dC.data_ptr();
  p.dD = D.has_value() ? dD.data_ptr<float>() : nullptr;
  p.ddelta_bias = delta_bias.has_value() ? ddelta_bias.data_ptr<float>() : nullptr;
  p.dinitial_state = initial_state.has_value() ? dinitial_state.data_ptr<float>() : nullptr;
  at::Tensor workspace = at::empty({pyneuro::cuda::selective_scan_bwd_workspace_floats(p)}, f32);
  p.workspace = workspace.data_ptr<float>();
  const cudaError_t err = pyneuro::cuda::selective_scan_bwd(p, at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, kOp, " (cuda backend): backward launch failed: ", cudaGetErrorName(err), " (",
              cudaGetErrorString(err), ")");
  return {du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyneuro, CUDA, m) {
  m.impl("selective_scan_fwd", &selective_scan_fwd_cuda);
  m.impl("selective_scan_bwd", &selective_scan_bwd_cuda);
}
