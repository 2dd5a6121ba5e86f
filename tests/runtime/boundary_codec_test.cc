// Pipeline-boundary frames: round trips, and every way a peer can get the
// frame wrong fails with a ProtocolError that says what.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "geopipe/error.h"
#include "src/runtime/boundary_codec.h"

using namespace geopipe;
using namespace geopipe::runtime;

namespace {

std::vector<float> ramp(size_t n) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = std::sin(0.1f * i);
  return v;
}

TEST(BoundaryCodec, RawRoundTripIsExact) {
  ActivationCompressionSpec spec;  // none
  auto enc = BoundaryEncoder::forActivations(spec, 1, "t");
  auto dec = BoundaryDecoder::forActivations(spec, 1, "t");
  auto x = ramp(2 * 3 * 4);
  auto bytes = enc->encode(5, 1, 4, {10, 11}, x.data(), {2, 3, 4});
  std::vector<float> out;
  dec->decode(bytes, 5, 1, {10, 11}, {2, 3, 4}, out);
  EXPECT_EQ(out, x);
  EXPECT_EQ(enc->stats().raw_bytes, 96u);
}

// AC-SGD through the job spec's fields, for each buffer format a job can
// name: the receiver tracks the activations, both sides' stores hold the same
// bytes after every message, and compression.activations.buffer_format /
// buffer_bits reach the stores (quantized entries are marked so and smaller).
struct BufferCase {
  std::string format;
  int bits;
  uint64_t entry_bytes;  // one [64, 32] sample: 24 B header + data
  double tolerance;      // of the receiver's output
};

void PrintTo(const BufferCase& c, std::ostream* os) {
  *os << c.format << " " << c.bits << " bits";
}

class AcsgdBoundary : public ::testing::TestWithParam<BufferCase> {};

