// Quantizer kernels. Hot loops are written as plain loops over contiguous
// spans with no calls and no branches that the compiler cannot if-convert, so
// GCC vectorises them under GEOPIPE_KERNEL_FLAGS (check: -fopt-info-vec).
#include "compression/quantizer.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "compression/bit_pack.h"
#include "compression/quantizer_internal.h"
#include "geopipe/error.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace geopipe::compression {

namespace {

using namespace detail;

inline uint32_t absBits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u & 0x7FFFFFFFu;
}

inline float floatOfBits(uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

// For finite non-negative floats the IEEE bit patterns order like the values,
// so max |x| is an unsigned integer max of the abs bits (vectorises without
// -ffast-math), and any inf/NaN shows up as a result >= 0x7F800000.
uint32_t maxAbsBits(const float* x, size_t n) {
  uint32_t m = 0;
  for (size_t i = 0; i < n; ++i) {
    const uint32_t a = absBits(x[i]);
    m = a > m ? a : m;
  }
  return m;
}

void maxAbsBitsRows(const float* x, size_t rows, size_t channels, uint32_t* acc) {
  for (size_t c = 0; c < channels; ++c) acc[c] = 0;
  size_t r = 0;
  // Four rows per sweep: one load/store of acc per four input vectors.
  for (; r + 4 <= rows; r += 4) {
    const float* r0 = x + r * channels;
    const float* r1 = r0 + channels;
    const float* r2 = r1 + channels;
    const float* r3 = r2 + channels;
    for (size_t c = 0; c < channels; ++c) {
      uint32_t a = absBits(r0[c]);
      const uint32_t b = absBits(r1[c]), d = absBits(r2[c]), e = absBits(r3[c]);
      a = b > a ? b : a;
      a = d > a ? d : a;
      a = e > a ? e : a;
      acc[c] = a > acc[c] ? a : acc[c];
    }
  }
  for (; r < rows; ++r) {
    const float* row = x + r * channels;
    for (size_t c = 0; c < channels; ++c) {
      const uint32_t a = absBits(row[c]);
      acc[c] = a > acc[c] ? a : acc[c];
    }
  }
}

#if defined(__AVX2__)
// 32 elements: t = x*inv + off, truncate to int32, then saturating packs do
// the lower clamp (negative -> 0) and a byte min the upper one (L-1). Same
// result as toCode(): for t in (-1, 0) truncation already gives 0. Element
// order is restored by the final cross-lane permute.
template <bool kVec>
inline size_t quantNearestAvx2(const float* x, size_t len, const float* inv, float inv0,
                               float off, uint8_t max_code, uint8_t* q) {
  const __m256 voff = _mm256_set1_ps(off);
  const __m256 vinv0 = _mm256_set1_ps(inv0);
  const __m256i vmax = _mm256_set1_epi8(static_cast<char>(max_code));
  const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  size_t j = 0;
  for (; j + 32 <= len; j += 32) {
    __m256i i[4];
    for (int k = 0; k < 4; ++k) {
      const __m256 m = kVec ? _mm256_loadu_ps(inv + j + 8 * k) : vinv0;
      const __m256 t = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(x + j + 8 * k), m), voff);
      i[k] = _mm256_cvttps_epi32(t);
    }
    const __m256i a = _mm256_packs_epi32(i[0], i[1]);  // int16, lanes interleaved
    const __m256i b = _mm256_packs_epi32(i[2], i[3]);
    __m256i c = _mm256_packus_epi16(a, b);              // uint8, clamps < 0 to 0
    c = _mm256_permutevar8x32_epi32(c, perm);
    c = _mm256_min_epu8(c, vmax);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + j), c);
  }
  return j;
}
#endif

