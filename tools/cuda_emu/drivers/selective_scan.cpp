// C API over csrc/cuda/selective_scan.{h,cu} for ctypes (tests/cuda_emu/) and the sanitizer
// self-check: fills the parameter structs from flat arguments the way selective_scan_glue.cpp
// does from tensors (chunk_size clamped to the sequence, n_chunks derived), and calls the real
// launchers, which run on cuda_emu. The caller owns every buffer, outputs and the backward
// workspace included (so a test can fill them with NaN first). Returns the cudaError_t.
#include "selective_scan.h"

#include <algorithm>

using pyneuro::cuda::ScanDtype;
using pyneuro::cuda::SelectiveScanBwdParams;
using pyneuro::cuda::SelectiveScanFwdParams;

namespace {
template <typename P>
void fill_common(P& p, int batch, int dim, int seqlen, int dstate, int groups_B, int groups_C,
                 int chunk_size, int delta_softplus, int dtype) {
  p.batch = batch; p.dim = dim; p.seqlen = seqlen; p.dstate = dstate;
  p.groups_B = groups_B; p.groups_C = groups_C;
  p.chunk_size = std::min(chunk_size, std::max(seqlen, 1));
  p.n_chunks = (seqlen + p.chunk_size - 1) / p.chunk_size;
  p.delta_softplus = delta_softplus != 0;
  p.dtype = static_cast<ScanDtype>(dtype);
}
}  // namespace

extern "C" {

int emu_scan_n_chunks(int seqlen, int chunk_size) {
  const int cs = std::min(chunk_size, std::max(seqlen, 1));
  return (seqlen + cs - 1) / cs;
}

long long emu_scan_bwd_workspace_floats(int batch, int dim, int seqlen, int dstate, int groups_B, int groups_C) {
  return pyneuro::cuda::selective_scan_bwd_workspace_layout(batch, dim, seqlen, dstate, groups_B, groups_C).total;
}

int emu_scan_fwd(int batch, int dim, int seqlen, int dstate, int groups_B, int groups_C, int chunk_size,
                 int delta_softplus, int dtype, const void* u, const void* delta, const void* z,
                 const float* A, const void* B, const void* C, const float* D, const float* delta_bias,
                 const float* initial_state, void* out, float* last_state, float* chunk_states) {
  SelectiveScanFwdParams p;
  fill_common(p, batch, dim, seqlen, dstate, groups_B, groups_C, chunk_size, delta_softplus, dtype);
  p.u = u; p.delta = delta; p.z = z; p.A = A; p.B = B; p.C = C; p.D = D;
  p.delta_bias = delta_bias; p.initial_state = initial_state;
  p.out = out; p.last_state = last_state; p.chunk_states = chunk_states;
  return pyneuro::cuda::selective_scan_fwd(p, nullptr);
}

int emu_scan_bwd(int batch, int dim, int seqlen, int dstate, int groups_B, int groups_C, int chunk_size,
                 int delta_softplus, int dtype, const void* dout, const float* dlast_state, const void* u,
                 const void* delta, const void* z, const float* A, const void* B, const void* C,
                 const float* D, const float* delta_bias, const float* initial_state,
                 const float* chunk_states, void* du, void* ddelta, void* dz, float* dA, void* dB, void* dC,
                 float* dD, float* ddelta_bias, float* dinitial_state, float* workspace) {
  SelectiveScanBwdParams p;
  fill_common(p, batch, dim, seqlen, dstate, groups_B, groups_C, chunk_size, delta_softplus, dtype);
  p.dout = dout; p.dlast_state = dlast_state;
  p.u = u; p.delta = delta; p.z = z; p.A = A; p.B = B; p.C = C; p.D = D;
  p.delta_bias = delta_bias; p.initial_state = initial_state; p.chunk_states = chunk_states;
  p.du = du; p.ddelta = ddelta; p.dz = dz; p.dA = dA; p.dB = dB; p.dC = dC; p.dD = dD;
  p.ddelta_bias = ddelta_bias; p.dinitial_state = dinitial_state; p.workspace = workspace;
  return pyneuro::cuda::selective_scan_bwd(p, nullptr);
}

}  // extern "C"
