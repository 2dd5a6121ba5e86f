// Data at scale, end to end: a job trains on a 4 GiB token file (made in a
// temporary directory, sparse) and its process's anonymous memory (RssAnon;
// the file's mapped pages are RssFile and do not count) grows by less than
// 200 MB: the file is mapped, never copied or widened, the vocabulary check
// streams over it, and the sampler keeps no per-sample table.
// GEOPIPE_SCALE_TEST_GIB sets another size.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "geopipe/trainer.h"
#include "src/config/job_parser.h"
#include "src/data/dataset.h"

using namespace geopipe;

namespace {

// A field of /proc/self/status in kB ("RssAnon:    1234 kB").
int64_t statusKb(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::atoll(line.c_str() + field.size() + 1);
  }
  ADD_FAILURE() << "no " << field << " in /proc/self/status";
  return 0;
}

struct TempFile {
  explicit TempFile(const std::string& name) : path(::testing::TempDir() + name) {}
  ~TempFile() { std::filesystem::remove(path); }
  std::string path;
};

// A uint16 token file of `bytes` bytes: sparse (id 0) except for 16 MiB of
// a learnable synthetic corpus at the start and at the end, written a block
// at a time, so making it takes a moment whatever its size.
void makeTokenFile(const std::string& path, int64_t bytes) {
  const int fd = ::open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
  ASSERT_EQ(::ftruncate(fd, bytes), 0) << std::strerror(errno);
  const int64_t block = std::min<int64_t>(bytes / 2, int64_t{16} << 20);
  const std::vector<int32_t> ids = data::syntheticTokens(block / 2, 256, 3);
  std::vector<uint16_t> u16(ids.begin(), ids.end());
  for (int64_t at : {int64_t{0}, bytes - block}) {
    ASSERT_EQ(::pwrite(fd, u16.data(), static_cast<size_t>(block), at), block);
  }
  ::close(fd);
}

struct Growth {
  int64_t anon_kb = 0;  // peak RssAnon during the run minus before it
  int64_t file_kb = 0;  // peak RssFile minus before (the mapped token file)
  double seconds = 0;
  std::vector<double> losses;
};

// Trains 3 steps of a small GPT on `path` (2 stages x 2 replicas, AC-SGD
// activations, so the bound sample order and its buffers are exercised).
Growth train(const std::string& path) {
  const std::string yaml = R"(
model: {preset: none, layers: 2, hidden: 64, heads: 2, seq_len: 64, vocab: 256}
data: {kind: tokens, token_dtype: uint16, path: ")" + path + R"("}
training: {steps: 3, global_batch: 8, micro_batch: 2, seed: 5}
parallelism: {pipeline_stages: 2, data_parallel: 2}
compression:
  activations: {method: acsgd, bits: 4}
topology:
  sites: [{name: a, devices: 4, intra: {latency_ms: 0, bandwidth_gbps: 10}}]
transport: {emulate_links: false}
)";
  JobSpec job = config::parseJobString(yaml, "scale.yaml", "");
  malloc_trim(0);
  Growth g;
  const int64_t anon0 = statusKb("RssAnon"), file0 = statusKb("RssFile");
  int64_t anon = anon0, file = file0;
  TrainerOptions opt;
  opt.threads_per_tasklet = 1;
  opt.on_step = [&](const StepMetrics&) {
    anon = std::max(anon, statusKb("RssAnon"));
    file = std::max(file, statusKb("RssFile"));
  };
  const auto t0 = std::chrono::steady_clock::now();
  TrainResult r = Trainer(makeModel(job.model), job, opt).train();
  g.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  g.anon_kb = anon - anon0;
  g.file_kb = file - file0;
  g.losses = r.losses;
  return g;
}

TEST(DataAtScale, AFourGibTokenFileAddsUnder200MbOfAnonymousMemory) {
  const char* env = std::getenv("GEOPIPE_SCALE_TEST_GIB");
  const double gib = env ? std::atof(env) : 4.0;
  const auto big_bytes = static_cast<int64_t>(gib * double(int64_t{1} << 30)) & ~int64_t{1};
  const int64_t small_bytes = int64_t{64} << 20;
  TempFile big("geopipe-scale-big.bin"), small("geopipe-scale-small.bin");
  makeTokenFile(big.path, big_bytes);
  makeTokenFile(small.path, small_bytes);

  train(small.path);  // warm-up: LibTorch's and the allocator's first-use costs
  const Growth s = train(small.path);
  const Growth b = train(big.path);
  const int64_t samples = (big_bytes / 2 - 1) / 64;
  std::printf(
      "token file  samples  RssAnon growth  RssFile growth  seconds (3 steps, load included)\n"
      "%5.2f GiB  %9lld  %9.1f MiB  %11.1f MiB  %6.2f\n"
      "%5.2f GiB  %9lld  %9.1f MiB  %11.1f MiB  %6.2f\n",
      small_bytes / double(int64_t{1} << 30), static_cast<long long>((small_bytes / 2 - 1) / 64),
      s.anon_kb / 1024.0, s.file_kb / 1024.0, s.seconds, gib, static_cast<long long>(samples),
      b.anon_kb / 1024.0, b.file_kb / 1024.0, b.seconds);
  EXPECT_LT(b.anon_kb, 200 * 1000) << "KiB of anonymous memory added by training on the file";
  // What the data adds beyond the same run on a small file: nothing that
  // grows with it (a widened copy would be 2x the file).
  EXPECT_LT(b.anon_kb - s.anon_kb, 32 * 1024);
  ASSERT_EQ(b.losses.size(), 3u);
  for (double l : b.losses) EXPECT_TRUE(std::isfinite(l));
}

}  // namespace
