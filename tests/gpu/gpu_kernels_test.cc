// The CUDA compression kernels against the CPU path: the same scales, the
// same packed bytes and the same decoded floats, bit for bit, for every bit
// width, granularity and rounding, odd sizes included; and the AC-SGD step
// gives the wire bytes and fp16 buffer that the CPU DeltaSender gives.
// Skipped (with the reason) where no CUDA device answers.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "compression/bit_pack.h"
#include "compression/cuda/gpu_quantizer.h"
#include "compression/delta_compressor.h"
#include "compression/half.h"

namespace geopipe::compression {
namespace {

#define GEOPIPE_REQUIRE_GPU()                                \
  do {                                                       \
    std::string why;                                         \
    if (!gpu::available(&why)) GTEST_SKIP() << why;          \
  } while (0)

std::vector<float> randomVector(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

struct Case {
  int bits;
  Granularity granularity;
  Rounding rounding;
  size_t rows, channels;
};

std::vector<Case> cases() {
  std::vector<Case> out;
  for (int bits = 1; bits <= 8; ++bits) {
    for (auto g : {Granularity::TENSOR, Granularity::CHANNEL, Granularity::GROUP}) {
      for (auto r : {Rounding::NEAREST, Rounding::STOCHASTIC}) {
        out.push_back({bits, g, r, 37, 129});   // odd: n % 8 != 0, unaligned rows
        out.push_back({bits, g, r, 64, 1024});  // aligned, the vector path
      }
    }
  }
  return out;
}

QuantizerOptions optionsOf(const Case& c) {
  QuantizerOptions q;
  q.bits = c.bits;
  q.granularity = c.granularity;
  q.rounding = c.rounding;
  q.group_size = 96;
  q.seed = 77;
  return q;
}

TEST(GpuKernels, QuantizeAndDequantizeMatchTheCpuBitForBit) {
  GEOPIPE_REQUIRE_GPU();
  uint32_t seed = 1;
  for (const Case& c : cases()) {
    SCOPED_TRACE(testing::Message() << "bits " << c.bits << " " << toString(c.granularity) << " "
                                    << toString(c.rounding) << " " << c.rows << "x" << c.channels);
    const QuantizerOptions q = optionsOf(c);
    const size_t n = c.rows * c.channels;
    const auto x = randomVector(n, seed++);
    const size_t ns = scaleCount(q, n, c.channels), pb = packedBytes(n, c.bits);
    std::vector<float> cpu_scales(ns);
    computeScales(q, x.data(), n, c.channels, cpu_scales.data());
    std::vector<uint8_t> cpu_packed(pb);
    quantizePacked(q, x.data(), n, c.channels, cpu_scales.data(), 5, cpu_packed.data());
    std::vector<float> cpu_out(n);
    dequantizePacked(q, cpu_packed.data(), pb, n, c.channels, cpu_scales.data(), cpu_out.data());

    gpu::DeviceBuffer dx(4 * n), ds(4 * ns), dp(pb), dout(4 * n);
    gpu::copyToDevice(dx.data(), x.data(), 4 * n);
    gpu::computeScales(q, dx.as<float>(), n, c.channels, ds.as<float>());
    gpu::quantizePacked(q, dx.as<float>(), n, c.channels, ds.as<float>(), 5, dp.as<uint8_t>());
    gpu::dequantizePacked(q, dp.as<uint8_t>(), n, c.channels, ds.as<float>(), dout.as<float>());
    gpu::synchronize();
    gpu::checkLastError("kernels");
    std::vector<float> scales(ns), out(n, std::nanf(""));
    std::vector<uint8_t> packed(pb, 0xAB);
    gpu::copyToHost(scales.data(), ds.data(), 4 * ns);
    gpu::copyToHost(packed.data(), dp.data(), pb);
    gpu::copyToHost(out.data(), dout.data(), 4 * n);
    ASSERT_EQ(0, std::memcmp(scales.data(), cpu_scales.data(), 4 * ns)) << "scales differ";
    ASSERT_EQ(packed, cpu_packed) << "packed codes differ";
    ASSERT_EQ(0, std::memcmp(out.data(), cpu_out.data(), 4 * n)) << "decoded values differ";
  }
}

TEST(GpuKernels, NonFiniteInputIsFlaggedInTheScales) {
  GEOPIPE_REQUIRE_GPU();
  QuantizerOptions q;
  auto x = randomVector(8 * 64, 3);
  x[77] = std::numeric_limits<float>::infinity();
  gpu::DeviceBuffer dx(4 * x.size()), ds(4 * 64);
  gpu::copyToDevice(dx.data(), x.data(), 4 * x.size());
  gpu::computeScales(q, dx.as<float>(), x.size(), 64, ds.as<float>());
  std::vector<float> scales(64);
  gpu::copyToHost(scales.data(), ds.data(), 4 * 64);
  EXPECT_FALSE(gpu::scalesFinite(scales.data(), scales.size()));
  EXPECT_TRUE(std::isinf(scales[77 % 64]));
}

// The GPU AC-SGD step reproduces DeltaSender's second visit: the bytes after
// the sample-kind byte are (scales, codes), and the sender's fp16 buffer.
TEST(GpuKernels, AcsgdStepMatchesTheCpuSender) {
  GEOPIPE_REQUIRE_GPU();
  for (int bits : {2, 3, 4, 8}) {
    for (auto g : {Granularity::CHANNEL, Granularity::TENSOR, Granularity::GROUP}) {
      for (auto r : {Rounding::NEAREST, Rounding::STOCHASTIC}) {
        SCOPED_TRACE(testing::Message() << "bits " << bits << " " << toString(g) << " "
                                        << toString(r));
        DeltaCompressorOptions opt;
        opt.quantizer.bits = bits;
        opt.quantizer.granularity = g;
        opt.quantizer.rounding = r;
        opt.quantizer.group_size = 80;
        opt.quantizer.seed = 9;
        const std::vector<int64_t> shape{1, 48, 136};
        const size_t n = 48 * 136, channels = 136;
        DeltaSender sender(opt, makeBufferStore(BufferStoreOptions{}));
        const int64_t id = 42;
        const auto a0 = randomVector(n, 100 + bits);
        auto a1 = a0;
        const auto drift = randomVector(n, 200 + bits, 0.05f);
        for (size_t i = 0; i < n; ++i) a1[i] += drift[i];
        sender.encode(&id, a0.data(), shape, 0);  // first visit: fp16(a0)
        std::vector<float> m0;
        ASSERT_TRUE(readBuffer(opt, sender.store(), id, {48, 136}, m0));
        const uint64_t counter = 3;
        const CompressedMessage msg = sender.encode(&id, a1.data(), shape, counter);
        std::vector<float> m1;
        ASSERT_TRUE(readBuffer(opt, sender.store(), id, {48, 136}, m1));

        // GPU: start from the same fp16 buffer and take the same step.
        const size_t ns = scaleCount(opt.quantizer, n, channels), pb = packedBytes(n, bits);
        std::vector<Half> mh(n);
        floatToHalf(m0.data(), mh.data(), n);
        gpu::DeviceBuffer da(4 * n), dm(2 * n), ds(4 * ns), dp(pb);
        gpu::copyToDevice(da.data(), a1.data(), 4 * n);
        gpu::copyToDevice(dm.data(), mh.data(), 2 * n);
        // DeltaSender's stream for sample s of message `counter`.
        gpu::acsgdStepFp16(opt.quantizer, da.as<float>(), dm.as<uint16_t>(), n, channels,
                           counter * 1315423911u + 0, ds.as<float>(), dp.as<uint8_t>());
        gpu::synchronize();
        std::vector<uint8_t> wire(4 * ns + pb);
        gpu::copyToHost(wire.data(), ds.data(), 4 * ns);
        gpu::copyToHost(wire.data() + 4 * ns, dp.data(), pb);
        ASSERT_EQ(msg.payload.size(), 1 + wire.size());
        EXPECT_EQ(0, std::memcmp(msg.payload.data() + 1, wire.data(), wire.size()))
            << "wire bytes differ";
        std::vector<Half> mh1(n);
        gpu::copyToHost(mh1.data(), dm.data(), 2 * n);
        std::vector<float> gm1(n);
        halfToFloat(mh1.data(), gm1.data(), n);
        EXPECT_EQ(0, std::memcmp(gm1.data(), m1.data(), 4 * n)) << "buffers differ";
      }
    }
  }
}

TEST(GpuKernels, AcsgdStepLeavesTheBufferAloneOnNonFiniteInput) {
  GEOPIPE_REQUIRE_GPU();
  QuantizerOptions q;
  const size_t n = 16 * 32;
  auto a = randomVector(n, 5);
  a[3] = std::nanf("");
  std::vector<Half> m(n);
  const auto m0 = randomVector(n, 6);
  floatToHalf(m0.data(), m.data(), n);
  gpu::DeviceBuffer da(4 * n), dm(2 * n), ds(4 * 32), dp(packedBytes(n, 4));
  gpu::copyToDevice(da.data(), a.data(), 4 * n);
  gpu::copyToDevice(dm.data(), m.data(), 2 * n);
  gpu::acsgdStepFp16(q, da.as<float>(), dm.as<uint16_t>(), n, 32, 0, ds.as<float>(),
                     dp.as<uint8_t>());
  std::vector<Half> after(n);
  std::vector<float> scales(32);
  gpu::copyToHost(after.data(), dm.data(), 2 * n);
  gpu::copyToHost(scales.data(), ds.data(), 4 * 32);
  EXPECT_FALSE(gpu::scalesFinite(scales.data(), 32));
  EXPECT_EQ(0, std::memcmp(after.data(), m.data(), 2 * n));
}

}  // namespace
}  // namespace geopipe::compression
