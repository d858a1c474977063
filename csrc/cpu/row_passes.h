// Helpers of the row-wise CPU passes (add_layer_norm, bias_gelu): how many rows a task takes, and
// the in-order sum of per-chunk partial column sums that keeps parameter gradients independent of
// the thread count.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>

namespace pyneuro::cpu {

// Items per at::parallel_for task for items of `floats_each` floats: ~64 KiB each, below which
// forking a task costs more than the pass over it.
inline int64_t row_grain(int64_t floats_each) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, floats_each));
}

// (N,) = Σ_c part[c, :] over the (chunks × N) fp32 partial sums, added in chunk order. Each chunk
// is summed by whichever thread ran it, but always the same rows in the same order, so the result
// is bit-identical for any thread count. rows / chunk-size rows of N: small next to the pass.
inline at::Tensor sum_chunks_in_order(const at::Tensor& part) {
  const int64_t chunks = part.size(0), N = part.size(1);
  at::Tensor sum = at::zeros({N}, part.options());
  float* s = sum.data_ptr<float>();
  const float* q = part.const_data_ptr<float>();
  for (int64_t c = 0; c < chunks; ++c)
    for (int64_t j = 0; j < N; ++j) s[j] += q[c * N + j];
  return sum;
}

}  // namespace pyneuro::cpu
