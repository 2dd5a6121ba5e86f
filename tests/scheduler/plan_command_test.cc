// The plan command's text and JSON output (src/cli/plan_command.cc).
#include <gtest/gtest.h>

#include <sstream>

#include <nlohmann/json.hpp>

#include "geopipe/error.h"
#include "scheduler/scenarios.h"
#include "src/cli/plan_command.h"

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
    EXPECT_EQ(t["layers"].size(), 2u);
    EXPECT_EQ(t["layers"][1].get<int>() - t["layers"][0].get<int>(), 3);
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
  runPlan(job, o, out);
  const std::string s = out.str();
  EXPECT_NE(s.find("predicted step time"), std::string::npos) << s;
  EXPECT_NE(s.find("data parallel comm"), std::string::npos);
  EXPECT_NE(s.find("in-order"), std::string::npos);
  EXPECT_NE(s.find("ohio"), std::string::npos);
  o.cost_model = "bogus";
  EXPECT_THROW(runPlan(job, o, out), ConfigError);
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
