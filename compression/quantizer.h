// Uniform b-bit quantizer (b in 1..8) with per-tensor, per-channel or per-group
// max-abs scales, round-to-nearest or seeded stochastic rounding, packed codes.
//
// The grid. With L = 2^b levels and scale s (max |x| over the unit), code
// q in {0..L-1} stands for
//     Q(q) = (2q - (L-1)) * d,   d = s / (L-1)
// i.e. L points evenly spaced by 2d from -s to +s; both extremes are on the
// grid (the AC-SGD paper's grid stops at +0.875 s for 4 bits; this one does
// not), and for b = 1 the points are exactly +-s. Encoding computes
//     t = x * (L-1)/(2s) + (L-1)/2  in [0, L-1],
// and q = floor(t + 1/2) (nearest) or q = floor(t + u), u ~ U[0,1) (stochastic).
// Error bounds (exact arithmetic; the kernels add a few ulps of s):
//     nearest:    |x - Q(x)| <= d = s / (L-1)  (half a step)
//     stochastic: |x - Q(x)| <  2d, and E[Q(x)] = x (unbiased).
// A unit whose scale is 0 (all zeros) decodes to exact zeros. Non-finite input
// is rejected with a ProtocolError: it cannot be put on the wire.
//
// Scales are stored as fp32 so that the decoded values are a pure function of
// the bytes on the wire (no rounding of the scale that the sender did not see).
// Kernels are compiled with -ffp-contract=off, so dequantisation gives the
// same bits on every IEEE-754 host, with or without FMA (AC-SGD needs this).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace geopipe::compression {

// Which elements share one scale.
enum class Granularity : uint8_t {
  TENSOR = 0,   // one scale for the whole tensor
  CHANNEL = 1,  // one scale per channel = last dimension, across all rows (the paper)
  GROUP = 2,    // one scale per run of group_size consecutive elements (row-major)
};

enum class Rounding : uint8_t {
  NEAREST = 0,     // deterministic, error <= half a step
  STOCHASTIC = 1,  // unbiased; u from a counter-based hash of (seed, counter, index)
};

const char* toString(Granularity g);
const char* toString(Rounding r);

struct QuantizerOptions {
  int bits = 4;                               // b: 1..8 bits per element
  Granularity granularity = Granularity::CHANNEL;  // scale sharing (paper: per channel)
  int64_t group_size = 128;                   // elements per group for GROUP (>= 1)
  Rounding rounding = Rounding::NEAREST;      // NEAREST or STOCHASTIC
  uint64_t seed = 0;                          // stochastic rounding seed (job seed)

  // Throws ConfigError naming the bad field.
  void validate() const;
};

// Number of scales for n elements whose last dimension has `channels`
// elements (n must be a multiple of channels; channels > 0 unless n == 0).
size_t scaleCount(const QuantizerOptions& opt, size_t n, size_t channels);

// Max-abs scale per unit into scales[scaleCount()]. Throws ProtocolError if the
// input contains inf or NaN.
void computeScales(const QuantizerOptions& opt, const float* x, size_t n,
                   size_t channels, float* scales);

// Quantises x with the given scales and packs the codes densely into
// packed[packedBytes(n, bits)]. `counter` selects the stochastic-rounding
// stream (e.g. the message number): the same (seed, counter, i) always gives
// the same u for element i, regardless of threads or chunking.
void quantizePacked(const QuantizerOptions& opt, const float* x, size_t n,
                    size_t channels, const float* scales, uint64_t counter,
                    uint8_t* packed);

// Quantises elements [begin, end) only (begin a multiple of 8) into their
// place in the packed stream of all n elements; calls for consecutive ranges
// must be made in increasing order (a range's last 8-byte store may touch the
// next range's first bytes). Same codes as one quantizePacked call.
void quantizePackedRange(const QuantizerOptions& opt, const float* x, size_t n,
                         size_t channels, const float* scales, uint64_t counter,
                         size_t begin, size_t end, uint8_t* packed);

// Unpacks and dequantises n elements: out[i] = (2 q_i - (L-1)) * d(unit of i).
// `packed_bytes` bounds every read.
void dequantizePacked(const QuantizerOptions& opt, const uint8_t* packed,
                      size_t packed_bytes, size_t n, size_t channels,
                      const float* scales, float* out);

// Dequantises elements [begin, end) only (begin a multiple of 8) into
// out[0 .. end-begin): lets callers fuse decoding with their own pass.
void dequantizePackedRange(const QuantizerOptions& opt, const uint8_t* packed,
                           size_t packed_bytes, size_t n, size_t channels,
                           const float* scales, size_t begin, size_t end, float* out);

// Codes without packing (one byte per element), for tests and reference.
void quantizeCodes(const QuantizerOptions& opt, const float* x, size_t n,
                   size_t channels, const float* scales, uint64_t counter,
                   uint8_t* codes);

// The value code q stands for under scale s (the grid above).
float dequantizeCode(int bits, uint8_t q, float scale);

// Owning result of quantize(): scales then packed codes.
struct QuantizedTensor {
  size_t numel = 0;
  size_t channels = 0;
  std::vector<float> scales;
  std::vector<uint8_t> packed;
};

// computeScales + quantizePacked into a fresh QuantizedTensor.
QuantizedTensor quantize(const QuantizerOptions& opt, const float* x, size_t n,
                         size_t channels, uint64_t counter = 0);
// dequantizePacked into out[q.numel].
void dequantize(const QuantizerOptions& opt, const QuantizedTensor& q, float* out);

// The uniform variate in [0, 1) used by stochastic rounding for element i.
float stochasticUniform(uint64_t seed, uint64_t counter, uint64_t i);

}  // namespace geopipe::compression
