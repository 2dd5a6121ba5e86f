// IEEE 754 binary16 ("fp16") and bfloat16 conversions, round-to-nearest-even,
// written here so that every host produces bit-identical halves (the AC-SGD
// buffers rely on it; the safetensors reader and writer use both).
#pragma once

#include <cstddef>
#include <cstdint>

namespace geopipe::compression {

// One fp16 value as its raw bits.
using Half = uint16_t;

// Scalar conversions. floatToHalf rounds to nearest, ties to even; values whose
// magnitude rounds above 65504 become +-inf, NaN stays NaN (quiet), subnormal
// halves are produced and consumed exactly. halfToFloat is exact.
Half floatToHalf(float x);
float halfToFloat(Half h);

// Span conversions. Vectorised with F16C (vcvtps2ph with RNE, which gives the
// same bits as the scalar path) when the kernel flags allow it.
void floatToHalf(const float* in, Half* out, size_t n);
void halfToFloat(const Half* in, float* out, size_t n);

// True when the span functions run on F16C instructions in this build.
bool halfUsesF16C();

// One bfloat16 value as its raw bits: the upper half of a binary32 (same
// exponent range, 8 significant bits).
using BFloat16 = uint16_t;

// floatToBFloat16 rounds the 16 dropped bits to nearest, ties to even; values
// that round past the largest finite bfloat16 (0x7F7F) become +-inf; a NaN
// stays a NaN (its sign and upper payload bits kept, made quiet so that the
// truncated payload cannot turn it into an infinity). bfloat16ToFloat is exact.
BFloat16 floatToBFloat16(float x);
float bfloat16ToFloat(BFloat16 b);

// Span versions of the same (the compiler vectorises them; same bits).
void floatToBFloat16(const float* in, BFloat16* out, size_t n);
void bfloat16ToFloat(const BFloat16* in, float* out, size_t n);

}  // namespace geopipe::compression
