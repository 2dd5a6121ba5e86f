// Encoding and validating decoding of the compressed-tensor wire format.
#include "compression/wire_format.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "compression/bit_pack.h"
#include "compression/half.h"
#include "geopipe/error.h"
#include "src/common/byte_io.h"

#if defined(__SSE4_2__)
#include <nmmintrin.h>
#endif

namespace geopipe::compression {

namespace {

constexpr uint8_t kMagic[4] = {'G', 'P', 'C', 'T'};

// Eight bytes for the crc32 instruction (the loops keep it in bounds).
inline uint64_t load64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

#if !defined(__SSE4_2__)
struct Crc32cTable {
  uint32_t t[256];
  Crc32cTable() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
      t[i] = c;
    }
  }
};
#endif

#if defined(__SSE4_2__)
// Bytes per stream of the three-way CRC (a multiple of 8).
constexpr size_t kCrcBlock = 4096;

// The CRC register update of kCrcBlock zero bytes, Z(v), as a table: Z is
// linear over GF(2), so Z(v) = XOR of Z(byte k of v << 8k), and those come
// from Z of the 32 basis vectors, each run through the hardware instruction.
struct CrcZeroShift {
  uint32_t t[4][256];
  CrcZeroShift() {
    uint32_t basis[32];
    for (int j = 0; j < 32; ++j) {
      uint64_t c = 1u << j;
      for (size_t k = 0; k < kCrcBlock; k += 8) c = _mm_crc32_u64(c, 0);
      basis[j] = static_cast<uint32_t>(c);
    }
    for (int k = 0; k < 4; ++k) {
      for (uint32_t b = 0; b < 256; ++b) {
        uint32_t v = 0;
        for (int bit = 0; bit < 8; ++bit) {
          if (b & (1u << bit)) v ^= basis[8 * k + bit];
        }
        t[k][b] = v;
      }
    }
  }
  uint32_t apply(uint32_t v) const {
    return t[0][v & 0xFFu] ^ t[1][(v >> 8) & 0xFFu] ^ t[2][(v >> 16) & 0xFFu] ^ t[3][v >> 24];
  }
};

const CrcZeroShift& crcZeroShift() {
  static const CrcZeroShift z;
  return z;
}
#endif

bool isQuantized(Method m) { return m == Method::QUANTIZED || m == Method::ACSGD; }

}  // namespace

const char* toString(Method m) {
  switch (m) {
    case Method::RAW: return "raw";
    case Method::FP16: return "fp16";
    case Method::QUANTIZED: return "quantized";
    case Method::ACSGD: return "acsgd";
    case Method::TOPK: return "topk";
    case Method::POWERSGD_P: return "powersgd_p";
    case Method::POWERSGD_Q: return "powersgd_q";
    case Method::BF16: return "bf16";
  }
  return "?";
}

uint32_t crc32c(const uint8_t* data, size_t n, uint32_t crc) {
  crc = ~crc;
#if defined(__SSE4_2__)
  size_t i = 0;
  uint64_t c = crc;
  // Three independent streams over consecutive blocks hide the crc32
  // instruction's 3-cycle latency (one stream is latency-bound at 8 bytes per
  // 3 cycles), then combine: crc register after A||B||C =
  // Z(Z(R(c, A)) ^ R(0, B)) ^ R(0, C), Z = the register update of
  // kCrcBlock zero bytes (linear, so a 4 x 256 table).
  if (n >= 3 * kCrcBlock) {
    const CrcZeroShift& z = crcZeroShift();
    for (; i + 3 * kCrcBlock <= n; i += 3 * kCrcBlock) {
      uint64_t c1 = 0, c2 = 0;
      const uint8_t* p = data + i;
      for (size_t k = 0; k < kCrcBlock; k += 8) {
        c = _mm_crc32_u64(c, load64(p + k));
        c1 = _mm_crc32_u64(c1, load64(p + kCrcBlock + k));
        c2 = _mm_crc32_u64(c2, load64(p + 2 * kCrcBlock + k));
      }
      c = z.apply(z.apply(static_cast<uint32_t>(c)) ^ static_cast<uint32_t>(c1)) ^
          static_cast<uint32_t>(c2);
    }
  }
  for (; i + 8 <= n; i += 8) c = _mm_crc32_u64(c, load64(data + i));
  crc = static_cast<uint32_t>(c);
  for (; i < n; ++i) crc = _mm_crc32_u8(crc, data[i]);
#else
  static const Crc32cTable table;
  for (size_t i = 0; i < n; ++i) crc = table.t[(crc ^ data[i]) & 0xFFu] ^ (crc >> 8);
#endif
  return ~crc;
}

