// Versioned binary wire format of a compressed tensor: a fixed little-endian
// header (method, bits, granularity, shape, dtype, scale count, CRCs) plus a
// payload; a pipeline frame (src/runtime/boundary_codec.h) carries the pair.
//
// Header layout (all little-endian, 48 + 8*ndim bytes):
//   off size field
//     0   4  magic "GPCT"
//     4   1  version (kWireVersion = 1)
//     5   1  method (Method)
//     6   1  bits (1..8 for QUANTIZED/ACSGD, 0 otherwise)
//     7   1  granularity (Granularity; 0 unless quantised)
//     8   1  rounding (Rounding; informational)
//     9   1  dtype of the original tensor (DType, numbered as geopipe.v1.DType)
//    10   1  ndim (0..8)
//    11   1  reserved, must be 0
//    12   4  group_size (GROUP granularity, else 0)
//    16   8  scale_count (scales in the payload; per sample for ACSGD)
//    24   8  aux (TOPK: k; ACSGD: 0; POWERSGD_*: rank)
//    32   8  payload_bytes
//    40   4  payload CRC-32C
//    44 8*n  shape (int64 each)
//  44+8n  4  header CRC-32C over all preceding header bytes
// Payload per method (n = numel, b = bits, S = scale_count):
//   RAW        n x f32
//   FP16       n x binary16
//   BF16       n x bfloat16
//   QUANTIZED  S x f32 scales, then ceil(n*b/8) bytes of packed codes
//   ACSGD      shape[0] = B samples; B kind bytes (0 = full fp16, 1 = delta),
//              then per sample in order: full -> (n/B) x binary16;
//              delta -> S x f32 scales + ceil((n/B)*b/8) packed codes
//   TOPK       k x u32 indices (strictly increasing, < n), then k x f32 values
//   POWERSGD_P / POWERSGD_Q   n x f32 (a low-rank factor, shape [rows, rank])
// Every decoder checks every field, sizes and both CRCs before it reads the
// payload; anything wrong throws ProtocolError saying which field and why.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "compression/quantizer.h"

namespace geopipe::compression {

constexpr uint8_t kWireVersion = 1;
constexpr size_t kMaxDims = 8;
constexpr size_t kHeaderFixedBytes = 48;
// Largest tensor a message may describe (elements); guards size arithmetic.
constexpr uint64_t kMaxNumel = uint64_t{1} << 40;

enum class Method : uint8_t {
  RAW = 0,         // fp32, uncompressed
  FP16 = 1,        // binary16, round to nearest even
  QUANTIZED = 2,   // direct b-bit quantisation (backward grads, direct activations)
  ACSGD = 3,       // AC-SGD activation deltas for a micro-batch of samples
  TOPK = 4,        // sparse: k largest-magnitude entries
  POWERSGD_P = 5,  // PowerSGD factor P = M Q, shape [rows, rank]
  POWERSGD_Q = 6,  // PowerSGD factor Q = M^T P, shape [cols, rank]
  BF16 = 7,        // bfloat16, round to nearest even (bf16 compute's wire dtype)
};
const char* toString(Method m);

// Dtype of the original tensor; numbers match geopipe.v1.DType.
enum class DType : uint8_t { FLOAT32 = 1, FLOAT16 = 2, BFLOAT16 = 3 };

// Kind byte of one sample in an ACSGD payload.
enum class SampleKind : uint8_t { FULL_FP16 = 0, DELTA = 1 };

struct WireHeader {
  Method method = Method::RAW;
  uint8_t bits = 0;                             // 1..8 for QUANTIZED / ACSGD
  Granularity granularity = Granularity::TENSOR;
  Rounding rounding = Rounding::NEAREST;
  DType dtype = DType::FLOAT32;
  uint32_t group_size = 0;                      // GROUP only
  uint64_t scale_count = 0;                     // see layout above
  uint64_t aux = 0;                             // TOPK: k; POWERSGD: rank
  uint64_t payload_bytes = 0;
  uint32_t payload_crc = 0;
  std::vector<int64_t> shape;

  uint64_t numel() const;
  // Last dimension (1 for a scalar); the per-channel channel count.
  uint64_t channels() const;
  // The quantiser the header describes (bits, granularity, group, rounding).
  QuantizerOptions quantizerOptions() const;
};

// A header and payload pair, as a pipeline frame carries them.
struct CompressedMessage {
  std::vector<uint8_t> header;
  std::vector<uint8_t> payload;
  size_t wireBytes() const { return header.size() + payload.size(); }
};

// CRC-32C (Castagnoli); SSE4.2 crc32 instruction when available.
uint32_t crc32c(const uint8_t* data, size_t n, uint32_t crc = 0);

// Serialises h (payload_bytes and payload_crc must already be set).
std::vector<uint8_t> encodeHeader(const WireHeader& h);
// Parses and validates a header; ProtocolError on anything wrong.
WireHeader decodeHeader(const uint8_t* data, size_t n);
// Checks size and CRC of a payload against its header; ProtocolError if not.
void checkPayload(const WireHeader& h, const uint8_t* payload, size_t n);
// Fills payload_bytes/payload_crc from the payload and encodes both parts.
CompressedMessage seal(WireHeader h, std::vector<uint8_t> payload);

// Scales must be finite and >= 0; reads them from unaligned bytes.
void readScales(const uint8_t* p, size_t count, float* out);

// ---- Dense tensor codec (RAW, FP16, BF16, QUANTIZED) ----------------------
// Used for backward activation gradients (direct quantisation), direct
// activation quantisation and 16-bit transfer.
struct TensorCodecOptions {
  Method method = Method::QUANTIZED;  // RAW | FP16 | BF16 | QUANTIZED
  QuantizerOptions quantizer;         // used when method == QUANTIZED
  void validate() const;              // ConfigError
};

// Encodes x (numel = product of shape) into a sealed message. `counter`
// picks the stochastic-rounding stream (use the message/step number).
CompressedMessage encodeTensor(const TensorCodecOptions& opt, const float* x,
                               const std::vector<int64_t>& shape,
                               DType dtype = DType::FLOAT32, uint64_t counter = 0);

struct DecodedTensor {
  WireHeader header;
  std::vector<float> values;  // numel values, row-major
};
// Decodes a RAW / FP16 / BF16 / QUANTIZED message; ProtocolError on bad bytes.
DecodedTensor decodeTensor(const uint8_t* header, size_t header_bytes,
                           const uint8_t* payload, size_t payload_bytes);
DecodedTensor decodeTensor(const CompressedMessage& msg);

}  // namespace geopipe::compression
