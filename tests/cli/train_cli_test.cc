// `geopipe train` through the built binary: --steps and --metrics override the
// job's fields, --plot writes the loss curve, and bad command lines and jobs
// are refused with the documented exit codes (docs/cli.md#exit-codes) and a
// message naming what is wrong; the checkpoint directory's rules (a fresh run
// refuses an earlier run's checkpoints, --overwrite, resuming a finished
// run, Ctrl-C commits a checkpoint). A 2-layer GPT on synthetic data:
// seconds.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <ctime>
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
  // --metrics replaces logging.metrics_file: one line per step, steps 1..3
  // as on the progress line, each with its wall-clock time, grad norm and
  // the bytes of every tasklet (one here).
  EXPECT_FALSE(fs::exists(dir.file("from-job.jsonl")));
  const auto lines = jsonLines(readAll(dir.file("m.jsonl")));
  ASSERT_EQ(lines.size(), 3u) << readAll(dir.file("m.jsonl"));
  const double now = double(std::time(nullptr));
  for (size_t i = 0; i < lines.size(); ++i) {
    const auto& j = lines[i];
    EXPECT_EQ(j.at("step"), i + 1);
    EXPECT_NEAR(j.at("unix_time").get<double>(), now, 120) << j;
    EXPECT_EQ(j.at("time").get<std::string>().size(), 24u) << j;  // 2026-12-06T19:31:27.123Z
    EXPECT_EQ(j.at("time").get<std::string>().back(), 'Z') << j;
    EXPECT_GT(j.at("grad_norm").get<double>(), 0) << j;
    EXPECT_EQ(j.at("sent_bytes_by_rank").size(), 1u) << j;
    EXPECT_GT(j.at("peak_rss_bytes").get<double>(), 0) << j;
  }
  // The progress line: 1-based step, every field, elapsed and ETA as h:mm:ss.
  for (const char* field : {"step 1/3  loss ", "step 3/3  loss ", "  lr 1.0e-02  gnorm ",
                            " tok/s  net ", "%  rss ", "B  0:00:", " eta 0:00:00"}) {
    EXPECT_TRUE(contains(r.out, field)) << field << "\n" << r.out;
  }
  EXPECT_TRUE(contains(readAll(dir.file("loss.svg")), "<svg")) << "--plot";
  EXPECT_TRUE(contains(r.out, "plot (loss and step time): " + dir.file("loss.svg"))) << r.out;
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

std::string withCheckpoints(int steps, const std::string& dir, const std::string& more = "") {
  return tinyJob(steps, "checkpoint: {dir: " + dir + "}\n" + more);
}

// Every verb that trains refuses to start over in a checkpoint.dir with an
// earlier run's checkpoints, naming it and both ways out; --overwrite
// clears only those.
TEST(TrainCommand, AFreshRunIntoAnEarlierRunsCheckpointsIsRefused) {
  TempDir dir;
  const std::string ckpt = dir.file("ckpt");
  writeFile(dir.file("job.yaml"), withCheckpoints(2, ckpt));
  auto r = runGeopipe(dir, {"train", dir.file("job.yaml")});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  writeFile(ckpt + "/notes.txt", "not a checkpoint");
  for (const char* verb : {"train", "launch", "coordinator"}) {
    r = runGeopipe(dir, {verb, dir.file("job.yaml")});
    EXPECT_EQ(r.code, 1) << verb << "\n" << r.out << r.err;
    EXPECT_TRUE(contains(r.err, "checkpoint.dir '" + ckpt +
                                    "' holds the checkpoints of an "
                                    "earlier run (LATEST names step-00000002"))
        << verb << "\n"
        << r.err;
    EXPECT_TRUE(contains(r.err, "--resume") && contains(r.err, "--overwrite")) << r.err;
    // Both at once is a usage error.
    r = runGeopipe(dir, {verb, dir.file("job.yaml"), "--resume", "--overwrite"});
    EXPECT_EQ(r.code, 2) << verb << "\n" << r.err;
  }
  EXPECT_TRUE(fs::exists(ckpt + "/step-00000002/manifest.json"));
  r = runGeopipe(dir, {"train", dir.file("job.yaml"), "--overwrite", "--steps", "1"});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_TRUE(
      contains(r.out, "--overwrite: removed 1 checkpoint directory and LATEST from '" + ckpt + "'"))
      << r.out;
  EXPECT_EQ(readAll(ckpt + "/LATEST"), "step-00000001\n");
  EXPECT_FALSE(fs::exists(ckpt + "/step-00000002"));
  EXPECT_EQ(readAll(ckpt + "/notes.txt"), "not a checkpoint");
  // And --resume continues from what LATEST names.
  r = runGeopipe(dir, {"train", dir.file("job.yaml"), "--resume"});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_TRUE(contains(r.out, "done after 1 steps")) << r.out;
}

