// Wire format tests: round trips, and every way a header or payload can be
// wrong (random bytes, truncation, trailing bytes, bad fields, bit flips).
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "compression/wire_format.h"
#include "geopipe/error.h"

namespace geopipe::compression {
namespace {

std::vector<float> randn(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0, 1);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Re-signs a header after a test edits a field, so the field check (not the
// CRC) is what fires.
void resign(std::vector<uint8_t>& h) {
  const uint32_t c = crc32c(h.data(), h.size() - 4);
  std::memcpy(h.data() + h.size() - 4, &c, 4);
}

template <typename Fn>
std::string protocolErrorOf(Fn&& fn) {
  try {
    fn();
  } catch (const ProtocolError& e) {
    return e.what();
  }
  return "<no ProtocolError>";
}

TEST(WireFormat, RoundTripEveryMethodAndGranularity) {
  const std::vector<int64_t> shape = {3, 5, 17};
  auto x = randn(3 * 5 * 17, 1);
  for (Method m : {Method::RAW, Method::FP16, Method::QUANTIZED}) {
    for (Granularity g : {Granularity::TENSOR, Granularity::CHANNEL, Granularity::GROUP}) {
      TensorCodecOptions o;
      o.method = m;
      o.quantizer.bits = 3;
      o.quantizer.granularity = g;
      o.quantizer.group_size = 10;
      auto msg = encodeTensor(o, x.data(), shape);
      auto d = decodeTensor(msg);
      EXPECT_EQ(d.header.shape, shape);
      EXPECT_EQ(d.header.method, m);
      ASSERT_EQ(d.values.size(), x.size());
      for (size_t i = 0; i < x.size(); ++i) {
        const float tol = m == Method::RAW ? 0 : m == Method::FP16 ? 2e-3f : 0.7f;
        ASSERT_NEAR(d.values[i], x[i], tol);
      }
      if (m == Method::QUANTIZED) {
        EXPECT_EQ(msg.header.size(), kHeaderFixedBytes + 8 * 3);
      }
    }
  }
}

TEST(WireFormat, QuantizedPayloadSizeIsDense) {
  TensorCodecOptions o;
  o.quantizer.bits = 2;  // per channel
  auto x = randn(4 * 512 * 64, 2);
  auto msg = encodeTensor(o, x.data(), {4, 512, 64});
  EXPECT_EQ(msg.payload.size(), 64 * 4 + 4 * 512 * 64 * 2 / 8);
}

TEST(WireFormat, EmptyAndScalarTensors) {
  TensorCodecOptions o;
  float v = 2.5f;
  auto scalar = decodeTensor(encodeTensor(o, &v, {}));
  ASSERT_EQ(scalar.values.size(), 1u);
  EXPECT_NEAR(scalar.values[0], 2.5f, 1e-6f);
  auto empty = decodeTensor(encodeTensor(o, nullptr, {0, 16}));
  EXPECT_TRUE(empty.values.empty());
}

TEST(WireFormat, RandomBytesNeverDecode) {
  std::mt19937 rng(123);
  for (int t = 0; t < 20000; ++t) {
    const size_t hn = rng() % 140, pn = rng() % 300;
    std::vector<uint8_t> h(hn), p(pn);
    for (auto& b : h) b = static_cast<uint8_t>(rng());
    for (auto& b : p) b = static_cast<uint8_t>(rng());
    if (t % 2 && hn >= 4) std::memcpy(h.data(), "GPCT", 4);  // get past the magic
    if (t % 4 == 1 && hn >= 5) h[4] = 1;
    EXPECT_THROW(decodeTensor(h.data(), h.size(), p.data(), p.size()), ProtocolError);
  }
}

TEST(WireFormat, MutatedMessagesWithValidCrcNeverCrash) {
  // Start from valid messages, flip random header and payload bytes, then fix
  // both CRCs so the field validation (not the checksum) must catch it: every
  // outcome is a clean decode or a ProtocolError, never an out-of-bounds read
  // (run under GEOPIPE_SANITIZE=ON to check).
  std::mt19937 rng(9);
  int decoded = 0, rejected = 0;
  for (int t = 0; t < 20000; ++t) {
    const int64_t a = rng() % 5, b = 1 + rng() % 9;
    auto x = randn(static_cast<size_t>(a * b), t);
    TensorCodecOptions o;
    o.method = static_cast<Method>(rng() % 3);
    o.quantizer.bits = 1 + rng() % 8;
    o.quantizer.granularity = static_cast<Granularity>(rng() % 3);
    o.quantizer.group_size = 1 + rng() % 7;
    auto msg = encodeTensor(o, x.data(), {a, b});
    const int flips = 1 + rng() % 3;
    for (int f = 0; f < flips; ++f) {
      if (rng() % 2 || msg.payload.empty()) {
        const size_t at = 4 + rng() % (msg.header.size() - 8);
        msg.header[at] = static_cast<uint8_t>(rng() % 3 ? rng() % 4 : rng());
      } else {
        msg.payload[rng() % msg.payload.size()] = static_cast<uint8_t>(rng());
      }
    }
    if (rng() % 4 == 0) msg.payload.resize(rng() % (msg.payload.size() + 8));
    if (msg.header.size() >= kHeaderFixedBytes && msg.header[10] <= kMaxDims &&
        msg.header.size() == kHeaderFixedBytes + 8 * msg.header[10]) {
      const uint32_t pc = crc32c(msg.payload.data(), msg.payload.size());
      std::memcpy(msg.header.data() + 40, &pc, 4);
      resign(msg.header);
    }
    try {
      auto d = decodeTensor(msg);
      ++decoded;
      ASSERT_EQ(d.values.size(), d.header.numel());
    } catch (const ProtocolError&) {
      ++rejected;
    }
  }
  EXPECT_GT(decoded, 100);
  EXPECT_GT(rejected, 100);
}

class WireFormatFailure : public ::testing::Test {
 protected:
  void SetUp() override {
    x_ = randn(6 * 8, 3);
    TensorCodecOptions o;
    o.quantizer.bits = 4;
    msg_ = encodeTensor(o, x_.data(), {6, 8});
  }
  std::string decodeError() {
    return protocolErrorOf([&] { decodeTensor(msg_); });
  }
  std::vector<float> x_;
  CompressedMessage msg_;
};

TEST_F(WireFormatFailure, TruncatedPayload) {
  msg_.payload.pop_back();
  EXPECT_NE(decodeError().find("truncated"), std::string::npos) << decodeError();
}

TEST_F(WireFormatFailure, OversizedPayload) {
  msg_.payload.push_back(0);
  EXPECT_NE(decodeError().find("oversized"), std::string::npos) << decodeError();
}

TEST_F(WireFormatFailure, CorruptPayload) {
  msg_.payload[40] ^= 0x10;
  EXPECT_NE(decodeError().find("corrupt"), std::string::npos) << decodeError();
}

TEST_F(WireFormatFailure, TruncatedAndOversizedHeader) {
  auto full = msg_.header;
  msg_.header.resize(20);
  EXPECT_NE(decodeError().find("header truncated"), std::string::npos) << decodeError();
  msg_.header = full;
  msg_.header.pop_back();
  EXPECT_NE(decodeError().find("header truncated"), std::string::npos) << decodeError();
  msg_.header = full;
  msg_.header.push_back(0);
  EXPECT_NE(decodeError().find("header oversized"), std::string::npos) << decodeError();
}

TEST_F(WireFormatFailure, CorruptHeader) {
  msg_.header[20] ^= 1;
  EXPECT_NE(decodeError().find("header corrupt"), std::string::npos) << decodeError();
}

TEST_F(WireFormatFailure, BadMagicAndVersion) {
  msg_.header[0] = 'X';
  EXPECT_NE(decodeError().find("magic"), std::string::npos);
  msg_.header[0] = 'G';
  msg_.header[4] = 2;
  resign(msg_.header);
  EXPECT_NE(decodeError().find("version 2"), std::string::npos) << decodeError();
}

TEST_F(WireFormatFailure, BadBits) {
  for (uint8_t b : {0, 9, 255}) {
    msg_.header[6] = b;
    resign(msg_.header);
    EXPECT_NE(decodeError().find("bits"), std::string::npos) << decodeError();
  }
}

TEST_F(WireFormatFailure, ShapeMismatch) {
  // Claim [6, 9]: the payload no longer matches the shape.
  const int64_t d = 9;
  std::memcpy(msg_.header.data() + 44 + 8, &d, 8);
  resign(msg_.header);
  const auto e = decodeError();
  EXPECT_NE(e.find("scale count"), std::string::npos) << e;
  const int64_t neg = -3;
  std::memcpy(msg_.header.data() + 44, &neg, 8);
  resign(msg_.header);
  EXPECT_NE(decodeError().find("shape dim 0"), std::string::npos) << decodeError();
}

TEST_F(WireFormatFailure, HugeShapeOverflow) {
  const int64_t d = int64_t{1} << 40;
  std::memcpy(msg_.header.data() + 44, &d, 8);
  std::memcpy(msg_.header.data() + 52, &d, 8);
  resign(msg_.header);
  EXPECT_NE(decodeError().find("exceeds"), std::string::npos) << decodeError();
}

TEST_F(WireFormatFailure, BadScaleValue) {
  const float nan = NAN;
  std::memcpy(msg_.payload.data(), &nan, 4);
  WireHeader h = decodeHeader(msg_.header.data(), msg_.header.size());
  h.payload_crc = crc32c(msg_.payload.data(), msg_.payload.size());
  msg_.header = encodeHeader(h);
  EXPECT_NE(decodeError().find("scale 0"), std::string::npos) << decodeError();
  const float neg = -1.0f;
  std::memcpy(msg_.payload.data(), &neg, 4);
  h.payload_crc = crc32c(msg_.payload.data(), msg_.payload.size());
  msg_.header = encodeHeader(h);
  EXPECT_NE(decodeError().find("scale 0"), std::string::npos) << decodeError();
}

TEST_F(WireFormatFailure, UnknownMethodAndDtype) {
  auto full = msg_.header;
  msg_.header[5] = 42;
  resign(msg_.header);
  EXPECT_NE(decodeError().find("method"), std::string::npos) << decodeError();
  msg_.header = full;
  msg_.header[9] = 0;
  resign(msg_.header);
  EXPECT_NE(decodeError().find("dtype"), std::string::npos) << decodeError();
}

TEST(WireFormat, Crc32cKnownValue) {
  const char* s = "123456789";
  EXPECT_EQ(crc32c(reinterpret_cast<const uint8_t*>(s), 9), 0xE3069283u);
}

// The multi-stream path (inputs of 12 KiB and more) against the bitwise
// definition, at unaligned starts, and chained through the crc argument.
TEST(WireFormat, Crc32cMatchesBitwiseDefinitionOnLongUnalignedInputs) {
  auto bitwise = [](const uint8_t* p, size_t n, uint32_t crc) {
    crc = ~crc;
    for (size_t i = 0; i < n; ++i) {
      crc ^= p[i];
      for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
    }
    return ~crc;
  };
  std::mt19937 rng(5);
  std::vector<uint8_t> buf(40003);
  for (auto& b : buf) b = static_cast<uint8_t>(rng());
  for (size_t n : {size_t{0}, size_t{7}, size_t{12287}, size_t{12288}, size_t{12289},
                   size_t{2 * 12288 + 13}, size_t{40000}}) {
    for (size_t off : {0, 1, 3}) {
      EXPECT_EQ(crc32c(buf.data() + off, n), bitwise(buf.data() + off, n, 0))
          << "n " << n << " offset " << off;
    }
  }
  const uint32_t head = crc32c(buf.data(), 5000);
  EXPECT_EQ(crc32c(buf.data() + 5000, 30000, head), crc32c(buf.data(), 35000));
}

}  // namespace
}  // namespace geopipe::compression
