// Fused AC-SGD kernels for fp16 activation buffers (the paper's storage of
// m(xi)): one sample's sender step and the matching buffer update, written so
// that memory is traversed as few times as possible while every element gets
// exactly the arithmetic of the unfused reference:
//     delta  = a - h2f(m)                         (fp32 subtraction)
//     scales = computeScales(delta)               (max |delta| per unit)
//     codes  = quantizePacked(delta, scales, counter)
//     m_new  = f2h(h2f(m) + (2q - (L-1)) * (s / (L-1)))   (dequantizePacked, then add)
// Internal to geopipe_compression (DeltaSender / DeltaReceiver use it; the
// tests compare it with the reference). A GPU port must keep this arithmetic.
#pragma once

#include <cstddef>
#include <cstdint>

#include "compression/half.h"
#include "compression/quantizer.h"

namespace geopipe::compression {

// Whether acsgdFp16Encode handles these quantizer options (per-channel scales;
// other granularities go through the chunked generic path).
bool acsgdFp16EncodeSupports(const QuantizerOptions& q);

// The sender's step for one sample of n elements (rows of `channels`):
// writes scales[channels] and the packed codes packed[packedBytes(n, bits)],
// and updates m (n halves) in place to the value the receiver will compute
// from those bytes. Two passes over a and m: the first finds the per-channel
// max |delta| without storing delta; the second recomputes delta row by row,
// quantises, packs, and applies the update from the integer codes still in
// registers. Throws ProtocolError, with m untouched, if delta has inf/NaN.
void acsgdFp16Encode(const QuantizerOptions& q, const float* a, Half* m, size_t n, size_t channels,
                     uint64_t counter, float* scales, uint8_t* packed);

// The shared update for any granularity, over elements [begin, end) (begin a
// multiple of 8): m <- f2h(h2f(m) + deq(code)) from the packed stream of all
// n elements; out (when not null) gets h2f(new m) at out[i - begin].
// `packed_bytes` bounds every read (ProtocolError if too short).
void acsgdFp16Apply(const QuantizerOptions& q, const uint8_t* packed, size_t packed_bytes, size_t n,
                    size_t channels, const float* scales, Half* m, float* out, size_t begin = 0,
                    size_t end = SIZE_MAX);

}  // namespace geopipe::compression
