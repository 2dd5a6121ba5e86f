// Internal to geopipe_compression: the quantizer's element-wise arithmetic
// (stochastic-rounding stream, t -> code, scale multipliers, segment walk),
// shared by quantizer.cc and the fused AC-SGD kernels so both compute it from
// one definition and give the same bits. Not part of the module's API.
#pragma once

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "compression/quantizer.h"
#include "geopipe/error.h"
#include "src/common/hash.h"

namespace geopipe::compression::detail {

// Elements per chunk of the fused kernels: the codes of one chunk live in a
// stack buffer (L1-resident) between quantisation and packing. A multiple of 8
// (byte-aligned in the packed stream) that divides 2^32 (one RNG key per chunk).
constexpr size_t kChunk = 4096;

using common::streamKey;

// murmur3's fmix32 over (i * golden ^ key): a bijection on 32 bits with full
// avalanche; 32-bit multiplies vectorise (vpmulld). Top 24 bits -> [0, 1).
inline float uniformOf(uint32_t i, uint32_t key) {
  uint32_t h = (i * 0x9E3779B1u) ^ key;
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return static_cast<float>(h >> 8) * (1.0f / 16777216.0f);
}

// t -> code: clamp to [0, L-1] then truncate (t >= 0, so truncation = floor).
inline uint8_t toCode(float t, float max_code) {
  t = t < 0.0f ? 0.0f : t;
  t = t > max_code ? max_code : t;
  return static_cast<uint8_t>(static_cast<int32_t>(t));
}

// Multipliers derived from the scales: inv = (L-1)/(2s) for encoding (capped
// so a subnormal scale cannot make it inf), d = s/(L-1) for decoding.
inline float invOf(float s, float h) {
  if (!(s > 0.0f)) return 0.0f;
  const float inv = h / s;
  return std::isfinite(inv) ? inv : FLT_MAX;
}

// Walks [begin, end) in segments that share either one scale (tensor/group) or
// one row of per-channel scales, calling fn(seg_begin, seg_len, unit, vec).
// For CHANNEL, `unit` is the channel of seg_begin and vec == true.
template <typename Fn>
inline void forEachSegment(const QuantizerOptions& opt, size_t begin, size_t end, size_t channels,
                           Fn&& fn) {
  size_t i = begin;
  while (i < end) {
    switch (opt.granularity) {
      case Granularity::TENSOR:
        fn(i, end - i, size_t{0}, false);
        i = end;
        break;
      case Granularity::GROUP: {
        const size_t g = static_cast<size_t>(opt.group_size);
        const size_t unit = i / g;
        const size_t stop = std::min(end, (unit + 1) * g);
        fn(i, stop - i, unit, false);
        i = stop;
        break;
      }
      case Granularity::CHANNEL: {
        const size_t c0 = i % channels;
        const size_t stop = std::min(end, i - c0 + channels);
        fn(i, stop - i, c0, true);
        i = stop;
        break;
      }
    }
  }
}

inline void checkShape(const QuantizerOptions& opt, size_t n, size_t channels) {
  if (opt.granularity == Granularity::CHANNEL && n > 0) {
    GEOPIPE_CHECK(channels > 0 && n % channels == 0, ConfigError,
                  "per-channel quantisation needs numel (", n,
                  ") to be a positive multiple of the channel count (", channels, ")");
  }
}

}  // namespace geopipe::compression::detail
