// Framing and compression of pipeline-boundary messages.
#include "src/runtime/boundary_codec.h"

#include "compression/options.h"
#include "geopipe/error.h"
#include "src/common/byte_io.h"

namespace geopipe::runtime {
namespace {

constexpr uint32_t kFrameMagic = 0x4D425047;  // "GPBM" little-endian
constexpr uint8_t kFrameVersion = 1;
constexpr uint32_t kMaxSamples = 1u << 20;

std::string idsToString(const std::vector<int64_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size() && i < 8; ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  return s + (ids.size() > 8 ? ",..." : "");
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

}  // namespace

transport::Bytes encodeFrame(const Frame& f) {
  common::ByteWriter w(32 + 8 * f.sample_ids.size() + f.message.wireBytes());
  w.write<uint32_t>(kFrameMagic);
  w.write<uint8_t>(kFrameVersion);
  w.write<uint8_t>(f.direction);
  w.write<uint16_t>(0);  // reserved
  w.write<int64_t>(f.step);
  w.write<int32_t>(f.micro_batch);
  w.write<uint32_t>(static_cast<uint32_t>(f.sample_ids.size()));
  w.writeArray(f.sample_ids.data(), f.sample_ids.size());
  w.write<uint32_t>(static_cast<uint32_t>(f.message.header.size()));
  w.writeBytes(f.message.header);
  w.writeBytes(f.message.payload);
  return w.take();
}

Frame decodeFrame(const transport::Bytes& bytes) {
  common::ByteReader r(bytes, "pipeline frame");
  Frame f;
  const uint32_t magic = r.read<uint32_t>("magic");
  if (magic != kFrameMagic) {
    GEOPIPE_THROW(ProtocolError, "not a geopipe pipeline frame (magic 0x", std::hex, magic,
                  "): is the peer a geopipe worker of this job?");
  }
  const uint8_t version = r.read<uint8_t>("version");
  if (version != kFrameVersion) {
    GEOPIPE_THROW(ProtocolError, "pipeline frame version ", int(version), ", this build speaks ",
                  int(kFrameVersion), ": run the same geopipe version on every worker");
  }
  f.direction = r.read<uint8_t>("direction");
  if (f.direction > 1) GEOPIPE_THROW(ProtocolError, "pipeline frame direction ", int(f.direction));
  if (r.read<uint16_t>("reserved") != 0) {
    GEOPIPE_THROW(ProtocolError, "pipeline frame reserved bits set");
  }
  f.step = r.read<int64_t>("step");
  f.micro_batch = r.read<int32_t>("micro_batch");
  const uint32_t n = r.read<uint32_t>("sample count");
  if (n > kMaxSamples) GEOPIPE_THROW(ProtocolError, "pipeline frame claims ", n, " samples");
  f.sample_ids = r.readVector<int64_t>(n, "sample ids");
  const uint32_t header_bytes = r.read<uint32_t>("header size");
  f.message.header = r.copyBytes(header_bytes, "compressed-tensor header");
  f.message.payload = r.copyRest();
  return f;
}

std::unique_ptr<BoundaryEncoder> BoundaryEncoder::forActivations(
    const ActivationCompressionSpec& spec, uint64_t seed, const std::string& store_name,
    const std::string& compute_dtype) {
  auto e = std::make_unique<BoundaryEncoder>();
  e->direction_ = 0;
  auto opt =
      compression::activationOptionsFromSpec(spec, seed, store_name + ".send", compute_dtype);
  if (opt.acsgd) {
    e->delta_ = std::make_unique<compression::DeltaSender>(
        opt.delta, compression::makeBufferStore(opt.store));
  } else {
    e->codec_ = opt.codec;
  }
  return e;
}

std::unique_ptr<BoundaryEncoder> BoundaryEncoder::forGradients(const BackwardCompressionSpec& spec,
                                                               uint64_t seed,
                                                               const std::string& compute_dtype) {
  auto e = std::make_unique<BoundaryEncoder>();
  e->direction_ = 1;
  e->codec_ = compression::backwardOptionsFromSpec(spec, seed, compute_dtype);
  return e;
}

transport::Bytes BoundaryEncoder::encode(int64_t step, int m, int num_micro_batches,
                                         const std::vector<int64_t>& sample_ids,
                                         const float* data, const std::vector<int64_t>& shape) {
  Frame f;
  f.direction = direction_;
  f.step = step;
  f.micro_batch = m;
  f.sample_ids = sample_ids;
  // Stochastic rounding stream: unique per (step, micro-batch).
  const uint64_t counter = static_cast<uint64_t>(step) * num_micro_batches + m;
  if (delta_) {
    f.message = delta_->encode(sample_ids.data(), data, shape, counter);
  } else {
    f.message = compression::encodeTensor(codec_, data, shape, compression::DType::FLOAT32, counter);
  }
  transport::Bytes out = encodeFrame(f);
  stats_.raw_bytes += static_cast<uint64_t>(numel(shape)) * 4;
  stats_.wire_bytes += out.size();
  stats_.messages += 1;
  return out;
}

std::unique_ptr<BoundaryDecoder> BoundaryDecoder::forActivations(
    const ActivationCompressionSpec& spec, uint64_t seed, const std::string& store_name) {
  auto d = std::make_unique<BoundaryDecoder>();
  d->direction_ = 0;
  auto opt = compression::activationOptionsFromSpec(spec, seed, store_name + ".recv");
  if (opt.acsgd) {
    d->delta_ = std::make_unique<compression::DeltaReceiver>(
        opt.delta, compression::makeBufferStore(opt.store));
  }
  return d;
}

std::unique_ptr<BoundaryDecoder> BoundaryDecoder::forGradients(const BackwardCompressionSpec&,
                                                               uint64_t) {
  auto d = std::make_unique<BoundaryDecoder>();
  d->direction_ = 1;
  return d;
}

void BoundaryDecoder::decode(const transport::Bytes& bytes, int64_t step, int m,
                             const std::vector<int64_t>& sample_ids,
                             const std::vector<int64_t>& expected_shape,
                             std::vector<float>& out) {
  Frame f = decodeFrame(bytes);
  const char* what = direction_ == 0 ? "activation" : "activation gradient";
  if (f.direction != direction_ || f.step != step || f.micro_batch != m) {
    GEOPIPE_THROW(ProtocolError, "expected the ", what, " of step ", step, " micro-batch ", m,
                  ", got direction ", int(f.direction), " step ", f.step, " micro-batch ",
                  f.micro_batch);
  }
  if (f.sample_ids != sample_ids) {
    GEOPIPE_THROW(ProtocolError, "the ", what, " of step ", step, " micro-batch ", m,
                  " carries samples [", idsToString(f.sample_ids), "], expected [",
                  idsToString(sample_ids),
                  "]: sender and receiver disagree on the data order (same seed and data?)");
  }
  compression::WireHeader header;
  if (delta_) {
    header = delta_->decode(sample_ids.data(), sample_ids.size(), f.message, out);
  } else {
    compression::DecodedTensor t = compression::decodeTensor(f.message);
    header = t.header;
    out = std::move(t.values);
  }
  if (header.shape != expected_shape) {
    std::string got, want;
    for (auto d : header.shape) got += std::to_string(d) + " ";
    for (auto d : expected_shape) want += std::to_string(d) + " ";
    GEOPIPE_THROW(ProtocolError, "the ", what, " of step ", step, " micro-batch ", m,
                  " has shape [ ", got, "], the model declares [ ", want, "]");
  }
}

}  // namespace geopipe::runtime
