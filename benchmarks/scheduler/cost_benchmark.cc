// Times the dtfm cost function on the paper's world-wide scenario after
// verifying it against the DESIGN.md oracle (trans partition: 49.22 s).
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>

#include "scheduler/evaluator.h"
#include "scheduler/scenarios.h"
#include "scheduler/tsp.h"

namespace geopipe::scheduler {
namespace {

std::unique_ptr<CostModel> worldModel() {
  const JobSpec job = paperJob(5);
  auto net = std::make_shared<const Network>(job.topology);
  return makeCostModel("dtfm", net, ModelProfile::fromJob(job), job, 8, 8);
}

std::vector<int> trans() {
  std::vector<int> l(64);
  for (int d = 0; d < 64; ++d) l[d] = d % 8;
  return l;
}

void verify() {
  auto model = worldModel();
  Evaluator ev(*model);
  const double c = ev.make(trans()).cost;
  if (std::abs(c - 49.22) > 0.005 * 49.22) {
    std::fprintf(stderr, "cost model check failed: trans = %f, want 49.22\n", c);
    std::exit(1);
  }
}

void BM_FullEvaluation(benchmark::State& state) {
  auto model = worldModel();
  std::mt19937_64 rng(1);
  std::vector<int> l = trans();
  for (auto _ : state) {
    state.PauseTiming();
    std::shuffle(l.begin(), l.end(), rng);
    Evaluator ev(*model);  // cold caches: every w(a,b) is a fresh matching
    state.ResumeTiming();
    benchmark::DoNotOptimize(ev.make(l).cost);
  }
}
BENCHMARK(BM_FullEvaluation);

void BM_IncrementalSwap(benchmark::State& state) {
  auto model = worldModel();
  Evaluator ev(*model);
  std::mt19937_64 rng(2);
  std::vector<int> l = trans();
  std::shuffle(l.begin(), l.end(), rng);
  Candidate c = ev.make(l);
  for (auto _ : state) {
    const int a = rng() % 8, b = (a + 1 + rng() % 7) % 8;
    Candidate n = c;
    ev.applyMoves(n, {{c.groups[a][rng() % 8], b}, {c.groups[b][rng() % 8], a}});
    benchmark::DoNotOptimize(n.cost);
  }
}
BENCHMARK(BM_IncrementalSwap);

void BM_BottleneckMatching(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  std::mt19937_64 rng(3);
  std::uniform_real_distribution<double> u(0, 1);
  Eigen::MatrixXd c(n, n);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) c(i, j) = u(rng);
  for (auto _ : state) benchmark::DoNotOptimize(bottleneckValue(c));
}
BENCHMARK(BM_BottleneckMatching)->Arg(8)->Arg(32)->Arg(128);

void BM_HeldKarp(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  std::mt19937_64 rng(4);
  std::uniform_real_distribution<double> u(0, 1);
  Eigen::MatrixXd w(n, n);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) w(i, j) = u(rng);
  for (auto _ : state) benchmark::DoNotOptimize(heldKarpOpenPath(w).cost);
}
BENCHMARK(BM_HeldKarp)->Arg(8)->Arg(12)->Arg(16);

}  // namespace
}  // namespace geopipe::scheduler

int main(int argc, char** argv) {
  geopipe::scheduler::verify();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  return 0;
}
