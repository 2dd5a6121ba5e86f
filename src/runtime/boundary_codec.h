// What crosses a pipeline boundary: a framed message (sample ids, step,
// micro-batch, then the compression library's header and payload) and the
// encoders/decoders for forward activations (none | fp16 | direct | acsgd)
// and backward activation gradients (none | fp16 | quantize). Torch-free.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "compression/delta_compressor.h"
#include "compression/wire_format.h"
#include "geopipe/job_spec.h"
#include "src/transport/transport.h"

namespace geopipe::runtime {

// Bytes as handed to the transport vs. what the same tensor is in fp32.
struct CodecStats {
  std::atomic<uint64_t> raw_bytes{0};
  std::atomic<uint64_t> wire_bytes{0};
  std::atomic<uint64_t> messages{0};
};

// Frame layout (little-endian): "GPBM" magic, u8 frame version (1), u8
// direction (0 activation, 1 gradient), u16 reserved 0, i64 step, i32
// micro-batch, u32 sample count n, n x i64 sample ids, u32 header bytes,
// header, then the payload to the end. decodeFrame checks each field
// against what the receiver expects and throws ProtocolError naming the
// mismatch (a peer on another step, or sending garbage).
struct Frame {
  uint8_t direction = 0;
  int64_t step = 0;
  int32_t micro_batch = 0;
  std::vector<int64_t> sample_ids;
  compression::CompressedMessage message;
};
transport::Bytes encodeFrame(const Frame& f);
Frame decodeFrame(const transport::Bytes& bytes);

// Sending side of one boundary and direction. Not thread-safe (one stage
// thread calls it). AC-SGD senders own their m(xi) store.
class BoundaryEncoder {
 public:
  // Forward activations of a boundary; `store_name` names its mmap file;
  // method none sends the compute dtype (model.dtype: fp32, bf16, fp16).
  static std::unique_ptr<BoundaryEncoder> forActivations(const ActivationCompressionSpec& spec,
                                                         uint64_t seed,
                                                         const std::string& store_name,
                                                         const std::string& compute_dtype = "fp32");
  // Backward activation gradients (method none: the compute dtype).
  static std::unique_ptr<BoundaryEncoder> forGradients(const BackwardCompressionSpec& spec,
                                                       uint64_t seed,
                                                       const std::string& compute_dtype = "fp32");

  transport::Bytes encode(int64_t step, int m, int num_micro_batches,
                          const std::vector<int64_t>& sample_ids, const float* data,
                          const std::vector<int64_t>& shape);
  const CodecStats& stats() const { return stats_; }
  compression::DeltaSender* deltaSender() { return delta_.get(); }

 private:
  uint8_t direction_ = 0;
  compression::TensorCodecOptions codec_;
  std::unique_ptr<compression::DeltaSender> delta_;
  CodecStats stats_;
};

// Receiving side, the mirror of BoundaryEncoder.
class BoundaryDecoder {
 public:
  static std::unique_ptr<BoundaryDecoder> forActivations(const ActivationCompressionSpec& spec,
                                                         uint64_t seed,
                                                         const std::string& store_name);
  static std::unique_ptr<BoundaryDecoder> forGradients(const BackwardCompressionSpec& spec,
                                                       uint64_t seed);

  // Decodes into out (numel of expected_shape floats). ProtocolError if the
  // frame is not for (step, m, sample_ids) or its tensor is not
  // expected_shape.
  void decode(const transport::Bytes& bytes, int64_t step, int m,
              const std::vector<int64_t>& sample_ids,
              const std::vector<int64_t>& expected_shape, std::vector<float>& out);
  compression::DeltaReceiver* deltaReceiver() { return delta_.get(); }

 private:
  uint8_t direction_ = 0;
  std::unique_ptr<compression::DeltaReceiver> delta_;
};

}  // namespace geopipe::runtime
