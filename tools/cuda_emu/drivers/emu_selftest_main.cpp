// tests/cuda_emu/kernels/emu_selftest.cu as a program, for sanitizer builds: runs one kernel,
// chosen by argv[1], so a test can show that the sanitizer reports the bug planted in it.
//   reverse-ok        the block-reversal kernel with its barrier (clean)
//   reverse-race      the same without the barrier (TSan: data race on shared memory)
//   block-race        two blocks write one global after barriers (TSan: data race between blocks)
//   smem-overflow     a write one float past the dynamic shared memory (ASan: heap-buffer-overflow)
//   misaligned        a float4 load from an address that is not 16-byte aligned (UBSan)
#include <cstdio>
#include <cstring>
#include <vector>

extern "C" {
int selftest_reverse(float* out, int blocks, int threads, int with_barrier);
int selftest_smem_overflow(int n_floats);
int selftest_block_race(int* out);
int selftest_misaligned(const float* p, float* out);
}

int main(int argc, char** argv) {
  const char* what = argc > 1 ? argv[1] : "";
  std::vector<float> out(2 * 64);
  int rc = -1;
  if (!std::strcmp(what, "reverse-ok")) rc = selftest_reverse(out.data(), 2, 64, 1);
  else if (!std::strcmp(what, "reverse-race")) rc = selftest_reverse(out.data(), 2, 64, 0);
  else if (!std::strcmp(what, "block-race")) {
    int word = 0;
    rc = selftest_block_race(&word);
  } else if (!std::strcmp(what, "smem-overflow")) rc = selftest_smem_overflow(64);
  else if (!std::strcmp(what, "misaligned")) {
    alignas(16) float in[8] = {};
    rc = selftest_misaligned(in, out.data());
  } else {
    std::fprintf(stderr, "usage: %s reverse-ok|reverse-race|block-race|smem-overflow|misaligned\n", argv[0]);
    return 2;
  }
  std::printf("%s: launch returned %d\n", what, rc);
  return rc == 0 ? 0 : 1;
}
