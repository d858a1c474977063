// Torch glue of the CUDA recurrent cells (built only when torch has CUDA): checks the arguments
// (csrc/common/rnn_args.h, shared with the CPU backend), runs the GEMMs through torch (cuBLAS)
// and the fused kernels of rnn.cu / rnn_persistent.cu on the current stream, and registers the
// CUDA implementations of pyneuro::{lstm,gru,rnn,leaky}_{fwd,bwd} (schemas: csrc/ops.cpp;
// contract: docs/rnn_contract.md).
//
// Forward: gx = x W_ihᵀ for all T·B rows (one GEMM, fp32 result: fp16/bf16 operands use
// mm.dtype, fp32 accumulation and output), then either
//   the persistent kernel (H <= kRnnPersistentMaxH, no projection, cooperative launch possible):
//     one launch for all steps; or
//   per step: gh = h_{t-1} W_hhᵀ (GEMM; the operand is y_{t-1}, i.e. h in X — for fp32 exactly the
//     state, for fp16/bf16 the rounded GEMM operand the contract allows), one fused cell kernel;
//     with a projection a second GEMM h_t = m_t W_hrᵀ.
// Backward (fp32 gradients): the persistent backward (same conditions as the forward; one launch
// for the reverse loop), or per step the fused gradient kernel and drec = dS_t W_hh (with a
// projection also dm_t = dh_t W_hr); then dx, dW_ih, dW_hh, db, dW_hr, dτ as single GEMMs / sums
// over all T·B rows.
//
// Environment (read per call; for tests and benchmarks):
//   PYNEURO_CUDA_RNN_PATH = auto (default) | persistent (raise if the persistent forward or
//     backward cannot run, naming why) | stepwise (never the persistent kernels)
//   PYNEURO_CUDA_RNN_MAX_BLOCKS_X = n  caps the persistent kernel's blocks along the hidden units
//     (more unit tiles per block; exercises that code path on small H)
//
// PYNEURO_RNN_GLUE_EMULATION (tools/cuda_emu, target rnn_glue; never in the real build): this same
// file on CPU tensors with the kernels running on cuda_emu, registered as pyneuro_emu::<op> — no
// CUDA guard or stream, and fp16/bf16 GEMMs as fp32 GEMMs (the CPU has no mm.dtype), so that the
// emulator tests the glue's schedule, pointers and final GEMMs (tests/cuda_emu/test_emulated_rnn.py).
#include <ATen/ATen.h>
#if !defined(PYNEURO_RNN_GLUE_EMULATION)
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#endif
#include <torch/library.h>

#include <climits>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <tuple>

#include "../common/rnn_args.h"
#include "rnn.h"

namespace {

using pyneuro::RnnCell;
using pyneuro::RnnShape;
using namespace pyneuro::cuda;
using OptT = std::optional<at::Tensor>;

RnnDtype dtype_of(const at::Tensor& x) {
  return x.scalar_type() == at::kHalf ? RnnDtype::kFloat16
         : x.scalar_type() == at::kBFloat16 ? RnnDtype::kBFloat16 : RnnDtype::kFloat32;
}

RnnCell shared_cell(RnnCellKind k) {
  return k == RnnCellKind::kLstm ? RnnCell::kLstm : k == RnnCellKind::kGru ? RnnCell::kGru
         : k == RnnCellKind::kLeaky ? RnnCell::kLeaky : RnnCell::kRnn;
}

// a @ b with an fp32 result: fp16/bf16 operands through mm.dtype (fp32 accumulation and output).
at::Tensor mm_f32(const at::Tensor& a, const at::Tensor& b) {
#if defined(PYNEURO_RNN_GLUE_EMULATION)
  return at::mm(a.to(at::kFloat), b.to(at::kFloat));
#else
  return a.scalar_type() == at::kFloat ? at::mm(a, b) : at::mm(a, b, at::kFloat);
#endif
}
void mm_f32_out(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
#if defined(PYNEURO_RNN_GLUE_EMULATION)
  at::mm_out(out, a.to(at::kFloat), b.to(at::kFloat));
#else
  if (a.scalar_type() == at::kFloat) at::mm_out(out, a, b);
  else at::mm_out(out, a, b, at::kFloat);
#endif
}

#if defined(PYNEURO_RNN_GLUE_EMULATION)
struct DeviceGuard {
  explicit DeviceGuard(const at::Device&) {}
};
cudaStream_t current_stream() { return nullptr; }
int device_index(const at::Tensor&) { return 0; }
#else
using DeviceGuard = c10::cuda::CUDAGuard;
cudaStream_t current_stream() { return at::cuda::getCurrentCUDAStream(); }
int device_index(const at::Tensor& x) { return x.get_device(); }
#endif

const void* ptr_or_null(const OptT& t) { return t.has_value() ? t->data_ptr() : nullptr; }

void check_cuda(const char* op, const at::Tensor& x, const RnnShape& s) {
#if !defined(PYNEURO_RNN_GLUE_EMULATION)
  TORCH_CHECK_VALUE(x.is_cuda(), op, ": x must be a CUDA tensor for the cuda backend, got one on ", x.device());
#endif
  TORCH_CHECK_VALUE(s.B * s.G * s.H < (int64_t(1) << 31) && s.B * s.R < (int64_t(1) << 31) && s.T <= INT_MAX &&
                        s.I <= INT_MAX,
                    op, ": batch * gates * hidden_size must be < 2^31 on the cuda backend (32-bit indices), got ",
                    s.B, " * ", s.G, " * ", s.H);
}

void launched(const char* op, cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, op, " (cuda backend): ", what, " launch failed: ", cudaGetErrorName(err), " (",
              cudaGetErrorString(err), ")");
}

