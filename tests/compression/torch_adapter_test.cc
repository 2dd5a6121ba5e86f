// LibTorch adapter tests: shapes and dtypes survive, results match the span API.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <limits>

#include "compression/torch/tensor_adapter.h"
#include "geopipe/error.h"

namespace geopipe::compression {
namespace {

TEST(TorchAdapter, TensorRoundTripKeepsShapeAndDtype) {
  torch::manual_seed(0);
  auto x = torch::randn({3, 7, 16});
  TensorCodecOptions o;
  o.quantizer.bits = 8;
  auto y = decodeToTensor(encodeTensor(o, x));
  EXPECT_EQ(y.sizes(), x.sizes());
  // 8 bits, per-channel max-abs scales s_c (the last dimension), round to
  // nearest: each element within half a step, s_c / (2^8 - 1), of x, plus a
  // few ulps of s_c for the fp32 arithmetic (quantizer.h).
  ASSERT_EQ(o.quantizer.granularity, Granularity::CHANNEL);
  ASSERT_EQ(o.quantizer.rounding, Rounding::NEAREST);
  const auto s = x.abs().amax({0, 1});
  const auto bound = s / 255.0 + 4 * std::numeric_limits<float>::epsilon() * s;
  EXPECT_TRUE(((y - x).abs() <= bound).all().item<bool>())
      << "largest error / bound: " << ((y - x).abs() / bound).max().item<float>();
  auto h = x.to(torch::kHalf);
  auto yh = decodeToTensor(encodeTensor(o, h));
  EXPECT_EQ(yh.scalar_type(), torch::kHalf);
  EXPECT_THROW(encodeTensor(o, torch::ones({2, 2}, torch::kLong)), ConfigError);
}

TEST(TorchAdapter, AcsgdPairAndGradients) {
  DeltaCompressorOptions opt;
  opt.quantizer.bits = 2;
  DeltaSender tx(opt, makeBufferStore({}));
  DeltaReceiver rx(opt, makeBufferStore({}));
  auto ids = torch::tensor({4, 9}, torch::kLong);
  auto a = torch::randn({2, 5, 8});
  auto m1 = decodeActivations(rx, ids, encodeActivations(tx, ids, a));
  EXPECT_LT((m1 - a).abs().max().item<float>(), 1e-2f);  // fp16 first visit
  auto m2 = decodeActivations(rx, ids, encodeActivations(tx, ids, a + 0.01));
  EXPECT_EQ(m2.sizes(), a.sizes());
  GradientCompressorOptions go;
  GradientCompressor c0(go), c1(go);
  auto g0 = torch::randn({6, 4}), g1 = torch::randn({6, 4});
  auto mean = combineMeanTensor({compressGradient(c0, g0), compressGradient(c1, g1)});
  EXPECT_LT((mean - (g0 + g1) / 2).abs().max().item<float>(), 1e-2f);
}

}  // namespace
}  // namespace geopipe::compression
