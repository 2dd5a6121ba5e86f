// Builds compression options from the job spec's compression section
// (geopipe::ActivationCompressionSpec / BackwardCompressionSpec /
// GradientCompressionSpec); every bad value is a ConfigError naming the field.
#pragma once

#include <cstdint>

#include "compression/activation_buffer.h"
#include "compression/delta_compressor.h"
#include "compression/gradient_compressor.h"
#include "compression/wire_format.h"
#include "geopipe/job_spec.h"

namespace geopipe::compression {

// Forward activations. method none -> RAW, fp16 -> FP16, direct -> QUANTIZED,
// acsgd -> AC-SGD (use `delta` and `store`; `codec` is then unused).
struct ActivationCompressionOptions {
  bool acsgd = false;               // true for method: acsgd
  TensorCodecOptions codec;         // none | fp16 | direct
  DeltaCompressorOptions delta;     // acsgd: delta quantiser and buffer format
  BufferStoreOptions store;         // acsgd: where m(xi) lives, budget
};

// `seed` seeds stochastic rounding (the job's training seed); `store_name`
// names this boundary/direction's mmap file inside buffer_dir;
// `compute_dtype` (model.dtype) is the wire dtype of method none: fp32 ->
// RAW, bf16 -> BF16, fp16 -> FP16 (activations cross in the compute dtype).
ActivationCompressionOptions activationOptionsFromSpec(const ActivationCompressionSpec& spec,
                                                       uint64_t seed = 0,
                                                       const std::string& store_name = "boundary",
                                                       const std::string& compute_dtype = "fp32");
// Backward activation gradients: none | fp16 | quantize (direct quantisation).
TensorCodecOptions backwardOptionsFromSpec(const BackwardCompressionSpec& spec, uint64_t seed = 0,
                                           const std::string& compute_dtype = "fp32");
// The uncompressed wire method of a compute dtype (RAW, BF16 or FP16).
Method uncompressedMethod(const std::string& compute_dtype);
// Data-parallel gradients.
GradientCompressorOptions gradientOptionsFromSpec(const GradientCompressionSpec& spec,
                                                  uint64_t seed = 0);

// Parses "tensor" | "channel" | "group" and "nearest" | "stochastic".
Granularity parseGranularity(const std::string& s, const char* field);
Rounding parseRounding(const std::string& s, const char* field);

}  // namespace geopipe::compression