enum class Path { kAuto, kPersistent, kStepwise };
Path requested_path(const char* op) {
  const char* v = std::getenv("PYNEURO_CUDA_RNN_PATH");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "auto") == 0) return Path::kAuto;
  if (std::strcmp(v, "persistent") == 0) return Path::kPersistent;
  if (std::strcmp(v, "stepwise") == 0) return Path::kStepwise;
  TORCH_CHECK_VALUE(false, op, ": PYNEURO_CUDA_RNN_PATH must be auto, persistent or stepwise, got '", v, "'");
  return Path::kAuto;
}
// The plan's occupancy query can admit a cooperative grid that the launch then refuses, when the
// device is shared (MPS, green contexts, another context's blocks). Under `auto` the per-step path
// runs instead: the error is not sticky, and nothing of the refused launch ran.
bool persistent_refused(cudaError_t err, Path path) {
  if (err != cudaErrorCooperativeLaunchTooLarge || path != Path::kAuto) return false;
  cudaGetLastError();
  return true;
}
int max_blocks_x() {
  const char* v = std::getenv("PYNEURO_CUDA_RNN_MAX_BLOCKS_X");
#if defined(PYNEURO_RNN_GLUE_EMULATION)
  if (v == nullptr) return 1;  // the emulator cannot meet a grid barrier across blocks (README)
#endif
  return v ? std::atoi(v) : 0;
}

// ---- forward -------------------------------------------------------------------------------------
struct Fwd {
  at::Tensor y, h_n, c_n, reserve;
};

