// Prints the dynamic shared memory each CUDA kernel of csrc/cuda/ is launched with at the largest
// supported problem, one "<kernel name> <bytes>" line per __global__ function (the name as written
// in the source, without template arguments). scripts/check_cuda_compile.sh adds ptxas's static
// shared memory and compares the sum with every architecture's per-block limit. Host code only:
// it never touches a GPU. Linked with the objects of csrc/cuda/*.cu, so the sizes are the
// launchers' own (selective_scan_{fwd,bwd}_smem_bytes). A new kernel needs a line here, or the
// check fails and says so.
#include <algorithm>
#include <cstddef>
#include <cstdio>

#include "attention.h"
#include "rnn.h"
#include "selective_scan.h"

int main() {
  using namespace pyneuro::cuda;
  // The largest over every launch variant (dtype, constant or grouped B/C) at N = max.
  size_t fwd = 0, bwd = 0;
  for (ScanDtype dtype : {ScanDtype::kFloat32, ScanDtype::kFloat16, ScanDtype::kBFloat16}) {
    for (int groups_B : {0, 1}) {
      for (int groups_C : {0, 1}) {
        SelectiveScanFwdParams f;
        f.batch = 1; f.dim = 64; f.seqlen = 4096; f.dstate = kSelectiveScanMaxDState;
        f.groups_B = groups_B; f.groups_C = groups_C; f.dtype = dtype;
        f.z = &f;  // with z: the z tile takes shared memory only when z is given
        fwd = std::max(fwd, selective_scan_fwd_smem_bytes(f));
        SelectiveScanBwdParams b;
        b.batch = 1; b.dim = 64; b.seqlen = 4096; b.dstate = kSelectiveScanMaxDState;
        b.groups_B = groups_B; b.groups_C = groups_C; b.dtype = dtype;
        b.z = &b;
        bwd = std::max(bwd, selective_scan_bwd_smem_bytes(b));
      }
    }
  }
  std::printf("# N = kSelectiveScanMaxDState = %d\n", kSelectiveScanMaxDState);
  std::printf("selective_scan_fwd_kernel %zu\n", fwd);
  std::printf("selective_scan_bwd_kernel %zu\n", bwd);
  std::printf("sum_partials_kernel 0\n");  // launched without dynamic shared memory
  // Recurrent cells: the fused per-step kernels use none; the persistent forward and backward at H = max with
  // one unit tile per block (what the plan picks whenever the tiles can be co-resident), the
  // largest over cells (LSTM: 4 gates) and dtypes (fp32 weights: the largest).
  size_t rnn_persistent = 0, rnn_persistent_bwd = 0;
  for (RnnCellKind cell : {RnnCellKind::kLstm, RnnCellKind::kGru, RnnCellKind::kRnnTanh, RnnCellKind::kLeaky})
    for (RnnDtype dtype : {RnnDtype::kFloat32, RnnDtype::kFloat16, RnnDtype::kBFloat16}) {
      rnn_persistent = std::max(rnn_persistent, rnn_persistent_fwd_smem_bytes(cell, dtype, kRnnPersistentMaxH, 1));
      rnn_persistent_bwd =
          std::max(rnn_persistent_bwd, rnn_persistent_bwd_smem_bytes(cell, dtype, kRnnPersistentMaxH, 1));
    }
  std::printf("# H = kRnnPersistentMaxH = %d\n", kRnnPersistentMaxH);
  std::printf("rnn_cell_fwd_kernel 0\n");
  std::printf("rnn_cell_bwd_kernel 0\n");
  std::printf("rnn_persistent_fwd_kernel %zu\n", rnn_persistent);
  std::printf("rnn_persistent_bwd_kernel %zu\n", rnn_persistent_bwd);
  // Attention: the largest over every head dim (the key tile shrinks above D = 64), with the most
  // warps a rows block launches; the dq variant of the rows kernel keeps dout rows too.
  size_t attn_rows = 0, attn_dkdv = 0;
  for (int D = 8; D <= 128; D += 8) {
    attn_rows = std::max({attn_rows, attention_rows_smem_bytes(D, false), attention_rows_smem_bytes(D, true)});
    attn_dkdv = std::max(attn_dkdv, attention_dkdv_smem_bytes(D));
  }
  std::printf("# attention: D in [8, 128]\n");
  std::printf("attention_rows_kernel %zu\n", attn_rows);
  std::printf("attention_dkdv_kernel %zu\n", attn_dkdv);
  return 0;
}
