// Fused AC-SGD fp16-buffer kernels. AVX2 + F16C bodies (8 elements per step)
// with scalar tails that compute the same bits; without those instructions
// the scalar code runs alone. Built with -ffp-contract=off like every kernel
// here: a multiply followed by an add must stay two roundings, as in the
// reference and on the receiver's host.
#include "compression/acsgd_fp16.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "compression/bit_pack.h"
#include "compression/quantizer_internal.h"
#include "geopipe/error.h"

#if defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>
#define GEOPIPE_ACSGD_AVX2 1
#endif

namespace geopipe::compression {

namespace {

using detail::kChunk;

inline uint32_t absBits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u & 0x7FFFFFFFu;
}

// Per-unit constants of the grid, derived from the scales exactly as
// quantizeChunks (inv) and dequantizePackedRange (d) derive them.
struct Grid {
  int32_t lm1;     // L - 1
  float h;         // (L-1)/2
  float off;       // h + 1/2: round to nearest is truncation of t + 1/2
  float max_code;  // L - 1 as float
  explicit Grid(int bits)
      : lm1((1 << bits) - 1),
        h(static_cast<float>(lm1) * 0.5f),
        off(h + 0.5f),
        max_code(static_cast<float>(lm1)) {}
};

#if GEOPIPE_ACSGD_AVX2
// The abs bits of a[0..8) - h2f(m[0..8)).
inline __m256i deltaAbsBits8(const float* a, const Half* m) {
  const __m256 mf = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(m)));
  const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(a), mf);
  return _mm256_and_si256(_mm256_castps_si256(d), _mm256_set1_epi32(0x7FFFFFFF));
}
#endif

// acc[c] = max over rows of the abs bits of (a - h2f(m)) in channel c. For
// finite values the abs bit patterns order like the magnitudes (as in
// computeScales); inf/NaN shows up as >= 0x7F800000. One row at a time, in
// address order: a single forward stream is what the hardware prefetchers
// follow best (measured faster than four-row sweeps or a reverse pass meant
// to leave the first rows in L2 for the second pass).
void deltaMaxAbsBits(const float* a, const Half* m, size_t rows, size_t channels, uint32_t* acc) {
  std::fill(acc, acc + channels, 0u);
  for (size_t r = 0; r < rows; ++r) {
    const float* ar = a + r * channels;
    const Half* mr = m + r * channels;
    size_t c = 0;
#if GEOPIPE_ACSGD_AVX2
    for (; c + 8 <= channels; c += 8) {
      __m256i* pa = reinterpret_cast<__m256i*>(acc + c);
      _mm256_storeu_si256(pa,
                          _mm256_max_epu32(deltaAbsBits8(ar + c, mr + c), _mm256_loadu_si256(pa)));
    }
#endif
    for (; c < channels; ++c) {
      const uint32_t u = absBits(ar[c] - halfToFloat(mr[c]));
      acc[c] = u > acc[c] ? u : acc[c];
    }
  }
}

#if GEOPIPE_ACSGD_AVX2
// uniformOf() for the 8 indices idx (vpmulld, shifts, xors; exact).
inline __m256 uniform8(__m256i idx, __m256i key) {
  __m256i h = _mm256_xor_si256(_mm256_mullo_epi32(idx, _mm256_set1_epi32(0x9E3779B1u)), key);
  h = _mm256_xor_si256(h, _mm256_srli_epi32(h, 16));
  h = _mm256_mullo_epi32(h, _mm256_set1_epi32(0x85EBCA6Bu));
  h = _mm256_xor_si256(h, _mm256_srli_epi32(h, 13));
  h = _mm256_mullo_epi32(h, _mm256_set1_epi32(0xC2B2AE35u));
  h = _mm256_xor_si256(h, _mm256_srli_epi32(h, 16));
  return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(h, 8)),
                       _mm256_set1_ps(1.0f / 16777216.0f));
}

// The low byte of each of 8 int32 codes (all in 0..255) to q[0..8).
inline void storeCodes8(__m256i code, uint8_t* q) {
  const __m128i w =
      _mm_packs_epi32(_mm256_castsi256_si128(code), _mm256_extracti128_si256(code, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(q), _mm_packus_epi16(w, w));
}
#endif

#if GEOPIPE_ACSGD_AVX2
// The grid's constants in registers (read once per segment: the byte stores
// to the codes may alias a Grid in memory, so the compiler would reload it).
struct GridVec {
  __m256i lm1, zero, key, lane;
  __m256 h, off, max_code, zerof;
  GridVec(const Grid& g, uint32_t k)
      : lm1(_mm256_set1_epi32(g.lm1)),
        zero(_mm256_setzero_si256()),
        key(_mm256_set1_epi32(static_cast<int32_t>(k))),
        lane(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)),
        h(_mm256_set1_ps(g.h)),
        off(_mm256_set1_ps(g.off)),
        max_code(_mm256_set1_ps(g.max_code)),
        zerof(_mm256_setzero_ps()) {}
};

