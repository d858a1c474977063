// Branch-free fp32 math that GCC vectorises inside `#pragma omp simd` loops, for the CPU kernels
// (selective scan now; the recurrent cells and attention next). std::exp and friends do not
// vectorise without -ffast-math (no vector libm is assumed), and a branch ends vectorisation.
//
// Each function is written for one lane; the compiler widens it to whatever the translation
// unit's -march allows (csrc/cpu/isa/*.cpp are compiled once per ISA, see csrc/cpu/isa.h).
// Functions are `static` + always_inline on purpose: every ISA variant must get its own copy,
// never share one out-of-line copy compiled for another ISA.
//
// Accuracy: max error in ulp of the fp32 result against the exactly rounded one, measured by
// tests/cpu/test_vec_math.py over dense sweeps on every ISA variant (the same on all three;
// docs/kernels/selective_scan.md has the table). Results below FLT_MIN = 2^-126 are flushed
// (as FTZ hardware would): there only the absolute error is bounded, by FLT_MIN.
//   exp       1 ulp    x < -87.34: 0;  x > 88.72: +inf
//   exp2      1 ulp    x < -126: 0;    x >= 128: +inf
//   log1p     2 ulp    x = -1: -inf;   x < -1: NaN
//   softplus  3 ulp    log(1 + e^x); x < -87.34: 0
//   sigmoid   2 ulp    x < -87.34: 0
//   tanh      1 ulp
//   silu      3 ulp    x * sigmoid(x); x < -87.34: -0 (|exact| < 88 FLT_MIN there)
// Every function propagates NaN and gets +-0 and +-inf right (see each comment).
// exp2_clamped and exp_clamped are the hot loops' cheaper forms: same accuracy inside their
// clamp range, the bound's value outside it (exp2_clamped is tested through the `exp2_clamped`
// entry of the test hook).
//
// Clamps and selects act on the bits with integer operations, not float compares: without
// -fno-trapping-math GCC will not turn a float compare-and-select into a vector blend.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#define PYNEURO_VEC_INLINE static inline __attribute__((always_inline))