// One scale for the whole segment.
void quantSegNearestScalar(const float* x, size_t len, float inv, float h,
                           float max_code, uint8_t* q) {
  const float off = h + 0.5f;
  size_t j0 = 0;
#if defined(__AVX2__)
  j0 = quantNearestAvx2<false>(x, len, nullptr, inv, off, static_cast<uint8_t>(max_code), q);
#endif
  for (size_t j = j0; j < len; ++j) q[j] = toCode(x[j] * inv + off, max_code);
}

// One scale per element (per-channel: inv points at the row's channel scales).
void quantSegNearestVec(const float* x, size_t len, const float* inv, float h,
                        float max_code, uint8_t* q) {
  const float off = h + 0.5f;
  size_t j0 = 0;
#if defined(__AVX2__)
  j0 = quantNearestAvx2<true>(x, len, inv, 0.0f, off, static_cast<uint8_t>(max_code), q);
#endif
  for (size_t j = j0; j < len; ++j) q[j] = toCode(x[j] * inv[j] + off, max_code);
}

void quantSegStochScalar(const float* x, size_t len, float inv, float h,
                         float max_code, uint32_t base, uint32_t key, uint8_t* q) {
  for (size_t j = 0; j < len; ++j) {
    const float u = uniformOf(base + static_cast<uint32_t>(j), key);
    q[j] = toCode(x[j] * inv + h + u, max_code);
  }
}

void quantSegStochVec(const float* x, size_t len, const float* inv, float h,
                      float max_code, uint32_t base, uint32_t key, uint8_t* q) {
  for (size_t j = 0; j < len; ++j) {
    const float u = uniformOf(base + static_cast<uint32_t>(j), key);
    q[j] = toCode(x[j] * inv[j] + h + u, max_code);
  }
}

void dequantSegScalar(const uint8_t* q, size_t len, float d, int32_t lm1, float* out) {
  for (size_t j = 0; j < len; ++j) {
    out[j] = static_cast<float>(2 * static_cast<int32_t>(q[j]) - lm1) * d;
  }
}

void dequantSegVec(const uint8_t* q, size_t len, const float* d, int32_t lm1, float* out) {
  for (size_t j = 0; j < len; ++j) {
    out[j] = static_cast<float>(2 * static_cast<int32_t>(q[j]) - lm1) * d[j];
  }
}

// Quantises [0, n) chunk by chunk; sink(chunk_begin, chunk_len, codes).
template <typename Sink>
void quantizeChunks(const QuantizerOptions& opt, const float* x, size_t n,
                    size_t channels, const float* scales, uint64_t counter,
                    Sink&& sink, size_t begin = 0, size_t end = SIZE_MAX) {
  checkShape(opt, n, channels);
  end = std::min(end, n);
  GEOPIPE_CHECK(begin % 8 == 0 && begin <= end, ConfigError, "bad quantise range [", begin,
                ", ", end, ") of ", n);
  const int32_t levels = 1 << opt.bits;
  const float h = static_cast<float>(levels - 1) * 0.5f;
  const float max_code = static_cast<float>(levels - 1);
  const size_t nscales = scaleCount(opt, n, channels);
  std::vector<float> inv(nscales);
  for (size_t k = 0; k < nscales; ++k) inv[k] = invOf(scales[k], h);
  const bool stochastic = opt.rounding == Rounding::STOCHASTIC;

  alignas(64) uint8_t codes[kChunk];
  for (size_t cb = begin, ce = 0; cb < end; cb = ce) {
    // Chunks end on multiples of kChunk, so none straddles a 2^32 boundary
    // (one RNG key per chunk) whatever `begin` is.
    ce = std::min(end, (cb / kChunk + 1) * kChunk);
    const uint32_t key = stochastic ? streamKey(opt.seed, counter, cb >> 32) : 0;
    forEachSegment(opt, cb, ce, channels, [&](size_t s, size_t len, size_t unit, bool vec) {
      uint8_t* q = codes + (s - cb);
      const uint32_t base = static_cast<uint32_t>(s);  // low 32 bits of the index
      if (!stochastic) {
        if (vec) quantSegNearestVec(x + s, len, inv.data() + unit, h, max_code, q);
        else quantSegNearestScalar(x + s, len, inv[unit], h, max_code, q);
      } else {
        if (vec) quantSegStochVec(x + s, len, inv.data() + unit, h, max_code, base, key, q);
        else quantSegStochScalar(x + s, len, inv[unit], h, max_code, base, key, q);
      }
    });
    sink(cb, ce - cb, codes);
  }
}

}  // namespace