// A resumed run with nothing left says so (exit 1, a job problem) instead
// of "done after 0 steps ... final loss 0.0000", in train and launch alike.
TEST(TrainCommand, ResumingAFinishedRunSaysThereIsNothingLeft) {
  TempDir dir;
  const std::string ckpt = dir.file("ckpt");
  writeFile(dir.file("job.yaml"), withCheckpoints(2, ckpt));
  auto r = runGeopipe(dir, {"train", dir.file("job.yaml")});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  for (const char* verb : {"train", "launch"}) {
    r = runGeopipe(dir, {verb, dir.file("job.yaml"), "--resume"});
    EXPECT_EQ(r.code, 1) << verb << "\n" << r.out << r.err;
    EXPECT_TRUE(contains(r.err, "the checkpoint in '" + ckpt +
                                    "' is at step 2, the job's last "
                                    "(training.steps: 2): nothing left to train; raise "
                                    "training.steps (or --steps) above 2"))
        << verb << "\n"
        << r.err;
    EXPECT_FALSE(contains(r.out, "final loss")) << r.out;
  }
}

// Ctrl-C (or SIGTERM) in `geopipe train` stops after a common step and
// commits a checkpoint there, like `launch`; --resume continues from it.
TEST(TrainCommand, CtrlCCommitsACheckpointWhereTheRunStopped) {
  for (int sig : {SIGINT, SIGTERM}) {
    TempDir dir;
    const std::string ckpt = dir.file("ckpt");
    writeFile(dir.file("job.yaml"), withCheckpoints(1000000, ckpt, "logging: {every_steps: 1}\n"));
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      std::freopen(dir.file("stdout").c_str(), "w", stdout);
      std::freopen(dir.file("stderr").c_str(), "w", stderr);
      ::execl(GEOPIPE_BINARY, GEOPIPE_BINARY, "train", dir.file("job.yaml").c_str(), nullptr);
      ::_exit(127);
    }
    for (int i = 0; i < 1200 && !contains(readAll(dir.file("stdout")), "step "); ++i) {
      ::usleep(50 * 1000);
    }
    ::kill(pid, sig);
    int status = 0;
    ::waitpid(pid, &status, 0);
    const std::string out = readAll(dir.file("stdout"));
    ASSERT_TRUE(WIFEXITED(status)) << out << readAll(dir.file("stderr"));
    EXPECT_EQ(WEXITSTATUS(status), 130) << out;
    const size_t at = out.find("interrupted after ");
    ASSERT_NE(at, std::string::npos) << out;
    const int steps = std::stoi(out.substr(at + 18));
    ASSERT_GT(steps, 0);
    char step_dir[32];
    std::snprintf(step_dir, sizeof(step_dir), "step-%08d", steps);
    EXPECT_EQ(readAll(ckpt + "/LATEST"), std::string(step_dir) + "\n") << out;
    EXPECT_TRUE(
        contains(out, "weights after step " + std::to_string(steps) + ": " + ckpt + "/" + step_dir))
        << out;
    const auto r = runGeopipe(
        dir, {"train", dir.file("job.yaml"), "--resume", "--steps", std::to_string(steps + 2)});
    ASSERT_EQ(r.code, 0) << r.out << r.err;
    EXPECT_TRUE(contains(r.out, "done after 2 steps")) << r.out;
  }
}

TEST(CommandLine, AMistypedCommandGetsASuggestion) {
  TempDir dir;
  auto r = runGeopipe(dir, {"trian", "job.yaml"});
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_TRUE(contains(r.err, "unknown command 'trian'; did you mean 'train'?")) << r.err;
  r = runGeopipe(dir, {"--log-level", "warn", "valdate", "job.yaml"});
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_TRUE(contains(r.err, "unknown command 'valdate'; did you mean 'validate'?")) << r.err;
  r = runGeopipe(dir, {"bench", "pipline"});
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_TRUE(contains(r.err, "unknown command 'bench pipline'; did you mean 'bench pipeline'?"))
      << r.err;
  r = runGeopipe(dir, {"xyzzy"});
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_TRUE(contains(r.err, "unknown command 'xyzzy'; the commands are validate, plan, train"))
      << r.err;
}

