// Bit-exact fp32 <-> fp16 / bf16 conversions, round to nearest even, for the __half and
// __nv_bfloat16 shims. Integer arithmetic only, so the result does not depend on the host FPU's
// rounding mode or flush-to-zero settings. tests/cuda_emu/test_emulator_runtime.py checks them
// against numpy and torch over every 16-bit pattern and random fp32 values.
#pragma once
#include <cstdint>
#include <cstring>

namespace cuda_emu {

inline uint32_t float_bits(float f) { uint32_t b; std::memcpy(&b, &f, 4); return b; }
inline float bits_float(uint32_t b) { float f; std::memcpy(&f, &b, 4); return f; }

// Drop the low `shift` bits of v (1 <= shift <= 31), rounding to nearest, ties to even.
inline uint32_t shift_right_rne(uint32_t v, int shift) {
  const uint32_t kept = v >> shift, rest = v & ((1u << shift) - 1), half = 1u << (shift - 1);
  return kept + ((rest > half || (rest == half && (kept & 1u))) ? 1u : 0u);
}

inline uint16_t float_to_half_bits(float f) {
  const uint32_t x = float_bits(f);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return sign | 0x7e00u | uint16_t((ax >> 13) & 0x1ffu);  // NaN stays quiet NaN
  const int e = int(ax >> 23) - 127;                 // unbiased exponent
  const uint32_t sig = (ax & 0x7fffffu) | 0x800000u; // 24-bit significand
  if (e >= 16) return sign | 0x7c00u;                // >= 65536 (and inf): inf
  if (e >= -14) {                                    // normal half: drop 13 bits; a carry out of
    const uint32_t h = (uint32_t(e + 15) << 10) + shift_right_rne(sig, 13) - 0x400u;  // the
    return sign | uint16_t(h >= 0x7c00u ? 0x7c00u : h);  // mantissa bumps the exponent (to inf)
  }
  // subnormal half h·2^-24 = sig·2^(e-23): h = sig >> (-(e + 1)); zero below 2^-25
  const int shift = -(e + 1);
  if (shift > 24 || (ax >> 23) == 0) return sign;
  return sign | uint16_t(shift_right_rne(sig, shift));
}

inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 31) return bits_float(sign | 0x7f800000u | (m << 13));
  if (e == 0) {  // zero or subnormal: m·2^-24, exact in fp32
    const float v = float(m) * (1.0f / 16777216.0f);
    return sign ? -v : v;
  }
  return bits_float(sign | ((e + 112) << 23) | (m << 13));
}

inline uint16_t float_to_bf16_bits(float f) {
  const uint32_t x = float_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x40u);  // quiet NaN
  return uint16_t(shift_right_rne(x, 16));  // a carry into the exponent rounds up to inf correctly
}

inline float bf16_bits_to_float(uint16_t h) { return bits_float(uint32_t(h) << 16); }

}  // namespace cuda_emu
