// IEEE 754 binary16 ("fp16") conversion, round-to-nearest-even, written here so
// that every host produces bit-identical halves (the AC-SGD buffers rely on it).
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

}  // namespace geopipe::compression