TEST_P(AcsgdBoundary, KeepsBothSidesInStep) {
  const BufferCase c = GetParam();
  ActivationCompressionSpec spec;
  spec.method = "acsgd";
  spec.bits = 2;
  spec.buffer_format = c.format;
  spec.buffer_bits = c.bits;
  auto enc = BoundaryEncoder::forActivations(spec, 1, "t");
  auto dec = BoundaryDecoder::forActivations(spec, 1, "t");
  std::vector<float> out;
  const std::vector<int64_t> shape = {2, 64, 32};
  auto x = ramp(2 * 64 * 32);
  size_t first_size = 0;
  auto& tx = enc->deltaSender()->store();
  auto& rx = dec->deltaReceiver()->store();
  for (int epoch = 0; epoch < 4; ++epoch) {
    for (auto& v : x) v += 0.01f;
    auto bytes = enc->encode(epoch, 0, 1, {3, 4}, x.data(), shape);
    if (epoch == 0) first_size = bytes.size();
    dec->decode(bytes, epoch, 0, {3, 4}, shape, out);
    for (size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(out[i], x[i], c.tolerance) << i;
    if (epoch > 0) {
      EXPECT_LT(bytes.size() * 4, first_size);  // 2-bit deltas vs fp16
    }
    for (int64_t id : {3, 4}) {
      const auto a = tx.find(id), b = rx.find(id);
      ASSERT_NE(a.data, nullptr);
      ASSERT_EQ(a.size, b.size);
      ASSERT_EQ(std::memcmp(a.data, b.data, a.size), 0) << "epoch " << epoch << " sample " << id;
      EXPECT_EQ(a.size, c.entry_bytes);
      EXPECT_EQ(a.data[0], c.format == "quantized" ? 1 : 0);  // the entry's BufferFormat
      if (c.format == "quantized") {
        EXPECT_EQ(a.data[1], c.bits);
      }
    }
  }
  EXPECT_EQ(tx.bytesUsed(), 2 * c.entry_bytes);
  EXPECT_EQ(rx.bytesUsed(), 2 * c.entry_bytes);
}

INSTANTIATE_TEST_SUITE_P(
    Formats, AcsgdBoundary,
    ::testing::Values(BufferCase{"fp16", 8, 24 + 2 * 64 * 32, 0.05},
                      // 32 fp32 scales + one byte (8 bits) or half (4) per element
                      BufferCase{"quantized", 8, 24 + 4 * 32 + 64 * 32, 0.05},
                      BufferCase{"quantized", 4, 24 + 4 * 32 + 64 * 32 / 2, 0.2}),
    [](const auto& info) { return info.param.format + std::to_string(info.param.bits); });

TEST(BoundaryCodec, MismatchesAreProtocolErrors) {
  ActivationCompressionSpec spec;
  auto enc = BoundaryEncoder::forActivations(spec, 1, "t");
  auto dec = BoundaryDecoder::forActivations(spec, 1, "t");
  auto x = ramp(8);
  auto bytes = enc->encode(2, 0, 1, {1, 2}, x.data(), {2, 4});
  std::vector<float> out;
  auto expectError = [&](const transport::Bytes& b, int64_t step, int m,
                         std::vector<int64_t> ids, std::vector<int64_t> shape,
                         const std::string& want) {
    try {
      dec->decode(b, step, m, ids, shape, out);
      ADD_FAILURE() << "accepted; wanted: " << want;
    } catch (const ProtocolError& e) {
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    }
  };
  expectError(bytes, 3, 0, {1, 2}, {2, 4}, "expected the activation of step 3");
  expectError(bytes, 2, 0, {1, 9}, {2, 4}, "disagree on the data order");
  expectError(bytes, 2, 0, {1, 2}, {2, 5}, "the model declares");
  transport::Bytes garbage(40, 0x5A);
  expectError(garbage, 2, 0, {1, 2}, {2, 4}, "not a geopipe pipeline frame");
  transport::Bytes truncated(bytes.begin(), bytes.begin() + 20);
  expectError(truncated, 2, 0, {1, 2}, {2, 4}, "truncated");
  // A short frame names the field it stopped in and where.
  expectError(truncated, 2, 0, {1, 2}, {2, 4},
              "pipeline frame truncated reading sample count at offset 20");
  expectError(transport::Bytes(bytes.begin(), bytes.begin() + 30), 2, 0, {1, 2}, {2, 4},
              "pipeline frame truncated reading sample ids at offset 24");
  expectError(transport::Bytes(bytes.begin(), bytes.begin() + 44), 2, 0, {1, 2}, {2, 4},
              "pipeline frame truncated reading compressed-tensor header at offset 44");
}

// A frame of each codec, corrupted every way a peer or a link can: every
// byte changed (each of the frame's fields, the compressed header and the
// payload, both CRC-checked), every truncation, trailing bytes, and each
// field set to a value that is well-formed but wrong. Every one is refused
// with a ProtocolError; none decodes to something.
struct FrameCase {
  std::string name;
  std::unique_ptr<BoundaryEncoder> enc;
  std::unique_ptr<BoundaryDecoder> dec;
};

std::vector<FrameCase> frameCases() {
  std::vector<FrameCase> cases;
  ActivationCompressionSpec none, fp16;
  fp16.method = "fp16";
  cases.push_back({"activations none", BoundaryEncoder::forActivations(none, 1, "t"),
                   BoundaryDecoder::forActivations(none, 1, "t")});
  cases.push_back({"activations fp16", BoundaryEncoder::forActivations(fp16, 1, "t"),
                   BoundaryDecoder::forActivations(fp16, 1, "t")});
  BackwardCompressionSpec quantize;
  quantize.method = "quantize";
  quantize.bits = 8;
  cases.push_back({"gradients quantize 8", BoundaryEncoder::forGradients(quantize, 1),
                   BoundaryDecoder::forGradients(quantize, 1)});
  return cases;
}

template <typename T>
transport::Bytes withField(transport::Bytes b, size_t offset, T value) {
  std::memcpy(b.data() + offset, &value, sizeof(T));
  return b;
}

TEST(BoundaryCodec, EveryCorruptedFrameIsRejected) {
  const std::vector<int64_t> ids = {7, 9}, shape = {2, 4};
  const auto x = ramp(8);
  for (FrameCase& c : frameCases()) {
    SCOPED_TRACE(c.name);
    const transport::Bytes bytes = c.enc->encode(2, 1, 4, ids, x.data(), shape);
    std::vector<float> out;
    auto decode = [&](const transport::Bytes& b) { c.dec->decode(b, 2, 1, ids, shape, out); };
    ASSERT_NO_THROW(decode(bytes));
    auto expectRefused = [&](const transport::Bytes& b, const std::string& want,
                             const std::string& what) {
      try {
        decode(b);
        ADD_FAILURE() << what << ": accepted";
      } catch (const ProtocolError& e) {
        EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << what << ": " << e.what();
      }
    };
    // Layout (boundary_codec.h): magic 0, version 4, direction 5, reserved 6,
    // step 8, micro-batch 16, sample count 20, ids 24, header size 24 + 8n.
    const size_t header_size_at = 24 + 8 * ids.size();
    uint32_t header_bytes = 0;
    std::memcpy(&header_bytes, bytes.data() + header_size_at, 4);
    expectRefused(withField<uint32_t>(bytes, 0, 0x4D425048), "not a geopipe pipeline frame",
                  "magic");
    expectRefused(withField<uint8_t>(bytes, 4, 2), "pipeline frame version 2", "version");
    expectRefused(withField<uint8_t>(bytes, 5, bytes[5] ^ 1), "expected the activation",
                  "direction");
    expectRefused(withField<uint8_t>(bytes, 5, 2), "direction 2", "direction 2");
    expectRefused(withField<uint16_t>(bytes, 6, 1), "reserved", "reserved");
    expectRefused(withField<int64_t>(bytes, 8, 3), "step 3", "step");
    expectRefused(withField<int32_t>(bytes, 16, 0), "micro-batch 0", "micro-batch");
    expectRefused(withField<int64_t>(bytes, 32, 8), "carries samples [7,8]", "sample id");
    expectRefused(withField<uint32_t>(bytes, 20, 1), "carries samples [7]", "fewer samples");
    expectRefused(withField<uint32_t>(bytes, 20, 3), "", "more samples");
    expectRefused(withField<uint32_t>(bytes, 20, 1u << 30), "claims", "sample count");
    expectRefused(withField<uint32_t>(bytes, header_size_at, header_bytes + 1), "",
                  "header size + 1");
    expectRefused(withField<uint32_t>(bytes, header_size_at, header_bytes - 1), "",
                  "header size - 1");
    expectRefused(withField<uint32_t>(bytes, header_size_at, 0xFFFFFFFF), "truncated",
                  "header size past the end");
    transport::Bytes longer = bytes;
    longer.push_back(0);
    expectRefused(longer, "", "a trailing byte");
    for (size_t n = 0; n < bytes.size(); ++n)
      expectRefused(transport::Bytes(bytes.begin(), bytes.begin() + n), "",
                    "truncated to " + std::to_string(n) + " bytes");
    for (size_t i = 0; i < bytes.size(); ++i) {
      for (uint8_t flip : {0x01, 0x10, 0x80, 0xFF}) {
        transport::Bytes b = bytes;
        b[i] ^= flip;
        expectRefused(b, "", "byte " + std::to_string(i) + " ^ " + std::to_string(flip));
      }
    }
  }
}

}  // namespace
