// `geopipe train` through the built binary: --steps and --metrics override the
// job's fields, --plot writes the loss curve, and bad command lines and jobs
// are refused with the documented exit codes (docs/cli.md#exit-codes) and a
// message naming what is wrong. A 2-layer GPT on synthetic data: seconds.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/cli/cli_run.h"

namespace {

using namespace cli_test;

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// One stage, one replica; `extra` is appended (more top-level keys).
std::string tinyJob(int steps = 50, const std::string& extra = "") {
  return "name: cli-tiny\n"
         "model: {preset: none, layers: 2, hidden: 16, heads: 2, seq_len: 8, vocab: 16}\n"
         "data: {kind: synthetic, num_samples: 32}\n"
         "training:\n"
         "  steps: " +
         std::to_string(steps) +
         "\n"
         "  global_batch: 4\n"
         "  micro_batch: 2\n"
         "  optimizer: {kind: adamw, lr: 1.0e-2}\n"
         "  seed: 3\n"
         "parallelism: {pipeline_stages: 1, data_parallel: 1}\n"
         "transport: {emulate_links: false}\n"
         "topology:\n"
         "  name: one\n"
         "  sites: [{name: local, devices: 1, intra: {latency_ms: 0, bandwidth_gbps: 100}}]\n" +
         extra;
}

std::vector<nlohmann::json> jsonLines(const std::string& text) {
  std::vector<nlohmann::json> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

TEST(TrainCommand, StepsMetricsAndPlotOverrideTheJob) {
  TempDir dir;
  writeFile(dir.file("job.yaml"),
            tinyJob(50, "logging: {metrics_file: " + dir.file("from-job.jsonl") + "}\n"));
  const auto r = runGeopipe(dir, {"train", dir.file("job.yaml"), "--steps", "3", "--metrics",
                                  dir.file("m.jsonl"), "--plot", dir.file("loss.svg")});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_TRUE(contains(r.out, "training 'cli-tiny': 1 stages x 1 replicas, 3 steps")) << r.out;
  // --metrics replaces logging.metrics_file: one line per step, steps 0..2.
  EXPECT_FALSE(fs::exists(dir.file("from-job.jsonl")));
  const auto lines = jsonLines(readAll(dir.file("m.jsonl")));
  ASSERT_EQ(lines.size(), 3u) << readAll(dir.file("m.jsonl"));
  for (size_t i = 0; i < lines.size(); ++i) EXPECT_EQ(lines[i].at("step"), i);
  EXPECT_TRUE(contains(readAll(dir.file("loss.svg")), "<svg")) << "--plot";
  EXPECT_TRUE(contains(r.out, "loss curve: " + dir.file("loss.svg"))) << r.out;
}

TEST(TrainCommand, WithoutOverridesTheJobDecides) {
  TempDir dir;
  writeFile(dir.file("job.yaml"),
            tinyJob(2, "logging: {metrics_file: " + dir.file("from-job.jsonl") + "}\n"));
  const auto r = runGeopipe(dir, {"train", dir.file("job.yaml")});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_EQ(jsonLines(readAll(dir.file("from-job.jsonl"))).size(), 2u);
}

TEST(TrainCommand, BadCommandLinesAreUsageErrors) {
  TempDir dir;
  writeFile(dir.file("job.yaml"), tinyJob());
  for (const std::vector<std::string>& args : {std::vector<std::string>{"train"},
                                               {"train", dir.file("job.yaml"), "--steps", "0"},
                                               {"train", dir.file("job.yaml"), "--steps", "-2"},
                                               {"train", dir.file("job.yaml"), "--steps", "many"},
                                               {"train", dir.file("job.yaml"), "--stpes", "2"}}) {
    const auto r = runGeopipe(dir, args);
    EXPECT_EQ(r.code, 2) << args.back() << "\n" << r.err;
  }
  EXPECT_FALSE(fs::exists(dir.file("metrics.jsonl")));
}

TEST(TrainCommand, BadJobsAreRefusedNamingTheProblem) {
  TempDir dir;
  // No such file: exit 4, naming it.
  auto r = runGeopipe(dir, {"train", dir.file("absent.yaml")});
  EXPECT_EQ(r.code, 4) << r.err;
  EXPECT_TRUE(contains(r.err, "absent.yaml")) << r.err;
  // A misspelt field: exit 1, the field's line and a suggestion.
  std::string typo = tinyJob();
  typo.replace(typo.find("global_batch"), 12, "global_bacth");
  writeFile(dir.file("typo.yaml"), typo);
  r = runGeopipe(dir, {"train", dir.file("typo.yaml"), "--steps", "1"});
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_TRUE(contains(r.err, "typo.yaml:6:")) << r.err;
  EXPECT_TRUE(contains(r.err, "did you mean 'global_batch'")) << r.err;
  // A metrics file that cannot be written: exit 4, naming the field.
  writeFile(dir.file("job.yaml"), tinyJob());
  r = runGeopipe(dir, {"train", dir.file("job.yaml"), "--steps", "1", "--metrics",
                       dir.file("no-such-dir/m.jsonl")});
  EXPECT_EQ(r.code, 4) << r.err;
  EXPECT_TRUE(contains(r.err, "logging.metrics_file")) << r.err;
}

}  // namespace
