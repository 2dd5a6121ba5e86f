// fp16 <-> fp32 conversion: portable bit manipulation plus an F16C fast path;
// bfloat16 <-> fp32 by rounding the low half of the binary32 bits.
#include "compression/half.h"

#include <cstring>

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace geopipe::compression {

namespace {
inline uint32_t bitsOf(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
inline float floatOf(uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}
}  // namespace

Half floatToHalf(float x) {
  const uint32_t u = bitsOf(x);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t abs = u & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u) {  // inf or NaN
    return static_cast<Half>(sign | 0x7C00u | (abs > 0x7F800000u ? 0x0200u | ((abs >> 13) & 0x3FFu) : 0u));
  }
  if (abs >= 0x477FF000u) {  // rounds to >= 65520 -> overflow to inf
    return static_cast<Half>(sign | 0x7C00u);
  }
  if (abs >= 0x38800000u) {  // normal half range (>= 2^-14)
    // Re-bias exponent (127 -> 15) and round the 13 dropped mantissa bits to
    // nearest even; a mantissa carry correctly bumps the exponent.
    uint32_t h = (abs - 0x38000000u) >> 13;
    const uint32_t rest = abs & 0x1FFFu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
    return static_cast<Half>(sign | h);
  }
  if (abs < 0x33000000u) {  // < 2^-25: rounds to zero (2^-25 itself ties to 0)
    return static_cast<Half>(sign);
  }
  // Subnormal half: value = m * 2^-24 with m in [1, 1023].
  const uint32_t exp = abs >> 23;              // 102..112
  const uint32_t mant = (abs & 0x7FFFFFu) | 0x800000u;
  const uint32_t shift = 126u - exp;           // 14..24
  uint32_t h = mant >> shift;
  const uint32_t rest = mant & ((1u << shift) - 1u);
  const uint32_t halfway = 1u << (shift - 1u);
  if (rest > halfway || (rest == halfway && (h & 1u))) ++h;
  return static_cast<Half>(sign | h);
}

float halfToFloat(Half h) {
  const uint32_t sign = (static_cast<uint32_t>(h) & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  const uint32_t mant = h & 0x3FFu;
  if (exp == 0x1Fu) return floatOf(sign | 0x7F800000u | (mant << 13));
  if (exp != 0) return floatOf(sign | ((exp + 112u) << 23) | (mant << 13));
  if (mant == 0) return floatOf(sign);
  // Subnormal: exact as a float product (mant * 2^-24).
  const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
  return sign ? -v : v;
}

void floatToHalf(const float* in, Half* out, size_t n) {
  size_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(in + i);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }
#endif
  for (; i < n; ++i) out[i] = floatToHalf(in[i]);
}

void halfToFloat(const Half* in, float* out, size_t n) {
  size_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i));
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(h));
  }
#endif
  for (; i < n; ++i) out[i] = halfToFloat(in[i]);
}

BFloat16 floatToBFloat16(float x) {
  const uint32_t u = bitsOf(x);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) {
    return static_cast<BFloat16>((u >> 16) | 0x0040u);  // NaN: quiet, sign kept
  }
  // Adding 0x7FFF plus the lowest kept bit rounds the dropped half to nearest,
  // ties to even; a carry moves into the exponent, up to inf (0x7F80).
  return static_cast<BFloat16>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

float bfloat16ToFloat(BFloat16 b) {
  return floatOf(static_cast<uint32_t>(b) << 16);
}

void floatToBFloat16(const float* in, BFloat16* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = floatToBFloat16(in[i]);
}

void bfloat16ToFloat(const BFloat16* in, float* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = bfloat16ToFloat(in[i]);
}

bool halfUsesF16C() {
#if defined(__F16C__)
  return true;
#else
  return false;
#endif
}

}  // namespace geopipe::compression
