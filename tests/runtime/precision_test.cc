// Mixed precision: bf16 autocast on the CPU with fp32 master weights, the
// compute dtype on the wire, fp16 refused without CUDA, and the fp16 loss
// scaler's rules.
#include <gtest/gtest.h>

#include <cmath>

#include "geopipe/error.h"
#include "geopipe/trainer.h"
#include "src/config/job_parser.h"
#include "src/runtime/precision.h"

using namespace geopipe;

namespace {

TEST(Precision, AutocastRunsMatmulsInBf16AndEnds) {
  torch::nn::Linear lin(8, 8);
  auto x = torch::randn({2, 8});
  {
    runtime::AutocastScope scope("bf16", torch::kCPU);
    EXPECT_EQ(lin->forward(x).scalar_type(), torch::kBFloat16);
  }
  EXPECT_EQ(lin->forward(x).scalar_type(), torch::kFloat32);
  runtime::AutocastScope none("fp32", torch::kCPU);
  EXPECT_EQ(lin->forward(x).scalar_type(), torch::kFloat32);
  EXPECT_EQ(lin->weight.scalar_type(), torch::kFloat32);  // master weights stay fp32
}

JobSpec job(const std::string& dtype) {
  return config::parseJobString(R"(
model: {kind: gpt2, preset: none, layers: 2, hidden: 64, heads: 4, seq_len: 32, vocab: 256, dtype: )" +
                                    dtype + R"(}
data: {kind: fortunes}
training: {steps: 40, global_batch: 8, micro_batch: 2, optimizer: {lr: 1.0e-3}, grad_clip: 1.0, seed: 3}
parallelism: {pipeline_stages: 2}
topology:
  sites: [{name: a, devices: 2, intra: {latency_ms: 0, bandwidth_gbps: 10}}]
transport: {emulate_links: false}
)",
                                "mp.yaml", "");
}

// bf16 compute follows the fp32 run closely but not exactly, and sends
// half the bytes between stages (activations and their gradients in bf16).
TEST(Precision, Bf16TrainingStaysWithinABoundOfFp32) {
  TrainerOptions opt;
  opt.threads_per_tasklet = 1;
  uint64_t fp32_bytes = 0, bf16_bytes = 0, fp32_grad = 0, bf16_grad = 0;
  opt.on_step = [&](const StepMetrics& m) {
    fp32_bytes += m.activation_wire_bytes;
    fp32_grad += m.gradient_wire_bytes;
  };
  const JobSpec a = job("fp32");
  TrainResult full = Trainer(makeModel(a.model), a, opt).train();
  opt.on_step = [&](const StepMetrics& m) {
    bf16_bytes += m.activation_wire_bytes;
    bf16_grad += m.gradient_wire_bytes;
  };
  const JobSpec b = job("bf16");
  TrainResult half = Trainer(makeModel(b.model), b, opt).train();
  ASSERT_EQ(full.losses.size(), half.losses.size());
  double worst = 0;
  bool differ = false;
  for (size_t i = 0; i < full.losses.size(); ++i) {
    worst = std::max(worst, std::abs(full.losses[i] - half.losses[i]) / full.losses[i]);
    differ = differ || full.losses[i] != half.losses[i];
  }
  EXPECT_TRUE(differ) << "bf16 computed exactly like fp32: autocast is not on";
  EXPECT_LT(worst, 0.02) << "bf16 loss strays more than 2% from fp32";
  EXPECT_LT(full.losses.back(), full.losses.front() - 1.0);  // both learned
  EXPECT_LT(half.losses.back(), half.losses.front() - 1.0);
  // Frames carry sample ids and headers; the tensor part halves.
  EXPECT_LT(double(bf16_bytes), 0.52 * double(fp32_bytes));
  EXPECT_LT(double(bf16_grad), 0.52 * double(fp32_grad));
}

// With one stage nothing crosses a wire: a difference is the compute's.
TEST(Precision, Bf16ComputesInBf16WithinOneStage) {
  TrainerOptions opt;
  opt.threads_per_tasklet = 1;
  JobSpec a = job("fp32"), b = job("bf16");
  a.parallelism.pipeline_stages = b.parallelism.pipeline_stages = 1;
  a.training.steps = b.training.steps = 2;
  TrainResult full = Trainer(makeModel(a.model), a, opt).train();
  TrainResult half = Trainer(makeModel(b.model), b, opt).train();
  EXPECT_NE(full.losses[0], half.losses[0]);
  EXPECT_NEAR(full.losses[0], half.losses[0], 0.01 * full.losses[0]);
}

TEST(Precision, Fp16NeedsCuda) {
  const JobSpec j = job("fp16");
  try {
    Trainer(makeModel(j.model), j).train();
    FAIL() << "fp16 trained on the CPU";
  } catch (const InfeasibleError& e) {
    EXPECT_NE(std::string(e.what()).find("fp16 computes only on CUDA"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("use model.dtype bf16"), std::string::npos);
  }
}

TEST(LossScaler, HalvesOnOverflowAndGrowsAfterAnIntervalOfGoodSteps) {
  runtime::LossScaler s(1024.0, 3);
  EXPECT_TRUE(s.update(false));
  EXPECT_TRUE(s.update(false));
  EXPECT_EQ(s.scale(), 1024.0);
  EXPECT_TRUE(s.update(false));  // the third good step in a row
  EXPECT_EQ(s.scale(), 2048.0);
  EXPECT_FALSE(s.update(true));  // overflow: skip the step, halve
  EXPECT_EQ(s.scale(), 1024.0);
  EXPECT_EQ(s.goodSteps(), 0);
  s.restore(64.0, 2);
  EXPECT_TRUE(s.update(false));
  EXPECT_EQ(s.scale(), 128.0);
}

TEST(LossScaler, UnscaleDividesAndFindsNonFiniteGradients) {
  auto p = torch::zeros({3}, torch::requires_grad());
  p.mutable_grad() = torch::tensor({2.0f, 4.0f, 8.0f});
  EXPECT_FALSE(runtime::unscaleAndCheck({p}, 2.0));
  EXPECT_TRUE(torch::equal(p.grad(), torch::tensor({1.0f, 2.0f, 4.0f})));
  p.mutable_grad() = torch::tensor({1.0f, INFINITY, 0.0f});
  EXPECT_TRUE(runtime::unscaleAndCheck({p}, 2.0));
}

}  // namespace
