// C API over csrc/cuda/rnn.{h,cu} and rnn_persistent.cu for ctypes (tests/cuda_emu/emu_rnn.py):
// fills the parameter structs from flat arguments as rnn_glue.cpp does from tensors and calls the
// real launchers, which run on cuda_emu. The caller owns every buffer. Returns the cudaError_t.
#include "rnn.h"

using namespace pyneuro::cuda;

extern "C" {

int emu_rnn_cell_fwd(int cell, int dtype, int B, int H, int R, int t, int T, const float* gx, const float* gh,
                     const void* b_ih, const void* b_hh, const void* tau, const void* state0, const void* c0,
                     const float* reserve_prev, float* reserve, void* y, void* m, void* h_n, void* c_n) {
  RnnCellFwdParams p;
  p.cell = static_cast<RnnCellKind>(cell); p.dtype = static_cast<RnnDtype>(dtype);
  p.B = B; p.H = H; p.R = R; p.t = t; p.T = T;
  p.gx = gx; p.gh = gh; p.b_ih = b_ih; p.b_hh = b_hh; p.tau = tau; p.state0 = state0; p.c0 = c0;
  p.reserve_prev = reserve_prev; p.reserve = reserve; p.y = y; p.m = m; p.h_n = h_n; p.c_n = c_n;
  return rnn_cell_fwd(p, nullptr);
}

int emu_rnn_cell_bwd(int cell, int dtype, int B, int H, int R, int t, int T, const float* reserve, const void* dy,
                     const float* drec, const void* dh_n, const void* dc_n, const void* state0, const void* c0,
                     const void* tau, float* carry, float* dA, float* dS, float* m, float* dtau_acc) {
  RnnCellBwdParams p;
  p.cell = static_cast<RnnCellKind>(cell); p.dtype = static_cast<RnnDtype>(dtype);
  p.B = B; p.H = H; p.R = R; p.t = t; p.T = T;
  p.reserve = reserve; p.dy = dy; p.drec = drec; p.dh_n = dh_n; p.dc_n = dc_n; p.state0 = state0; p.c0 = c0;
  p.tau = tau; p.carry = carry; p.dA = dA; p.dS = dS; p.m = m; p.dtau_acc = dtau_acc;
  return rnn_cell_bwd(p, nullptr);
}

// plan_out: ok, blocks_x, blocks_y, tiles_per_block. Launches only when the plan is ok (else
// returns cudaErrorInvalidValue with plan_out[0] = 0).
int emu_rnn_persistent_fwd(int cell, int dtype, int B, int H, int T, int max_blocks_x, const float* gx,
                           const void* w_hh, const void* b_ih, const void* b_hh, const void* tau, const void* state0,
                           const void* c0, float* reserve, void* y, void* h_n, void* c_n, unsigned* barrier,
                           int* plan_out) {
  const RnnPersistentPlan plan = rnn_persistent_fwd_plan(static_cast<RnnCellKind>(cell), static_cast<RnnDtype>(dtype),
                                                         B, H, 0, max_blocks_x);
  plan_out[0] = plan.ok; plan_out[1] = plan.blocks_x; plan_out[2] = plan.blocks_y; plan_out[3] = plan.tiles_per_block;
  if (!plan.ok) return cudaErrorInvalidValue;
  RnnPersistentFwdParams p;
  p.cell = static_cast<RnnCellKind>(cell); p.dtype = static_cast<RnnDtype>(dtype);
  p.B = B; p.H = H; p.T = T;
  p.gx = gx; p.w_hh = w_hh; p.b_ih = b_ih; p.b_hh = b_hh; p.tau = tau; p.state0 = state0; p.c0 = c0;
  p.reserve = reserve; p.y = y; p.h_n = h_n; p.c_n = c_n; p.barrier = barrier;
  p.blocks_x = plan.blocks_x; p.blocks_y = plan.blocks_y; p.tiles_per_block = plan.tiles_per_block;
  return rnn_persistent_fwd(p, nullptr);
}

// As emu_rnn_persistent_fwd, for the backward (dS may equal dA: non-GRU cells).
int emu_rnn_persistent_bwd(int cell, int dtype, int B, int H, int T, int max_blocks_x, const float* reserve,
                           const void* dy, const void* dh_n, const void* last_in, const void* w_hh, const void* state0,
                           const void* c0, const void* tau, float* carry, float* drec, float* dA, float* dS,
                           float* dtau_acc, unsigned* barrier, int* plan_out) {
  const RnnPersistentPlan plan = rnn_persistent_bwd_plan(static_cast<RnnCellKind>(cell), static_cast<RnnDtype>(dtype),
                                                         B, H, 0, max_blocks_x);
  plan_out[0] = plan.ok; plan_out[1] = plan.blocks_x; plan_out[2] = plan.blocks_y; plan_out[3] = plan.tiles_per_block;
  if (!plan.ok) return cudaErrorInvalidValue;
  RnnPersistentBwdParams p;
  p.cell = static_cast<RnnCellKind>(cell); p.dtype = static_cast<RnnDtype>(dtype);
  p.B = B; p.H = H; p.T = T;
  p.reserve = reserve; p.dy = dy; p.dh_n = dh_n; p.last_in = last_in; p.w_hh = w_hh; p.state0 = state0; p.c0 = c0;
  p.tau = tau; p.carry = carry; p.drec = drec; p.dA = dA; p.dS = dS; p.dtau_acc = dtau_acc; p.barrier = barrier;
  p.blocks_x = plan.blocks_x; p.blocks_y = plan.blocks_y; p.tiles_per_block = plan.tiles_per_block;
  return rnn_persistent_bwd(p, nullptr);
}

}  // extern "C"
