// Tiny jobs for the distributed tests, written to a fresh directory.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace geopipe::distributed::testing {

// A fresh directory under the temp dir, removed by the destructor.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::string tmpl =
        (std::filesystem::temp_directory_path() / "geopipe-dist-test-XXXXXX").string();
    path = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

// A `layers`-layer GPT (hidden 32), synthetic data, `steps` steps of a
// global batch of 8 in micro-batches of 2: the model, data and training
// sections of the tiny jobs.
inline std::string tinyModelAndTraining(int steps, int layers = 4) {
  return "model: {preset: none, layers: " + std::to_string(layers) +
         ", hidden: 32, heads: 2, seq_len: 16, vocab: 16}\n"
         "data: {kind: synthetic, num_samples: 256}\n"
         "training:\n"
         "  steps: " +
         std::to_string(steps) +
         "\n"
         "  global_batch: 8\n"
         "  micro_batch: 2\n"
         "  optimizer: {kind: adamw, lr: 1.0e-2}\n"
         "  seed: 7\n";
}

// 2 stages x 2 replicas of a 4-layer GPT (hidden 32), synthetic data, one
// 4-device site; `extra` is appended (more top-level keys).
inline std::string tinyJobYaml(int steps, const std::string& extra = "") {
  return "name: dist-tiny\n" + tinyModelAndTraining(steps) +
         "parallelism: {pipeline_stages: 2, data_parallel: 2}\n"
         "topology:\n"
         "  name: four\n"
         "  sites: [{name: local, devices: 4, intra: {latency_ms: 0, bandwidth_gbps: 100}}]\n" +
         extra;
}

inline std::string writeJob(const TempDir& dir, const std::string& name, const std::string& yaml) {
  const std::string path = dir.file(name);
  std::ofstream(path) << yaml;
  return path;
}

}  // namespace geopipe::distributed::testing
