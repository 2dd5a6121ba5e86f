// The fine-tuning walk-through of docs/models.md, end to end with worker
// processes: import a Hugging Face folder, fine-tune it over emulated links
// with AC-SGD on 2 stages x 2 replicas, watch the validation loss fall,
// export, and evaluate the export: its loss is the run's last validation
// loss.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "tests/model/python_reference.h"

namespace fs = std::filesystem;
using testing::python::TempDir;

namespace {

std::string run(const std::string& cmd, int* rc) {
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int status = pclose(p);
  *rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

// A learnable stream: mostly t -> (5t + 3) mod 64, sometimes a random jump.
void writeTokens(const std::string& path, int n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint16_t> t(static_cast<size_t>(n));
  uint16_t x = 1;
  for (auto& v : t) {
    x = rng() % 8 == 0 ? static_cast<uint16_t>(rng() % 64)
                       : static_cast<uint16_t>((5 * x + 3) % 64);
    v = x;
  }
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(t.data()), 2 * n);
}

TEST(FineTune, ImportedModelLearnsOverEmulatedLinksWithAcsgdAndExportsWhatItLearned) {
  GEOPIPE_SKIP_WITHOUT_PYTHON_TORCH();
  TempDir d;
  writeTokens(d.path + "/train.bin", 288 * 32 + 1, 1);
  writeTokens(d.path + "/val.bin", 16 * 32 + 1, 2);
  testing::python::run("make " + d.path +
                       "/base --family llama --layers 4 --hidden 64 "
                       "--heads 4 --kv-heads 2 --vocab 64 --positions 64 --tied 1");
  std::ofstream(d.path + "/job.yaml") << R"(
name: finetune
model: {kind: llama, from: base, seq_len: 32}
data: {kind: tokens, path: train.bin, val_path: val.bin}
training:
  steps: 40
  global_batch: 8
  micro_batch: 2
  eval_every: 20
  optimizer: {kind: adamw, lr: 3.0e-3}
  grad_clip: 1.0
parallelism: {pipeline_stages: 2, data_parallel: 2}
compression:
  activations: {method: acsgd, bits: 4}
  backward: {method: quantize, bits: 8}
checkpoint: {dir: ckpt}
logging: {metrics_file: metrics.jsonl}
topology:
  sites:
    - {name: west, devices: 2, intra: {latency_ms: 1, bandwidth_gbps: 1}}
    - {name: east, devices: 2, intra: {latency_ms: 1, bandwidth_gbps: 1}}
  inter_site_default: {latency_ms: 20, bandwidth_gbps: 0.1}
transport: {emulate_links: true, bandwidth_scale: 0.5}
)";
  int rc = 0;
  const std::string geopipe = GEOPIPE_BINARY;
  const std::string out = run(geopipe + " launch " + d.path + "/job.yaml", &rc);
  ASSERT_EQ(rc, 0) << out;
  // Validation after steps 20 and 40 (and none before any training).
  std::vector<double> val;
  std::ifstream metrics(d.path + "/metrics.jsonl");
  for (std::string line; std::getline(metrics, line);) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("val_loss")) val.push_back(j["val_loss"].get<double>());
  }
  ASSERT_EQ(val.size(), 2u) << out;
  // The untrained import's validation loss, from the folder itself.
  const std::string base =
      run(geopipe + " eval --model " + d.path + "/base --data " + d.path + "/val.bin --seq-len 32",
          &rc);
  ASSERT_EQ(rc, 0) << base;
  double base_loss = 0, ppl = 0;
  ASSERT_EQ(
      std::sscanf(base.substr(base.rfind("loss ")).c_str(), "loss %lf ppl %lf", &base_loss, &ppl),
      2)
      << base;
  EXPECT_LT(val[0], base_loss) << out;
  EXPECT_LT(val[1], val[0]) << out;
  EXPECT_NE(out.find("validation loss"), std::string::npos) << out;

  const std::string exp =
      run(geopipe + " export " + d.path + "/ckpt --out " + d.path + "/tuned", &rc);
  ASSERT_EQ(rc, 0) << exp;
  // The export's mean loss on the validation file is the run's last
  // validation loss (another code path: one process, no pipeline, the
  // weights read back from the exported folder).
  const std::string tuned =
      run(geopipe + " eval --model " + d.path + "/tuned --data " + d.path + "/val.bin --seq-len 32",
          &rc);
  ASSERT_EQ(rc, 0) << tuned;
  double tuned_loss = 0;
  ASSERT_EQ(std::sscanf(tuned.substr(tuned.rfind("loss ")).c_str(), "loss %lf ppl %lf", &tuned_loss,
                        &ppl),
            2)
      << tuned;
  EXPECT_NEAR(tuned_loss, val[1], 1e-4 * val[1]);
  const std::string gen = run(geopipe + " generate --model " + d.path +
                                  "/tuned --prompt-ids 1,2,3 "
                                  "--max-new-tokens 8 --print-ids",
                              &rc);
  ASSERT_EQ(rc, 0) << gen;
  EXPECT_LT(val[1], std::log(64.0)) << out;  // better than uniform
}

}  // namespace
