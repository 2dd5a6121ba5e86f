// Resharding cost on resume (single core): two saved replicas' AC-SGD
// buffer stores (2048 samples of 16 KiB each, half of them in both) merged
// into one, against loading both stores as a same-count resume does; and
// Sampler::lastReplicaOf over ~4 epochs. Each benchmark checks its result
// first. The summary prints merge / load in the same run.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "compression/activation_buffer.h"
#include "src/data/sampler.h"
#include "src/runtime/reshard.h"

using namespace geopipe;

namespace {

constexpr int64_t kSamplesPerStore = 2048;
constexpr size_t kEntryBytes = 16384;  // 64 tokens x 128 hidden, fp16

void verify(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "verification failed: %s\n", what);
    std::abort();
  }
}

// Saved store r holds samples [r * 1024, r * 1024 + 2048): half shared.
const std::vector<std::string>& savedStores() {
  static const std::vector<std::string> paths = [] {
    const auto dir = std::filesystem::temp_directory_path() / "geopipe-reshard-bench";
    std::filesystem::create_directories(dir);
    std::vector<std::string> out;
    for (int r = 0; r < 2; ++r) {
      auto store = compression::makeBufferStore({});
      for (int64_t i = 0; i < kSamplesPerStore; ++i) {
        const int64_t id = r * kSamplesPerStore / 2 + i;
        std::memset(store->allocate(id, kEntryBytes), static_cast<int>((id + r) & 0xff),
                    kEntryBytes);
      }
      out.push_back((dir / ("store-" + std::to_string(r))).string());
      store->save(out.back());
    }
    return out;
  }();
  return paths;
}

std::vector<int> evenOdd(const std::vector<int64_t>& ids) {
  std::vector<int> o;
  for (int64_t id : ids) o.push_back(static_cast<int>(id & 1));
  return o;
}

void BM_LoadStores(benchmark::State& st) {
  const auto& paths = savedStores();
  auto a = compression::makeBufferStore({}), b = compression::makeBufferStore({});
  for (auto _ : st) {
    a->load(paths[0]);
    b->load(paths[1]);
    benchmark::DoNotOptimize(a->entryCount() + b->entryCount());
  }
  verify(a->entryCount() + b->entryCount() == 2 * kSamplesPerStore, "load count");
  st.counters["bytes"] = 2.0 * kSamplesPerStore * kEntryBytes;
}

void BM_MergeStores(benchmark::State& st) {
  const auto& paths = savedStores();
  auto into = compression::makeBufferStore({});
  runtime::mergeBufferStores(paths, evenOdd, *into);
  verify(into->entryCount() == 3 * kSamplesPerStore / 2, "merged count");
  for (int64_t id : {int64_t{1024}, int64_t{1025}, int64_t{3000}}) {
    const auto e = into->find(id);
    const int owner = id >= kSamplesPerStore ? 1 : static_cast<int>(id & 1);
    verify(e.size == kEntryBytes && e.data[0] == static_cast<uint8_t>((id + owner) & 0xff),
           "newest owner's bytes");
  }
  for (auto _ : st) {
    runtime::mergeBufferStores(paths, evenOdd, *into);
    benchmark::DoNotOptimize(into->entryCount());
  }
  st.counters["bytes"] = 2.0 * kSamplesPerStore * kEntryBytes;
}

void BM_LastReplicaOf(benchmark::State& st) {
  // 3072 samples, global batch 64 over 2 replicas: 48 steps per epoch;
  // resumed at step 200 (4+ epochs), every sample asked for.
  const data::Sampler sampler(3072, 64, 2, 4, 11);
  std::vector<int64_t> ids(3072);
  for (int64_t i = 0; i < 3072; ++i) ids[static_cast<size_t>(i)] = i;
  const std::vector<int> owner = sampler.lastReplicaOf(ids, 200);
  verify(std::count(owner.begin(), owner.end(), -1) == 0, "every sample was visited");
  for (auto _ : st) benchmark::DoNotOptimize(sampler.lastReplicaOf(ids, 200));
}

std::map<std::string, double> g_seconds;  // benchmark -> adjusted real time per iteration

class Collect : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const auto& r : runs) {
      if (r.run_type != Run::RT_Iteration) continue;
      g_seconds[r.run_name.function_name] =
          r.GetAdjustedRealTime() / benchmark::GetTimeUnitMultiplier(r.time_unit);
    }
  }
};

}  // namespace

BENCHMARK(BM_LoadStores)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_MergeStores)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_LastReplicaOf)->Unit(benchmark::kMillisecond);

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  Collect rep;
  benchmark::RunSpecifiedBenchmarks(&rep);
  if (g_seconds.count("BM_LoadStores") && g_seconds.count("BM_MergeStores")) {
    std::printf("\nmerge of 2 stores (2 x %lld x %zu B) = %.2fx loading them as they are\n",
                static_cast<long long>(kSamplesPerStore), kEntryBytes,
                g_seconds["BM_MergeStores"] / g_seconds["BM_LoadStores"]);
  }
  std::filesystem::remove_all(std::filesystem::temp_directory_path() / "geopipe-reshard-bench");
  benchmark::Shutdown();
  return 0;
}
