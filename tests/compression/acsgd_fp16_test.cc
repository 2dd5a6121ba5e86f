// The fused fp16-buffer AC-SGD kernels against the unfused reference built
// from the public quantizer (computeScales, quantizePacked, dequantizePacked,
// scalar floatToHalf): same scales, same wire bytes, same buffer bits, on
// random shapes (odd channel counts, rows across chunk boundaries), every bit
// width, both roundings, and through DeltaSender for every granularity
// (per-channel takes the fused kernel; tensor/group fall back).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "compression/acsgd_fp16.h"
#include "compression/bit_pack.h"
#include "compression/delta_compressor.h"
#include "compression/half.h"
#include "compression/quantizer.h"
#include "geopipe/error.h"

namespace geopipe::compression {
namespace {

struct Step {
  std::vector<float> scales;
  std::vector<uint8_t> packed;
  std::vector<Half> m;  // the buffer after the update
};

// The AC-SGD step written the plain way: delta in fp32, quantise, dequantise
// the packed bytes, add, round each element to fp16 with the scalar routine.
Step referenceStep(const QuantizerOptions& q, const float* a, const std::vector<Half>& m,
                   size_t channels, uint64_t counter) {
  const size_t n = m.size();
  std::vector<float> mf(n), delta(n), deq(n);
  for (size_t i = 0; i < n; ++i) mf[i] = halfToFloat(m[i]);
  for (size_t i = 0; i < n; ++i) delta[i] = a[i] - mf[i];
  Step r;
  r.scales.resize(scaleCount(q, n, channels));
  computeScales(q, delta.data(), n, channels, r.scales.data());
  r.packed.resize(packedBytes(n, q.bits));
  quantizePacked(q, delta.data(), n, channels, r.scales.data(), counter, r.packed.data());
  dequantizePacked(q, r.packed.data(), r.packed.size(), n, channels, r.scales.data(), deq.data());
  r.m.resize(n);
  for (size_t i = 0; i < n; ++i) r.m[i] = floatToHalf(mf[i] + deq[i]);
  return r;
}

// A buffer m and an activation a = h2f(m) + delta whose per-channel size
// spans many decades; some channels have delta == 0 (scale 0) and one has a
// subnormal delta (the capped 1/scale).
void makeInputs(std::mt19937& rng, size_t rows, size_t channels, std::vector<Half>& m,
                std::vector<float>& a) {
  std::normal_distribution<float> nd(0, 1);
  std::uniform_real_distribution<float> ud(-6, 1);
  const size_t n = rows * channels;
  std::vector<float> mag(channels);
  for (auto& v : mag) v = std::pow(10.0f, ud(rng));
  if (channels > 2) mag[1] = 0;
  m.resize(n);
  a.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const size_t c = i % channels;
    m[i] = floatToHalf(2 * nd(rng));
    a[i] = halfToFloat(m[i]) + mag[c] * nd(rng);
    if (channels > 3 && c == 2) {
      m[i] = floatToHalf(0.0f);
      a[i] = 1e-40f * nd(rng);  // subnormal delta
    }
  }
}

struct Shape {
  size_t rows, channels;
};

// Odd and even channel counts, a row longer than a 4096-element chunk, and
// rows that straddle chunk boundaries (37 x 333 = 12321 elements).
const Shape kShapes[] = {{1, 1},   {3, 7},    {5, 8},    {2, 9},    {9, 17},
                         {13, 64}, {4, 1024}, {37, 333}, {1, 5000}, {6, 4100}};

TEST(AcsgdFp16, FusedEncodeMatchesUnfusedReference) {
  std::mt19937 rng(11);
  for (const Shape& sh : kShapes) {
    for (int bits = 1; bits <= 8; ++bits) {
      for (Rounding rounding : {Rounding::NEAREST, Rounding::STOCHASTIC}) {
        QuantizerOptions q;
        q.bits = bits;
        q.granularity = Granularity::CHANNEL;
        q.rounding = rounding;
        q.seed = 1234 + bits;
        const uint64_t counter = rng();
        std::vector<Half> m;
        std::vector<float> a;
        makeInputs(rng, sh.rows, sh.channels, m, a);
        const size_t n = m.size();
        const Step ref = referenceStep(q, a.data(), m, sh.channels, counter);

        std::vector<float> scales(sh.channels);
        // Poisoned output: every byte must be written.
        std::vector<uint8_t> packed(packedBytes(n, bits), 0xA5);
        acsgdFp16Encode(q, a.data(), m.data(), n, sh.channels, counter, scales.data(),
                        packed.data());
        SCOPED_TRACE(::testing::Message() << sh.rows << "x" << sh.channels << " bits " << bits
                                          << " " << toString(rounding));
        ASSERT_EQ(std::memcmp(scales.data(), ref.scales.data(), 4 * scales.size()), 0);
        ASSERT_EQ(packed, ref.packed);
        ASSERT_EQ(m, ref.m);
      }
    }
  }
}

TEST(AcsgdFp16, ApplyMatchesReferenceForEveryGranularityAndRange) {
  std::mt19937 rng(12);
  std::normal_distribution<float> nd(0, 1);
  for (const Shape& sh : kShapes) {
    for (Granularity gran : {Granularity::TENSOR, Granularity::CHANNEL, Granularity::GROUP}) {
      for (int64_t group : {int64_t{5}, int64_t{128}}) {
        QuantizerOptions q;
        q.bits = 1 + static_cast<int>(rng() % 8);
        q.granularity = gran;
        q.group_size = group;
        const size_t n = sh.rows * sh.channels;
        std::vector<float> x(n), mf(n), deq(n);
        std::vector<Half> m(n);
        for (auto& v : x) v = nd(rng);
        for (size_t i = 0; i < n; ++i) {
          m[i] = floatToHalf(3 * nd(rng));
          mf[i] = halfToFloat(m[i]);
        }
        const QuantizedTensor qt = quantize(q, x.data(), n, sh.channels);
        dequantize(q, qt, deq.data());
        std::vector<Half> want(n);
        for (size_t i = 0; i < n; ++i) want[i] = floatToHalf(mf[i] + deq[i]);

        SCOPED_TRACE(::testing::Message() << sh.rows << "x" << sh.channels << " " << toString(gran)
                                          << " group " << group);
        // Whole tensor with out.
        std::vector<Half> m1 = m;
        std::vector<float> out(n, -1.0f);
        acsgdFp16Apply(q, qt.packed.data(), qt.packed.size(), n, sh.channels, qt.scales.data(),
                       m1.data(), out.data());
        ASSERT_EQ(m1, want);
        for (size_t i = 0; i < n; ++i) ASSERT_EQ(out[i], halfToFloat(want[i])) << i;
        // Two ranges split at a multiple of 8, no out.
        std::vector<Half> m2 = m;
        const size_t split = (n / 2) / 8 * 8;
        acsgdFp16Apply(q, qt.packed.data(), qt.packed.size(), n, sh.channels, qt.scales.data(),
                       m2.data(), nullptr, 0, split);
        acsgdFp16Apply(q, qt.packed.data(), qt.packed.size(), n, sh.channels, qt.scales.data(),
                       m2.data(), nullptr, split, n);
        ASSERT_EQ(m2, want);
        if (gran != Granularity::GROUP) break;  // group_size matters only for GROUP
      }
    }
  }
}

TEST(AcsgdFp16, NonFiniteDeltaThrowsAndLeavesBufferUntouched) {
  std::mt19937 rng(13);
  QuantizerOptions q;
  q.bits = 4;
  std::vector<Half> m;
  std::vector<float> a;
  makeInputs(rng, 6, 40, m, a);
  std::vector<float> scales(40);
  std::vector<uint8_t> packed(packedBytes(m.size(), 4));
  for (float bad : {NAN, INFINITY}) {
    std::vector<float> a2 = a;
    a2[5 * 40 + 33] = bad;
    const std::vector<Half> before = m;
    EXPECT_THROW(
        acsgdFp16Encode(q, a2.data(), m.data(), m.size(), 40, 0, scales.data(), packed.data()),
        ProtocolError);
    EXPECT_EQ(m, before);
  }
  std::vector<Half> m_inf = m;
  m_inf[7] = 0x7C00;  // +inf in the buffer
  EXPECT_THROW(
      acsgdFp16Encode(q, a.data(), m_inf.data(), m.size(), 40, 0, scales.data(), packed.data()),
      ProtocolError);
  q.granularity = Granularity::GROUP;
  EXPECT_THROW(
      acsgdFp16Encode(q, a.data(), m.data(), m.size(), 40, 0, scales.data(), packed.data()),
      ConfigError);
  EXPECT_THROW(acsgdFp16Apply(q, packed.data(), packed.size() - 1, m.size(), 40, scales.data(),
                              m.data(), nullptr),
               ProtocolError);
}

struct SenderCase {
  Granularity granularity;
  Rounding rounding;
  int bits;
};

class AcsgdFp16Sender : public ::testing::TestWithParam<SenderCase> {};

// DeltaSender with fp16 buffers over several epochs: every delta sample's wire
// bytes and the stored m(xi) equal the reference step applied to the buffer
// as it was before the message.
TEST_P(AcsgdFp16Sender, WireBytesAndBuffersMatchReference) {
  const auto c = GetParam();
  DeltaCompressorOptions opt;
  opt.quantizer.bits = c.bits;
  opt.quantizer.granularity = c.granularity;
  opt.quantizer.group_size = 7;
  opt.quantizer.rounding = c.rounding;
  opt.quantizer.seed = 99;
  opt.buffer_format = BufferFormat::FP16;
  DeltaSender tx(opt, makeBufferStore({}));
  std::mt19937 rng(static_cast<unsigned>(c.bits) * 7 + static_cast<unsigned>(c.granularity));
  std::normal_distribution<float> nd(0, 1);
  for (const Shape& sh : {Shape{5, 13}, Shape{3, 64}, Shape{11, 371}}) {
    const std::vector<int64_t> ids = {100, 7, 42};
    const std::vector<int64_t> shape = {3, static_cast<int64_t>(sh.rows),
                                        static_cast<int64_t>(sh.channels)};
    const std::vector<int64_t> sample_shape(shape.begin() + 1, shape.end());
    const size_t per = sh.rows * sh.channels;
    std::vector<float> acts(3 * per);
    for (auto& v : acts) v = 2 * nd(rng);
    uint64_t counter = 1000;
    for (int epoch = 0; epoch < 4; ++epoch, ++counter) {
      for (auto& v : acts) v += 0.1f * nd(rng);
      std::vector<Step> want(3);
      for (size_t s = 0; s < 3 && epoch > 0; ++s) {
        std::vector<float> mf;
        ASSERT_TRUE(readBuffer(opt, tx.store(), ids[s], sample_shape, mf));
        std::vector<Half> m(per);
        for (size_t i = 0; i < per; ++i) m[i] = floatToHalf(mf[i]);  // exact: mf came from halves
        want[s] = referenceStep(opt.quantizer, acts.data() + s * per, m, sh.channels,
                                counter * 1315423911u + s);
      }
      const auto msg = tx.encode(ids.data(), acts.data(), shape, counter);
      size_t pos = 3;
      for (size_t s = 0; s < 3; ++s) {
        SCOPED_TRACE(::testing::Message()
                     << sh.rows << "x" << sh.channels << " epoch " << epoch << " sample " << s);
        if (epoch == 0) {
          ASSERT_EQ(msg.payload[s], static_cast<uint8_t>(SampleKind::FULL_FP16));
          pos += 2 * per;
          continue;
        }
        ASSERT_EQ(msg.payload[s], static_cast<uint8_t>(SampleKind::DELTA));
        const Step& w = want[s];
        ASSERT_EQ(std::memcmp(msg.payload.data() + pos, w.scales.data(), 4 * w.scales.size()), 0);
        pos += 4 * w.scales.size();
        ASSERT_EQ(std::vector<uint8_t>(msg.payload.begin() + pos,
                                       msg.payload.begin() + pos + w.packed.size()),
                  w.packed);
        pos += w.packed.size();
        std::vector<float> mf;
        ASSERT_TRUE(readBuffer(opt, tx.store(), ids[s], sample_shape, mf));
        for (size_t i = 0; i < per; ++i) ASSERT_EQ(floatToHalf(mf[i]), w.m[i]) << i;
      }
      ASSERT_EQ(pos, msg.payload.size());
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, AcsgdFp16Sender,
                         ::testing::Values(SenderCase{Granularity::CHANNEL, Rounding::NEAREST, 4},
                                           SenderCase{Granularity::CHANNEL, Rounding::STOCHASTIC,
                                                      3},
                                           SenderCase{Granularity::CHANNEL, Rounding::NEAREST, 8},
                                           SenderCase{Granularity::TENSOR, Rounding::NEAREST, 2},
                                           SenderCase{Granularity::TENSOR, Rounding::STOCHASTIC, 4},
                                           SenderCase{Granularity::GROUP, Rounding::NEAREST, 4},
                                           SenderCase{Granularity::GROUP, Rounding::STOCHASTIC, 6}),
                         [](const ::testing::TestParamInfo<SenderCase>& i) {
                           return std::string(toString(i.param.granularity)) + "_" +
                                  toString(i.param.rounding) + "_" + std::to_string(i.param.bits) +
                                  "bit";
                         });

}  // namespace
}  // namespace geopipe::compression
