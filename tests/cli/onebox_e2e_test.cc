// A job without a topology, through the built binary (issue 20 item 5): it
// validates saying which local topology it assumes, `validate --print`
// writes that topology inline so the printed job validates again, it trains
// in one process and launches as worker processes; a bad one still names
// its fields; with logging.trace_dir it writes a timeline per tasklet. A
// 2-layer GPT on synthetic data, 2 stages, 3 steps: seconds.
#include <gtest/gtest.h>

#include <cctype>

#include <fstream>
#include <iterator>
#include <string>

#include "tests/cli/cli_run.h"

namespace {

using namespace cli_test;

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// Two stages, one replica, no topology.
const char* const kJob =
    "name: one-box\n"
    "model: {preset: none, layers: 2, hidden: 16, heads: 2, seq_len: 8, vocab: 16}\n"
    "data: {kind: synthetic, num_samples: 32}\n"
    "training: {steps: 3, global_batch: 4, micro_batch: 2, seed: 3}\n"
    "parallelism: {pipeline_stages: 2, data_parallel: 1}\n";

const char* const kAssumed =
    "none given; assuming a local one: 2 devices, one site, a device per tasklet, links of "
    "0 ms and 100 Gbps (the same machine)";

TEST(OneBox, JobWithoutTopologyValidatesSayingWhatItAssumes) {
  TempDir dir;
  writeFile(dir.file("job.yaml"), kJob);
  const CommandResult r = runGeopipe(dir, {"validate", dir.file("job.yaml")});
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_TRUE(contains(r.out, std::string("topology:     ") + kAssumed)) << r.out;
}

TEST(OneBox, PrintedJobHasTheTopologyInlineAndValidatesAgain) {
  TempDir dir;
  writeFile(dir.file("job.yaml"), kJob);
  const CommandResult printed = runGeopipe(dir, {"validate", "--print", dir.file("job.yaml")});
  ASSERT_EQ(printed.code, 0) << printed.err;
  EXPECT_TRUE(contains(printed.out, "{name: \"local/1\", gpu: \"cpu\"")) << printed.out;
  writeFile(dir.file("printed.yaml"), printed.out);
  const CommandResult again = runGeopipe(dir, {"validate", dir.file("printed.yaml")});
  EXPECT_EQ(again.code, 0) << again.out << again.err;
  // Now a topology of the job's own, no longer assumed.
  EXPECT_FALSE(contains(again.out, "none given")) << again.out;
  EXPECT_TRUE(contains(again.out, "2 devices in 1 sites")) << again.out;
}

TEST(OneBox, TrainsInOneProcess) {
  TempDir dir;
  writeFile(dir.file("job.yaml"), kJob);
  const CommandResult r = runGeopipe(dir, {"train", dir.file("job.yaml")});
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_TRUE(contains(r.out, std::string("topology: ") + kAssumed)) << r.out;
  EXPECT_TRUE(contains(r.out, "2 stages x 1 replicas, 3 steps")) << r.out;
}

TEST(OneBox, LaunchesWorkerProcesses) {
  TempDir dir;
  writeFile(dir.file("job.yaml"), kJob);
  const CommandResult r = runGeopipe(
      dir, {"launch", dir.file("job.yaml"), "--threads", "1", "--log-dir", dir.file("logs")});
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_TRUE(contains(r.out, std::string("topology: ") + kAssumed)) << r.out;
  EXPECT_TRUE(contains(r.out, "as 2 worker processes on 127.0.0.1, 3 steps")) << r.out;
}

// logging.trace_dir through the binary: `train` writes a timeline per
// tasklet (a JSON object, closed), and the benchmarks that take --job
// refuse the field rather than ignore it.
TEST(OneBox, TrainWritesTimelinesAndTheBenchmarksRefuseThem) {
  TempDir dir;
  writeFile(dir.file("job.yaml"), std::string(kJob) + "logging: {trace_dir: traces}\n");
  const CommandResult r = runGeopipe(dir, {"train", dir.file("job.yaml")});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  for (const char* name : {"trace-stage0-replica0.json", "trace-stage1-replica0.json"}) {
    std::ifstream in(dir.file("traces/" + std::string(name)));
    const std::string text((std::istreambuf_iterator<char>(in)), {});
    EXPECT_EQ(text.rfind("{\"displayTimeUnit\":\"ms\"", 0), 0u) << name << ": " << text;
    EXPECT_TRUE(contains(text, "\"name\":\"forward\"")) << name;
    EXPECT_TRUE(text.size() > 4 && text.compare(text.size() - 4, 4, "\n]}\n") == 0) << name;
  }
  for (const char* bench : {"pipeline", "grpc"}) {
    const CommandResult b =
        runGeopipe(dir, {"bench", bench, "--job", dir.file("job.yaml"), "--steps", "1"});
    EXPECT_NE(b.code, 0) << bench;
    EXPECT_TRUE(contains(b.out + b.err, "logging.trace_dir is set"))
        << bench << ": " << b.out << b.err;
  }
}

// The engine's benchmarks live in geopipe-bench (`make demo` builds only
// geopipe): `geopipe bench NAME` runs the one next to it, and a geopipe
// without one says what to build.
TEST(OneBox, EngineBenchmarksRunFromGeopipeBenchAndAreNamedWhenItIsMissing) {
  TempDir dir;
  const CommandResult help = runGeopipe(dir, {"bench", "pipeline", "--help"});
  EXPECT_EQ(help.code, 0) << help.err;
  EXPECT_TRUE(contains(help.out, "Tokens/s of the staged engine")) << help.out << help.err;
  const CommandResult listed = runGeopipe(dir, {"bench", "--help"});
  EXPECT_TRUE(contains(listed.out, "run by geopipe-bench")) << listed.out;
  // A copy of geopipe alone in a folder.
  const std::string alone = dir.file("geopipe");
  fs::copy_file(GEOPIPE_BINARY, alone);
  const std::string cmd = quote(alone) + " bench e2e --quick >" + quote(dir.file("out")) + " 2>&1";
  const int status = std::system(cmd.c_str());
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 2) << status;
  const std::string said = readAll(dir.file("out"));
  EXPECT_TRUE(contains(said, dir.file("geopipe-bench") + ", which is not built: `make build`"))
      << said;
}

