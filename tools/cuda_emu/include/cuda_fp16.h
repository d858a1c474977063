// cuda_emu shim for <cuda_fp16.h>: __half with the toolkit's conversion intrinsics, rounding to
// nearest even (what __float2half_rn and the hardware's cvt.rn.f16.f32 do). Arithmetic goes
// through fp32 and rounds once, which equals the hardware's single fp16 operation.
#pragma once
#include "cuda_emu/core.h"
#include "cuda_emu/fp_convert.h"

struct alignas(2) __half {
  uint16_t __x;
  __half() = default;
  __half(float f) : __x(cuda_emu::float_to_half_bits(f)) {}
  operator float() const { return cuda_emu::half_bits_to_float(__x); }
};
struct alignas(4) __half2 {
  __half x, y;
};

inline float __half2float(__half h) { return cuda_emu::half_bits_to_float(h.__x); }
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline __half __ushort_as_half(unsigned short b) { __half h; h.__x = b; return h; }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half2 __floats2half2_rn(float a, float b) { return __half2{__half(a), __half(b)}; }
inline __half2 __float2half2_rn(float a) { return __half2{__half(a), __half(a)}; }
inline float2 __half22float2(__half2 h) { return float2{float(h.x), float(h.y)}; }
inline float __low2float(__half2 h) { return float(h.x); }
inline float __high2float(__half2 h) { return float(h.y); }

inline __half operator+(__half a, __half b) { return __half(float(a) + float(b)); }
inline __half operator-(__half a, __half b) { return __half(float(a) - float(b)); }
inline __half operator*(__half a, __half b) { return __half(float(a) * float(b)); }
inline __half operator/(__half a, __half b) { return __half(float(a) / float(b)); }
inline __half __hadd(__half a, __half b) { return a + b; }
inline __half __hmul(__half a, __half b) { return a * b; }
inline __half __hfma(__half a, __half b, __half c) { return __half(fmaf(float(a), float(b), float(c))); }
