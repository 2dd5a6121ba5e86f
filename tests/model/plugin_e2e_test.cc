// Model plugins through the built binary (issue 20 item 4): the custom-model
// example built as libgeopipe_example_model.so is trained by `geopipe
// launch` as worker processes and by `train --plugin`; its model.options
// reach its factory, and its own per-layer cost moves the scheduler's layer
// split; every way loading a plugin can fail is named. A 4-block shift-MLP
// on synthetic data: seconds per run.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "tests/cli/cli_run.h"

namespace {

using namespace cli_test;

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// The example model, 2 stages x 1 replica on two local devices; `model_extra`
// adds model fields (plugin, options).
std::string job(const std::string& model_extra, int steps = 12) {
  return "name: plugin-job\n"
         "model: {kind: custom, name: shift-mlp, preset: none, layers: 4, hidden: 32, heads: 1,\n"
         "        seq_len: 16, vocab: 32" +
         model_extra +
         "}\n"
         "data: {kind: synthetic, num_samples: 128}\n"
         "training: {steps: " +
         std::to_string(steps) +
         ", global_batch: 8, micro_batch: 2, seed: 5,\n"
         "           optimizer: {kind: adamw, lr: 3.0e-3}}\n"
         "parallelism: {pipeline_stages: 2, data_parallel: 1}\n"
         "logging: {metrics_file: metrics.jsonl}\n"
         "topology:\n"
         "  sites: [{name: local, devices: 2, intra: {latency_ms: 0, bandwidth_gbps: 100}}]\n";
}

std::vector<double> lossesOf(const std::string& jsonl) {
  std::vector<double> out;
  std::istringstream in(jsonl);
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    const auto j = nlohmann::json::parse(line);
    if (j.contains("loss") && j.contains("step")) out.push_back(j["loss"].get<double>());
  }
  return out;
}

void expectTrained(const TempDir& dir, int steps) {
  const std::vector<double> losses = lossesOf(readAll(dir.file("metrics.jsonl")));
  ASSERT_EQ(static_cast<int>(losses.size()), steps);
  for (double l : losses) EXPECT_TRUE(std::isfinite(l));
  EXPECT_LT(losses.back(), losses.front()) << losses.front() << " -> " << losses.back();
}

// The plugin next to the job, named relative to it: model.plugin is
// resolved against the job file's directory, not the current one.
TEST(ModelPlugin, LaunchTrainsThePluginsModelAsWorkerProcesses) {
  TempDir dir;
  fs::copy_file(EXAMPLE_PLUGIN, dir.file("libshift.so"));
  writeFile(dir.file("job.yaml"), job(", plugin: libshift.so"));
  const CommandResult r = runGeopipe(
      dir, {"launch", dir.file("job.yaml"), "--threads", "1", "--log-dir", dir.file("logs")});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_TRUE(contains(r.out, "as 2 worker processes")) << r.out;
  EXPECT_TRUE(contains(r.out, "done after 12 steps")) << r.out;
  expectTrained(dir, 12);
}

// --plugin on the command line, and model.options reaching the factory: an
// expansion list of the wrong length is the plugin's own error.
TEST(ModelPlugin, TrainLoadsThePluginFromTheFlagAndPassesOptions) {
  TempDir dir;
  writeFile(dir.file("job.yaml"), job(", options: {expansions: \"2,2,3,2\"}"));
  CommandResult r = runGeopipe(dir, {"train", dir.file("job.yaml"), "--plugin", EXAMPLE_PLUGIN});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  expectTrained(dir, 12);
  writeFile(dir.file("job.yaml"), job(", options: {expansions: \"2,2\"}"));
  r = runGeopipe(dir, {"train", dir.file("job.yaml"), "--plugin", EXAMPLE_PLUGIN});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(
      contains(r.out + r.err, "model.options.expansions gives 2 blocks but model.layers is 4"))
      << r.out << r.err;
}

