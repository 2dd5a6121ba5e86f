// Stages on cuda: the in-process Trainer with training.device cuda follows
// the CPU run's loss trajectory (float sums in another order on the GPU, so
// to 1e-3; 1e-2 with compression), with 2 stages x 2 replicas, uncompressed
// and with AC-SGD and a compressed gradient exchange (staged through the host). Skipped, with the
// reason, where LibTorch sees no CUDA device (a CPU-only LibTorch included).
#include <gtest/gtest.h>

#include <cmath>

#include "geopipe/error.h"
#include "geopipe/trainer.h"
#include "src/config/job_parser.h"

using namespace geopipe;

namespace {

JobSpec tinyJob(const std::string& device, const std::string& compression) {
  JobSpec job = config::parseJobString(R"(
model: {preset: none, layers: 4, hidden: 32, heads: 2, seq_len: 16, vocab: 16}
data: {kind: synthetic, num_samples: 256}
training:
  steps: 12
  global_batch: 8
  micro_batch: 1
  optimizer: {kind: adamw, lr: 1.0e-2}
  seed: 7
parallelism: {pipeline_stages: 2, data_parallel: 2}
topology:
  sites: [{name: a, devices: 4, intra: {latency_ms: 0, bandwidth_gbps: 10}}]
transport: {emulate_links: false}
)" + compression, "tiny.yaml", "");
  job.training.device = device;
  return job;
}

std::vector<double> losses(const JobSpec& job) {
  TrainerOptions opt;
  opt.threads_per_tasklet = 1;
  return Trainer(makeModel(job.model), job, opt).train().losses;
}

// `tolerance` relative per step: 1e-3 uncompressed (float sums in another
// order). With quantised boundaries and gradients a last-bit difference can
// move a value across a rounding edge and change its code, so the runs drift
// further apart (measured on an H100: 1.8e-3 at step 12); 1e-2 there.
void expectSameTrajectory(const std::string& compression, double tolerance) {
  const auto cpu = losses(tinyJob("cpu", compression));
  const auto gpu = losses(tinyJob("cuda", compression));
  ASSERT_EQ(cpu.size(), gpu.size());
  for (size_t i = 0; i < cpu.size(); ++i) {
    EXPECT_NEAR(gpu[i], cpu[i], tolerance * std::abs(cpu[i])) << "step " << i;
  }
  EXPECT_LT(cpu.back(), cpu.front());  // it trained
}

TEST(CudaTrainer, StagesOnCudaFollowTheCpuRun) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "LibTorch sees no CUDA device";
  expectSameTrajectory("", 1e-3);
}

TEST(CudaTrainer, CompressedBoundariesAndGradientsOnCuda) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "LibTorch sees no CUDA device";
  expectSameTrajectory(R"(
compression:
  activations: {method: acsgd, bits: 4}
  backward: {method: quantize, bits: 8}
  gradients: {method: quantize, bits: 8}
)", 1e-2);
}

TEST(CudaTrainer, CudaWithoutADeviceIsRefusedClearly) {
  if (torch::cuda::is_available()) GTEST_SKIP() << "a CUDA device is visible";
  JobSpec job = tinyJob("cuda", "");
  try {
    losses(job);
    FAIL() << "training on cuda without a device did not throw";
  } catch (const InfeasibleError& e) {
    EXPECT_NE(std::string(e.what()).find("LibTorch sees no CUDA device"), std::string::npos)
        << e.what();
  }
}

}  // namespace
