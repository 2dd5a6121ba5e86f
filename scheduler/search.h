// Placement search over balanced partitions: the steady-state evolutionary
// algorithm and the in-order, random and exhaustive baselines.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "scheduler/cost_model.h"
#include "scheduler/evaluator.h"

namespace geopipe::scheduler {

struct SearchOptions {
  // evolutionary | in-order | random | exhaustive
  std::string algorithm = "evolutionary";
  // Stop after this many candidate evaluations (each full or incremental
  // pricing of a partition counts one); 0 = no limit.
  int64_t budget_evaluations = 20000;
  // Stop after this much wall-clock time; 0 = no limit. With a time limit the
  // result depends on machine speed; with only an evaluation limit it is a
  // pure function of the seed (for any thread count).
  double budget_seconds = 2.0;
  // Seed of every random choice.
  uint64_t seed = 1;
  // Children bred and improved concurrently (evolutionary only).
  int threads = 1;
  // Candidates kept by the steady-state GA (the paper uses 100).
  int population = 100;
  // Local-search trials (cyclic moves) per child; 0 = 2 x devices in use.
  int local_search_trials = 0;
  // Longest cyclic move: a device of each of k groups moves to the next one.
  int max_cycle = 3;
  // exhaustive refuses instances with more partitions than this.
  int64_t exhaustive_limit = 2'000'000;
};

// One algorithm's outcome.
struct SearchResult {
  std::string algorithm;
  Candidate best;
  Allocation allocation;
  int64_t evaluations = 0;          // candidate evaluations spent
  double seconds = 0;               // wall-clock spent
  int64_t evaluations_to_best = 0;  // evaluations when best was first found
  double seconds_to_best = 0;       // seconds when best was first found
};

// The algorithm names accepted by runSearch.
std::vector<std::string> algorithmNames();

// Dispatches on options.algorithm; throws ConfigError for an unknown name.
SearchResult runSearch(const CostModel& model, const SearchOptions& options);

// Megatron's default: rank = device index, stage s = devices s·D_dp ..
// (s+1)·D_dp − 1 in listing order, replica r = the r-th of them, no
// reordering and no matching (the last devices idle when there are more).
SearchResult inOrderPlacement(const CostModel& model);

// Best of options.budget_* uniformly random balanced partitions.
SearchResult randomSearch(const CostModel& model, const SearchOptions& options);

// Every balanced partition (groups unlabelled); throws InfeasibleError when
// there are more than options.exhaustive_limit.
SearchResult exhaustiveSearch(const CostModel& model,
                              const SearchOptions& options);

// The steady-state GA (see docs/scheduler.md).
SearchResult evolutionarySearch(const CostModel& model,
                                const SearchOptions& options);

// Number of balanced partitions of n devices into `way` unlabelled groups of
// d_dp plus a labelled idle set; saturates at INT64_MAX.
int64_t countPartitions(int n, int way, int d_dp);

}  // namespace geopipe::scheduler
