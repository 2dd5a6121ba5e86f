// `--set path.to.field=value`: edits of the job's YAML tree before it is
// read, checked like the file, and every problem they cause names them; and
// the resolved job YAML of `validate --print`, which reads back as the same
// job.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "src/config/diagnostics.h"
#include "src/config/job_overrides.h"
#include "src/config/resolved_job.h"

using namespace geopipe;

namespace {

const char* kJob = R"(name: base
training:
  steps: 10
  optimizer: {kind: adamw, lr: 1.0e-3}
topology:
  sites: [{name: a, devices: 2, intra: {latency_ms: 1, bandwidth_gbps: 10}}]
)";

JobSpec parse(const std::vector<std::string>& overrides) {
  return config::parseJobString(kJob, "job.yaml", "", overrides);
}

// The whole message of the SpecError that `overrides` cause.
std::string problems(const std::vector<std::string>& overrides) {
  try {
    parse(overrides);
  } catch (const config::SpecError& e) {
    return e.what();
  }
  return "(accepted)";
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

TEST(Overrides, SetFieldsAndWholeSections) {
  const JobSpec job = parse({"training.steps=25", "training.optimizer.lr=0.02", "name=edited",
                             "checkpoint.dir=/tmp/ck", "parallelism={pipeline_stages: 2}",
                             "training.steps=30"});  // the last one wins
  EXPECT_EQ(job.training.steps, 30);
  EXPECT_DOUBLE_EQ(job.training.optimizer.lr, 0.02);
  EXPECT_EQ(job.training.optimizer.kind, "adamw");  // the rest of the section stays
  EXPECT_EQ(job.name, "edited");
  EXPECT_EQ(job.checkpoint.dir, "/tmp/ck");  // a section the file does not have
  EXPECT_EQ(job.parallelism.pipeline_stages, 2);
  EXPECT_EQ(parse({}).training.steps, 10);
}

TEST(Overrides, AWrongValueIsReportedAgainstTheOverride) {
  const std::string err = problems({"training.optimizer.lr=abc"});
  EXPECT_TRUE(contains(err, "--set training.optimizer.lr=abc: training.optimizer.lr: ")) << err;
  EXPECT_FALSE(contains(err, "job.yaml:")) << err;
  EXPECT_TRUE(contains(problems({"training.steps=-3"}), "--set training.steps=-3: training.steps"))
      << problems({"training.steps=-3"});
}

TEST(Overrides, AnUnknownPathIsRefusedWithASuggestion) {
  std::string err = problems({"training.stpes=5"});
  EXPECT_TRUE(contains(err, "--set training.stpes=5: training.stpes: ")) << err;
  EXPECT_TRUE(contains(err, "did you mean 'steps'")) << err;
  // A field in another section than the one written: the whole path.
  err = problems({"training.lr=abc"});
  EXPECT_TRUE(contains(err, "--set training.lr=abc: training.lr: unknown key 'lr'")) << err;
  EXPECT_TRUE(contains(err,
                       "the field is probably training.optimizer.lr: --set "
                       "training.optimizer.lr=abc"))
      << err;
  err = problems({"trainig.steps=5"});
  EXPECT_TRUE(contains(err, "--set trainig.steps=5: trainig: ")) << err;
  EXPECT_TRUE(contains(err, "did you mean 'training'")) << err;
}

TEST(Overrides, MalformedOverridesAreRefusedNamingThem) {
  EXPECT_TRUE(contains(problems({"training.steps"}),
                       "--set training.steps: expected "
                       "path.to.field=value"))
      << problems({"training.steps"});
  EXPECT_TRUE(contains(problems({"training..steps=3"}), "has an empty part"))
      << problems({"training..steps=3"});
  const std::string through = problems({"name.first=x"});
  EXPECT_TRUE(contains(through, "--set name.first=x: name is 'base' in the job, not a section"))
      << through;
  EXPECT_TRUE(contains(problems({"name=[unclosed"}), "--set name=[unclosed: the value"))
      << problems({"name=[unclosed"});
}

// A problem of the file itself keeps its line.
TEST(Overrides, TheFilesOwnProblemsKeepTheirLines) {
  const std::string text = std::string(kJob) + "logging: {every_stepz: 2}\n";
  try {
    config::parseJobString(text, "job.yaml", "", {"training.steps=5"});
    FAIL();
  } catch (const config::SpecError& e) {
    EXPECT_TRUE(contains(e.what(), "job.yaml:7:")) << e.what();
  }
}

// Printed, read back and printed again: the same text, and the same job.
void expectRoundTrip(const JobSpec& job, const std::string& what) {
  const std::string printed = config::resolvedJobYaml(job);
  JobSpec again;
  try {
    again = config::parseJobString(printed, "printed.yaml", "");
  } catch (const config::SpecError& e) {
    FAIL() << what << ": the printed job does not validate:\n" << e.what() << "\n" << printed;
  }
  EXPECT_EQ(config::resolvedJobYaml(again), printed) << what;
  EXPECT_EQ(again.name, job.name) << what;
  EXPECT_EQ(again.training.steps, job.training.steps) << what;
  EXPECT_EQ(again.training.optimizer.lr, job.training.optimizer.lr) << what;
  EXPECT_EQ(again.model.layers, job.model.layers) << what;
  EXPECT_EQ(again.model.ffnWidth(), job.model.ffnWidth()) << what;
  EXPECT_EQ(again.compression.activations.method, job.compression.activations.method) << what;
  ASSERT_EQ(again.topology.numDevices(), job.topology.numDevices()) << what;
  for (int a = 0; a < job.topology.numDevices(); ++a) {
    EXPECT_EQ(again.topology.devices[a].tflops, job.topology.devices[a].tflops) << what;
    for (int b = 0; b < job.topology.numDevices(); ++b) {
      if (a == b) continue;
      EXPECT_EQ(again.topology.link(a, b).latency_ms, job.topology.link(a, b).latency_ms) << what;
      EXPECT_EQ(again.topology.link(a, b).bandwidth_gbps, job.topology.link(a, b).bandwidth_gbps)
          << what;
    }
  }
}

TEST(ResolvedJob, EveryExampleJobPrintsAsYamlThatReadsBackTheSame) {
  int jobs = 0;
  for (const auto& e : std::filesystem::directory_iterator("examples/jobs")) {
    if (e.path().extension() != ".yaml") continue;
    expectRoundTrip(config::loadJobFile(e.path().string()), e.path().string());
    ++jobs;
  }
  EXPECT_GE(jobs, 5);
}

TEST(ResolvedJob, FamiliesBuffersAndOverridesRoundTrip) {
  const std::string llama = R"(
model: {kind: llama, preset: none, layers: 2, hidden: 32, heads: 4, num_key_value_heads: 2,
        seq_len: 16, vocab: 64, eos_token_id: [1, 2], dtype: bf16}
training: {steps: 3, optimizer: {lr: 0.1}}
parallelism: {data_parallel: auto}
compression:
  activations: {method: acsgd, bits: 3, buffer_format: quantized, buffer_bits: 6}
  gradients: {method: topk, ratio: 0.3}
scheduler: {payloads: {grad_gb: 0.25}}
topology:
  name: two
  sites:
    - {name: a, devices: 2, intra: {latency_ms: 0.5, bandwidth_gbps: 10}, tflops: {fp32: 20, bf16: 300}}
    - {name: b, repeat: 2, devices: 1}
  inter_site_default: {latency_ms: 30, bandwidth_gbps: 0.3}
  links: [{from: a, to: b-1, latency_ms: 70, bandwidth_gbps: 0.1}]
)";
  expectRoundTrip(config::parseJobString(llama, "llama.yaml", ""), "llama");
  const std::string gpt2 =
      "model: {kind: gpt2, preset: none, layers: 2, hidden: 16, heads: 2, "
      "seq_len: 8, vocab: 32, ffn_mult: 2}\n"
      "topology: {sites: [{name: a, devices: 1}]}\n";
  expectRoundTrip(config::parseJobString(gpt2, "gpt2.yaml", ""), "gpt2");
  const JobSpec edited = config::parseJobString(
      gpt2, "gpt2.yaml", "", {"training.steps=7", "checkpoint.dir=/tmp/ck", "name=edited"});
  const std::string printed = config::resolvedJobYaml(edited);
  EXPECT_TRUE(contains(printed, "steps: 7")) << printed;
  EXPECT_TRUE(contains(printed, "dir: \"/tmp/ck\"")) << printed;
  expectRoundTrip(edited, "gpt2 with overrides");
}

}  // namespace

