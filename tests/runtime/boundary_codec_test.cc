// Pipeline-boundary frames: round trips, and every way a peer can get the
// frame wrong fails with a ProtocolError that says what.
#include <gtest/gtest.h>

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

TEST(BoundaryCodec, AcsgdKeepsBothSidesInStep) {
  ActivationCompressionSpec spec;
  spec.method = "acsgd";
  spec.bits = 2;
  auto enc = BoundaryEncoder::forActivations(spec, 1, "t");
  auto dec = BoundaryDecoder::forActivations(spec, 1, "t");
  std::vector<float> out;
  const std::vector<int64_t> shape = {2, 64, 32};
  auto x = ramp(2 * 64 * 32);
  size_t first_size = 0;
  for (int epoch = 0; epoch < 3; ++epoch) {
    for (auto& v : x) v += 0.01f;
    auto bytes = enc->encode(epoch, 0, 1, {3, 4}, x.data(), shape);
    if (epoch == 0) first_size = bytes.size();
    dec->decode(bytes, epoch, 0, {3, 4}, shape, out);
    for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(out[i], x[i], 0.05);
    if (epoch > 0) EXPECT_LT(bytes.size() * 4, first_size);  // 2-bit deltas vs fp16
  }
}

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