// The first block 16x as wide as the others: priced by the model's own
// cost, stage 0 keeps the embedding and that block alone. Priced as a GPT
// (all blocks alike) the split would be even, [0, 3) and [3, 6).
TEST(ModelPlugin, TheModelsOwnCostMovesTheLayerSplit) {
  TempDir dir;
  writeFile(
      dir.file("job.yaml"),
      job(", plugin: " + std::string(EXAMPLE_PLUGIN) + ", options: {expansions: \"64,4,4,4\"}", 2));
  const CommandResult r = runGeopipe(
      dir, {"launch", dir.file("job.yaml"), "--threads", "1", "--log-dir", dir.file("logs")});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  std::string logs;
  for (const auto& e : fs::directory_iterator(dir.file("logs"))) logs += readAll(e.path().string());
  EXPECT_TRUE(contains(logs, "(stage 0, replica 0) on device 0, layers [0, 2)") ||
              contains(logs, "(stage 0, replica 0) on device 1, layers [0, 2)"))
      << logs;
  EXPECT_TRUE(contains(logs, "layers [2, 6)")) << logs;
}

// Multi-host by hand on one machine: the coordinator loads the job's
// plugin, but a worker whose own copy is missing (worker --plugin) fails
// its tasklet, and the coordinator ends the job naming it and the reason
// instead of waiting for it.
TEST(ModelPlugin, AWorkerThatCannotLoadThePluginEndsTheJobWithItsReason) {
  TempDir dir;
  writeFile(dir.file("job.yaml"),
            job(", plugin: " + std::string(EXAMPLE_PLUGIN), 3) + "security: {insecure: true}\n");
  const std::string port = std::to_string(20000 + ::getpid() % 20000);
  const std::string bin = quote(GEOPIPE_BINARY);
  const std::string worker = bin + " worker --coordinator 127.0.0.1:" + port +
                             " --insecure --listen 127.0.0.1:0 --threads 1 --plugin " +
                             quote(dir.file("elsewhere/libshift.so"));
  const std::string script = "cd " + quote(dir.path.string()) + " || exit 1; (timeout 120 " + bin +
                             " coordinator job.yaml --listen 127.0.0.1:" + port +
                             " >coord.out 2>&1; echo $? >coord.code) & (timeout 120 " + worker +
                             " >w0.out 2>&1 &) ; timeout 120 " + worker + " >w1.out 2>&1; wait";
  std::system(("bash -c " + quote(script)).c_str());
  const std::string coord = readAll(dir.file("coord.out"));
  // A job error (exit 1), not a run-time failure: a retry would fail alike.
  EXPECT_EQ(readAll(dir.file("coord.code")), "1\n") << coord;
  EXPECT_TRUE(contains(coord, "job failed: tasklet rank ")) << coord;
  EXPECT_TRUE(contains(coord, "failed: ConfigError: model.plugin '" +
                                  dir.file("elsewhere/libshift.so") + "' does not exist"))
      << coord;
}

// Every way a plugin fails to load is one readable error, exit code 1.
TEST(ModelPlugin, LoadFailuresSayWhatIsWrong) {
  TempDir dir;
  writeFile(dir.file("job.yaml"), job(""));
  writeFile(dir.file("text.so"), "not an ELF file\n");
  struct Case {
    std::string plugin;
    std::string says;
  };
  const std::vector<Case> cases = {
      {dir.file("missing.so"), "' does not exist"},
      {dir.file("text.so"), "' cannot be loaded as a shared library: "},
      {NOT_A_PLUGIN, "' is not a geopipe model plugin: it does not export geopipe_plugin_register"},
      {OLD_ABI_PLUGIN, "' was built for geopipe plugin ABI 0 but this geopipe has ABI 1"},
      {THROWING_PLUGIN, "': its register function failed: this plugin needs a GPU it cannot find"},
  };
  // validate and plan load the plugin as train does, with train's error.
  for (const std::string verb : {"train", "validate", "plan"}) {
    for (const Case& c : cases) {
      const CommandResult r = runGeopipe(dir, {verb, dir.file("job.yaml"), "--plugin", c.plugin});
      EXPECT_EQ(r.code, 1) << verb << " " << c.plugin;
      EXPECT_TRUE(contains(r.out + r.err, "model.plugin '" + c.plugin + c.says))
          << verb << ": " << r.out << r.err;
    }
  }
  // Loaded, but the job names a model it did not register.
  writeFile(dir.file("typo.yaml"), job(", plugin: " + std::string(EXAMPLE_PLUGIN)));
  writeFile(dir.file("typo.yaml"), [&] {
    std::string s = readAll(dir.file("typo.yaml"));
    s.replace(s.find("shift-mlp"), 9, "shift-mpl");
    return s;
  }());
  for (const std::string verb : {"train", "validate"}) {
    const CommandResult r = runGeopipe(dir, {verb, dir.file("typo.yaml")});
    EXPECT_EQ(r.code, 1) << verb;
    EXPECT_TRUE(contains(r.out + r.err, "model.name 'shift-mpl' is not a model of the plugin '" +
                                            std::string(EXAMPLE_PLUGIN) +
                                            "' (it registered: shift-mlp; registered in all: "))
        << verb << ": " << r.out << r.err;
    EXPECT_TRUE(contains(r.out + r.err, "did you mean 'shift-mlp'?")) << r.out << r.err;
  }
  // The good plugin validates.
  const CommandResult ok =
      runGeopipe(dir, {"validate", dir.file("job.yaml"), "--plugin", EXAMPLE_PLUGIN});
  EXPECT_EQ(ok.code, 0) << ok.out << ok.err;
}

