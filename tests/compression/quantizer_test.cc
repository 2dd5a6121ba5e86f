// Tests for the quantizer, bit packing and fp16 conversion: error bounds,
// unbiasedness, round trips, edge cases, against scalar references.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "compression/bit_pack.h"
#include "compression/half.h"
#include "compression/quantizer.h"
#include "geopipe/error.h"

namespace geopipe::compression {
namespace {

std::vector<float> randomVector(size_t n, uint32_t seed, float spread = 3.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, spread);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

TEST(BitPack, RoundTripAllBitsOddSizes) {
  std::mt19937 rng(7);
  for (int bits = 1; bits <= 8; ++bits) {
    for (size_t n : {0, 1, 3, 7, 8, 9, 15, 17, 63, 64, 65, 1000, 4097, 12345}) {
      std::vector<uint8_t> codes(n);
      for (auto& c : codes) c = static_cast<uint8_t>(rng() & ((1u << bits) - 1));
      std::vector<uint8_t> packed(packedBytes(n, bits), 0xAB);
      packBits(codes.data(), n, bits, packed.data());
      ASSERT_EQ(packed.size(), (n * bits + 7) / 8);
      std::vector<uint8_t> back(n, 0xFF);
      unpackBits(packed.data(), n, bits, back.data());
      ASSERT_EQ(codes, back) << "bits=" << bits << " n=" << n;
      // Reference layout: element i at bits [i*b, (i+1)*b), little-endian.
      for (size_t i = 0; i < n; ++i) {
        uint32_t v = 0;
        for (int k = 0; k < bits; ++k) {
          const size_t bit = i * bits + k;
          v |= ((packed[bit / 8] >> (bit % 8)) & 1u) << k;
        }
        ASSERT_EQ(v, codes[i]);
      }
      // Padding bits of the last byte are zero (deterministic bytes on the wire).
      if ((n * bits) % 8 != 0) {
        EXPECT_EQ(packed.back() >> ((n * bits) % 8), 0);
      }
    }
  }
}

TEST(BitPack, DenseSize) {
  EXPECT_EQ(packedBytes(10, 3), 4u);
  EXPECT_EQ(packedBytes(8, 3), 3u);
  EXPECT_EQ(packedBytes(1, 1), 1u);
  EXPECT_EQ(packedBytes(16, 8), 16u);
}

TEST(Half, MatchesReferenceOnSpecialValues) {
  EXPECT_EQ(floatToHalf(0.0f), 0x0000);
  EXPECT_EQ(floatToHalf(-0.0f), 0x8000);
  EXPECT_EQ(floatToHalf(1.0f), 0x3C00);
  EXPECT_EQ(floatToHalf(-2.0f), 0xC000);
  EXPECT_EQ(floatToHalf(65504.0f), 0x7BFF);
  EXPECT_EQ(floatToHalf(65519.0f), 0x7BFF);
  EXPECT_EQ(floatToHalf(65520.0f), 0x7C00);  // tie rounds to even -> inf
  EXPECT_EQ(floatToHalf(INFINITY), 0x7C00);
  EXPECT_EQ(floatToHalf(5.9604644775390625e-8f), 0x0001);  // smallest subnormal
  EXPECT_EQ(floatToHalf(2.98023223876953125e-8f), 0x0000);  // tie to even (0)
  EXPECT_EQ(floatToHalf(1.0f + 1.0f / 2048), 0x3C00);        // tie to even
  EXPECT_EQ(floatToHalf(1.0f + 3.0f / 2048), 0x3C02);        // tie to even (up)
  EXPECT_TRUE(std::isnan(halfToFloat(floatToHalf(NAN))));
}

TEST(Half, AllHalvesRoundTripAndSpanMatchesScalar) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = halfToFloat(static_cast<Half>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(floatToHalf(f), h);
  }
  // Random floats over many binades: the span (F16C) path equals the scalar one.
  std::mt19937 rng(3);
  std::vector<float> x(100003);
  for (auto& v : x) {
    uint32_t u = rng();
    u = (u & 0x807FFFFFu) | ((100u + (u >> 23) % 60u) << 23);  // exponents 2^-27..2^32
    std::memcpy(&v, &u, 4);
  }
  std::vector<Half> h(x.size());
  floatToHalf(x.data(), h.data(), x.size());
  std::vector<float> back(x.size());
  halfToFloat(h.data(), back.data(), x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    ASSERT_EQ(h[i], floatToHalf(x[i])) << x[i];
    ASSERT_EQ(std::memcmp(&back[i], &(const float&)halfToFloat(h[i]), 4), 0);
  }
}

struct QCase {
  int bits;
  Granularity g;
  int64_t group;
};

std::vector<QCase> allCases() {
  std::vector<QCase> cs;
  for (int b = 1; b <= 8; ++b) {
    cs.push_back({b, Granularity::TENSOR, 0});
    cs.push_back({b, Granularity::CHANNEL, 0});
    cs.push_back({b, Granularity::GROUP, 7});
    cs.push_back({b, Granularity::GROUP, 128});
  }
  return cs;
}

// Reference scale for element i.
float refScale(const QuantizerOptions& o, const std::vector<float>& x, size_t i,
               size_t channels) {
  float s = 0;
  for (size_t j = 0; j < x.size(); ++j) {
    bool same = false;
    switch (o.granularity) {
      case Granularity::TENSOR: same = true; break;
      case Granularity::CHANNEL: same = j % channels == i % channels; break;
      case Granularity::GROUP: same = j / o.group_size == i / o.group_size; break;
    }
    if (same) s = std::max(s, std::fabs(x[j]));
  }
  return s;
}

TEST(Quantizer, NearestErrorBoundAndGridExtremes) {
  for (const auto& c : allCases()) {
    QuantizerOptions o;
    o.bits = c.bits;
    o.granularity = c.g;
    if (c.group) o.group_size = c.group;
    const size_t rows = 37, channels = 29;  // odd sizes: chunk/group/row misalign
    auto x = randomVector(rows * channels, 11 + c.bits);
    auto q = quantize(o, x.data(), x.size(), channels);
    ASSERT_EQ(q.packed.size(), packedBytes(x.size(), c.bits));
    std::vector<float> y(x.size());
    dequantize(o, q, y.data());
    const float lm1 = static_cast<float>((1 << c.bits) - 1);
    for (size_t i = 0; i < x.size(); ++i) {
      const float s = refScale(o, x, i, channels);
      // |x - Q(x)| <= s/(L-1) (half a step) + float slack.
      ASSERT_LE(std::fabs(x[i] - y[i]), s / lm1 * (1 + 1e-5f) + 1e-6f * s)
          << "bits=" << c.bits << " g=" << toString(c.g) << " i=" << i;
      ASSERT_LE(std::fabs(y[i]), s * (1 + 1e-6f));
    }
    // Scales are the max-abs of each unit.
    if (c.g == Granularity::CHANNEL) {
      for (size_t ch = 0; ch < channels; ++ch) ASSERT_EQ(q.scales[ch], refScale(o, x, ch, channels));
    }
  }
}

TEST(Quantizer, ExtremesRepresentable) {
  // +s and -s both decode exactly (the paper's 4-bit grid topped out at 0.875 s).
  for (int b = 1; b <= 8; ++b) {
    QuantizerOptions o;
    o.bits = b;
    o.granularity = Granularity::TENSOR;
    std::vector<float> x = {-2.0f, 2.0f, 0.5f, -0.25f};
    auto q = quantize(o, x.data(), x.size(), x.size());
    std::vector<float> y(x.size());
    dequantize(o, q, y.data());
    EXPECT_NEAR(y[0], -2.0f, 1e-6f) << b;
    EXPECT_NEAR(y[1], 2.0f, 1e-6f) << b;
    EXPECT_EQ(y[0], -y[1]) << "grid is symmetric";
  }
  EXPECT_FLOAT_EQ(dequantizeCode(1, 0, 3.0f), -3.0f);
  EXPECT_FLOAT_EQ(dequantizeCode(1, 1, 3.0f), 3.0f);
  EXPECT_FLOAT_EQ(dequantizeCode(4, 15, 1.0f), 1.0f);
}

TEST(Quantizer, ZeroChannelsDecodeToZero) {
  QuantizerOptions o;
  o.bits = 3;
  std::vector<float> x(4 * 5, 0.0f);
  for (size_t r = 0; r < 4; ++r) x[r * 5 + 2] = static_cast<float>(r) - 1.5f;
  auto q = quantize(o, x.data(), x.size(), 5);
  EXPECT_EQ(q.scales[0], 0.0f);
  std::vector<float> y(x.size(), 1.0f);
  dequantize(o, q, y.data());
  for (size_t r = 0; r < 4; ++r) {
    for (size_t c = 0; c < 5; ++c) {
      if (c != 2) {
        EXPECT_EQ(y[r * 5 + c], 0.0f);
      }
    }
  }
}

TEST(Quantizer, NonFiniteInputThrows) {
  QuantizerOptions o;
  for (float bad : {NAN, INFINITY, -INFINITY}) {
    std::vector<float> x(64, 1.0f);
    x[37] = bad;
    EXPECT_THROW(quantize(o, x.data(), x.size(), 8), ProtocolError);
    o.granularity = Granularity::TENSOR;
    EXPECT_THROW(quantize(o, x.data(), x.size(), 8), ProtocolError);
    o.granularity = Granularity::CHANNEL;
  }
}

TEST(Quantizer, TinyScaleIsSafe) {
  QuantizerOptions o;
  o.granularity = Granularity::TENSOR;
  std::vector<float> x = {1e-45f, -1e-45f, 0.0f, 1e-44f};
  auto q = quantize(o, x.data(), x.size(), x.size());
  std::vector<float> y(x.size());
  dequantize(o, q, y.data());
  for (size_t i = 0; i < x.size(); ++i) EXPECT_LE(std::fabs(y[i]), 1e-44f);
}

TEST(Quantizer, InvalidOptions) {
  QuantizerOptions o;
  o.bits = 0;
  EXPECT_THROW(o.validate(), ConfigError);
  o.bits = 9;
  EXPECT_THROW(o.validate(), ConfigError);
  o.bits = 4;
  o.granularity = Granularity::GROUP;
  o.group_size = 0;
  EXPECT_THROW(o.validate(), ConfigError);
  QuantizerOptions ok;
  std::vector<float> x(10, 1.0f);
  EXPECT_THROW(quantize(ok, x.data(), x.size(), 3), ConfigError);  // 10 % 3 != 0
}

TEST(Quantizer, StochasticIsUnbiasedAndReproducible) {
  // E[Q(x)] = x: average many independent draws (different counters) of the
  // same vector and compare with x within a 6-sigma band of the step noise.
  QuantizerOptions o;
  o.bits = 2;
  o.rounding = Rounding::STOCHASTIC;
  o.granularity = Granularity::TENSOR;
  o.seed = 42;
  const size_t n = 1000;
  auto x = randomVector(n, 5, 1.0f);
  std::vector<float> scales(1);
  computeScales(o, x.data(), n, n, scales.data());
  const int draws = 2000;
  std::vector<double> mean(n, 0.0);
  std::vector<float> y(n);
  std::vector<uint8_t> packed(packedBytes(n, o.bits));
  for (int t = 0; t < draws; ++t) {
    quantizePacked(o, x.data(), n, n, scales.data(), t, packed.data());
    dequantizePacked(o, packed.data(), packed.size(), n, n, scales.data(), y.data());
    for (size_t i = 0; i < n; ++i) mean[i] += y[i];
  }
  const double step = 2.0 * scales[0] / 3.0;
  // Per-element std of one draw <= step/2, so the mean's std <= step/(2 sqrt(draws)).
  const double tol = 6.0 * step / (2.0 * std::sqrt(static_cast<double>(draws)));
  double total_bias = 0;
  for (size_t i = 0; i < n; ++i) {
    mean[i] /= draws;
    ASSERT_NEAR(mean[i], x[i], tol) << i;
    total_bias += mean[i] - x[i];
  }
  EXPECT_LT(std::fabs(total_bias / n), 6.0 * step / (2.0 * std::sqrt(double(draws) * n)));
  // Reproducible: same (seed, counter) -> same bytes; other counter -> other bytes.
  std::vector<uint8_t> a(packed.size()), b(packed.size()), c(packed.size());
  quantizePacked(o, x.data(), n, n, scales.data(), 77, a.data());
  quantizePacked(o, x.data(), n, n, scales.data(), 77, b.data());
  quantizePacked(o, x.data(), n, n, scales.data(), 78, c.data());
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  // Uniform variates look uniform (mean 1/2, var 1/12).
  double s = 0, s2 = 0;
  const int m = 200000;
  for (int i = 0; i < m; ++i) {
    const double u = stochasticUniform(1, 2, i);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    s += u;
    s2 += u * u;
  }
  EXPECT_NEAR(s / m, 0.5, 0.005);
  EXPECT_NEAR(s2 / m - (s / m) * (s / m), 1.0 / 12, 0.002);
}

TEST(Quantizer, StochasticErrorBelowOneStep) {
  QuantizerOptions o;
  o.bits = 3;
  o.rounding = Rounding::STOCHASTIC;
  auto x = randomVector(64 * 33, 9);
  auto q = quantize(o, x.data(), x.size(), 33, 5);
  std::vector<float> y(x.size());
  dequantize(o, q, y.data());
  for (size_t i = 0; i < x.size(); ++i) {
    const float s = q.scales[i % 33];
    ASSERT_LE(std::fabs(x[i] - y[i]), 2 * s / 7 * (1 + 1e-5f));
  }
}

TEST(Quantizer, PackedMatchesCodes) {
  QuantizerOptions o;
  o.bits = 5;
  o.granularity = Granularity::GROUP;
  o.group_size = 100;
  auto x = randomVector(10007, 1);
  auto q = quantize(o, x.data(), x.size(), 1);
  std::vector<uint8_t> codes(x.size()), unpacked(x.size());
  quantizeCodes(o, x.data(), x.size(), 1, q.scales.data(), 0, codes.data());
  unpackBits(q.packed.data(), x.size(), o.bits, unpacked.data());
  EXPECT_EQ(codes, unpacked);
  std::vector<float> y(x.size());
  dequantize(o, q, y.data());
  for (size_t i = 0; i < x.size(); ++i) {
    ASSERT_EQ(y[i], dequantizeCode(o.bits, codes[i], q.scales[i / 100]));
  }
}

TEST(Quantizer, TruncatedPackedThrows) {
  QuantizerOptions o;
  auto x = randomVector(64, 1);
  auto q = quantize(o, x.data(), x.size(), 8);
  std::vector<float> y(64);
  EXPECT_THROW(dequantizePacked(o, q.packed.data(), q.packed.size() - 1, 64, 8,
                                q.scales.data(), y.data()),
               ProtocolError);
}

}  // namespace
}  // namespace geopipe::compression
