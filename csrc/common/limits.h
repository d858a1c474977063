// Limits of the compiled kernels, in one toolkit-free header: the kernels, the argument checks
// (csrc/common/selective_scan_args.h) and build_info()["limits"] (csrc/module.cpp) all read these
// constants, and Python reads build_info(), so a limit is written down exactly once.
#pragma once

#include <cstdint>

namespace pyneuro {

// --- selective scan, CPU (csrc/cpu/selective_scan_kernels.cpp)
// N bounds the per-thread (chunk, N) fp32 tiles: at 128 x 256 they stay under 1 MiB per thread.
constexpr int64_t kCpuScanMaxN = 256;
// Steps between stored states: speed is flat from 64 to 256 at N = 16; 128 halves the states of 64.
constexpr int64_t kCpuScanDefaultChunk = 128;

// --- attention, CPU (csrc/cpu/attention.cpp, csrc/cpu/isa/attention_kernels.cpp)
// The head dim D of docs/attention_contract.md, checked for every compiled backend by
// csrc/common/attention_args.h: a multiple of 8 (whole 32-byte fp32 / 16-byte half rows), at
// most 128 (per-thread tiles of 64 rows x 128 fp32 = 32 KiB stay in L1/L2).
constexpr int64_t kAttentionMaxHeadDim = 128;
constexpr int64_t kAttentionHeadDimMultiple = 8;
// Tile of the CPU kernels: query rows x keys (a multiple of 4, the keys of one Philox call).
// A head with Lq <= 64 and Lk <= 128 is one tile, all of it in L1 (the small-L path); the
// per-thread 64 x 128 fp32 score tiles (2 x 32 KiB) and D x 128 Kᵀ/Vᵀ stay in L2.
constexpr int64_t kCpuAttentionBlockQ = 64;
constexpr int64_t kCpuAttentionBlockK = 128;

namespace cuda {
// --- selective scan, CUDA (csrc/cuda/selective_scan.cu)
// N is looped over, so it only costs shared memory: the backward keeps two fp32 carries of
// 32 x N each up to N = 128 and one above (the other goes to the workspace: kBwdSmemCarryMaxN in
// selective_scan.h), so that it fits the 99 KiB a block may use on sm_86/sm_89 at N = 256.
constexpr int kSelectiveScanMaxDState = 256;
// Time steps between stored states. Equal to the kernels' time tile, so the backward reads every
// tile's start state instead of recomputing it (other values work; see selective_scan.cu).
constexpr int kSelectiveScanDefaultChunk = 64;

// --- recurrent cells, CUDA (csrc/cuda/rnn.cu, rnn_persistent.cu)
// The persistent forward keeps W_hh's rows of its unit tiles in shared memory: at H = 256 an LSTM
// block holds 64 rows x 260 fp32 (65 KiB) plus a 16 x 260 fp32 h tile (16 KiB), within the 99 KiB
// an sm_86 block may use (the compile check measures it). Above it, path 1 (cuBLAS + fused cells) runs.
constexpr int kRnnPersistentMaxH = 256;
// Hidden units per unit tile and batch rows per batch tile: 16 x 16 = 256 threads, one (b, j) each.
constexpr int kRnnPersistentUnits = 16;
constexpr int kRnnPersistentBatch = 16;

// --- attention, CUDA (csrc/cuda/attention.cu)
// Keys per shared-memory tile (K and V staged transposed in fp32): 128 up to D = 64, 64 above, so
// the backward's block (two D x (keys + 4) fp32 tiles plus 16-row q/dout/dS/P buffers, 92-94 KiB at
// D = 64 and 128) fits the 99 KiB an sm_86 block may use. Lk up to one tile: a one-launch backward.
constexpr int kAttentionBlockKeysSmallD = 128;
constexpr int kAttentionBlockKeysLargeD = 64;
}  // namespace cuda

}  // namespace pyneuro
