// AC-SGD delta sender/receiver and the buffer-entry layout they share.
#include "compression/delta_compressor.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "compression/acsgd_fp16.h"
#include "compression/bit_pack.h"
#include "compression/half.h"
#include "geopipe/error.h"

namespace geopipe::compression {

namespace {

// Buffer entry: u8 format, u8 bits, u8 ndim, u8 0, u32 0, ndim x i64 dims,
// then FP16: n x binary16; QUANTIZED: C x f32 scales + packed codes.
constexpr size_t kEntryFixed = 8;

QuantizerOptions bufferQuantizer(const DeltaCompressorOptions& opt) {
  QuantizerOptions q;
  q.bits = opt.buffer_bits;
  q.granularity = Granularity::CHANNEL;
  q.rounding = Rounding::NEAREST;  // deterministic: both sides must agree
  return q;
}

size_t entryDataBytes(const DeltaCompressorOptions& opt, size_t n, size_t channels) {
  if (opt.buffer_format == BufferFormat::FP16) return 2 * n;
  return 4 * (n ? channels : 0) + packedBytes(n, opt.buffer_bits);
}

// The whole entry: header, dims, data (the layout above).
size_t entryBytes(size_t ndim, size_t data_bytes) {
  return kEntryFixed + 8 * ndim + data_bytes;
}

// Locates the data of a valid entry with this shape and format, or nullptr.
const uint8_t* entryData(const DeltaCompressorOptions& opt, ActivationBufferStore& store,
                         int64_t id, const int64_t* dims, size_t ndim, size_t data_bytes) {
  const auto e = store.find(id);
  if (!e.data) return nullptr;
  if (e.size != entryBytes(ndim, data_bytes)) return nullptr;
  if (e.data[0] != static_cast<uint8_t>(opt.buffer_format) || e.data[2] != ndim) return nullptr;
  if (opt.buffer_format == BufferFormat::QUANTIZED && e.data[1] != opt.buffer_bits) return nullptr;
  if (std::memcmp(e.data + kEntryFixed, dims, 8 * ndim) != 0) return nullptr;
  return e.data + kEntryFixed + 8 * ndim;
}

void loadM(const DeltaCompressorOptions& opt, const uint8_t* data, size_t n, size_t channels,
           float* m) {
  if (opt.buffer_format == BufferFormat::FP16) {
    // Entry data sits at an 8-byte aligned offset in a 64-byte aligned slot.
    halfToFloat(reinterpret_cast<const Half*>(data), m, n);
  } else {
    const size_t ns = n ? channels : 0;
    std::vector<float> scales(ns);
    std::memcpy(scales.data(), data, 4 * ns);
    dequantizePacked(bufferQuantizer(opt), data + 4 * ns, packedBytes(n, opt.buffer_bits), n,
                     channels, scales.data(), m);
  }
}

// m(xi) <- B(m_new): writes the entry header and the rounded buffer.
void storeM(const DeltaCompressorOptions& opt, ActivationBufferStore& store, int64_t id,
            const int64_t* dims, size_t ndim, const float* m_new, size_t n, size_t channels) {
  const size_t data_bytes = entryDataBytes(opt, n, channels);
  uint8_t* e = store.allocate(id, entryBytes(ndim, data_bytes));
  std::memset(e, 0, kEntryFixed);
  e[0] = static_cast<uint8_t>(opt.buffer_format);
  e[1] = static_cast<uint8_t>(opt.buffer_format == BufferFormat::QUANTIZED ? opt.buffer_bits : 16);
  e[2] = static_cast<uint8_t>(ndim);
  std::memcpy(e + kEntryFixed, dims, 8 * ndim);
  uint8_t* data = e + kEntryFixed + 8 * ndim;
  if (opt.buffer_format == BufferFormat::FP16) {
    floatToHalf(m_new, reinterpret_cast<Half*>(data), n);
  } else {
    const QuantizerOptions q = bufferQuantizer(opt);
    const size_t ns = n ? channels : 0;
    std::vector<float> scales(ns);
    computeScales(q, m_new, n, channels, scales.data());
    std::memcpy(data, scales.data(), 4 * ns);
    quantizePacked(q, m_new, n, channels, scales.data(), 0, data + 4 * ns);
  }
}

// The shared update: m_new = m_old + deq(codes) elementwise, then B(m_new).
// Identical code on both sides on identical inputs -> identical m(xi).
void applyDelta(float* m, const float* deq, size_t n) {
  for (size_t i = 0; i < n; ++i) m[i] = m[i] + deq[i];
}

// fp16-buffer path for tensor/group granularity (per-channel scales take the
// fused acsgdFp16Encode): delta is staged in fp32 because its scales must be
// known before any element is quantised, then quantised and applied chunk by
// chunk. Chunk of 32K elements: the fp16->fp32 temporary (128 KB) stays in
// L2. A multiple of 8, so chunks start byte-aligned in the packed stream.
constexpr size_t kFuse = 32768;

// delta = a - h2f(m), then the per-unit max |delta| scales.
void fp16Delta(const QuantizerOptions& q, const float* a, const Half* m, size_t n,
               size_t channels, float* delta, float* scales) {
  thread_local std::vector<float> tmp;
  if (tmp.size() < kFuse) tmp.resize(kFuse);
  for (size_t b = 0; b < n; b += kFuse) {
    const size_t len = std::min(kFuse, n - b);
    halfToFloat(m + b, tmp.data(), len);
    float* d = delta + b;
    const float* ab = a + b;
    for (size_t i = 0; i < len; ++i) d[i] = ab[i] - tmp[i];
  }
  computeScales(q, delta, n, channels, scales);
}

struct Geometry {
  size_t batch = 0, per = 0, channels = 1;
  std::vector<int64_t> sample_dims;
};

Geometry geometryOf(const std::vector<int64_t>& shape) {
  Geometry g;
  GEOPIPE_CHECK(shape.size() >= 2 && shape.size() <= kMaxDims, ConfigError,
                "AC-SGD needs activations shaped [batch, ..., channels], got ndim ", shape.size());
  g.batch = static_cast<size_t>(shape[0]);
  g.per = 1;
  for (size_t k = 1; k < shape.size(); ++k) {
    GEOPIPE_CHECK(shape[k] >= 0, ConfigError, "negative dimension");
    g.per *= static_cast<size_t>(shape[k]);
  }
  g.channels = static_cast<size_t>(shape.back());
  g.sample_dims.assign(shape.begin() + 1, shape.end());
  return g;
}

}  // namespace

void DeltaCompressorOptions::validate() const {
  quantizer.validate();
  GEOPIPE_CHECK(buffer_format == BufferFormat::FP16 || buffer_format == BufferFormat::QUANTIZED,
                ConfigError, "unknown AC-SGD buffer format");
  GEOPIPE_CHECK(buffer_format != BufferFormat::QUANTIZED || (buffer_bits >= 1 && buffer_bits <= 8),
                ConfigError, "AC-SGD buffer_bits must be in 1..8, got ", buffer_bits);
}

size_t bufferEntryBytes(const DeltaCompressorOptions& opt,
                        const std::vector<int64_t>& sample_shape) {
  size_t n = 1;
  for (int64_t d : sample_shape) n *= static_cast<size_t>(d);
  const size_t channels = sample_shape.empty() ? 1 : static_cast<size_t>(sample_shape.back());
  return entryBytes(sample_shape.size(), entryDataBytes(opt, n, channels));
}

bool readBuffer(const DeltaCompressorOptions& opt, ActivationBufferStore& store, int64_t id,
                const std::vector<int64_t>& sample_shape, std::vector<float>& out) {
  size_t n = 1;
  for (int64_t d : sample_shape) n *= static_cast<size_t>(d);
  const size_t channels = sample_shape.empty() ? 1 : static_cast<size_t>(sample_shape.back());
  const uint8_t* data = entryData(opt, store, id, sample_shape.data(), sample_shape.size(),
                                  entryDataBytes(opt, n, channels));
  if (!data) return false;
  out.resize(n);
  loadM(opt, data, n, channels, out.data());
  return true;
}

DeltaSender::DeltaSender(DeltaCompressorOptions opt, std::unique_ptr<ActivationBufferStore> store)
    : opt_(std::move(opt)), store_(std::move(store)) {
  opt_.validate();
  GEOPIPE_CHECK(store_ != nullptr, ConfigError, "DeltaSender needs a buffer store");
}

CompressedMessage DeltaSender::encode(const int64_t* ids, const float* a,
                                      const std::vector<int64_t>& shape, uint64_t counter,
                                      DType dtype) {
  const Geometry g = geometryOf(shape);
  const QuantizerOptions& q = opt_.quantizer;
  const size_t ns = scaleCount(q, g.per, g.channels);
  const size_t delta_bytes = 4 * ns + packedBytes(g.per, q.bits);
  const size_t data_bytes = entryDataBytes(opt_, g.per, g.channels);
  const size_t ndim = g.sample_dims.size();

  // Decide each sample's kind first, so the payload can be sized exactly.
  std::vector<uint8_t> kinds(g.batch);
  size_t total = g.batch;
  for (size_t s = 0; s < g.batch; ++s) {
    const bool known =
        entryData(opt_, *store_, ids[s], g.sample_dims.data(), ndim, data_bytes) != nullptr;
    kinds[s] = static_cast<uint8_t>(known ? SampleKind::DELTA : SampleKind::FULL_FP16);
    total += known ? delta_bytes : 2 * g.per;
  }
  std::vector<uint8_t> payload(total);
  std::memcpy(payload.data(), kinds.data(), g.batch);
  size_t pos = g.batch;
  m_.resize(g.per);
  delta_.resize(g.per);
  deq_.resize(g.per);
  for (size_t s = 0; s < g.batch; ++s) {
    const float* as = a + s * g.per;
    uint8_t* out = payload.data() + pos;
    if (kinds[s] == static_cast<uint8_t>(SampleKind::FULL_FP16)) {
      // m <- B(fp16(a)): from the halves put on the wire, as the receiver will.
      // (Staged through half_ because `out` may be odd-aligned.)
      half_.resize(g.per);
      floatToHalf(as, half_.data(), g.per);
      std::memcpy(out, half_.data(), 2 * g.per);
      halfToFloat(half_.data(), m_.data(), g.per);
      storeM(opt_, *store_, ids[s], g.sample_dims.data(), ndim, m_.data(), g.per, g.channels);
      pos += 2 * g.per;
      continue;
    }
    const uint8_t* data = entryData(opt_, *store_, ids[s], g.sample_dims.data(), ndim, data_bytes);
    std::vector<float> scales(ns);
    // Stochastic streams differ per sample within a message.
    const uint64_t stream = counter * 1315423911u + s;
    if (opt_.buffer_format == BufferFormat::FP16) {
      // Fused paths: update the fp16 entry in place (same size, same slot).
      Half* mh = reinterpret_cast<Half*>(const_cast<uint8_t*>(data));
      if (acsgdFp16EncodeSupports(q)) {
        acsgdFp16Encode(q, as, mh, g.per, g.channels, stream, scales.data(), out + 4 * ns);
        std::memcpy(out, scales.data(), 4 * ns);
        pos += delta_bytes;
        continue;
      }
      fp16Delta(q, as, mh, g.per, g.channels, delta_.data(), scales.data());
      std::memcpy(out, scales.data(), 4 * ns);
      // Quantise a chunk, then at once apply the receiver's update to the
      // same chunk from the bytes just packed (still in L1/L2).
      const size_t pb = packedBytes(g.per, q.bits);
      for (size_t b = 0; b < g.per; b += kFuse) {
        const size_t e = std::min(g.per, b + kFuse);
        quantizePackedRange(q, delta_.data(), g.per, g.channels, scales.data(), stream, b, e,
                            out + 4 * ns);
        acsgdFp16Apply(q, out + 4 * ns, pb, g.per, g.channels, scales.data(), mh, nullptr, b, e);
      }
      pos += delta_bytes;
      continue;
    }
    loadM(opt_, data, g.per, g.channels, m_.data());
    for (size_t i = 0; i < g.per; ++i) delta_[i] = as[i] - m_[i];
    computeScales(q, delta_.data(), g.per, g.channels, scales.data());
    std::memcpy(out, scales.data(), 4 * ns);
    quantizePacked(q, delta_.data(), g.per, g.channels, scales.data(), stream, out + 4 * ns);
    // The receiver's view: dequantise exactly the bytes on the wire.
    dequantizePacked(q, out + 4 * ns, packedBytes(g.per, q.bits), g.per, g.channels,
                     scales.data(), deq_.data());
    applyDelta(m_.data(), deq_.data(), g.per);
    storeM(opt_, *store_, ids[s], g.sample_dims.data(), ndim, m_.data(), g.per, g.channels);
    pos += delta_bytes;
  }
  WireHeader h;
  h.method = Method::ACSGD;
  h.bits = static_cast<uint8_t>(q.bits);
  h.granularity = q.granularity;
  h.rounding = q.rounding;
  h.group_size = q.granularity == Granularity::GROUP ? static_cast<uint32_t>(q.group_size) : 0;
  h.dtype = dtype;
  h.scale_count = ns;
  h.shape = shape;
  return seal(std::move(h), std::move(payload));
}

DeltaReceiver::DeltaReceiver(DeltaCompressorOptions opt,
                             std::unique_ptr<ActivationBufferStore> store)
    : opt_(std::move(opt)), store_(std::move(store)) {
  opt_.validate();
  GEOPIPE_CHECK(store_ != nullptr, ConfigError, "DeltaReceiver needs a buffer store");
}

WireHeader DeltaReceiver::decode(const int64_t* ids, size_t num_ids, const CompressedMessage& msg,
                                 std::vector<float>& out) {
  WireHeader h = decodeHeader(msg.header.data(), msg.header.size());
  GEOPIPE_CHECK(h.method == Method::ACSGD, ProtocolError, "AC-SGD receiver got a ",
                toString(h.method), " message");
  checkPayload(h, msg.payload.data(), msg.payload.size());
  const QuantizerOptions q = h.quantizerOptions();
  GEOPIPE_CHECK(q.bits == opt_.quantizer.bits && q.granularity == opt_.quantizer.granularity &&
                    (q.granularity != Granularity::GROUP ||
                     q.group_size == opt_.quantizer.group_size),
                ProtocolError, "AC-SGD message quantiser (", int(q.bits), " bits, ",
                toString(q.granularity), ") differs from this receiver's options (",
                opt_.quantizer.bits, " bits, ", toString(opt_.quantizer.granularity),
                "): sender and receiver configs disagree");
  const Geometry g = geometryOf(h.shape);
  GEOPIPE_CHECK_EQ(num_ids, g.batch, ProtocolError, "sample id count does not match the ",
                   "message's batch dimension");
  const size_t ns = h.scale_count;
  const size_t delta_bytes = 4 * ns + packedBytes(g.per, q.bits);
  const size_t data_bytes = entryDataBytes(opt_, g.per, g.channels);
  const size_t ndim = g.sample_dims.size();
  const uint8_t* p = msg.payload.data();
  // Exact size from the kind bytes (the header bounded it already).
  size_t expect = g.batch;
  for (size_t s = 0; s < g.batch; ++s) {
    GEOPIPE_CHECK(p[s] <= 1, ProtocolError, "sample ", s, " has unknown kind byte ", int(p[s]));
    expect += p[s] == static_cast<uint8_t>(SampleKind::DELTA) ? delta_bytes : 2 * g.per;
  }
  GEOPIPE_CHECK_EQ(msg.payload.size(), expect, ProtocolError, "acsgd payload size does not ",
                   "match its per-sample kinds");
  out.resize(g.batch * g.per);
  m_.resize(g.per);
  deq_.resize(g.per);
  std::vector<float> scales(ns);
  size_t pos = g.batch;
  for (size_t s = 0; s < g.batch; ++s) {
    const uint8_t* in = p + pos;
    float* os = out.data() + s * g.per;
    if (p[s] == static_cast<uint8_t>(SampleKind::FULL_FP16)) {
      std::vector<Half> tmp(g.per);
      std::memcpy(tmp.data(), in, 2 * g.per);
      halfToFloat(tmp.data(), m_.data(), g.per);
      pos += 2 * g.per;
    } else {
      const uint8_t* data = entryData(opt_, *store_, ids[s], g.sample_dims.data(), ndim, data_bytes);
      GEOPIPE_CHECK(data != nullptr, ProtocolError, "AC-SGD delta for sample ", ids[s],
                    " but this receiver holds no buffer of that shape for it (lost message, ",
                    "or sender and receiver stores out of sync after a restore)");
      readScales(in, ns, scales.data());
      if (opt_.buffer_format == BufferFormat::FP16) {
        Half* mh = reinterpret_cast<Half*>(const_cast<uint8_t*>(data));
        acsgdFp16Apply(q, in + 4 * ns, packedBytes(g.per, q.bits), g.per, g.channels, scales.data(),
                       mh, os);
        pos += delta_bytes;
        continue;
      }
      loadM(opt_, data, g.per, g.channels, m_.data());
      dequantizePacked(q, in + 4 * ns, packedBytes(g.per, q.bits), g.per, g.channels,
                       scales.data(), deq_.data());
      applyDelta(m_.data(), deq_.data(), g.per);
      pos += delta_bytes;
    }
    storeM(opt_, *store_, ids[s], g.sample_dims.data(), ndim, m_.data(), g.per, g.channels);
    // The receiver computes on the stored m(xi) (after B's rounding).
    const uint8_t* data = entryData(opt_, *store_, ids[s], g.sample_dims.data(), ndim, data_bytes);
    loadM(opt_, data, g.per, g.channels, os);
  }
  return h;
}

}  // namespace geopipe::compression