uint64_t WireHeader::numel() const {
  uint64_t n = 1;
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

uint64_t WireHeader::channels() const {
  return shape.empty() ? 1 : static_cast<uint64_t>(shape.back());
}

QuantizerOptions WireHeader::quantizerOptions() const {
  QuantizerOptions q;
  q.bits = bits;
  q.granularity = granularity;
  q.group_size = granularity == Granularity::GROUP ? group_size : 128;
  q.rounding = rounding;
  return q;
}

std::vector<uint8_t> encodeHeader(const WireHeader& h) {
  GEOPIPE_CHECK(h.shape.size() <= kMaxDims, ConfigError, "tensor has ", h.shape.size(),
                " dims; the wire format allows at most ", kMaxDims);
  common::ByteWriter w(kHeaderFixedBytes + 8 * h.shape.size());
  w.writeBytes(kMagic, 4);
  w.write<uint8_t>(kWireVersion);
  w.write<uint8_t>(static_cast<uint8_t>(h.method));
  w.write<uint8_t>(h.bits);
  w.write<uint8_t>(static_cast<uint8_t>(h.granularity));
  w.write<uint8_t>(static_cast<uint8_t>(h.rounding));
  w.write<uint8_t>(static_cast<uint8_t>(h.dtype));
  w.write<uint8_t>(static_cast<uint8_t>(h.shape.size()));
  w.write<uint8_t>(0);  // reserved
  w.write<uint32_t>(h.group_size);
  w.write<uint64_t>(h.scale_count);
  w.write<uint64_t>(h.aux);
  w.write<uint64_t>(h.payload_bytes);
  w.write<uint32_t>(h.payload_crc);
  w.writeArray(h.shape.data(), h.shape.size());
  w.write<uint32_t>(crc32c(w.bytes().data(), w.size()));
  return w.take();
}

WireHeader decodeHeader(const uint8_t* p, size_t n) {
  GEOPIPE_CHECK(n >= kHeaderFixedBytes, ProtocolError, "compressed-tensor header truncated: ",
                n, " bytes, need at least ", kHeaderFixedBytes);
  common::ByteReader r(p, n, "compressed-tensor header");
  GEOPIPE_CHECK(std::memcmp(r.bytes(4, "magic"), kMagic, 4) == 0, ProtocolError,
                "compressed-tensor header has bad magic (not a geopipe compressed tensor)");
  const uint8_t version = r.read<uint8_t>("version");
  GEOPIPE_CHECK(version == kWireVersion, ProtocolError, "compressed-tensor wire version ",
                int(version), " is not supported; this build speaks version ", int(kWireVersion));
  const uint8_t method = r.read<uint8_t>("method");
  const uint8_t bits = r.read<uint8_t>("bits");
  const uint8_t granularity = r.read<uint8_t>("granularity");
  const uint8_t rounding = r.read<uint8_t>("rounding");
  const uint8_t dtype = r.read<uint8_t>("dtype");
  const size_t ndim = r.read<uint8_t>("ndim");
  const uint8_t reserved = r.read<uint8_t>("reserved");
  GEOPIPE_CHECK(ndim <= kMaxDims, ProtocolError, "header ndim ", ndim, " exceeds ", kMaxDims);
  const size_t expect = kHeaderFixedBytes + 8 * ndim;
  GEOPIPE_CHECK(n >= expect, ProtocolError, "compressed-tensor header truncated: ", n,
                " bytes, ndim ", ndim, " needs ", expect);
  GEOPIPE_CHECK(n == expect, ProtocolError, "compressed-tensor header oversized: ", n,
                " bytes, ndim ", ndim, " needs ", expect);
  WireHeader h;
  h.group_size = r.read<uint32_t>("group_size");
  h.scale_count = r.read<uint64_t>("scale_count");
  h.aux = r.read<uint64_t>("aux");
  h.payload_bytes = r.read<uint64_t>("payload_bytes");
  h.payload_crc = r.read<uint32_t>("payload CRC");
  const std::vector<int64_t> dims = r.readVector<int64_t>(ndim, "shape");
  const uint32_t want_crc = r.read<uint32_t>("header CRC");
  r.expectEnd();
  GEOPIPE_CHECK(crc32c(p, expect - 4) == want_crc, ProtocolError,
                "compressed-tensor header corrupt (CRC-32C mismatch)");
  GEOPIPE_CHECK(reserved == 0, ProtocolError, "header reserved byte is ", int(reserved),
                ", must be 0");

  GEOPIPE_CHECK(method <= static_cast<uint8_t>(Method::BF16), ProtocolError,
                "unknown compression method ", int(method));
  h.method = static_cast<Method>(method);
  h.bits = bits;
  GEOPIPE_CHECK(granularity <= 2, ProtocolError, "unknown granularity ", int(granularity));
  h.granularity = static_cast<Granularity>(granularity);
  GEOPIPE_CHECK(rounding <= 1, ProtocolError, "unknown rounding ", int(rounding));
  h.rounding = static_cast<Rounding>(rounding);
  GEOPIPE_CHECK(dtype >= 1 && dtype <= 3, ProtocolError, "unknown dtype ", int(dtype));
  h.dtype = static_cast<DType>(dtype);
  uint64_t numel = 1;
  for (size_t k = 0; k < ndim; ++k) {
    const int64_t d = dims[k];
    GEOPIPE_CHECK(d >= 0 && static_cast<uint64_t>(d) <= kMaxNumel, ProtocolError,
                  "shape dim ", k, " is ", d, " (must be in 0..2^40)");
    h.shape.push_back(d);
    uint64_t next = 0;
    const bool overflow = __builtin_mul_overflow(numel, static_cast<uint64_t>(d), &next);
    numel = next;
    GEOPIPE_CHECK(!overflow && numel <= kMaxNumel, ProtocolError, "tensor of shape dims 0..", k,
                  " exceeds ", kMaxNumel, " elements");
  }

  // Per-method fields, and the payload size they imply.
  const uint64_t n_el = h.numel();
  if (isQuantized(h.method)) {
    GEOPIPE_CHECK(h.bits >= 1 && h.bits <= 8, ProtocolError, "bits ", int(h.bits),
                  " out of range 1..8 for method ", toString(h.method));
    GEOPIPE_CHECK(h.granularity != Granularity::GROUP || h.group_size >= 1, ProtocolError,
                  "group granularity with group_size 0");
    GEOPIPE_CHECK(h.granularity == Granularity::GROUP || h.group_size == 0, ProtocolError,
                  "group_size ", h.group_size, " set for granularity ", toString(h.granularity));
  } else {
    GEOPIPE_CHECK(h.bits == 0 && h.granularity == Granularity::TENSOR && h.group_size == 0 &&
                      h.scale_count == 0,
                  ProtocolError, "method ", toString(h.method),
                  " must have bits, granularity, group_size and scale_count all 0");
  }
  uint64_t expect_payload = 0;
  switch (h.method) {
    case Method::RAW:
    case Method::POWERSGD_P:
    case Method::POWERSGD_Q:
      if (h.method != Method::RAW) {
        GEOPIPE_CHECK(ndim == 2 && h.aux >= 1 && static_cast<uint64_t>(h.shape[1]) == h.aux,
                      ProtocolError, "PowerSGD factor must have shape [rows, rank] with rank = aux");
      } else {
        GEOPIPE_CHECK(h.aux == 0, ProtocolError, "aux must be 0 for method raw");
      }
      expect_payload = 4 * n_el;
      break;
    case Method::FP16:
    case Method::BF16:
      GEOPIPE_CHECK(h.aux == 0, ProtocolError, "aux must be 0 for method ", toString(h.method));
      expect_payload = 2 * n_el;
      break;
    case Method::QUANTIZED: {
      GEOPIPE_CHECK(h.aux == 0, ProtocolError, "aux must be 0 for method quantized");
      const uint64_t want = scaleCount(h.quantizerOptions(), n_el, h.channels());
      GEOPIPE_CHECK_EQ(h.scale_count, want, ProtocolError, "scale count does not match shape ",
                       "and granularity ", toString(h.granularity));
      expect_payload = 4 * want + packedBytes(n_el, h.bits);
      break;
    }
    case Method::ACSGD: {
      GEOPIPE_CHECK(ndim >= 2, ProtocolError, "acsgd message needs shape [batch, ...], got ndim ", ndim);
      GEOPIPE_CHECK(h.aux == 0, ProtocolError, "aux must be 0 for method acsgd");
      const uint64_t batch = static_cast<uint64_t>(h.shape[0]);
      const uint64_t per = batch == 0 ? 0 : n_el / batch;
      const uint64_t want = scaleCount(h.quantizerOptions(), per, h.channels());
      GEOPIPE_CHECK_EQ(h.scale_count, want, ProtocolError, "per-sample scale count does not ",
                       "match shape and granularity ", toString(h.granularity));
      const uint64_t full = 2 * per;
      const uint64_t delta = 4 * want + packedBytes(per, h.bits);
      const uint64_t lo = batch * (1 + std::min(full, delta));
      const uint64_t hi = batch * (1 + std::max(full, delta));
      GEOPIPE_CHECK(h.payload_bytes >= lo && h.payload_bytes <= hi, ProtocolError,
                    "acsgd payload_bytes ", h.payload_bytes, " outside the possible range [",
                    lo, ", ", hi, "] for this shape");
      expect_payload = h.payload_bytes;  // exact size checked with the kind bytes
      break;
    }
    case Method::TOPK:
      GEOPIPE_CHECK(h.aux <= n_el && n_el <= (uint64_t{1} << 32), ProtocolError, "topk k = ",
                    h.aux, " invalid for ", n_el, " elements (k <= numel <= 2^32)");
      expect_payload = 8 * h.aux;
      break;
  }
  GEOPIPE_CHECK_EQ(h.payload_bytes, expect_payload, ProtocolError, "header payload_bytes ",
                   "inconsistent with method ", toString(h.method), " and shape");
  return h;
}

void checkPayload(const WireHeader& h, const uint8_t* payload, size_t n) {
  GEOPIPE_CHECK(n >= h.payload_bytes, ProtocolError, toString(h.method), " payload truncated: ",
                n, " bytes, header says ", h.payload_bytes);
  GEOPIPE_CHECK(n <= h.payload_bytes, ProtocolError, toString(h.method), " payload oversized: ",
                n, " bytes, header says ", h.payload_bytes);
  GEOPIPE_CHECK(crc32c(payload, n) == h.payload_crc, ProtocolError, toString(h.method),
                " payload corrupt (CRC-32C mismatch over ", n, " bytes)");
}

CompressedMessage seal(WireHeader h, std::vector<uint8_t> payload) {
  h.payload_bytes = payload.size();
  h.payload_crc = crc32c(payload.data(), payload.size());
  CompressedMessage m;
  m.header = encodeHeader(h);
  m.payload = std::move(payload);
  return m;
}

void readScales(const uint8_t* p, size_t count, float* out) {
  if (count == 0) return;
  std::memcpy(out, p, 4 * count);
  for (size_t k = 0; k < count; ++k) {
    GEOPIPE_CHECK(std::isfinite(out[k]) && out[k] >= 0.0f, ProtocolError, "scale ", k,
                  " is ", out[k], " (must be finite and >= 0)");
  }
}

void TensorCodecOptions::validate() const {
  GEOPIPE_CHECK(method == Method::RAW || method == Method::FP16 || method == Method::BF16 ||
                    method == Method::QUANTIZED,
                ConfigError, "tensor codec supports raw, fp16, bf16 and quantized, not ",
                toString(method));
  if (method == Method::QUANTIZED) quantizer.validate();
}

CompressedMessage encodeTensor(const TensorCodecOptions& opt, const float* x,
                               const std::vector<int64_t>& shape, DType dtype,
                               uint64_t counter) {
  opt.validate();
  WireHeader h;
  h.method = opt.method;
  h.dtype = dtype;
  h.shape = shape;
  uint64_t n = 1;
  for (int64_t d : shape) {
    GEOPIPE_CHECK(d >= 0, ConfigError, "negative dimension ", d);
    n *= static_cast<uint64_t>(d);
  }
  GEOPIPE_CHECK(n <= kMaxNumel, ConfigError, "tensor too large for the wire format");
  std::vector<uint8_t> payload;
  switch (opt.method) {
    case Method::RAW:
      payload.resize(4 * n);
      if (n) std::memcpy(payload.data(), x, 4 * n);
      break;
    case Method::FP16:
      payload.resize(2 * n);
      if (n) floatToHalf(x, reinterpret_cast<Half*>(payload.data()), n);
      break;
    case Method::BF16: {
      std::vector<BFloat16> tmp(n);
      if (n) floatToBFloat16(x, tmp.data(), n);
      payload.resize(2 * n);
      if (n) std::memcpy(payload.data(), tmp.data(), 2 * n);
      break;
    }
    default: {
      const QuantizerOptions& q = opt.quantizer;
      h.bits = static_cast<uint8_t>(q.bits);
      h.granularity = q.granularity;
      h.rounding = q.rounding;
      h.group_size = q.granularity == Granularity::GROUP ? static_cast<uint32_t>(q.group_size) : 0;
      const size_t channels = h.channels();
      const size_t ns = scaleCount(q, n, channels);
      h.scale_count = ns;
      payload.resize(4 * ns + packedBytes(n, q.bits));
      std::vector<float> scales(ns);
      computeScales(q, x, n, channels, scales.data());
      if (ns) std::memcpy(payload.data(), scales.data(), 4 * ns);
      quantizePacked(q, x, n, channels, scales.data(), counter, payload.data() + 4 * ns);
      break;
    }
  }
  return seal(std::move(h), std::move(payload));
}

DecodedTensor decodeTensor(const uint8_t* header, size_t header_bytes, const uint8_t* payload,
                           size_t payload_bytes) {
  DecodedTensor out;
  out.header = decodeHeader(header, header_bytes);
  const WireHeader& h = out.header;
  GEOPIPE_CHECK(h.method == Method::RAW || h.method == Method::FP16 || h.method == Method::BF16 ||
                    h.method == Method::QUANTIZED,
                ProtocolError, "decodeTensor got a ", toString(h.method),
                " message; it decodes raw, fp16, bf16 and quantized");
  checkPayload(h, payload, payload_bytes);
  const size_t n = h.numel();
  out.values.resize(n);
  switch (h.method) {
    case Method::RAW:
      if (n) std::memcpy(out.values.data(), payload, 4 * n);
      break;
    case Method::FP16: {
      std::vector<Half> tmp(n);
      if (n) std::memcpy(tmp.data(), payload, 2 * n);
      halfToFloat(tmp.data(), out.values.data(), n);
      break;
    }
    case Method::BF16: {
      std::vector<BFloat16> tmp(n);
      if (n) std::memcpy(tmp.data(), payload, 2 * n);
      bfloat16ToFloat(tmp.data(), out.values.data(), n);
      break;
    }
    default: {
      const size_t ns = h.scale_count;
      std::vector<float> scales(ns);
      readScales(payload, ns, scales.data());
      dequantizePacked(h.quantizerOptions(), payload + 4 * ns, payload_bytes - 4 * ns, n,
                       h.channels(), scales.data(), out.values.data());
      break;
    }
  }
  return out;
}

DecodedTensor decodeTensor(const CompressedMessage& m) {
  return decodeTensor(m.header.data(), m.header.size(), m.payload.data(), m.payload.size());
}

}  // namespace geopipe::compression
