// AC-SGD activation compression (Wang et al., "Fine-tuning language models
// over slow networks using activation compression with guarantees"): a
// DeltaSender / DeltaReceiver pair per pipeline boundary and direction.
//
// For sample xi with activation a at this boundary, both sides keep m(xi):
//   first visit (or shape change): send fp16(a);      m(xi) <- B(fp16(a))
//   later visits:  send c = Q(a - m(xi));              m(xi) <- B(m(xi) + deq(c))
// and the receiver computes on m(xi). B is the buffer's storage rounding
// (fp16, or b-bit per-channel quantisation). Both sides run the *same*
// function (applyUpdate) on the *same* inputs -- the old m(xi) bytes and the
// bytes on the wire -- with FMA contraction off, so their m(xi) stay
// bit-identical after every message. The error the receiver sees is
// |a - m_new| <= |delta| / (2^b - 1) per channel (plus B's rounding), which
// shrinks as training converges and a stops moving: that is why 2-bit deltas
// match the uncompressed model while 2-bit direct quantisation does not.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "compression/activation_buffer.h"
#include "compression/half.h"
#include "compression/quantizer.h"
#include "compression/wire_format.h"

namespace geopipe::compression {

enum class BufferFormat : uint8_t {
  FP16 = 0,       // m(xi) as binary16 (the paper): 2 bytes/element
  QUANTIZED = 1,  // m(xi) as buffer_bits per-channel codes + fp32 scales
};

struct DeltaCompressorOptions {
  QuantizerOptions quantizer;               // Q for the deltas (paper: 2-4 bits, per channel)
  BufferFormat buffer_format = BufferFormat::FP16;  // storage of m(xi)
  int buffer_bits = 8;                      // QUANTIZED buffers: bits per element (1..8)
  void validate() const;                    // ConfigError
};

// Sending side of one boundary. encode() updates the sender's m(xi), so each
// returned message must reach the receiver exactly once, in the order sent
// for any one sample. Owns its store; not thread-safe.
class DeltaSender {
 public:
  DeltaSender(DeltaCompressorOptions opt, std::unique_ptr<ActivationBufferStore> store);
  // activations: shape [B, ...] row-major; sample_ids: B ids (one per row of
  // dim 0). `counter` picks the stochastic-rounding stream (e.g. step * M + mb).
  CompressedMessage encode(const int64_t* sample_ids, const float* activations,
                           const std::vector<int64_t>& shape, uint64_t counter = 0,
                           DType dtype = DType::FLOAT32);
  ActivationBufferStore& store() { return *store_; }
  const DeltaCompressorOptions& options() const { return opt_; }

 private:
  DeltaCompressorOptions opt_;
  std::unique_ptr<ActivationBufferStore> store_;
  std::vector<float> m_, delta_, deq_;
  std::vector<Half> half_;
};

// Receiving side. decode() validates the message (ProtocolError), applies
// the same update as the sender and writes the new m(xi) of every sample into
// out (numel floats).
class DeltaReceiver {
 public:
  DeltaReceiver(DeltaCompressorOptions opt, std::unique_ptr<ActivationBufferStore> store);
  // Returns the message's header (shape, dtype).
  WireHeader decode(const int64_t* sample_ids, size_t num_ids, const CompressedMessage& msg,
                    std::vector<float>& out);
  ActivationBufferStore& store() { return *store_; }

 private:
  DeltaCompressorOptions opt_;
  std::unique_ptr<ActivationBufferStore> store_;
  std::vector<float> m_, deq_;
};

// Bytes of the buffer entry m(xi) of one sample of shape `sample_shape`
// ([seq_len, hidden] at a transformer boundary): an 8-byte entry header,
// 8 bytes per dimension, then FP16: 2 bytes per element; QUANTIZED: one fp32
// scale per channel (the last dimension) and ceil(n * buffer_bits / 8) bytes
// of packed codes. Exactly what the sender and the receiver allocate in
// their store for that sample, so a budget computed with it before a run
// (config::acsgdBufferMemory) agrees with the store.
size_t bufferEntryBytes(const DeltaCompressorOptions& opt,
                        const std::vector<int64_t>& sample_shape);

// Reads sample id's m(xi) (shape `sample_shape`) as floats into out; false if
// absent or stored with another shape/format (a first visit). Exposed for
// tests and for checkpoint inspection.
bool readBuffer(const DeltaCompressorOptions& opt, ActivationBufferStore& store, int64_t id,
                const std::vector<int64_t>& sample_shape, std::vector<float>& out);

}  // namespace geopipe::compression