// state0: h0 (u0 for leaky); c0: LSTM only; extra: w_hr (LSTM, optional) or tau (leaky).
Fwd forward(const char* op, RnnCellKind cell, const at::Tensor& x, const at::Tensor& state0, const OptT& c0,
            const at::Tensor& w_ih, const at::Tensor& w_hh, const OptT& b_ih, const OptT& b_hh, const OptT& extra) {
  const RnnShape s = pyneuro::check_rnn_fwd(op, shared_cell(cell), x, state0, c0, w_ih, w_hh, b_ih, b_hh, extra);
  check_cuda(op, x, s);
  const DeviceGuard guard(x.device());
  const cudaStream_t stream = current_stream();
  const int T = int(s.T), B = int(s.B), I = int(s.I), H = int(s.H), R = int(s.R), G = int(s.G);
  const bool lstm = cell == RnnCellKind::kLstm, leaky = cell == RnnCellKind::kLeaky, proj = s.has_proj;
  const OptT tau = leaky ? extra : std::nullopt;
  const OptT w_hr = proj ? extra : std::nullopt;
  const auto f32 = x.options().dtype(at::kFloat);
  Fwd out;
  out.y = at::empty({T, B, R}, x.options());
  out.h_n = at::empty({B, R}, x.options());
  out.c_n = lstm ? at::empty({B, H}, x.options()) : at::empty({0}, x.options());
  out.reserve = at::empty({T, B, rnn_cell_reserve_width(cell, H, R)}, f32);

  // All T input projections at once: (T·B, I) x (I, G·H), fp32 out; biases are added in the cells.
  const at::Tensor gx = mm_f32(x.view({int64_t(T) * B, I}), w_ih.t());

  const Path path = requested_path(op);
  if (path != Path::kStepwise) {
    const RnnPersistentPlan plan = proj ? RnnPersistentPlan{false, "the projection LSTM runs per step"}
                                        : rnn_persistent_fwd_plan(cell, dtype_of(x), B, H, device_index(x), max_blocks_x());
    if (plan.ok) {
      at::Tensor barrier = at::zeros({plan.blocks_y}, x.options().dtype(at::kInt));
      RnnPersistentFwdParams p;
      p.cell = cell; p.dtype = dtype_of(x); p.B = B; p.H = H; p.T = T;
      p.gx = gx.data_ptr<float>(); p.w_hh = w_hh.data_ptr();
      p.b_ih = ptr_or_null(b_ih); p.b_hh = ptr_or_null(b_hh); p.tau = ptr_or_null(tau);
      p.state0 = state0.data_ptr(); p.c0 = ptr_or_null(c0);
      p.reserve = out.reserve.data_ptr<float>(); p.y = out.y.data_ptr(); p.h_n = out.h_n.data_ptr();
      p.c_n = lstm ? out.c_n.data_ptr() : nullptr;
      p.barrier = reinterpret_cast<unsigned*>(barrier.data_ptr<int>());
      p.blocks_x = plan.blocks_x; p.blocks_y = plan.blocks_y; p.tiles_per_block = plan.tiles_per_block;
      const cudaError_t err = rnn_persistent_fwd(p, stream);
      if (!persistent_refused(err, path)) {
        launched(op, err, "persistent forward");
        return out;
      }
    }
    TORCH_CHECK(path != Path::kPersistent, op, " (cuda backend): PYNEURO_CUDA_RNN_PATH=persistent, but the persistent "
                "forward cannot run this problem: ", plan.why_not);
  }

  // Per step: one GEMM + one fused cell (+ the projection GEMM).
  at::Tensor gh = at::empty({B, G * H}, f32);
  at::Tensor m = proj ? at::empty({B, H}, x.options()) : at::Tensor();
  at::Tensor hp = proj ? at::empty({B, R}, f32) : at::Tensor();
  const at::Tensor w_hh_t = w_hh.t();
  const at::Tensor first = leaky ? at::tanh(state0) : state0;  // the recurrent GEMM's operand at t = 0
  const int so = rnn_cell_state_offset(cell, H);
  RnnCellFwdParams p;
  p.cell = cell; p.dtype = dtype_of(x); p.B = B; p.H = H; p.R = R; p.T = T;
  p.gh = gh.data_ptr<float>();
  p.b_ih = ptr_or_null(b_ih); p.b_hh = ptr_or_null(b_hh); p.tau = ptr_or_null(tau);
  p.state0 = state0.data_ptr(); p.c0 = ptr_or_null(c0);
  for (int t = 0; t < T; ++t) {
    mm_f32_out(gh, t == 0 ? first : out.y[t - 1], w_hh_t);
    p.t = t;
    p.gx = gx.data_ptr<float>() + int64_t(t) * B * G * H;
    p.reserve_prev = t > 0 ? out.reserve[t - 1].data_ptr<float>() : nullptr;
    p.reserve = out.reserve[t].data_ptr<float>();
    p.y = proj ? nullptr : out.y[t].data_ptr();
    p.m = proj ? m.data_ptr() : nullptr;
    p.h_n = proj ? nullptr : out.h_n.data_ptr();
    p.c_n = lstm ? out.c_n.data_ptr() : nullptr;
    launched(op, rnn_cell_fwd(p, stream), "cell forward");
    if (proj) {  // h_t = m_t W_hrᵀ, fp32 into the reserve, rounded into y
      mm_f32_out(hp, m, w_hr->t());
      out.reserve[t].narrow(1, so, R).copy_(hp);
      out.y[t].copy_(hp);
    }
  }
  if (proj) out.h_n.copy_(out.y[T - 1]);
  return out;
}

// ---- backward ------------------------------------------------------------------------------------
struct Bwd {
  at::Tensor dx, dstate0, dc0, dw_ih, dw_hh, db_ih, db_hh, dextra;
};