namespace pyneuro::vec {

PYNEURO_VEC_INLINE uint32_t float_bits(float x) {
  uint32_t i;
  std::memcpy(&i, &x, sizeof i);
  return i;
}
PYNEURO_VEC_INLINE float bits_float(uint32_t i) {
  float x;
  std::memcpy(&x, &i, sizeof x);
  return x;
}
// All ones when cond, else 0.
PYNEURO_VEC_INLINE uint32_t mask_if(bool cond) { return static_cast<uint32_t>(-static_cast<int32_t>(cond)); }
// mask ? a : b, bitwise (a blend once vectorised).
PYNEURO_VEC_INLINE float select_bits(uint32_t mask, float a, float b) {
  return bits_float((float_bits(a) & mask) | (float_bits(b) & ~mask));
}
PYNEURO_VEC_INLINE bool is_nan(float x) { return (float_bits(x) & 0x7fffffffu) > 0x7f800000u; }

// result, or x itself when x is NaN (so NaN inputs come out NaN, payload kept).
PYNEURO_VEC_INLINE float keep_nan(float result, float x) { return select_bits(mask_if(is_nan(x)), x, result); }

constexpr float kRoundToInt = 12582912.0f;  // 1.5 * 2^23: (x + it) - it rounds |x| < 2^22 to an integer
constexpr float kLog2e = 1.44269504088896341f;

// 2^f * 2^k for |f| <= ~1/2 and an integer-valued k in [-126, 127]: 2^f by a degree-6
// polynomial (relative minimax fit on [-1/2, 1/2], 2e-9 in exact arithmetic, ~1.6 ulp in fp32).
PYNEURO_VEC_INLINE float pow2_split(float k, float f) {
  float p = 1.535335904918611e-4f;
  p = p * f + 1.3398876180872321e-3f;
  p = p * f + 9.618437848985195e-3f;
  p = p * f + 5.5503323674201965e-2f;
  p = p * f + 2.4022647738456726e-1f;
  p = p * f + 6.931471824645996e-1f;
  p = p * f + 1.f;
  return p * bits_float(static_cast<uint32_t>(static_cast<int32_t>(k) + 127) << 23);
}

// Clamp x to [lo, hi] (lo < 0 < hi, given as bit patterns) on the bits: as unsigned integers,
// the floats below lo (sign set, larger magnitude) are exactly those above lo's bits; as signed
// integers, the floats above hi are those above hi's bits. Integer min compiles to a vector min,
// never to a branch. A NaN comes out as lo or hi; the callers restore it (keep_nan).
PYNEURO_VEC_INLINE float clamp_bits(float x, uint32_t lo_bits, uint32_t hi_bits) {
  const uint32_t ix = float_bits(x);
  const uint32_t not_below = std::min(ix, lo_bits);
  const uint32_t clamped = static_cast<uint32_t>(std::min(static_cast<int32_t>(not_below), static_cast<int32_t>(hi_bits)));
  // Keeping x's last mantissa bit (a 1-ulp change of the bound) stops GCC from constant-folding
  // the result at the bound into a separate branch, which would end the loop's vectorisation.
  return bits_float(clamped | (ix & 1u));
}

// The value x, hidden from the optimiser (the asm emits no instruction). Clamp bounds must be
// opaque: when GCC knows a bound it evaluates the function at the bound at compile time and
// branches around the arithmetic, which ends the loop's vectorisation. Call it outside the loop.
PYNEURO_VEC_INLINE float opaque(float x) {
#if defined(__x86_64__) || defined(__i386__)
  asm("" : "+x"(x));
#else
  asm("" : "+r"(x));
#endif
  return x;
}

// The clamp range of exp2_clamped, made opaque (see opaque()): build it once, outside the loop.
struct Exp2Range {
  float lo, hi;
};
PYNEURO_VEC_INLINE Exp2Range exp2_range() { return {opaque(-126.f), opaque(127.f)}; }

// 2^x for the kernels' hot loops, x clamped to [-126, 127] (so 2^-126 stands for anything
// smaller and 2^127 for anything larger): the decays a_t = exp(dt A) = 2^(dt A log2 e), with
// A log2 e precomputed; x - round(x) is exact, so this is exp's range reduction without its
// multiply and two-constant subtraction. 1 ulp like exp2 inside the range. The clamp is a float
// max and min (one instruction each) whose operand order lets a NaN through, so NaN -> NaN with
// no extra work: ~15 vector instructions in all.
PYNEURO_VEC_INLINE float exp2_clamped(float x, Exp2Range range) {
  const float c = std::min(std::max(x, range.lo), range.hi);  // x < lo ? lo : x: NaN stays x
  const float k = (c + kRoundToInt) - kRoundToInt;
  return pow2_split(k, c - k);
}

// Vector values for hot loops whose state must stay in registers across iterations: an array
// indexed inside `omp simd` is kept in memory, which puts a store-to-load round trip on the
// recurrence. fvec is the widest native vector of the translation unit's ISA: GCC handles
// vectors wider than the hardware's poorly (it keeps them in memory).
#if defined(__GNUC__) && !defined(__clang__)
// Used only in always-inline functions, so the vector-argument ABI that GCC warns about never applies.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
#if defined(__AVX512F__)
constexpr int kNativeLanes = 16;
#elif defined(__AVX__)
constexpr int kNativeLanes = 8;
#else
constexpr int kNativeLanes = 4;  // SSE2, NEON
#endif
typedef float fvec __attribute__((vector_size(kNativeLanes * 4)));
typedef int32_t ivec __attribute__((vector_size(kNativeLanes * 4)));

PYNEURO_VEC_INLINE fvec load_vec(const float* p) {
  fvec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
PYNEURO_VEC_INLINE void store_vec(float* p, fvec v) { std::memcpy(p, &v, sizeof v); }

// exp2_clamped on a native vector: the same operations in the same order, so the same results.
// The clamp compiles to one max and one min (lo and hi are opaque, see Exp2Range).
PYNEURO_VEC_INLINE fvec exp2_clamped(fvec x, Exp2Range range) {
  const fvec lo = fvec{} + range.lo, hi = fvec{} + range.hi;
  fvec c = x < lo ? lo : x;  // a NaN x fails both compares and passes through
  c = hi < c ? hi : c;
  const fvec k = (c + kRoundToInt) - kRoundToInt;
  const fvec f = c - k;
  fvec p = f * 1.535335904918611e-4f + 1.3398876180872321e-3f;
  p = p * f + 9.618437848985195e-3f;
  p = p * f + 5.5503323674201965e-2f;
  p = p * f + 2.4022647738456726e-1f;
  p = p * f + 6.931471824645996e-1f;
  p = p * f + 1.f;
  const ivec scale_bits = (__builtin_convertvector(k, ivec) + 127) << 23;
  fvec scale;
  std::memcpy(&scale, &scale_bits, sizeof scale);
  return p * scale;
}

// p * 2^k for an integer k in [-126, 128], in two factors so that k = 128 (x just below 128,
// or just below ln FLT_MAX for exp) does not make the scale itself overflow.
PYNEURO_VEC_INLINE float scale_pow2(float p, int32_t k) {
  const int32_t k2 = static_cast<int32_t>(k > 127);  // 1 only for k = 128
  return p * bits_float(static_cast<uint32_t>(k - k2 + 127) << 23) * bits_float(static_cast<uint32_t>(k2 + 127) << 23);
}

// 2^f for |f| <= ~1/2: pow2_split's polynomial without the scale.
PYNEURO_VEC_INLINE float pow2_poly(float f) { return pow2_split(0.f, f); }

// 2^x with IEEE edges: overflows to +inf from 128 up, 0 below -126 (the subnormal range is
// flushed), -inf -> 0, NaN -> NaN.
PYNEURO_VEC_INLINE float exp2(float x) {
  const uint32_t ix = float_bits(x);
  const float c = clamp_bits(x, 0xC2FC0000u /* -126 */, 0x43000000u /* 128 */);
  const float k = (c + kRoundToInt) - kRoundToInt;
  const float r = scale_pow2(pow2_poly(c - k), static_cast<int32_t>(k));
  const float flushed = bits_float(float_bits(r) & ~mask_if(ix > 0xC2FC0000u /* < -126 */ && !is_nan(x)));
  return keep_nan(flushed, x);
}

// exp(x): k = round(x / ln2), r = x - k ln2 with ln2 split in two (exact for |k| <= 128),
// exp(r) = 2^(r log2 e). Overflows to +inf above ln(FLT_MAX) = 88.72; 0 below
// ln(FLT_MIN) = -87.34 (the subnormal range is flushed, as FTZ hardware would); NaN -> NaN.
PYNEURO_VEC_INLINE float exp(float x) {
  const uint32_t ix = float_bits(x);
  const float c = clamp_bits(x, 0xC2AEAC50u /* -87.33655 */, 0x42B17218u /* 88.72284 */);
  const float k = (c * kLog2e + kRoundToInt) - kRoundToInt;
  const float r = (c - k * 0.693145751953125f) - k * 1.428606765330187e-06f;
  const float e = scale_pow2(pow2_poly(r * kLog2e), static_cast<int32_t>(k));
  const float flushed = bits_float(float_bits(e) & ~mask_if(ix >= 0xC2AEAC50u /* <= -87.33655 */ && !is_nan(x)));
  return keep_nan(flushed, x);
}

// exp(x) for the hot loops that only need it on [-87, 88] and clamp outside it (no inf, no 0):
// fewer operations than exp. NaN -> NaN.
PYNEURO_VEC_INLINE float exp_clamped(float x) {
  const float c = clamp_bits(x, 0xC2AE0000u /* -87 */, 0x42B00000u /* 88 */);
  const float k = (c * kLog2e + kRoundToInt) - kRoundToInt;
  const float r = (c - k * 0.693145751953125f) - k * 1.428606765330187e-06f;
  return keep_nan(pow2_split(k, r * kLog2e), x);
}

// 2 atanh(s) = log((1 + s) / (1 - s)) for |s| <= 1/3, as 2s + 2s s^2 q(s^2): the odd series up
// to s^13 (2e-8 relative at 1/3), arranged so that only 2s is a full-size term and the rounding
// of the rest barely shows.
PYNEURO_VEC_INLINE float two_atanh(float s) {
  const float s2 = s * s;
  float q = 1.f / 13.f;
  q = q * s2 + 1.f / 11.f;
  q = q * s2 + 1.f / 9.f;
  q = q * s2 + 1.f / 7.f;
  q = q * s2 + 1.f / 5.f;
  q = q * s2 + 1.f / 3.f;
  const float two_s = 2.f * s;
  return two_s + two_s * s2 * q;
}

// log(1 + e) for e in [0, 1]: 2 atanh(e / (2 + e)), e / (2 + e) in [0, 1/3].
PYNEURO_VEC_INLINE float log1p_unit(float e) { return two_atanh(e / (2.f + e)); }

// log(1 + x) for any x. With w = 1 + x = 2^k m, m in [sqrt(1/2), sqrt(2)):
//   k = 0 (x in [-0.29, 0.41]): 2 atanh(x / (2 + x)), straight from x (no rounding of 1 + x);
//   else: k ln2 + 2 atanh((m - 1) / (m + 1)) + (x - (w - 1)) / w, the last term correcting the
//   rounding of 1 + x to first order.
// -1 -> -inf, below -1 -> NaN, +inf -> +inf, NaN -> NaN, +-0 and subnormals -> x.
PYNEURO_VEC_INLINE float log1p(float x) {
  const float w = 1.f + x;
  // Exponent of w relative to sqrt(1/2): bits minus those of sqrt(1/2) puts m in [sqrt(1/2), sqrt(2)).
  // (Subtracted as uint32: for w < 0, i.e. x < -1, a signed subtraction would overflow; the lane
  // is NaN then anyway.)
  const uint32_t uw = float_bits(w);
  const int32_t k = static_cast<int32_t>(uw - 0x3f3504f3u) >> 23;
  const float m = bits_float(uw - (static_cast<uint32_t>(k) << 23));
  const uint32_t k_zero = mask_if(k == 0);
  const float num = select_bits(k_zero, x, m - 1.f);
  const float den = select_bits(k_zero, 2.f + x, m + 1.f);
  const float corr = bits_float(float_bits((x - (w - 1.f)) / w) & ~k_zero);
  // k ln2 with ln2 split in two: the high part times k is exact.
  const float kf = static_cast<float>(k);
  float r = kf * 0.693145751953125f + (two_atanh(num / den) + (corr + kf * 1.428606765330187e-06f));
  const uint32_t ix = float_bits(x);
  r = select_bits(mask_if(ix == 0xbf800000u /* -1 */), bits_float(0xff800000u), r);
  r = select_bits(mask_if(ix > 0xbf800000u /* < -1, or negative NaN */), bits_float(0x7fc00000u), r);
  r = select_bits(mask_if(ix == 0x7f800000u /* +inf */), x, r);
  // log1p(x) = x to rounding for |x| < 2^-24; this also keeps the sign of -0 and the subnormals
  // exact (x / (2 + x) would lose their low bits).
  r = select_bits(mask_if((ix & 0x7fffffffu) < 0x33800000u /* |x| < 2^-24 */), x, r);
  return keep_nan(r, x);
}

// log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)), with log1p on [0, 1] only. +inf -> +inf,
// -inf -> 0, NaN -> NaN (std::max keeps a NaN first argument).
PYNEURO_VEC_INLINE float softplus(float x) { return std::max(x, 0.f) + log1p_unit(exp(-std::fabs(x))); }

// 1 / (1 + exp(-x)); results below FLT_MIN (x <= -87.34) are flushed to 0, so that silu never
// multiplies a subnormal that has lost its precision. -inf -> 0, +inf -> 1, NaN -> NaN.
PYNEURO_VEC_INLINE float sigmoid(float x) {
  const float r = 1.f / (1.f + exp(-x));
  return bits_float(float_bits(r) & ~mask_if(float_bits(x) >= 0xC2AEAC50u /* <= -87.33655 */ && !is_nan(x)));
}

// x * sigmoid(x); 0 (-0) for x <= -87.34, where |silu(x)| < 88 FLT_MIN.
PYNEURO_VEC_INLINE float silu(float x) { return x * sigmoid(x); }

// tanh(x): below |x| = 0.625, x + x^3 P(x^2) (relative fit, 5e-9); above, 1 - 2 / (exp(2|x|) + 1)
// (no cancellation there: the subtracted term is < 0.46); the sign is copied back. Both are
// computed and one is selected, so the loop stays branch-free. +-inf -> +-1, NaN -> NaN.
PYNEURO_VEC_INLINE float tanh(float x) {
  const uint32_t ix = float_bits(x), sign = ix & 0x80000000u;
  const float a = bits_float(ix & 0x7fffffffu);
  const float s = a * a;
  float p = -5.691980943083763e-3f;
  p = p * s + 2.062629535794258e-2f;
  p = p * s - 5.373532325029373e-2f;
  p = p * s + 1.3331381976604462e-1f;
  p = p * s - 3.333328068256378e-1f;
  const float small = a + a * s * p;
  const float large = 1.f - 2.f / (exp_clamped(2.f * a) + 1.f);
  const float r = select_bits(mask_if((ix & 0x7fffffffu) < 0x3f200000u /* 0.625 */), small, large);
  return keep_nan(bits_float(float_bits(r) | sign), x);
}

}  // namespace pyneuro::vec