const char* toString(Granularity g) {
  switch (g) {
    case Granularity::TENSOR: return "tensor";
    case Granularity::CHANNEL: return "channel";
    case Granularity::GROUP: return "group";
  }
  return "?";
}

const char* toString(Rounding r) {
  return r == Rounding::NEAREST ? "nearest" : "stochastic";
}

void QuantizerOptions::validate() const {
  GEOPIPE_CHECK(bits >= 1 && bits <= 8, ConfigError,
                "quantizer bits must be in 1..8, got ", bits);
  GEOPIPE_CHECK(granularity == Granularity::TENSOR ||
                    granularity == Granularity::CHANNEL ||
                    granularity == Granularity::GROUP,
                ConfigError, "unknown quantizer granularity ",
                static_cast<int>(granularity));
  GEOPIPE_CHECK(granularity != Granularity::GROUP ||
                    (group_size >= 1 && group_size <= (int64_t{1} << 31)),
                ConfigError, "quantizer group_size must be in 1..2^31, got ", group_size);
  GEOPIPE_CHECK(rounding == Rounding::NEAREST || rounding == Rounding::STOCHASTIC,
                ConfigError, "unknown rounding mode ", static_cast<int>(rounding));
}

size_t scaleCount(const QuantizerOptions& opt, size_t n, size_t channels) {
  if (n == 0) return 0;
  switch (opt.granularity) {
    case Granularity::TENSOR: return 1;
    case Granularity::CHANNEL: return channels;
    case Granularity::GROUP: {
      const size_t g = static_cast<size_t>(opt.group_size);
      return (n + g - 1) / g;
    }
  }
  return 0;
}

void computeScales(const QuantizerOptions& opt, const float* x, size_t n,
                   size_t channels, float* scales) {
  checkShape(opt, n, channels);
  if (n == 0) return;
  const size_t ns = scaleCount(opt, n, channels);
  std::vector<uint32_t> bits(ns);
  switch (opt.granularity) {
    case Granularity::TENSOR:
      bits[0] = maxAbsBits(x, n);
      break;
    case Granularity::CHANNEL:
      maxAbsBitsRows(x, n / channels, channels, bits.data());
      break;
    case Granularity::GROUP: {
      const size_t g = static_cast<size_t>(opt.group_size);
      for (size_t k = 0; k < ns; ++k) {
        bits[k] = maxAbsBits(x + k * g, std::min(g, n - k * g));
      }
      break;
    }
  }
  for (size_t k = 0; k < ns; ++k) {
    GEOPIPE_CHECK(bits[k] < 0x7F800000u, ProtocolError,
                  "cannot quantise non-finite input: ", toString(opt.granularity),
                  " unit ", k, " contains inf or NaN");
    scales[k] = floatOfBits(bits[k]);
  }
}

void quantizePacked(const QuantizerOptions& opt, const float* x, size_t n,
                    size_t channels, const float* scales, uint64_t counter,
                    uint8_t* packed) {
  const size_t out_bytes = packedBytes(n, opt.bits);
  quantizeChunks(opt, x, n, channels, scales, counter,
                 [&](size_t cb, size_t len, const uint8_t* codes) {
                   packBitsAt(codes, cb, len, opt.bits, packed, out_bytes);
                 });
}

