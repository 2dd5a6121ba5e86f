// The issue's target, end to end: the tiny GPT on the demo data (Debian's
// fortunes), 2 stages, 300 steps; AC-SGD 4-bit activations (and 8-bit
// backward gradients) end within 2% of the uncompressed loss.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "geopipe/trainer.h"
#include "src/config/job_parser.h"

using namespace geopipe;

namespace {

JobSpec demoJob() {
  return config::parseJobString(R"(
model: {preset: tiny}
data: {kind: fortunes, num_samples: 512}
training:
  steps: 300
  global_batch: 8
  micro_batch: 2
  optimizer: {kind: adamw, lr: 2.0e-3, weight_decay: 0.01}
  lr_schedule: {kind: cosine, warmup_steps: 20, min_lr: 2.0e-4}
  grad_clip: 1.0
  seed: 11
parallelism: {pipeline_stages: 2, data_parallel: 1}
topology:
  sites: [{name: a, devices: 2, intra: {latency_ms: 0, bandwidth_gbps: 10}}]
transport: {emulate_links: false}
)", "demo.yaml", "");
}

// Mean of the last 20 steps' losses: one step's loss is noisy.
double finalLoss(const TrainResult& r) {
  return std::accumulate(r.losses.end() - 20, r.losses.end(), 0.0) / 20.0;
}

TEST(AcsgdConvergence, FourBitMatchesUncompressedWithin2Percent) {
  JobSpec job = demoJob();
  TrainResult fp32 = Trainer(makeModel(job.model), job).train();
  job.compression.activations.method = "acsgd";
  job.compression.activations.bits = 4;
  job.compression.backward.method = "quantize";
  job.compression.backward.bits = 8;
  TrainResult acsgd = Trainer(makeModel(job.model), job).train();
  const double a = finalLoss(fp32), b = finalLoss(acsgd);
  std::printf("final loss (mean of last 20 steps): fp32 %.4f, acsgd-4bit %.4f (%+.2f%%)\n", a, b,
              100.0 * (b - a) / a);
  EXPECT_LT(a, std::log(256.0) - 1.0);  // it learned something
  EXPECT_LE(std::abs(b - a) / a, 0.02);
}

}  // namespace
