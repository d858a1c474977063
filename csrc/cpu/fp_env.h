// The floating-point environment of the CPU kernels' threads.
#pragma once

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

namespace pyneuro::cpu {

// Subnormal floats (|x| < 2^-126) flushed to zero, as results (FTZ) and as inputs (DAZ), on the
// calling thread while in scope; the previous mode is restored on exit. Why: a gradient that fades
// through hundreds of recurrent steps (pixel-by-pixel MNIST, where only the last step's output is
// used) becomes subnormal, and on x86 every arithmetic operation on a subnormal takes a microcode
// assist of ~100 cycles: a GRU backward over 784 steps measured 3.7x slower than with the same
// data scaled away from the subnormal range. Flushed values are below 1.2e-38 in magnitude, far
// under any tolerance of the contract (docs/rnn_contract.md); CUDA kernels flush the same way.
class FlushSubnormals {
 public:
#if defined(__x86_64__) || defined(_M_X64)
  FlushSubnormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | kFtz | kDaz); }
  ~FlushSubnormals() { _mm_setcsr(saved_); }

 private:
  static constexpr unsigned kFtz = 1u << 15, kDaz = 1u << 6;
  unsigned saved_;
#else
  FlushSubnormals() = default;
#endif
  FlushSubnormals(const FlushSubnormals&) = delete;
  FlushSubnormals& operator=(const FlushSubnormals&) = delete;
};

}  // namespace pyneuro::cpu
