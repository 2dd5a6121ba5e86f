// The paper's key claim on a small model split at one pipeline boundary:
// AC-SGD with 2-bit deltas reaches the uncompressed loss (within 2%), while
// direct 2-bit quantisation of the same activations ends measurably worse.
//
// Task: a fixed dataset of N sequences (x [T, 16] -> y [T, 4]) produced by a
// random teacher network, revisited for many epochs so the per-sample
// buffers m(xi) matter. Stage 1 = Linear+GELU+Linear ([B, T, 64] at the
// boundary), stage 2 = GELU+Linear+GELU+Linear. The backward activation
// gradient is sent with 8-bit direct quantisation in all compressed runs, as
// in the paper. Loss is the uncompressed model's MSE over the whole dataset.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "compression/torch/tensor_adapter.h"

namespace geopipe::compression {
namespace {

constexpr int64_t kN = 256, kT = 8, kIn = 16, kHid = 64, kOut = 4, kBatch = 16;

enum class Mode { FP32, ACSGD, DIRECT };

struct Data {
  torch::Tensor x, y;
};

Data makeData() {
  torch::manual_seed(123);
  auto x = torch::randn({kN, kT, kIn});
  auto w1 = torch::randn({kIn, 32}) / 4, w2 = torch::randn({32, kOut}) / 5;
  auto y = torch::tanh(x.matmul(w1)).matmul(w2) + 0.3 * torch::sin(x.narrow(2, 0, kOut));
  return {x, y};
}

double train(Mode mode, const Data& d, int epochs) {
  torch::manual_seed(7);
  torch::nn::Sequential s1(torch::nn::Linear(kIn, kHid), torch::nn::GELU(),
                           torch::nn::Linear(kHid, kHid));
  torch::nn::Sequential s2(torch::nn::GELU(), torch::nn::Linear(kHid, kHid), torch::nn::GELU(),
                           torch::nn::Linear(kHid, kOut));
  std::vector<torch::Tensor> params = s1->parameters();
  for (auto& p : s2->parameters()) params.push_back(p);
  const double lr0 = 3e-3;
  torch::optim::Adam opt(params, torch::optim::AdamOptions(lr0));

  DeltaCompressorOptions dopt;
  dopt.quantizer.bits = 2;  // per channel, nearest: the paper's quantiser
  DeltaSender tx(dopt, makeBufferStore({}));
  DeltaReceiver rx(dopt, makeBufferStore({}));
  TensorCodecOptions direct;
  direct.quantizer.bits = 2;
  TensorCodecOptions backward;
  backward.quantizer.bits = 8;

  const int steps_per_epoch = kN / kBatch;
  const int total = epochs * steps_per_epoch;
  torch::Generator gen = at::detail::createCPUGenerator(99);
  int step = 0;
  for (int e = 0; e < epochs; ++e) {
    auto perm = torch::randperm(kN, gen, torch::kLong);
    for (int b = 0; b < steps_per_epoch; ++b, ++step) {
      const double lr = lr0 * 0.5 * (1 + std::cos(M_PI * step / total));  // cosine to 0
      for (auto& g : opt.param_groups()) static_cast<torch::optim::AdamOptions&>(g.options()).lr(lr);
      auto ids = perm.narrow(0, b * kBatch, kBatch);
      auto xb = d.x.index_select(0, ids), yb = d.y.index_select(0, ids);
      opt.zero_grad();
      auto a = s1->forward(xb);
      torch::Tensor recv;
      if (mode == Mode::FP32) {
        recv = a.detach();
      } else if (mode == Mode::ACSGD) {
        recv = decodeActivations(rx, ids, encodeActivations(tx, ids, a, step));
      } else {
        recv = decodeToTensor(encodeTensor(direct, a, step));
      }
      recv.requires_grad_(true);
      auto loss = torch::mse_loss(s2->forward(recv), yb);
      loss.backward();
      auto ga = recv.grad();
      if (mode != Mode::FP32) ga = decodeToTensor(encodeTensor(backward, ga, step));
      a.backward(ga);
      opt.step();
    }
  }
  torch::NoGradGuard ng;
  return torch::mse_loss(s2->forward(s1->forward(d.x)), d.y).item<double>();
}

TEST(Convergence, AcsgdTwoBitMatchesFp32DirectTwoBitDoesNot) {
  const Data d = makeData();
  const int epochs = 60;
  const double fp32 = train(Mode::FP32, d, epochs);
  const double acsgd = train(Mode::ACSGD, d, epochs);
  const double direct = train(Mode::DIRECT, d, epochs);
  std::printf("final MSE: fp32 %.5f  acsgd-2bit %.5f (%+.2f%%)  direct-2bit %.5f (%+.2f%%)\n",
              fp32, acsgd, 100 * (acsgd / fp32 - 1), direct, 100 * (direct / fp32 - 1));
  EXPECT_LE(acsgd, fp32 * 1.02) << "AC-SGD 2-bit should reach the fp32 loss within 2%";
  EXPECT_GT(direct, fp32 * 1.10) << "direct 2-bit quantisation should end measurably worse";
  EXPECT_GT(direct, acsgd * 1.10);
}

}  // namespace
}  // namespace geopipe::compression
