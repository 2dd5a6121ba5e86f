// `geopipe bench scheduler`: the search on the paper's five scenarios and on
// synthetic world-wide topologies, against in-order and random placements.
#pragma once

#include <cstdint>
#include <ostream>
#include <vector>

#include "geopipe/job_spec.h"

namespace geopipe::cli {

struct SchedulerBenchOptions {
  // Jobs for the paper scenarios; empty = the built-in five
  // (scheduler::paperJob(1..5): cost_model dtfm, 8 x 8, paper payloads).
  std::vector<JobSpec> scenarios;
  // Search budget per paper scenario (the target: best plan within 2 s).
  double scenario_budget_seconds = 2.0;
  int64_t scenario_budget_evaluations = 0;  // 0 = only the time limit
  // Synthetic world-wide topologies (devices); dtfm, D_pp = 8,
  // D_dp = devices / 8. Empty skips them.
  std::vector<int> synthetic_devices = {256, 1024};
  double synthetic_budget_seconds = 60.0;  // the target: a plan within 60 s
  uint64_t seed = 1;
  int threads = 1;
};

// Runs the benchmark, prints one table to `out` and returns 0 when every
// plan is at least as good as in-order and random at the same budget, 1
// otherwise (the table marks the offending rows).
int runSchedulerBench(const SchedulerBenchOptions& options, std::ostream& out);

// `geopipe bench scheduler --hard`: every method on the hard instances.
struct HardBenchOptions {
  // Instance sizes (devices); both families at each (hardInstances()).
  std::vector<int> sizes = {8, 12, 16, 32, 64, 256, 1024};
  uint64_t seed = 1;  // instance and search seed
  // Our search at the default budget (SearchOptions: 20000 evaluations,
  // 2 s, adaptive stop); the reference run gets `long_factor` times both
  // budgets, another seed and no adaptive stop.
  int long_factor = 20;
  // Baselines (random, dtfm-ga, annealing) get the default evaluation
  // budget, no adaptive stop, and at most this wall-clock.
  double baseline_cap_seconds = 10.0;
  // Above this many devices only ours, seeds and random run (the others
  // would take minutes per row).
  int full_max_devices = 256;
};

// Prints the table; returns 1 when a found cost is below the lower bound
// (an unsound bound) or ours is worse than its own seeds, else 0.
int runHardSchedulerBench(const HardBenchOptions& options, std::ostream& out);

}  // namespace geopipe::cli
