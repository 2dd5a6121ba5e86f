// LibTorch adapter tests: shapes and dtypes survive, results match the span API.
#include <gtest/gtest.h>
#include <torch/torch.h>

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
  EXPECT_LT((y - x).abs().max().item<float>(), 0.05f);
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