// Eight elements of the sender's step: returns their codes (int32, already
// in 0..L-1) and stores the updated halves to m.
template <bool kStochastic>
inline __m256i encode8(const float* a, Half* m, const float* inv, const float* d, const GridVec& v,
                       uint32_t index) {
  const __m256 mf = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(m)));
  const __m256 xs = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(a), mf), _mm256_loadu_ps(inv));
  __m256i code;
  if (kStochastic) {
    // toCode(x*inv + h + u): clamp to [0, L-1] in float, then truncate.
    const __m256i idx = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(index)), v.lane);
    __m256 t = _mm256_add_ps(_mm256_add_ps(xs, v.h), uniform8(idx, v.key));
    t = _mm256_min_ps(_mm256_max_ps(t, v.zerof), v.max_code);
    code = _mm256_cvttps_epi32(t);
  } else {
    // As quantizer.cc's AVX2 body: truncate x*inv + off, clamp as integers.
    code = _mm256_cvttps_epi32(_mm256_add_ps(xs, v.off));
    code = _mm256_min_epi32(_mm256_max_epi32(code, v.zero), v.lm1);
  }
  const __m256 level = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_slli_epi32(code, 1), v.lm1));
  const __m256 mn = _mm256_add_ps(mf, _mm256_mul_ps(level, _mm256_loadu_ps(d)));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(m), _mm256_cvtps_ph(mn, _MM_FROUND_TO_NEAREST_INT));
  return code;
}
#endif

// One row segment of the sender's second pass: delta, code, update of m.
// inv/d point at the segment's per-channel multipliers; `base` is the low 32
// bits of the segment's first element index (the stochastic stream position).
template <bool kStochastic>
void encodeSegment(const float* a, Half* m, size_t len, const float* inv, const float* d,
                   const Grid& g, uint32_t base, uint32_t key, uint8_t* q) {
  size_t j = 0;
#if GEOPIPE_ACSGD_AVX2
  const GridVec v(g, key);
  // 32 codes at a time leave as bytes with three packs and one permute
  // (saturation cannot bite: the codes are in 0..255 already).
  const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (; j + 32 <= len; j += 32) {
    const uint32_t idx = base + static_cast<uint32_t>(j);
    const __m256i c0 = encode8<kStochastic>(a + j, m + j, inv + j, d + j, v, idx);
    const __m256i c1 =
        encode8<kStochastic>(a + j + 8, m + j + 8, inv + j + 8, d + j + 8, v, idx + 8);
    const __m256i c2 =
        encode8<kStochastic>(a + j + 16, m + j + 16, inv + j + 16, d + j + 16, v, idx + 16);
    const __m256i c3 =
        encode8<kStochastic>(a + j + 24, m + j + 24, inv + j + 24, d + j + 24, v, idx + 24);
    const __m256i b = _mm256_packus_epi16(_mm256_packs_epi32(c0, c1), _mm256_packs_epi32(c2, c3));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + j), _mm256_permutevar8x32_epi32(b, perm));
  }
  for (; j + 8 <= len; j += 8) {
    storeCodes8(
        encode8<kStochastic>(a + j, m + j, inv + j, d + j, v, base + static_cast<uint32_t>(j)),
        q + j);
  }
#endif
  for (; j < len; ++j) {
    const float mf = halfToFloat(m[j]);
    const float x = a[j] - mf;
    uint8_t c;
    if (kStochastic) {
      const float u = detail::uniformOf(base + static_cast<uint32_t>(j), key);
      c = detail::toCode(x * inv[j] + g.h + u, g.max_code);
    } else {
      c = detail::toCode(x * inv[j] + g.off, g.max_code);
    }
    q[j] = c;
    const float deq = static_cast<float>(2 * static_cast<int32_t>(c) - g.lm1) * d[j];
    m[j] = floatToHalf(mf + deq);
  }
}

// One segment of the update: d is the segment's multipliers, one per element
// (kVec, per-channel) or one for all (tensor/group).
template <bool kVec>
void applySegment(const uint8_t* q, size_t len, const float* d, int32_t lm1, Half* m, float* out) {
  size_t j = 0;
#if GEOPIPE_ACSGD_AVX2
  const __m256i vlm1 = _mm256_set1_epi32(lm1);
  const __m256 vd0 = _mm256_set1_ps(d[0]);
  for (; j + 8 <= len; j += 8) {
    const __m256i code =
        _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + j)));
    const __m256 level = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_slli_epi32(code, 1), vlm1));
    const __m256 deq = _mm256_mul_ps(level, kVec ? _mm256_loadu_ps(d + j) : vd0);
    const __m256 mf = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(m + j)));
    const __m128i mh = _mm256_cvtps_ph(_mm256_add_ps(mf, deq), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(m + j), mh);
    if (out) _mm256_storeu_ps(out + j, _mm256_cvtph_ps(mh));
  }
