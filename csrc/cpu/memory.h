// Memory hints for the CPU backends' large fresh buffers.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace pyneuro::cpu {

// A buffer of many MiB that a call fills from scratch (the recurrent cells' reserve: 11 MiB for an
// LSTM at T = 28, B = 128, H = 128) is usually fresh memory from mmap, and each 4 KiB page of it
// faults on first touch: thousands of faults per call, which measured as much as the arithmetic. Asking for transparent
// huge pages on its 2 MiB-aligned interior, before anything touches it, turns them into a handful.
// Only a hint: where THP is off, or the memory was already mapped, nothing changes. Internal
// linkage: the ISA variants' copies (csrc/cpu/isa/, other -march) must not be merged into one.
static inline at::Tensor with_huge_pages(at::Tensor t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const auto start = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t begin = (start + kHuge - 1) & ~(kHuge - 1), end = (start + t.nbytes()) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
  return t;
}

}  // namespace pyneuro::cpu