namespace {

// logging.tensorboard_dir: a directory that does not exist yet is taken
// (the run creates it) and printed by validate --print; a file there, or
// above it, is refused naming the field and the fix.
TEST(JobParser, TensorBoardDirMustBeADirectoryOrMissing) {
  namespace fs = std::filesystem;
  const fs::path tmp = fs::temp_directory_path() / ("geopipe-tb-" + std::to_string(::getpid()));
  fs::create_directories(tmp);
  const std::string file = (tmp / "a-file").string();
  { std::ofstream(file) << "x"; }
  const JobSpec ok = parse({"logging.tensorboard_dir=" + (tmp / "new/tb").string()});
  EXPECT_EQ(ok.logging.tensorboard_dir, (tmp / "new/tb").string());
  EXPECT_TRUE(contains(config::resolvedJobYaml(ok),
                       "tensorboard_dir: \"" + (tmp / "new/tb").string() + "\""))
      << config::resolvedJobYaml(ok);
  EXPECT_FALSE(contains(config::resolvedJobYaml(parse({})), "tensorboard_dir"));
  for (const std::string& bad : {file, file + "/under"}) {
    const std::string err = problems({"logging.tensorboard_dir=" + bad});
    EXPECT_TRUE(contains(err, "logging.tensorboard_dir")) << err;
    EXPECT_TRUE(contains(err, "'" + file + "' is a file, not a directory")) << err;
  }
  fs::remove_all(tmp);
}

}  // namespace