// dlast: dh_n (du_n for leaky); dc_n: LSTM only.
Bwd backward(const char* op, RnnCellKind cell, const at::Tensor& dy, const OptT& dlast, const OptT& dc_n,
             const at::Tensor& x, const at::Tensor& state0, const OptT& c0, const at::Tensor& w_ih,
             const at::Tensor& w_hh, const OptT& b_ih, const OptT& b_hh, const OptT& extra,
             const at::Tensor& reserve, bool input_grad) {
  const RnnCell sc = shared_cell(cell);
  const RnnShape s = pyneuro::check_rnn_fwd(op, sc, x, state0, c0, w_ih, w_hh, b_ih, b_hh, extra);
  pyneuro::check_rnn_bwd(op, sc, s, x, dy, dlast, dc_n, reserve);
  check_cuda(op, x, s);
  const DeviceGuard guard(x.device());
  const cudaStream_t stream = current_stream();
  const int T = int(s.T), B = int(s.B), I = int(s.I), H = int(s.H), R = int(s.R), G = int(s.G);
  const bool lstm = cell == RnnCellKind::kLstm, gru = cell == RnnCellKind::kGru, leaky = cell == RnnCellKind::kLeaky;
  const bool proj = s.has_proj;
  const OptT tau = leaky ? extra : std::nullopt;
  const auto f32 = x.options().dtype(at::kFloat);
  const auto xdt = x.scalar_type();
  const at::Tensor whh = w_hh.to(at::kFloat);  // (G·H, R)
  const at::Tensor whr = proj ? extra->to(at::kFloat) : at::Tensor();  // (P, H)

  at::Tensor dA = at::empty({T, B, G * H}, f32);
  at::Tensor dS = gru ? at::empty({T, B, G * H}, f32) : dA;
  at::Tensor carry = at::empty({B, H}, f32);
  at::Tensor drec = at::empty({B, R}, f32);
  at::Tensor dtau_acc = leaky ? at::zeros({B, H}, f32) : at::Tensor();
  at::Tensor DH = proj ? at::empty({T, B, R}, f32) : at::Tensor();  // dL/dh_t, for dW_hr
  at::Tensor M = proj ? at::empty({T, B, H}, f32) : at::Tensor();   // m_t, for dW_hr
  at::Tensor dm = proj ? at::empty({B, H}, f32) : at::Tensor();

  const Path path = requested_path(op);
  bool done = false;
  if (path != Path::kStepwise) {
    const RnnPersistentPlan plan = proj ? RnnPersistentPlan{false, "the projection LSTM runs per step"}
                                        : rnn_persistent_bwd_plan(cell, dtype_of(x), B, H, device_index(x), max_blocks_x());
    if (plan.ok) {
      at::Tensor barrier = at::zeros({plan.blocks_y}, x.options().dtype(at::kInt));
      RnnPersistentBwdParams q;
      q.cell = cell; q.dtype = dtype_of(x); q.B = B; q.H = H; q.T = T;
      q.reserve = reserve.data_ptr<float>(); q.dy = dy.data_ptr();
      q.dh_n = leaky ? nullptr : ptr_or_null(dlast);
      q.last_in = lstm ? ptr_or_null(dc_n) : leaky ? ptr_or_null(dlast) : nullptr;
      q.w_hh = w_hh.data_ptr(); q.state0 = state0.data_ptr(); q.c0 = ptr_or_null(c0); q.tau = ptr_or_null(tau);
      q.carry = carry.data_ptr<float>(); q.drec = drec.data_ptr<float>();
      q.dA = dA.data_ptr<float>(); q.dS = dS.data_ptr<float>();
      q.dtau_acc = leaky ? dtau_acc.data_ptr<float>() : nullptr;
      q.barrier = reinterpret_cast<unsigned*>(barrier.data_ptr<int>());
      q.blocks_x = plan.blocks_x; q.blocks_y = plan.blocks_y; q.tiles_per_block = plan.tiles_per_block;
      const cudaError_t err = rnn_persistent_bwd(q, stream);
      done = !persistent_refused(err, path);
      if (done) launched(op, err, "persistent backward");
    } else {
      TORCH_CHECK(path != Path::kPersistent, op, " (cuda backend): PYNEURO_CUDA_RNN_PATH=persistent, but the "
                  "persistent backward cannot run this problem: ", plan.why_not);
    }
  }

  RnnCellBwdParams p;
  p.cell = cell; p.dtype = dtype_of(x); p.B = B; p.H = H; p.R = R; p.T = T;
  p.reserve = reserve.data_ptr<float>();
  p.state0 = state0.data_ptr(); p.c0 = ptr_or_null(c0); p.tau = ptr_or_null(tau);
  p.dc_n = ptr_or_null(dc_n);  // LSTM's dc_n or leaky's du_n
  p.carry = carry.data_ptr<float>();
  p.dtau_acc = leaky ? dtau_acc.data_ptr<float>() : nullptr;
  if (leaky) p.dc_n = ptr_or_null(dlast);
  for (int t = T - 1; t >= 0 && !done; --t) {
    p.t = t;
    if (proj) {  // dh_t = dy_t + drec (+ dh_n), then dm_t = dh_t W_hr
      at::Tensor dh_t = DH[t];
      dh_t.copy_(dy[t]);
      if (t < T - 1) dh_t.add_(drec);
      if (t == T - 1 && dlast.has_value()) dh_t.add_(*dlast);
      at::mm_out(dm, dh_t, whr);
      p.dy = nullptr; p.drec = dm.data_ptr<float>(); p.dh_n = nullptr;
      p.m = M[t].data_ptr<float>();
    } else {
      p.dy = dy[t].data_ptr();
      p.drec = t < T - 1 ? drec.data_ptr<float>() : nullptr;
      p.dh_n = leaky ? nullptr : ptr_or_null(dlast);
    }
    p.dA = dA[t].data_ptr<float>();
    p.dS = gru ? dS[t].data_ptr<float>() : nullptr;
    launched(op, rnn_cell_bwd(p, stream), "cell backward");
    at::mm_out(drec, dS[t], whh);  // gradient reaching h_{t-1} through W_hh (dh0 after t = 0)
  }

  Bwd g;
  const auto absent = [&] { return at::empty({0}, x.options()); };
  const int so = rnn_cell_state_offset(cell, H);
  // The recurrent operand of every step, (T·B, R) fp32: h_{t-1} (leaky: tanh(u_{t-1})).
  at::Tensor hprev = at::cat({state0.to(at::kFloat).unsqueeze(0), reserve.narrow(0, 0, T - 1).narrow(2, so, R)}, 0);
  if (leaky) hprev = at::tanh(hprev);
  if (leaky) {
    const at::Tensor h0 = at::tanh(state0.to(at::kFloat));
    g.dstate0 = (carry + drec * (1 - h0 * h0)).to(xdt);
  } else {
    g.dstate0 = (gru ? drec + carry : drec).to(xdt);
  }
  g.dc0 = lstm ? carry.to(xdt) : absent();
  const at::Tensor dA2 = dA.view({int64_t(T) * B, G * H}), dS2 = dS.view({int64_t(T) * B, G * H});
  // dx only when asked for (a first layer's input needs none): one GEMM less.
  g.dx = input_grad ? at::mm(dA2, w_ih.to(at::kFloat)).view({T, B, I}).to(xdt) : absent();
  g.dw_ih = at::mm(dA2.t(), x.view({int64_t(T) * B, I}).to(at::kFloat)).to(xdt);
  g.dw_hh = at::mm(dS2.t(), hprev.view({int64_t(T) * B, R})).to(xdt);
  g.db_ih = b_ih.has_value() ? dA2.sum(0).to(xdt) : absent();
  g.db_hh = b_hh.has_value() ? dS2.sum(0).to(xdt) : absent();
  if (proj) {
    g.dextra = at::mm(DH.view({int64_t(T) * B, R}).t(), M.view({int64_t(T) * B, H})).to(xdt);
  } else if (leaky) {
    g.dextra = dtau_acc.sum(0).to(xdt);
  } else {
    g.dextra = absent();
  }
  return g;
}

