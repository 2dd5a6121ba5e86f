// Import of Hugging Face model folders against an independent reference:
// tests/model/hf_reference.py (Debian's python3-torch, written from the
// published GPT-2 and Llama definitions) makes small random models in the HF
// layout and computes their logits; geopipe's imported model, cut into 1..4
// pipeline stages, must give the same logits to 1e-4.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "geopipe/error.h"
#include "geopipe/model.h"
#include "src/config/hf_config.h"
#include "src/config/job_parser.h"
#include "src/formats/safetensors.h"
#include "src/model/hf_import.h"
#include "src/runtime/placement.h"
#include "tests/model/python_reference.h"

using namespace geopipe;
namespace fs = std::filesystem;
using testing::python::TempDir;

namespace {

// The ModelSpec a job importing `dir` gets.
ModelSpec importSpec(const std::string& kind, const std::string& dir,
                     const std::string& extra = "") {
  const std::string yaml = "model: {kind: " + kind + ", from: " + dir + extra +
                           "}\ntopology:\n  sites: [{name: a, devices: 4, intra: {latency_ms: 0, "
                           "bandwidth_gbps: 10}}]\n";
  return config::parseJobString(yaml, "job.yaml", "").model;
}

// The logits of the whole model run as `stages` consecutive slices.
torch::Tensor stagedLogits(const ModelSpec& spec, int stages, const torch::Tensor& ids) {
  ModelDef m = makeModel(spec);
  auto ranges = runtime::stageLayerRanges(m, runtime::evenSplit(spec.layers, stages));
  torch::NoGradGuard guard;
  torch::Tensor x = ids;
  for (const auto& [first, last] : ranges) {
    auto slice = buildSlice(m, first, last, /*seed=*/99);
    x = slice->forward(x);
  }
  return x;
}

torch::Tensor idsTensor(const std::vector<std::vector<int64_t>>& rows) {
  auto t = torch::empty({static_cast<int64_t>(rows.size()), static_cast<int64_t>(rows[0].size())},
                        torch::kLong);
  for (size_t i = 0; i < rows.size(); ++i)
    for (size_t j = 0; j < rows[i].size(); ++j) t[i][j] = rows[i][j];
  return t;
}

void expectLogitsMatchReference(const std::string& kind, const std::string& make_args) {
  GEOPIPE_SKIP_WITHOUT_PYTHON_TORCH();
  TempDir d;
  const std::string dir = d.path + "/model";
  testing::python::run("make " + dir + " " + make_args);
  const std::vector<std::vector<int64_t>> rows = {{1, 5, 9, 2, 7, 3, 3, 8, 0, 4},
                                                  {6, 6, 2, 9, 1, 0, 5, 7, 2, 2}};
  const auto ref = nlohmann::json::parse(testing::python::run(
      "logits " + dir + " --ids " + "'1,5,9,2,7,3,3,8,0,4;6,6,2,9,1,0,5,7,2,2'"));
  const ModelSpec spec = importSpec(kind, dir);
  for (int stages = 1; stages <= 4; ++stages) {
    const torch::Tensor ours = stagedLogits(spec, stages, idsTensor(rows));
    ASSERT_EQ(ours.size(0), 2);
    double worst = 0;
    for (int64_t b = 0; b < ours.size(0); ++b)
      for (int64_t t = 0; t < ours.size(1); ++t)
        for (int64_t v = 0; v < ours.size(2); ++v)
          worst =
              std::max(worst, std::abs(ours[b][t][v].item<double>() - ref[b][t][v].get<double>()));
    EXPECT_LT(worst, 1e-4) << kind << " " << make_args << ", " << stages << " stages";
    EXPECT_GT(std::abs(ref[0][0][0].get<double>()), 0.0);
  }
}

TEST(HfImport, Gpt2LogitsEqualTheReferenceForOneToFourStages) {
  expectLogitsMatchReference("gpt2", "--family gpt2 --layers 4 --hidden 32 --heads 4 --vocab 64");
}

TEST(HfImport, Gpt2WithoutPrefixWithMaskBuffersAndAStoredTiedHead) {
  expectLogitsMatchReference("gpt2",
                             "--family gpt2 --layers 4 --no-prefix --with-buffers --inter 80");
}

TEST(HfImport, Gpt2UntiedHead) {
  expectLogitsMatchReference("gpt2", "--family gpt2 --layers 4 --tied 0 --dtype F16");
}

TEST(HfImport, LlamaGqaUntiedShardedLogitsEqualTheReference) {
  expectLogitsMatchReference(
      "llama",
      "--family llama --layers 4 --hidden 64 --heads 8 --kv-heads 2 --inter 96 "
      "--tied 0 --shards 3 --rope-theta 500000 --with-buffers");
}

TEST(HfImport, LlamaTiedBf16) {
  expectLogitsMatchReference("llama",
                             "--family llama --layers 4 --heads 4 --kv-heads 1 --dtype BF16");
}

// A tasklet reads only the tensors of its own layers.
TEST(HfImport, EachSliceReadsOnlyItsOwnTensors) {
  GEOPIPE_SKIP_WITHOUT_PYTHON_TORCH();
  TempDir d;
  const std::string dir = d.path + "/model";
  testing::python::run("make " + dir + " --family llama --layers 6 --hidden 64 --tied 0");
  const ModelSpec spec = importSpec("llama", dir);
  const ModelDef m = makeModel(spec);
  const formats::SafetensorsFolder folder(dir);
  uint64_t total = 0;
  for (const std::string& n : folder.names()) total += folder.info(n).byteSize();
  uint64_t sum = 0;
  for (const auto& [first, last] : runtime::stageLayerRanges(m, {2, 2, 2})) {
    ModelSpec no_load = spec;
    no_load.from.clear();
    auto slice = buildSlice(makeModel(no_load), first, last, 1);
    const uint64_t read = model::loadHfWeights(spec, slice, first, last);
    uint64_t expected = 0;
    for (const auto& item : config::planHfImport(spec, folder, first, last))
      expected += folder.info(item.file_name).byteSize();
    EXPECT_EQ(read, expected) << "layers [" << first << ", " << last << ")";
    EXPECT_LT(read, total / 2);
    sum += read;
  }
  EXPECT_EQ(sum, total);  // together the slices read every tensor once
}

// A stored lm_head.weight of a tied model must be the embedding.
TEST(HfImport, AStoredTiedHeadThatIsNotTheEmbeddingIsRefused) {
  GEOPIPE_SKIP_WITHOUT_PYTHON_TORCH();
  TempDir d;
  const std::string dir = d.path + "/model";
  testing::python::run("make " + dir + " --family gpt2 --tied 0");
  // Say "tied" although the file's head is its own weight.
  std::ifstream in(dir + "/config.json");
  auto cfg = nlohmann::json::parse(in);
  cfg["tie_word_embeddings"] = true;
  std::ofstream(dir + "/config.json") << cfg.dump();
  const ModelSpec spec = importSpec("gpt2", dir);
  try {
    stagedLogits(spec, 1, idsTensor({{1, 2}}));
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("lm_head.weight differs from the token embedding"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
