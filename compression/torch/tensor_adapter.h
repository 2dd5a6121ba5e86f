// Thin LibTorch adapters over the raw-span compression API: at::Tensor in,
// at::Tensor out. Only geopipe_compression_torch and its users include this.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "compression/delta_compressor.h"
#include "compression/gradient_compressor.h"
#include "compression/wire_format.h"

namespace geopipe::compression {

// Any floating tensor (fp32/fp16/bf16, any device); encoded from a contiguous
// fp32 CPU copy; the header records the original dtype.
CompressedMessage encodeTensor(const TensorCodecOptions& opt, const at::Tensor& x,
                               uint64_t counter = 0);
// RAW / FP16 / QUANTIZED / TOPK / POWERSGD_* -> CPU tensor of the header's
// shape, cast back to the header's dtype.
at::Tensor decodeToTensor(const CompressedMessage& msg);

// AC-SGD: sample_ids is an int64 tensor of B ids; activations [B, ..., C].
CompressedMessage encodeActivations(DeltaSender& tx, const at::Tensor& sample_ids,
                                    const at::Tensor& activations, uint64_t counter = 0);
// Returns m(xi) of every sample (fp32 CPU, then cast to the header's dtype).
at::Tensor decodeActivations(DeltaReceiver& rx, const at::Tensor& sample_ids,
                             const CompressedMessage& msg);

CompressedMessage compressGradient(GradientCompressor& c, const at::Tensor& grad,
                                   uint64_t step = 0);
// combineMean of per-rank messages as a tensor of their shape.
at::Tensor combineMeanTensor(const std::vector<CompressedMessage>& per_rank);

}  // namespace geopipe::compression