// ---- the ops -------------------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_fwd_cuda(
    const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const OptT& b_ih, const OptT& b_hh, const OptT& w_hr) {
  Fwd f = forward("lstm_fwd", RnnCellKind::kLstm, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr);
  return {f.y, f.h_n, f.c_n, f.reserve};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_bwd_cuda(const at::Tensor& dy, const OptT& dh_n, const OptT& dc_n, const at::Tensor& x, const at::Tensor& h0,
              const at::Tensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh, const OptT& b_ih,
              const OptT& b_hh, const OptT& w_hr, const at::Tensor& reserve, bool input_grad) {
  Bwd g = backward("lstm_bwd", RnnCellKind::kLstm, dy, dh_n, dc_n, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reserve,
                   input_grad);
  return {g.dx, g.dstate0, g.dc0, g.dw_ih, g.dw_hh, g.db_ih, g.db_hh, g.dextra};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_fwd_cuda(const at::Tensor& x, const at::Tensor& h0,
                                                            const at::Tensor& w_ih, const at::Tensor& w_hh,
                                                            const OptT& b_ih, const OptT& b_hh) {
  Fwd f = forward("gru_fwd", RnnCellKind::kGru, x, h0, std::nullopt, w_ih, w_hh, b_ih, b_hh, std::nullopt);
  return {f.y, f.h_n, f.reserve};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_bwd_cuda(
    const at::Tensor& dy, const OptT& dh_n, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const OptT& b_ih, const OptT& b_hh, const at::Tensor& reserve, bool input_grad) {
  Bwd g = backward("gru_bwd", RnnCellKind::kGru, dy, dh_n, std::nullopt, x, h0, std::nullopt, w_ih, w_hh, b_ih, b_hh,
                   std::nullopt, reserve, input_grad);
  return {g.dx, g.dstate0, g.dw_ih, g.dw_hh, g.db_ih, g.db_hh};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_fwd_cuda(const at::Tensor& x, const at::Tensor& h0,
                                                            const at::Tensor& w_ih, const at::Tensor& w_hh,
                                                            const OptT& b_ih, const OptT& b_hh, bool relu) {
  Fwd f = forward("rnn_fwd", relu ? RnnCellKind::kRnnRelu : RnnCellKind::kRnnTanh, x, h0, std::nullopt, w_ih, w_hh, b_ih,
                  b_hh, std::nullopt);
  return {f.y, f.h_n, f.reserve};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_bwd_cuda(
    const at::Tensor& dy, const OptT& dh_n, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const OptT& b_ih, const OptT& b_hh, const at::Tensor& reserve, bool relu,
    bool input_grad) {
  Bwd g = backward("rnn_bwd", relu ? RnnCellKind::kRnnRelu : RnnCellKind::kRnnTanh, dy, dh_n, std::nullopt, x, h0,
                   std::nullopt, w_ih, w_hh, b_ih, b_hh, std::nullopt, reserve, input_grad);
  return {g.dx, g.dstate0, g.dw_ih, g.dw_hh, g.db_ih, g.db_hh};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> leaky_fwd_cuda(const at::Tensor& x, const at::Tensor& u0,
                                                              const at::Tensor& w_ih, const at::Tensor& w_hh,
                                                              const OptT& bias, const at::Tensor& tau) {
  Fwd f = forward("leaky_fwd", RnnCellKind::kLeaky, x, u0, std::nullopt, w_ih, w_hh, bias, std::nullopt, tau);
  return {f.y, f.h_n, f.reserve};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> leaky_bwd_cuda(
    const at::Tensor& dh, const OptT& du_n, const at::Tensor& x, const at::Tensor& u0, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const OptT& bias, const at::Tensor& tau, const at::Tensor& reserve, bool input_grad) {
  Bwd g = backward("leaky_bwd", RnnCellKind::kLeaky, dh, du_n, std::nullopt, x, u0, std::nullopt, w_ih, w_hh, bias,
                   std::nullopt, tau, reserve, input_grad);
  return {g.dx, g.dstate0, g.dw_ih, g.dw_hh, g.db_ih, g.dextra};
}

}  // namespace

#if defined(PYNEURO_RNN_GLUE_EMULATION)
// Schemas inferred from the C++ signatures (positional arguments, as the tests call them).
TORCH_LIBRARY(pyneuro_emu, m) {
  m.def("lstm_fwd", &lstm_fwd_cuda);
  m.def("lstm_bwd", &lstm_bwd_cuda);
  m.def("gru_fwd", &gru_fwd_cuda);
  m.def("gru_bwd", &gru_bwd_cuda);
  m.def("rnn_fwd", &rnn_fwd_cuda);
  m.def("rnn_bwd", &rnn_bwd_cuda);
  m.def("leaky_fwd", &leaky_fwd_cuda);
  m.def("leaky_bwd", &leaky_bwd_cuda);
}
#else
TORCH_LIBRARY_IMPL(pyneuro, CUDA, m) {
  m.impl("lstm_fwd", &lstm_fwd_cuda);
  m.impl("lstm_bwd", &lstm_bwd_cuda);
  m.impl("gru_fwd", &gru_fwd_cuda);
  m.impl("gru_bwd", &gru_bwd_cuda);
  m.impl("rnn_fwd", &rnn_fwd_cuda);
  m.impl("rnn_bwd", &rnn_bwd_cuda);
  m.impl("leaky_fwd", &leaky_fwd_cuda);
  m.impl("leaky_bwd", &leaky_bwd_cuda);
}
#endif