void quantizePackedRange(const QuantizerOptions& opt, const float* x, size_t n,
                         size_t channels, const float* scales, uint64_t counter,
                         size_t begin, size_t end, uint8_t* packed) {
  const size_t out_bytes = packedBytes(n, opt.bits);
  quantizeChunks(
      opt, x, n, channels, scales, counter,
      [&](size_t cb, size_t len, const uint8_t* codes) {
        packBitsAt(codes, cb, len, opt.bits, packed, out_bytes);
      },
      begin, end);
}

void quantizeCodes(const QuantizerOptions& opt, const float* x, size_t n,
                   size_t channels, const float* scales, uint64_t counter,
                   uint8_t* out) {
  quantizeChunks(opt, x, n, channels, scales, counter,
                 [&](size_t cb, size_t len, const uint8_t* codes) {
                   std::memcpy(out + cb, codes, len);
                 });
}

void dequantizePacked(const QuantizerOptions& opt, const uint8_t* packed,
                      size_t packed_bytes, size_t n, size_t channels,
                      const float* scales, float* out) {
  dequantizePackedRange(opt, packed, packed_bytes, n, channels, scales, 0, n, out);
}

void dequantizePackedRange(const QuantizerOptions& opt, const uint8_t* packed,
                           size_t packed_bytes, size_t n, size_t channels,
                           const float* scales, size_t begin, size_t end, float* out) {
  checkShape(opt, n, channels);
  GEOPIPE_CHECK(begin % 8 == 0 && begin <= end && end <= n, ConfigError,
                "bad dequantise range [", begin, ", ", end, ") of ", n);
  GEOPIPE_CHECK(packed_bytes >= packedBytes(n, opt.bits), ProtocolError,
                "packed codes truncated: need ", packedBytes(n, opt.bits),
                " bytes for ", n, " elements of ", opt.bits, " bits, got ", packed_bytes);
  const int32_t lm1 = (1 << opt.bits) - 1;
  const size_t ns = scaleCount(opt, n, channels);
  std::vector<float> d(ns);
  for (size_t k = 0; k < ns; ++k) d[k] = scales[k] / static_cast<float>(lm1);
  alignas(64) uint8_t codes[kChunk];
  for (size_t cb = begin; cb < end; cb += kChunk) {
    const size_t ce = std::min(end, cb + kChunk);
    unpackBitsAt(packed, packed_bytes, cb, ce - cb, opt.bits, codes);
    forEachSegment(opt, cb, ce, channels, [&](size_t s, size_t len, size_t unit, bool vec) {
      const uint8_t* q = codes + (s - cb);
      if (vec) dequantSegVec(q, len, d.data() + unit, lm1, out + (s - begin));
      else dequantSegScalar(q, len, d[unit], lm1, out + (s - begin));
    });
  }
}

float dequantizeCode(int bits, uint8_t q, float scale) {
  const int32_t lm1 = (1 << bits) - 1;
  return static_cast<float>(2 * static_cast<int32_t>(q) - lm1) *
         (scale / static_cast<float>(lm1));
}

QuantizedTensor quantize(const QuantizerOptions& opt, const float* x, size_t n,
                         size_t channels, uint64_t counter) {
  opt.validate();
  QuantizedTensor q;
  q.numel = n;
  q.channels = channels;
  q.scales.resize(scaleCount(opt, n, channels));
  computeScales(opt, x, n, channels, q.scales.data());
  q.packed.resize(packedBytes(n, opt.bits));
  quantizePacked(opt, x, n, channels, q.scales.data(), counter, q.packed.data());
  return q;
}

void dequantize(const QuantizerOptions& opt, const QuantizedTensor& q, float* out) {
  dequantizePacked(opt, q.packed.data(), q.packed.size(), q.numel, q.channels,
                   q.scales.data(), out);
}

float stochasticUniform(uint64_t seed, uint64_t counter, uint64_t i) {
  return uniformOf(static_cast<uint32_t>(i), streamKey(seed, counter, i >> 32));
}

}  // namespace geopipe::compression