#endif
  for (; j < len; ++j) {
    const float deq = static_cast<float>(2 * static_cast<int32_t>(q[j]) - lm1) * d[kVec ? j : 0];
    m[j] = floatToHalf(halfToFloat(m[j]) + deq);
    if (out) out[j] = halfToFloat(m[j]);
  }
}

}  // namespace

bool acsgdFp16EncodeSupports(const QuantizerOptions& q) {
  return q.granularity == Granularity::CHANNEL;
}

void acsgdFp16Encode(const QuantizerOptions& q, const float* a, Half* m, size_t n, size_t channels,
                     uint64_t counter, float* scales, uint8_t* packed) {
  GEOPIPE_CHECK(acsgdFp16EncodeSupports(q), ConfigError,
                "fused AC-SGD encode needs per-channel scales, got ", toString(q.granularity));
  detail::checkShape(q, n, channels);
  if (n == 0) return;

  // Pass 1: scales, read-only (a bad delta throws before m changes).
  std::vector<uint32_t> acc(channels);
  deltaMaxAbsBits(a, m, n / channels, channels, acc.data());
  for (size_t c = 0; c < channels; ++c) {
    GEOPIPE_CHECK(acc[c] < 0x7F800000u, ProtocolError,
                  "cannot quantise non-finite AC-SGD delta in channel ", c,
                  " (activation or buffer has inf/NaN)");
    std::memcpy(&scales[c], &acc[c], 4);
  }

  // Pass 2: chunks of kChunk elements as in quantizeChunks (same stochastic
  // key per chunk); codes of a chunk wait in L1 for packBitsAt.
  const Grid g(q.bits);
  std::vector<float> inv(channels), d(channels);
  for (size_t c = 0; c < channels; ++c) {
    inv[c] = detail::invOf(scales[c], g.h);
    d[c] = scales[c] / static_cast<float>(g.lm1);
  }
  const bool stochastic = q.rounding == Rounding::STOCHASTIC;
  const size_t out_bytes = packedBytes(n, q.bits);
  alignas(64) uint8_t codes[kChunk];
  for (size_t cb = 0, ce = 0; cb < n; cb = ce) {
    ce = std::min(n, cb + kChunk);
    const uint32_t key = stochastic ? detail::streamKey(q.seed, counter, cb >> 32) : 0;
    detail::forEachSegment(q, cb, ce, channels, [&](size_t s, size_t len, size_t c0, bool) {
      const uint32_t base = static_cast<uint32_t>(s);
      uint8_t* qs = codes + (s - cb);
      if (stochastic) {
        encodeSegment<true>(a + s, m + s, len, inv.data() + c0, d.data() + c0, g, base, key, qs);
      } else {
        encodeSegment<false>(a + s, m + s, len, inv.data() + c0, d.data() + c0, g, base, key, qs);
      }
    });
    packBitsAt(codes, cb, ce - cb, q.bits, packed, out_bytes);
  }
}

void acsgdFp16Apply(const QuantizerOptions& q, const uint8_t* packed, size_t packed_bytes, size_t n,
                    size_t channels, const float* scales, Half* m, float* out, size_t begin,
                    size_t end) {
  detail::checkShape(q, n, channels);
  end = std::min(end, n);
  GEOPIPE_CHECK(begin % 8 == 0 && begin <= end, ConfigError, "bad AC-SGD update range [", begin,
                ", ", end, ") of ", n);
  GEOPIPE_CHECK(packed_bytes >= packedBytes(n, q.bits), ProtocolError,
                "packed codes truncated: need ", packedBytes(n, q.bits), " bytes for ", n,
                " elements of ", q.bits, " bits, got ", packed_bytes);
  const int32_t lm1 = (1 << q.bits) - 1;
  const size_t ns = scaleCount(q, n, channels);
  std::vector<float> d(ns);
  for (size_t k = 0; k < ns; ++k) d[k] = scales[k] / static_cast<float>(lm1);
  alignas(64) uint8_t codes[kChunk];
  for (size_t cb = begin; cb < end; cb += kChunk) {
    const size_t ce = std::min(end, cb + kChunk);
    unpackBitsAt(packed, packed_bytes, cb, ce - cb, q.bits, codes);
    detail::forEachSegment(q, cb, ce, channels, [&](size_t s, size_t len, size_t unit, bool vec) {
      const uint8_t* qs = codes + (s - cb);
      float* os = out ? out + (s - begin) : nullptr;
      if (vec)
        applySegment<true>(qs, len, d.data() + unit, lm1, m + s, os);
      else
        applySegment<false>(qs, len, d.data() + unit, lm1, m + s, os);
    });
  }
}

}  // namespace geopipe::compression
