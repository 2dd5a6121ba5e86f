// Dense bit packing of b-bit codes (b in 1..8): element i occupies bits
// [i*b, (i+1)*b) of a little-endian bit stream, so n codes take ceil(n*b/8) bytes.
#pragma once

#include <cstddef>
#include <cstdint>

namespace geopipe::compression {

// Bytes needed for n codes of `bits` bits each: ceil(n * bits / 8).
inline size_t packedBytes(size_t n, int bits) {
  return (n * static_cast<size_t>(bits) + 7) / 8;
}

// Packs n codes (each < 2^bits; higher bits are ignored) into out, which must
// hold packedBytes(n, bits) bytes. Unused high bits of the last byte are zero.
// With BMI2 this is one PEXT per 8 codes.
void packBits(const uint8_t* codes, size_t n, int bits, uint8_t* out);

// Inverse of packBits: reads packedBytes(n, bits) bytes from in, writes n codes.
void unpackBits(const uint8_t* in, size_t n, int bits, uint8_t* codes);

// Packs codes into the stream starting at element index `first`, which must be
// a multiple of 8 (so it starts on a byte boundary). `out_bytes` is the size
// of the whole stream; nothing at or beyond it is written. Used by the fused
// quantize+pack kernels, which work chunk by chunk.
void packBitsAt(const uint8_t* codes, size_t first, size_t n, int bits,
                uint8_t* out, size_t out_bytes);

// Unpacks n codes starting at element `first` (a multiple of 8) from a stream
// of `in_bytes` bytes; nothing at or beyond in_bytes is read.
void unpackBitsAt(const uint8_t* in, size_t in_bytes, size_t first, size_t n,
                  int bits, uint8_t* codes);

}  // namespace geopipe::compression
