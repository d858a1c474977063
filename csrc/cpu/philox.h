// Philox4x32-10 (Salmon et al. 2011, Random123) and the attention dropout mask built on it
// (docs/attention_contract.md, "The dropout mask"). Plain C++ on uint32/uint64 with no library
// calls, so the CPU kernels (csrc/cpu/isa/attention_kernels.cpp) and the CUDA kernels (csrc/cuda)
// include the same code and produce the same bits; the oracle is pyneuro/ops/attn/naive.py
// (philox4x32, dropout_keep_mask), itself checked against Random123's known-answer vectors.
//
// Under nvcc every function is __host__ __device__; on the CPU it is a plain inline function that
// GCC vectorises when called inside an `omp simd` loop (the 32 x 32 -> 64-bit products become
// vpmuludq).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define PYNEURO_PHILOX_FN __host__ __device__ __forceinline__
#else
#define PYNEURO_PHILOX_FN inline __attribute__((always_inline))
#endif

namespace pyneuro::philox {

constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;  // round multipliers
constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;  // key increments (Weyl sequence)

struct Words {
  uint32_t w0, w1, w2, w3;
};

// Philox4x32 with 10 rounds of counter (c0, c1, c2, c3) under key (k0, k1).
PYNEURO_PHILOX_FN Words philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kM0) * c0, p1 = static_cast<uint64_t>(kM1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kW0;  // the key bumped after the last round is never used
    k1 += kW1;
  }
  return {c0, c1, c2, c3};
}

// What one attention call's mask depends on besides the element: the seed as the Philox key, the
// offset as the counter's last word, the head count that folds (b, h) into one word, and the
// threshold (a word is kept when >= threshold).
struct DropoutParams {
  uint32_t key0 = 0, key1 = 0;  // seed & 0xFFFFFFFF, seed >> 32 (the seed taken as unsigned 64-bit)
  uint32_t offset = 0;          // offset & 0xFFFFFFFF
  uint32_t threshold = 0;       // floor(p * 2^32)
  float keep_scale = 1.f;       // 1 / (1 - p)
};

// floor(p * 2^32) in fp64, for p in [0, 1) (p * 2^32 is exact in fp64, so only the floor rounds).
PYNEURO_PHILOX_FN uint32_t dropout_threshold(double p) { return static_cast<uint32_t>(p * 4294967296.0); }

PYNEURO_PHILOX_FN DropoutParams dropout_params(int64_t seed, int64_t offset, double p) {
  DropoutParams d;
  const uint64_t s = static_cast<uint64_t>(seed);
  d.key0 = static_cast<uint32_t>(s);
  d.key1 = static_cast<uint32_t>(s >> 32);
  d.offset = static_cast<uint32_t>(static_cast<uint64_t>(offset));
  d.threshold = dropout_threshold(p);
  d.keep_scale = static_cast<float>(1.0 / (1.0 - p));
  return d;
}

// The four words of keys j = 4 j4 .. 4 j4 + 3 for query row i of the (b, h) pair bh = b * Hq + h
// (h the query head): element j takes word j & 3 and is kept when that word >= d.threshold.
PYNEURO_PHILOX_FN Words dropout_words(const DropoutParams& d, uint32_t bh, uint32_t i, uint32_t j4) {
  return philox4x32_10(j4, i, bh, d.offset, d.key0, d.key1);
}

// One element's keep bit (the scalar form, for tails and for the CUDA kernels' per-thread use).
PYNEURO_PHILOX_FN bool dropout_keep(const DropoutParams& d, uint32_t bh, uint32_t i, uint32_t j) {
  const Words w = dropout_words(d, bh, i, j >> 2);
  const uint32_t lane = j & 3u;
  const uint32_t word = lane == 0 ? w.w0 : lane == 1 ? w.w1 : lane == 2 ? w.w2 : w.w3;
  return word >= d.threshold;
}

}  // namespace pyneuro::philox