// plan loads the plugin and prices its model by the cost its ModelDef
// gives: the 16x wider first block gets a stage to itself with the
// embedding, as launch splits it (TheModelsOwnCostMovesTheLayerSplit).
// Without the plugin the same shape is priced as a GPT: an even split.
TEST(ModelPlugin, PlanPricesThePluginsModelByItsOwnCost) {
  TempDir dir;
  writeFile(dir.file("job.yaml"), job(", options: {expansions: \"64,4,4,4\"}"));
  CommandResult r =
      runGeopipe(dir, {"plan", dir.file("job.yaml"), "--json", "--plugin", EXAMPLE_PLUGIN});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["model_priced_as"], "own_cost") << r.out;
  EXPECT_TRUE(contains(j["model_note"].get<std::string>(), "the cost its ModelDef gives")) << r.out;
  auto layersOfStage0 = [](const nlohmann::json& plan) {
    for (const auto& t : plan["allocation"])
      if (t["stage"] == 0) return t["layers"].get<std::vector<int>>();
    return std::vector<int>{};
  };
  EXPECT_EQ(layersOfStage0(j), (std::vector<int>{0, 2})) << r.out;
  r = runGeopipe(dir, {"plan", dir.file("job.yaml"), "--plugin", EXAMPLE_PLUGIN});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_TRUE(contains(r.out, "note: model 'shift-mlp' is priced by the cost its ModelDef gives"))
      << r.out;
  EXPECT_FALSE(contains(r.out, "GPT")) << r.out;

  r = runGeopipe(dir, {"plan", dir.file("job.yaml"), "--json"});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["model_priced_as"], "gpt") << r.out;
  EXPECT_EQ(layersOfStage0(j), (std::vector<int>{0, 3})) << r.out;
}

// model.plugin and model.options belong to kind custom; the printed job
// keeps both (plugin absolute) and validates again.
TEST(ModelPlugin, OptionsAreRefusedOnBuiltInModelsAndSurviveValidatePrint) {
  TempDir dir;
  writeFile(dir.file("gpt.yaml"),
            "model: {preset: none, layers: 2, hidden: 16, heads: 2, seq_len: 8, vocab: 16,\n"
            "        options: {width: 3}}\n");
  CommandResult r = runGeopipe(dir, {"validate", dir.file("gpt.yaml")});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.out + r.err, "model.options: model.kind gpt takes no options"))
      << r.out << r.err;

  fs::copy_file(EXAMPLE_PLUGIN, dir.file("libshift.so"));
  writeFile(dir.file("job.yaml"), job(", plugin: libshift.so, options: {expansions: \"2,2,3,2\"}"));
  r = runGeopipe(dir, {"validate", "--print", dir.file("job.yaml")});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_TRUE(contains(r.out, "plugin: \"" + dir.file("libshift.so") + "\"")) << r.out;
  EXPECT_TRUE(contains(r.out, "expansions: \"2,2,3,2\"")) << r.out;
  fs::create_directory(dir.file("elsewhere"));
  writeFile(dir.file("elsewhere/printed.yaml"), r.out);
  r = runGeopipe(dir, {"validate", dir.file("elsewhere/printed.yaml")});
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  r = runGeopipe(dir, {"train", dir.file("elsewhere/printed.yaml"), "--steps", "1"});
  EXPECT_EQ(r.code, 0) << r.out << r.err;
}

}  // namespace
