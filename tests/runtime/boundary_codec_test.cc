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
  // Random bytes never crash the decoder.
  std::mt19937 rng(1);
  for (int i = 0; i < 2000; ++i) {
    transport::Bytes b = bytes;
    b[rng() % b.size()] ^= static_cast<uint8_t>(1 + rng() % 255);
    try {
      dec->decode(b, 2, 0, {1, 2}, {2, 4}, out);
    } catch (const ProtocolError&) {
    }
  }
}

}  // namespace
