// Gradient compressor tests: error feedback carries the residual, the
// rank-ordered all-reduce is identical on every rank and close to the true
// mean, top-k keeps the largest entries, PowerSGD is exact on rank <= r; and
// building options from the job spec.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "compression/gradient_compressor.h"
#include "compression/options.h"
#include "geopipe/error.h"

namespace geopipe::compression {
namespace {

std::vector<float> randn(size_t n, uint32_t seed, float sd = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// The round-to-nearest error bound of the b-bit quantizer (quantizer.h), per
// element. Its grid has L = 2^b points spaced 2d apart from -s to +s, with s
// the max |x| over the element's scale unit and d = s / (L-1); x lies within
// the grid's range, so rounding to the nearest point is off by at most half
// a step, d. The quantizer computes in fp32 (t = x * (L-1)/(2s) + (L-1)/2,
// then Q = (2q - (L-1)) * d), which adds a few ulps of s: 4 * eps * s covers
// them. `unit_of(i)` names the scale unit of element i.
template <typename UnitOf>
std::vector<double> nearestBound(const std::vector<float>& x, int bits, size_t units,
                                 UnitOf unit_of) {
  std::vector<double> s(units, 0.0);
  for (size_t i = 0; i < x.size(); ++i)
    s[unit_of(i)] = std::max(s[unit_of(i)], double(std::fabs(x[i])));
  const double levels_minus_1 = double((1 << bits) - 1);
  std::vector<double> bound(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double su = s[unit_of(i)];
    bound[i] = su / levels_minus_1 + 4 * std::numeric_limits<float>::epsilon() * su;
  }
  return bound;
}

TEST(GradientCompressor, ErrorFeedbackCarriesTheResidual) {
  for (GradientMethod m : {GradientMethod::FP16, GradientMethod::QUANTIZE, GradientMethod::TOPK}) {
    GradientCompressorOptions o;
    o.method = m;
    o.quantizer.bits = 2;
    o.ratio = 0.05;
    GradientCompressor c(o);
    const std::vector<int64_t> shape = {20, 50};
    std::vector<double> sum_true(1000, 0.0), sum_sent(1000, 0.0);
    for (int step = 0; step < 50; ++step) {
      auto g = randn(1000, step + 1);
      std::vector<float> before = c.residual();
      if (before.empty()) before.assign(1000, 0.0f);
      auto msg = c.compress(g.data(), shape, step);
      auto sent = decodeDense(msg);
      // Residual identity: e_new = g + e_old - sent, exactly.
      for (size_t i = 0; i < g.size(); ++i) {
        ASSERT_EQ(c.residual()[i], (g[i] + before[i]) - sent[i]) << toString(m);
        sum_true[i] += g[i];
        sum_sent[i] += sent[i];
      }
    }
    // Sum sent = sum of true gradients - final residual: nothing is lost.
    for (size_t i = 0; i < 1000; ++i) {
      ASSERT_NEAR(sum_sent[i], sum_true[i] - c.residual()[i], 1e-3) << toString(m);
    }
    // Top-k without feedback loses most of the mass; with it the residual is bounded.
    double res = 0;
    for (float v : c.residual()) res = std::max(res, double(std::fabs(v)));
    EXPECT_LT(res, 50.0) << toString(m);
  }
}

TEST(GradientCompressor, NoErrorFeedbackKeepsNoResidual) {
  GradientCompressorOptions o;
  o.method = GradientMethod::QUANTIZE;
  o.error_feedback = false;
  GradientCompressor c(o);
  auto g = randn(100, 1);
  c.compress(g.data(), {100});
  EXPECT_TRUE(c.residual().empty());
}

TEST(GradientCompressor, EveryDenseMethodDecodesToItsValues) {
  // bf16 was once missing here: its message decoded to no values at all.
  const std::vector<float> x = {1.0f, -2.5f, 0.375f, 96.0f};  // exact in fp16 and bf16
  for (Method m : {Method::RAW, Method::FP16, Method::BF16}) {
    TensorCodecOptions o;
    o.method = m;
    WireHeader h;
    EXPECT_EQ(decodeDense(encodeTensor(o, x.data(), {4}), &h), x) << toString(m);
    EXPECT_EQ(h.method, m);
  }
}

TEST(GradientCompressor, TopKKeepsLargestSortedWithTies) {
  std::vector<float> x = {0.1f, -5.0f, 3.0f, 3.0f, -3.0f, 0.0f, 7.0f, 2.0f};
  auto msg = encodeTopK(x.data(), {8}, 0.5);  // k = 4
  WireHeader h;
  auto d = decodeDense(msg, &h);
  EXPECT_EQ(h.aux, 4u);
  EXPECT_EQ(msg.payload.size(), 32u);
  std::vector<float> want = {0, -5.0f, 3.0f, 3.0f, 0, 0, 7.0f, 0};  // tie at 3: lowest indices
  EXPECT_EQ(d, want);
}

TEST(GradientCompressor, TopKDecoderRejectsBadIndices) {
  std::vector<float> x = {1, 2, 3, 4};
  auto msg = encodeTopK(x.data(), {4}, 0.5);
  auto h = decodeHeader(msg.header.data(), msg.header.size());
  auto corrupt = [&](uint32_t i0, uint32_t i1) {
    auto m = msg;
    std::memcpy(m.payload.data(), &i0, 4);
    std::memcpy(m.payload.data() + 4, &i1, 4);
    h.payload_crc = crc32c(m.payload.data(), m.payload.size());
    m.header = encodeHeader(h);
    return m;
  };
  EXPECT_THROW(decodeDense(corrupt(3, 2)), ProtocolError);  // not increasing
  EXPECT_THROW(decodeDense(corrupt(2, 2)), ProtocolError);  // duplicate
  EXPECT_THROW(decodeDense(corrupt(1, 4)), ProtocolError);  // out of range
  EXPECT_NO_THROW(decodeDense(corrupt(0, 3)));
}

// All-reduce: W ranks with different gradients; every rank runs combineMean
// on the same rank-ordered messages -> bit-identical, and close to the mean.
TEST(AllReduce, EveryRankGetsIdenticalResultCloseToMean) {
  const int world = 5;
  const std::vector<int64_t> shape = {32, 64};
  const size_t n = 32 * 64;
  for (GradientMethod m : {GradientMethod::NONE, GradientMethod::FP16, GradientMethod::QUANTIZE,
                           GradientMethod::TOPK}) {
    GradientCompressorOptions o;
    o.method = m;
    o.ratio = 0.5;
    std::vector<GradientCompressor> comps(world, GradientCompressor(o));
    std::vector<std::vector<float>> grads(world);
    std::vector<double> mean(n, 0.0);
    std::vector<CompressedMessage> msgs;
    for (int r = 0; r < world; ++r) {
      grads[r] = randn(n, 100 + r);
      for (size_t i = 0; i < n; ++i) mean[i] += grads[r][i] / world;
      msgs.push_back(comps[r].compress(grads[r].data(), shape));
    }
    std::vector<std::vector<float>> results;
    for (int r = 0; r < world; ++r) {
      // Each rank decodes its own copy of the gathered bytes.
      std::vector<CompressedMessage> gathered = msgs;
      results.push_back(combineMean(gathered));
    }
    for (int r = 1; r < world; ++r) {
      ASSERT_EQ(std::memcmp(results[0].data(), results[r].data(), 4 * n), 0) << toString(m);
    }
    double err = 0, ref = 0;
    for (size_t i = 0; i < n; ++i) {
      err += std::pow(results[0][i] - mean[i], 2);
      ref += mean[i] * mean[i];
    }
    const double rel = std::sqrt(err / ref);
    if (m == GradientMethod::QUANTIZE) {
      // Element by element: each rank's decoded gradient is within its
      // quantizer's half step d_r (groups of 256, 8 bits by default) of what it sent,
      // so the mean is within (1/W) sum_r d_r of the true mean. The fp32 sum of
      // W terms and the division add a few ulps of sum_r |g_r| / W.
      ASSERT_EQ(o.quantizer.granularity, Granularity::GROUP);
      ASSERT_EQ(o.quantizer.rounding, Rounding::NEAREST);
      const size_t group = static_cast<size_t>(o.quantizer.group_size);
      std::vector<double> bound(n, 0.0), magnitude(n, 0.0);
      for (int r = 0; r < world; ++r) {
        const auto b = nearestBound(grads[r], o.quantizer.bits, (n + group - 1) / group,
                                    [group](size_t i) { return i / group; });
        for (size_t i = 0; i < n; ++i) {
          bound[i] += b[i] / world;
          magnitude[i] += std::fabs(grads[r][i]) / world;
        }
      }
      for (size_t i = 0; i < n; ++i) {
        const double slop = 2 * world * std::numeric_limits<float>::epsilon() * magnitude[i];
        ASSERT_LE(std::fabs(results[0][i] - mean[i]), bound[i] + slop) << "element " << i;
      }
      continue;
    }
    const double tol = m == GradientMethod::NONE ? 1e-6 : m == GradientMethod::FP16 ? 1e-3 : 0.8;
    EXPECT_LT(rel, tol) << toString(m);
  }
}

TEST(AllReduce, ShapeMismatchAndEmpty) {
  GradientCompressorOptions o;
  GradientCompressor a(o), b(o);
  auto g = randn(12, 1);
  std::vector<CompressedMessage> msgs = {a.compress(g.data(), {3, 4}), b.compress(g.data(), {4, 3})};
  EXPECT_THROW(combineMean(msgs), ProtocolError);
  EXPECT_THROW(combineMean({}), ConfigError);
}

// A top-k message of 8 bytes that describes a 2^32-element tensor: refused
// for its shape before anything is expanded (it once allocated 16 GiB).
TEST(AllReduce, HugeSparseShapeIsRefusedBeforeDecoding) {
  GradientCompressorOptions o;
  GradientCompressor own(o);
  auto g = randn(8, 2);
  std::vector<float> one = {1.0f};
  CompressedMessage huge = encodeTopK(one.data(), {1}, 1.0);
  WireHeader h = decodeHeader(huge.header.data(), huge.header.size());
  h.shape = {int64_t{1} << 32};
  huge.header = encodeHeader(h);
  std::vector<CompressedMessage> msgs = {own.compress(g.data(), {8}), huge};
  try {
    combineMean(msgs);
    FAIL() << "accepted";
  } catch (const ProtocolError& e) {
    EXPECT_NE(std::string(e.what()).find("rank 1 sent a tensor of another shape"),
              std::string::npos)
        << e.what();
  }
}

TEST(PowerSgd, ExactOnMatricesOfRankAtMostR) {
  const int64_t rows = 60, cols = 40;
  for (int true_rank : {1, 2, 4}) {
    // M = A B^T with A [rows, k], B [cols, k].
    auto a = randn(rows * true_rank, 1), b = randn(cols * true_rank, 2);
    std::vector<float> m(rows * cols, 0.0f);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j)
        for (int k = 0; k < true_rank; ++k) m[i * cols + j] += a[i * true_rank + k] * b[j * true_rank + k];
    GradientCompressorOptions o;
    o.rank = 4;
    PowerSgdCompressor c(o);
    auto p = c.computeP(m.data(), {rows, cols});
    auto q = c.computeQ({p});
    auto out = c.finish({q});
    double maxerr = 0, maxv = 0;
    for (size_t i = 0; i < m.size(); ++i) {
      maxerr = std::max(maxerr, double(std::fabs(out[i] - m[i])));
      maxv = std::max(maxv, double(std::fabs(m[i])));
    }
    EXPECT_LT(maxerr, 1e-4 * maxv) << "rank " << true_rank;
    for (float e : c.residual()) ASSERT_LT(std::fabs(e), 1e-4 * maxv);
  }
}

TEST(PowerSgd, MultiRankIdenticalAndErrorFeedbackConverges) {
  const int world = 3;
  const int64_t rows = 48, cols = 32;
  GradientCompressorOptions o;
  o.rank = 2;
  o.seed = 9;
  std::vector<PowerSgdCompressor> comps(world, PowerSgdCompressor(o));
  // A fixed full-rank gradient every step: with error feedback, the running
  // average of what is applied converges to the true mean.
  std::vector<std::vector<float>> g(world);
  std::vector<double> mean(rows * cols, 0.0);
  for (int r = 0; r < world; ++r) {
    g[r] = randn(rows * cols, 50 + r);
    for (size_t i = 0; i < g[r].size(); ++i) mean[i] += g[r][i] / world;
  }
  std::vector<double> applied(rows * cols, 0.0);
  const int steps = 200;
  for (int s = 0; s < steps; ++s) {
    std::vector<CompressedMessage> ps, qs;
    for (int r = 0; r < world; ++r) ps.push_back(comps[r].computeP(g[r].data(), {rows, cols}));
    for (int r = 0; r < world; ++r) qs.push_back(comps[r].computeQ(ps));
    std::vector<std::vector<float>> outs;
    for (int r = 0; r < world; ++r) outs.push_back(comps[r].finish(qs));
    for (int r = 1; r < world; ++r) ASSERT_EQ(outs[0], outs[r]) << "step " << s;
    for (size_t i = 0; i < applied.size(); ++i) applied[i] += outs[0][i];
  }
  double err = 0, ref = 0;
  for (size_t i = 0; i < applied.size(); ++i) {
    err += std::pow(applied[i] / steps - mean[i], 2);
    ref += mean[i] * mean[i];
  }
  EXPECT_LT(std::sqrt(err / ref), 0.15);
}

TEST(PowerSgd, RejectsVectors) {
  PowerSgdCompressor c({});
  std::vector<float> v(10, 1.0f);
  EXPECT_THROW(c.computeP(v.data(), {10}), ConfigError);
}

TEST(Options, FromSpec) {
  ActivationCompressionSpec a;
  a.method = "acsgd";
  a.bits = 2;
  a.buffer_store = "mmap";
  a.buffer_dir = "/tmp/x";
  auto ao = activationOptionsFromSpec(a, 5, "s0_fwd");
  EXPECT_TRUE(ao.acsgd);
  EXPECT_EQ(ao.delta.quantizer.bits, 2);
  EXPECT_EQ(ao.delta.quantizer.granularity, Granularity::CHANNEL);
  EXPECT_EQ(ao.store.kind, StoreKind::MMAP);
  EXPECT_EQ(ao.store.path, "/tmp/x/s0_fwd.acsgd");
  EXPECT_EQ(ao.store.budget_bytes, 4ull << 30);
  EXPECT_EQ(ao.delta.buffer_format, BufferFormat::FP16);
  a.buffer_format = "quantized";
  a.buffer_bits = 4;
  ao = activationOptionsFromSpec(a, 5, "s0_fwd");
  EXPECT_EQ(ao.delta.buffer_format, BufferFormat::QUANTIZED);
  EXPECT_EQ(ao.delta.buffer_bits, 4);
  a.buffer_bits = 9;
  EXPECT_THROW(activationOptionsFromSpec(a), ConfigError);
  a.buffer_bits = 8;
  a.buffer_format = "int8";
  EXPECT_THROW(activationOptionsFromSpec(a), ConfigError);
  a.buffer_format = "fp16";
  a.buffer_dir.clear();
  EXPECT_THROW(activationOptionsFromSpec(a), ConfigError);
  a.method = "bogus";
  EXPECT_THROW(activationOptionsFromSpec(a), ConfigError);
  a.method = "direct";
  a.bits = 9;
  EXPECT_THROW(activationOptionsFromSpec(a), ConfigError);
  a.bits = 3;
  a.granularity = "rows";
  try {
    activationOptionsFromSpec(a);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("compression.activations.granularity"), std::string::npos);
  }
  BackwardCompressionSpec b;
  b.method = "quantize";
  b.bits = 6;
  b.rounding = "stochastic";
  auto bo = backwardOptionsFromSpec(b, 3);
  EXPECT_EQ(bo.method, Method::QUANTIZED);
  EXPECT_EQ(bo.quantizer.bits, 6);
  EXPECT_EQ(bo.quantizer.rounding, Rounding::STOCHASTIC);
  GradientCompressionSpec g;
  g.method = "powersgd";
  g.rank = 8;
  EXPECT_EQ(gradientOptionsFromSpec(g).rank, 8);
  g.method = "topk";
  g.ratio = 0;
  EXPECT_THROW(gradientOptionsFromSpec(g), ConfigError);
}

TEST(BackwardCompression, DirectQuantizationOfActivationGradients) {
  BackwardCompressionSpec b;
  b.method = "quantize";
  b.bits = 8;
  auto opt = backwardOptionsFromSpec(b);
  auto g = randn(4 * 16 * 32, 3, 0.01f);
  auto msg = encodeTensor(opt, g.data(), {4, 16, 32});
  auto d = decodeTensor(msg);
  // Per channel (the last dimension, 32) max-abs scales, round to nearest:
  // every element within half a step of its channel's grid (nearestBound).
  const auto bound = nearestBound(g, 8, 32, [](size_t i) { return i % 32; });
  for (size_t i = 0; i < g.size(); ++i)
    ASSERT_LE(std::fabs(d.values[i] - g[i]), bound[i]) << "element " << i;
  EXPECT_LT(msg.wireBytes(), g.size() * 4 / 3);
}

}  // namespace
}  // namespace geopipe::compression