namespace {

// logging.trace_dir: off by default and then not printed; a directory that
// does not exist yet is taken, printed by validate --print, and the printed
// job reads back the same; a file there, or above it, is refused naming the
// field; a misspelling gets the field's name.
TEST(JobParser, TraceDirMustBeADirectoryOrMissing) {
  namespace fs = std::filesystem;
  const fs::path tmp = fs::temp_directory_path() / ("geopipe-trace-" + std::to_string(::getpid()));
  fs::create_directories(tmp);
  const std::string file = (tmp / "a-file").string();
  { std::ofstream(file) << "x"; }
  EXPECT_EQ(parse({}).logging.trace_dir, "");
  EXPECT_FALSE(contains(config::resolvedJobYaml(parse({})), "trace_dir"));
  const std::string dir = (tmp / "new/traces").string();
  const JobSpec ok = parse({"logging.trace_dir=" + dir});
  EXPECT_EQ(ok.logging.trace_dir, dir);
  const std::string printed = config::resolvedJobYaml(ok);
  EXPECT_TRUE(contains(printed, "trace_dir: \"" + dir + "\"")) << printed;
  EXPECT_EQ(config::parseJobString(printed, "printed.yaml", "").logging.trace_dir, dir);
  EXPECT_FALSE(fs::exists(dir));  // validate creates nothing; the run does
  for (const std::string& bad : {file, file + "/under"}) {
    const std::string err = problems({"logging.trace_dir=" + bad});
    EXPECT_TRUE(contains(err, "logging.trace_dir")) << err;
    EXPECT_TRUE(contains(err, "'" + file + "' is a file, not a directory")) << err;
  }
  EXPECT_TRUE(contains(problems({"logging.trace_dri=x"}), "logging.trace_dir"))
      << problems({"logging.trace_dri=x"});
  fs::remove_all(tmp);
}

}  // namespace

namespace {

// logging.metrics_port: 0 (off) by default, else 1..65535, printed by
// validate --print with the bind address only when set (and the printed
// job reads back the same); metrics_host without a port, or empty, is
// refused rather than ignored.
TEST(JobParser, MetricsPortIsARangeCheckedPortAndItsHostNeedsIt) {
  EXPECT_EQ(parse({}).logging.metrics_port, 0);
  EXPECT_FALSE(contains(config::resolvedJobYaml(parse({})), "metrics_port"));
  const JobSpec ok = parse({"logging.metrics_port=9400"});
  EXPECT_EQ(ok.logging.metrics_port, 9400);
  EXPECT_EQ(ok.logging.metrics_host, "127.0.0.1");
  const std::string printed = config::resolvedJobYaml(ok);
  EXPECT_TRUE(contains(printed, "metrics_port: 9400")) << printed;
  EXPECT_TRUE(contains(printed, "metrics_host: 127.0.0.1")) << printed;
  const JobSpec again = config::parseJobString(printed, "printed.yaml", "");
  EXPECT_EQ(again.logging.metrics_port, 9400);
  EXPECT_EQ(again.logging.metrics_host, "127.0.0.1");
  EXPECT_EQ(parse({"logging.metrics_port=1", "logging.metrics_host=0.0.0.0"}).logging.metrics_host,
            "0.0.0.0");
  for (const char* bad : {"-1", "65536", "http", "9400.5"}) {
    const std::string err = problems({std::string("logging.metrics_port=") + bad});
    EXPECT_TRUE(contains(err, "logging.metrics_port")) << err;
    EXPECT_TRUE(contains(err, bad[0] == '-' || bad[0] == '6' ? "65535" : "expected an integer"))
        << err;
  }
  std::string err = problems({"logging.metrics_host=0.0.0.0"});
  EXPECT_TRUE(contains(err, "logging.metrics_host")) << err;
  EXPECT_TRUE(contains(err, "metrics_port is 0")) << err;
  err = problems({"logging.metrics_port=9400", "logging.metrics_host=''"});
  EXPECT_TRUE(contains(err, "logging.metrics_host")) << err;
  EXPECT_TRUE(contains(err, "is empty")) << err;
}

}  // namespace