TEST(CommandLine, GlobalOptionsAreTakenAfterTheCommand) {
  TempDir dir;
  writeFile(dir.file("job.yaml"), tinyJob());
  auto r = runGeopipe(dir, {"validate", dir.file("job.yaml"), "--log-level", "warn"});
  EXPECT_EQ(r.code, 0) << r.err;
  r = runGeopipe(dir, {"validate", dir.file("job.yaml"), "--log-level", "loud"});
  EXPECT_EQ(r.code, 2) << r.err;
}

// --set edits the job before it is checked, in every verb that reads one,
// and a problem it causes names it.
TEST(CommandLine, SetOverridesTheJobInEveryVerbThatReadsOne) {
  TempDir dir;
  writeFile(dir.file("job.yaml"), tinyJob(50));
  auto r = runGeopipe(
      dir, {"train", dir.file("job.yaml"), "--set", "training.steps=2", "--set", "name=edited"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "training 'edited': 1 stages x 1 replicas, 2 steps")) << r.out;
  for (const char* verb : {"validate", "plan", "train", "launch", "coordinator"}) {
    r = runGeopipe(dir, {verb, dir.file("job.yaml"), "--set", "training.optimizer.lr=abc"});
    EXPECT_EQ(r.code, 1) << verb << "\n" << r.err;
    EXPECT_TRUE(contains(r.err, "--set training.optimizer.lr=abc: training.optimizer.lr: "))
        << verb << "\n"
        << r.err;
    r = runGeopipe(dir, {verb, dir.file("job.yaml"), "--set", "training.stpes=2"});
    EXPECT_EQ(r.code, 1) << verb << "\n" << r.err;
    EXPECT_TRUE(contains(r.err, "--set training.stpes=2: training.stpes: ") &&
                contains(r.err, "did you mean 'steps'"))
        << verb << "\n"
        << r.err;
  }
  // An override reaches the checkpoint rules too.
  fs::create_directories(dir.file("ckpt"));
  writeFile(dir.file("ckpt/LATEST"), "step-00000001\n");
  for (const char* verb : {"train", "launch", "coordinator"}) {
    r = runGeopipe(dir,
                   {verb, dir.file("job.yaml"), "--set", "checkpoint.dir=" + dir.file("ckpt")});
    EXPECT_EQ(r.code, 1) << verb << "\n" << r.err;
    EXPECT_TRUE(contains(r.err, "checkpoint.dir '" + dir.file("ckpt") + "' holds")) << r.err;
  }
}

// validate --print: the job with every default filled in and the overrides
// applied, as YAML that validates again and prints the same.
TEST(CommandLine, ValidatePrintsTheResolvedJobWhichValidatesAgain) {
  TempDir dir;
  writeFile(dir.file("job.yaml"), tinyJob(50));
  auto r =
      runGeopipe(dir, {"validate", dir.file("job.yaml"), "--print", "--set", "training.steps=7"});
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string printed = r.out;
  EXPECT_TRUE(contains(printed, "steps: 7")) << printed;
  EXPECT_TRUE(contains(printed, "beta2: 0.95")) << printed;  // a default the file omits
  EXPECT_TRUE(contains(printed, "keep: 2")) << printed;
  EXPECT_TRUE(contains(printed, "link_grace: 30")) << printed;
  EXPECT_TRUE(contains(printed, "emulate_links: false")) << printed;  // the job sets it
  // transport.emulate_links' default depends on the verb (emulated under
  // train and launch, real under coordinator): printed only when set.
  std::string unset = tinyJob(50);
  const std::string line = "transport: {emulate_links: false}\n";
  unset.erase(unset.find(line), line.size());
  writeFile(dir.file("unset.yaml"), unset);
  auto u = runGeopipe(dir, {"validate", dir.file("unset.yaml"), "--print"});
  EXPECT_FALSE(contains(u.out, "emulate_links:")) << u.out << u.err;
  EXPECT_TRUE(contains(u.out, "# emulate_links not set")) << u.out;
  u = runGeopipe(dir, {"validate", dir.file("unset.yaml"), "--print", "--set",
                       "transport.emulate_links=true"});
  EXPECT_TRUE(contains(u.out, "emulate_links: true")) << u.out << u.err;
  writeFile(dir.file("printed.yaml"), printed);
  r = runGeopipe(dir, {"validate", dir.file("printed.yaml")});
  EXPECT_EQ(r.code, 0) << r.err << printed;
  r = runGeopipe(dir, {"validate", "--print", dir.file("printed.yaml")});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, printed);
}

}  // namespace
