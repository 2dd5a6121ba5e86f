// The plan command's text and JSON output (src/cli/plan_command.cc).
#include <gtest/gtest.h>

#include <sstream>

#include <nlohmann/json.hpp>

#include "geopipe/error.h"
#include "scheduler/allocation.h"
#include "scheduler/scenarios.h"
#include "src/cli/plan_command.h"
#include "src/config/buffer_check.h"
#include "src/config/job_parser.h"

namespace geopipe::cli {
namespace {

TEST(PlanCommand, JsonHasTheDocumentedKeys) {
  JobSpec job = scheduler::paperJob(5);
  PlanOverrides o;
  o.json = true;
  o.budget_seconds = 0;
  o.budget_evaluations = 2000;
  o.seed = 3;
  std::ostringstream out;
  ASSERT_EQ(runPlan(job, o, out), 0);
  const auto j = nlohmann::json::parse(out.str());
  for (const char* key : {"cost_model", "algorithm", "predicted_step_s", "breakdown",
                          "allocation", "baselines", "search_seconds", "evaluations"})
    EXPECT_TRUE(j.contains(key)) << key;
  EXPECT_EQ(j["cost_model"], "dtfm");
  EXPECT_EQ(j["algorithm"], "evolutionary");
  ASSERT_EQ(j["allocation"].size(), 64u);
  std::vector<int> seen(64, 0);
  for (const auto& t : j["allocation"]) {
    ++seen[t["device"].get<int>()];
    // Model layers as the runtime numbers them: 3 blocks a stage, the
    // embedding (layer 0) on stage 0 and the head (layer 25) on stage 7.
    const int stage = t["stage"].get<int>();
    ASSERT_EQ(t["layers"].size(), 2u);
    EXPECT_EQ(t["layers"][0].get<int>(), stage == 0 ? 0 : 1 + 3 * stage);
    EXPECT_EQ(t["layers"][1].get<int>(), stage == 7 ? 26 : 1 + 3 * (stage + 1));
    EXPECT_TRUE(t["site"].is_string());
  }
  for (int c : seen) EXPECT_EQ(c, 1);
  const double ours = j["predicted_step_s"];
  EXPECT_GE(j["baselines"]["in-order"]["predicted_step_s"].get<double>(), ours);
  EXPECT_GE(j["baselines"]["random"]["predicted_step_s"].get<double>(), ours);
  const auto& b = j["breakdown"];
  EXPECT_NEAR(b["compute_s"].get<double>() + b["bubble_s"].get<double>() +
                  b["pipeline_comm_s"].get<double>() +
                  b["data_parallel_comm_s"].get<double>(),
              ours, 1e-9);
}

TEST(PlanCommand, TextAndOverrides) {
  JobSpec job = scheduler::paperJob(3);
  PlanOverrides o;
  o.algorithm = "in-order";
  std::ostringstream out;
  ASSERT_EQ(runPlan(job, o, out), 0);
  const std::string s = out.str();
  EXPECT_NE(s.find("predicted step time"), std::string::npos) << s;
  EXPECT_NE(s.find("data parallel comm"), std::string::npos);
  EXPECT_NE(s.find("in-order"), std::string::npos);
  EXPECT_NE(s.find("ohio"), std::string::npos);
  o.cost_model = "bogus";
  EXPECT_THROW(runPlan(job, o, out), ConfigError);
}

// A DiLoCo job's plan shows one round's exchange and the same placement's
// step under every-step sync, in text and JSON.
TEST(PlanCommand, DilocoShowsTheEveryStepSyncStepBesideIt) {
  JobSpec job = scheduler::paperJob(3);
  job.scheduler.cost_model = "geopipe";
  job.parallelism.data_parallel_sync.kind = "diloco";
  job.parallelism.data_parallel_sync.inner_steps = 100;
  PlanOverrides o;
  o.algorithm = "in-order";
  std::ostringstream out;
  ASSERT_EQ(runPlan(job, o, out), 0);
  const std::string s = out.str();
  EXPECT_NE(s.find("DiLoCo: one outer exchange of "), std::string::npos) << s;
  EXPECT_NE(s.find(" s every 100 steps, after the round's last step"), std::string::npos) << s;
  EXPECT_NE(s.find("every-step sync on this placement: "), std::string::npos) << s;
  o.json = true;
  std::ostringstream js;
  ASSERT_EQ(runPlan(job, o, js), 0);
  const auto j = nlohmann::json::parse(js.str());
  ASSERT_TRUE(j.contains("diloco")) << js.str();
  EXPECT_EQ(j["diloco"]["inner_steps"], 100);
  EXPECT_GT(j["diloco"]["every_step_sync_step_s"].get<double>(),
            j["predicted_step_s"].get<double>());
  EXPECT_GT(j["diloco"]["outer_exchange_s"].get<double>(), 0);
  o.cost_model = "dtfm";
  EXPECT_THROW(runPlan(job, o, out), ConfigError);
}

// plan builds no model: a custom one (a plugin's, or the user's program's)
// is priced as a GPT of its shape, and plan says so.
TEST(PlanCommand, SaysACustomModelIsPricedAsAGpt) {
  JobSpec job = scheduler::paperJob(3);
  PlanOverrides o;
  o.algorithm = "in-order";
  std::ostringstream plain;
  ASSERT_EQ(runPlan(job, o, plain), 0);
  EXPECT_EQ(plain.str().find("priced as a GPT"), std::string::npos);
  job.model.kind = "custom";
  std::ostringstream out;
  ASSERT_EQ(runPlan(job, o, out), 0);
  EXPECT_NE(out.str().find("the model is priced as a GPT of its shape"), std::string::npos)
      << out.str();
  o.json = true;
  std::ostringstream js;
  ASSERT_EQ(runPlan(job, o, js), 0);
  EXPECT_EQ(nlohmann::json::parse(js.str())["model_priced_as"], "gpt");
}

// A custom model whose ModelDef gives its cost (a plugin's, which
// runPlanCommand loads) is priced by it, and plan no longer says "GPT".
TEST(PlanCommand, SaysACustomModelIsPricedByItsOwnCost) {
  JobSpec job = scheduler::paperJob(3);
  job.model.kind = "custom";
  job.model.name = "mine";
  job.model.plugin = "/plugins/libmine.so";
  const LayerCost block{1e6, 1e9, 1e5};
  job.model.cost.body.assign(static_cast<size_t>(job.model.layers), block);
  job.model.cost.prologue = block;
  job.model.cost.epilogue = block;
  PlanOverrides o;
  o.algorithm = "in-order";
  std::ostringstream out;
  ASSERT_EQ(runPlan(job, o, out), 0);
  EXPECT_NE(out.str().find("note: model 'mine' is priced by the cost its ModelDef gives"),
            std::string::npos)
      << out.str();
  EXPECT_EQ(out.str().find("GPT"), std::string::npos) << out.str();
  o.json = true;
  std::ostringstream js;
  ASSERT_EQ(runPlan(job, o, js), 0);
  EXPECT_EQ(nlohmann::json::parse(js.str())["model_priced_as"], "own_cost");
  // The plugin's model gives no cost: priced as a GPT, and said so.
  job.model.cost = {};
  std::ostringstream none;
  o.json = false;
  ASSERT_EQ(runPlan(job, o, none), 0);
  EXPECT_NE(none.str().find("of model.plugin gives no cost (ModelDef::cost), so the model is "
                            "priced as a GPT of its shape"),
            std::string::npos)
      << none.str();
}

// plan prices the links the run will have: with emulated links it applies
// transport.bandwidth_scale and latency_scale, as train and the runtime's
// placement do (scheduler::effectiveNetworkJob), so it predicts the same
// step as the plan of a topology scaled by hand.
TEST(PlanCommand, PricesTheScaledLinksTrainEmulates) {
  JobSpec job = scheduler::paperJob(5);
  job.scheduler.cost_model = "geopipe";
  job.parallelism.data_parallel = 8;
  PlanOverrides o;
  o.json = true;
  o.algorithm = "in-order";
  auto predicted = [&](const JobSpec& j) {
    std::ostringstream out;
    EXPECT_EQ(runPlan(j, o, out), 0);
    return nlohmann::json::parse(out.str())["predicted_step_s"].get<double>();
  };
  const double base = predicted(job);
  JobSpec scaled = job;
  scaled.transport.emulate_links = true;
  scaled.transport.bandwidth_scale = 0.1;
  scaled.transport.latency_scale = 2.0;
  JobSpec by_hand = job;
  for (auto& row : by_hand.topology.site_links)
    for (auto& link : row) {
      link.bandwidth_gbps *= 0.1;
      link.latency_ms *= 2.0;
    }
  for (auto& site : by_hand.topology.sites) {
    site.intra.bandwidth_gbps *= 0.1;
    site.intra.latency_ms *= 2.0;
  }
  EXPECT_GT(predicted(scaled), base * 1.5);
  EXPECT_DOUBLE_EQ(predicted(scaled), predicted(by_hand));
  scaled.transport.emulate_links = false;  // real links: no scaling
  EXPECT_DOUBLE_EQ(predicted(scaled), base);
}

TEST(PlanCommand, LayersAreNumberedAsTheRuntimeDoes) {
  using Ranges = std::vector<std::pair<int, int>>;
  EXPECT_EQ(scheduler::modelLayerRanges({2, 2}), (Ranges{{0, 3}, {3, 6}}));
  EXPECT_EQ(scheduler::modelLayerRanges({4}), (Ranges{{0, 6}}));
  EXPECT_EQ(scheduler::modelLayerRanges({1, 2, 1}, 1, 1), (Ranges{{0, 2}, {2, 4}, {4, 6}}));
}

// An AC-SGD job: plan shows each tasklet's buffers (text and JSON) with the
// numbers validate computes, and refuses a placement they do not fit with
// those numbers and the fixes.
TEST(PlanCommand, ShowsAndChecksAcsgdBuffers) {
  JobSpec job = config::parseJobString(R"(
model: {preset: none, layers: 4, hidden: 64, heads: 2, seq_len: 32, vocab: 256}
data: {kind: synthetic, num_samples: 1000}
training: {steps: 1000, global_batch: 8, micro_batch: 2}
parallelism: {pipeline_stages: 2, data_parallel: 2}
compression: {activations: {method: acsgd, bits: 4, buffer_format: quantized}}
scheduler: {budget: {evaluations: 500, seconds: 0}}
topology:
  device_defaults: {gpu: cpu, tflops: 1, memory_gb: 8}
  sites: [{name: a, devices: 4, intra: {latency_ms: 1, bandwidth_gbps: 1}}]
)",
                                       "j.yaml", "");
  const config::AcsgdBufferMemory b = config::acsgdBufferMemory(job, 2);
  ASSERT_TRUE(b.counted);
  EXPECT_EQ(b.samples_per_replica, 500);
  PlanOverrides o;
  std::ostringstream text;
  ASSERT_EQ(runPlan(job, o, text), 0);
  EXPECT_NE(text.str().find("AC-SGD buffers (compression.activations, buffer_store memory)"),
            std::string::npos)
      << text.str();
  EXPECT_NE(text.str().find(config::describeStore(b)), std::string::npos) << text.str();
  EXPECT_NE(text.str().find("device memory needed"), std::string::npos) << text.str();
  o.json = true;
  std::ostringstream js;
  ASSERT_EQ(runPlan(job, o, js), 0);
  const auto j = nlohmann::json::parse(js.str());
  ASSERT_TRUE(j.contains("acsgd_buffers")) << js.str();
  const auto& a = j["acsgd_buffers"];
  EXPECT_EQ(a["store_bytes"].get<uint64_t>(), b.store_bytes);
  EXPECT_EQ(a["samples_per_replica"].get<int64_t>(), 500);
  EXPECT_EQ(a["format"], "quantized 8-bit");
  EXPECT_EQ(a["stages"].size(), 2u);
  EXPECT_GT(a["stages"][0]["device_memory_bytes"].get<double>(), double(b.store_bytes));
  for (const auto& t : j["allocation"]) {
    EXPECT_EQ(t["acsgd_buffer_bytes"].get<uint64_t>(), b.store_bytes);
  }
  // Devices that hold the buffers but not the buffers and the weights.
  for (auto& d : job.topology.devices) d.memory_gb = double(b.store_bytes) / (1 << 30) * 1.001;
  o.json = false;
  try {
    ASSERT_EQ(runPlan(job, o, text), 0);
    FAIL() << "expected InfeasibleError";
  } catch (const InfeasibleError& e) {
    const std::string msg = e.what();
    for (const std::string& want :
         {std::string(" GiB, AC-SGD buffers "),  // the planner's share of the stage's memory
          "AC-SGD buffers: " + config::describeStore(b),
          std::string("buffer_store: mmap with a buffer_dir"),
          std::string("buffer_format: quantized")}) {
      EXPECT_NE(msg.find(want), std::string::npos) << "lacks: " << want << "\n" << msg;
    }
  }
  // dtfm prices no memory: plan checks the buffers alone against the devices.
  for (auto& d : job.topology.devices) d.memory_gb = double(b.store_bytes) / (1 << 30) * 0.9;
  o.cost_model = "dtfm";
  try {
    ASSERT_EQ(runPlan(job, o, text), 0);
    FAIL() << "expected InfeasibleError";
  } catch (const InfeasibleError& e) {
    EXPECT_NE(std::string(e.what()).find("do not fit topology"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace geopipe::cli

#include "src/cli/bench_scheduler.h"

namespace geopipe::cli {
namespace {

TEST(SchedulerBench, PrintsOneRowPerScenarioAndBeatsBaselines) {
  SchedulerBenchOptions o;
  o.scenarios = {scheduler::paperJob(1), scheduler::paperJob(5)};
  o.scenario_budget_seconds = 0;
  o.scenario_budget_evaluations = 1500;
  o.synthetic_devices = {};
  std::ostringstream out;
  EXPECT_EQ(runSchedulerBench(o, out), 0) << out.str();
  EXPECT_NE(out.str().find("dtfm-world-wide"), std::string::npos) << out.str();
  EXPECT_EQ(out.str().find("!worse"), std::string::npos);
}

}  // namespace
}  // namespace geopipe::cli
