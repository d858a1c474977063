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
// Whole-problem path: Lq and Lk at most this (all of one (b, h) head's q, k, v, out and the
// scores of a row stay in L1); above it the blocked online-softmax path with GEMM tiles runs.
constexpr int64_t kCpuAttentionSmallMaxL = 64;

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
}  // namespace cuda

}  // namespace pyneuro
