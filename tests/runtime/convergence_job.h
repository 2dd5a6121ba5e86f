// The tiny GPT job the convergence tests train (fortunes, 300 steps) and
// how they read its final loss; shared so the runs they compare are alike.
#pragma once

#include <numeric>
#include <string>

#include "geopipe/trainer.h"
#include "src/config/job_parser.h"

namespace geopipe::testing {

// The tiny GPT on 512 fortunes samples, 300 AdamW steps, `stages` stages on
// one site of `stages` devices (no link emulation), no compression.
inline JobSpec convergenceJob(int stages) {
  const std::string n = std::to_string(stages);
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
parallelism: {pipeline_stages: )" + n +
                                    R"(, data_parallel: 1}
topology:
  sites: [{name: a, devices: )" + n +
                                    R"(, intra: {latency_ms: 0, bandwidth_gbps: 10}}]
transport: {emulate_links: false}
)",
                                "demo.yaml", "");
}

// Mean of the last 20 steps' losses: one step's loss is noisy.
inline double finalLoss(const TrainResult& r) {
  return std::accumulate(r.losses.end() - 20, r.losses.end(), 0.0) / 20.0;
}

}  // namespace geopipe::testing