// `bench model --staged --peak-tflops`: the staged engine's two rows, AC-SGD's
// share of the step and an MFU column whose FLOPs per token are the
// formula's for this shape: 28,032 parameters (tied head counted once) x 6
// + 12 x 2 layers x 32 hidden x 16 positions = 180,480.
TEST(OneBox, ModelBenchAddsTheStagedEngineAndMfu) {
  TempDir dir;
  const CommandResult r = runGeopipe(dir, {"bench",     "model",
                                           "--layers",  "2",
                                           "--hidden",  "32",
                                           "--heads",   "2",
                                           "--vocab",   "64",
                                           "--seq-len", "16",
                                           "--batch",   "4",
                                           "--steps",   "2",
                                           "--threads", "1",
                                           "--dtypes",  "fp32",
                                           "--staged",  "--peak-tflops",
                                           "1"});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  for (const char* line : {"pytorch eager fp32", "geopipe fp32", "geopipe staged 2x1 fp32",
                           "  with AC-SGD 4-bit", "AC-SGD's cost (encode, decode, buffers) in the",
                           "MFU = tokens/s x 0.0001805 GFLOP a token"}) {
    EXPECT_TRUE(contains(r.out, line)) << line << "\n" << r.out;
  }
  size_t mfu_rows = 0;
  for (size_t at = r.out.find("%\n"); at != std::string::npos; at = r.out.find("%\n", at + 1)) {
    ++mfu_rows;
  }
  EXPECT_EQ(mfu_rows, 4u) << r.out;
  const CommandResult gpu = runGeopipe(dir, {"bench", "model", "--device", "cuda"});
  if (gpu.code == 0) GTEST_SKIP() << "a CUDA device is visible";
  EXPECT_TRUE(contains(gpu.out + gpu.err, "--device cuda, but LibTorch sees no CUDA device"))
      << gpu.out << gpu.err;
}

// `bench grpc --rounds 2`: each kind runs twice in turn, every run gives the
// same losses, and each row shows one ratio per round beside the pooled one.
TEST(OneBox, GrpcBenchRunsEveryKindInInterleavedRounds) {
  TempDir dir;
  const CommandResult r =
      runGeopipe(dir, {"bench", "grpc", "--steps", "2", "--replicas", "1", "--rounds", "2"});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_TRUE(contains(r.out, "2 round(s), each run of every kind in turn")) << r.out;
  EXPECT_TRUE(contains(r.out, "steps of every run (same)")) << r.out;
  for (const char* row : {"in-process Trainer (threads)", "processes, same_host unix",
                          "processes, same_host grpc", "gRPC, link_grace 0"}) {
    const size_t at = r.out.find(row);
    ASSERT_NE(at, std::string::npos) << row << "\n" << r.out;
    const std::string line = r.out.substr(at, r.out.find('\n', at) - at);
    // The pooled ratio and one per round.
    size_t ratios = 0;
    for (size_t x = line.find("x"); x != std::string::npos; x = line.find("x", x + 1)) {
      ratios += x > 0 && std::isdigit(static_cast<unsigned char>(line[x - 1]));
    }
    EXPECT_EQ(ratios, 3u) << line;
  }
}

TEST(OneBox, BadJobWithoutTopologyNamesItsFields) {
  TempDir dir;
  writeFile(dir.file("job.yaml"), std::string(kJob) + "transport: {bandwidth_scale: 0}\n");
  CommandResult r = runGeopipe(dir, {"validate", dir.file("job.yaml")});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.out + r.err, "job.yaml:6:30: transport.bandwidth_scale:"))
      << r.out << r.err;
  writeFile(dir.file("auto.yaml"), "parallelism: {data_parallel: auto}\n");
  r = runGeopipe(dir, {"train", dir.file("auto.yaml")});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.out + r.err, "auto.yaml:1:30: parallelism.data_parallel: "))
      << r.out << r.err;
}

}  // namespace
