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
  // evolutionary | in-order | random | exhaustive | seeds | annealing |
  // dtfm-ga (algorithmNames(); the last three are baselines for the
  // benchmark, see docs/scheduler.md)
  std::string algorithm = "evolutionary";
  // Stop after this many candidate evaluations (each full or incremental
  // pricing of a partition counts one); 0 = no limit.
  int64_t budget_evaluations = 150000;
  // Stop after this much wall-clock time; 0 = no limit. With a time limit the
  // result depends on machine speed; with only an evaluation limit it is a
  // pure function of the seed (for any thread count).
  double budget_seconds = 3.0;
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
  // Adaptive stop (evolutionary, annealing, dtfm-ga): end the search once
  // this many evaluations have passed without improving the best candidate
  // (counted in evaluations, so an evaluation-budgeted run stays a pure
  // function of the seed); 0 = run to the budget. The evolutionary search
  // counts from the start of its GA phase (after the seeds and the
  // annealing walk).
  int64_t stall_evaluations = 6000;
  // Warm starts (evolutionary only; runSearch refuses them for another
  // algorithm): a search whose shape is a start's d_pp x d_dp evaluates its
  // label first, ahead of the structured seeds, and polishes it by local
  // search like them, so the result is never priced above it (re-planning
  // starts from the running plan this way; plan() always searches their
  // shapes). Labels as Candidate::label, on the model's devices.
  struct WarmStart {
    int d_pp = 0;
    int d_dp = 0;
    std::vector<int> label;
  };
  std::vector<WarmStart> warm_starts;
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
  // Why the search ended: "budget_evaluations", "budget_seconds",
  // "converged" (stall_evaluations without improvement), or "complete"
  // (in-order, seeds, exhaustive: nothing left to try).
  std::string stop_reason = "complete";
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

// Best of the structured partitions the evolutionary search starts from
// (in-order, round-robin, site-spread, and the link-greedy pipeline-chain
// and group seeds), each priced with its best order and matching: the
// "seeds only" baseline.
SearchResult seedSearch(const CostModel& model);

// Simulated annealing from the best seed with the evolutionary search's
// uniform cyclic moves; Metropolis acceptance at a temperature falling
// geometrically from 2% to 0.01% of the seed's cost over the budget.
SearchResult annealingSearch(const CostModel& model, const SearchOptions& options);

// The DT-FM paper's hybrid genetic algorithm as the paper describes it (Yuan
// et al. 2022, after Bui & Moon's GA for balanced graph partitioning):
// random initial population, uniform crossover after relabelling parent B's
// groups to agree most with parent A, balance repair, and a pairwise-swap
// local search that keeps strict improvements; no structured seeds and no
// targeted moves. A baseline for the benchmark.
SearchResult dtfmGeneticSearch(const CostModel& model, const SearchOptions& options);

// A sound lower bound of every candidate's cost under the dtfm model:
// DataPCost >= the (D_pp·D_dp)-th smallest over devices of 2·(sum of the
// D_dp − 1 cheapest data-parallel terms from that device) and each path
// edge w(a,b) >= the largest cheapest outgoing (incoming) edge of a's (b's)
// rows, which over the D_pp − 1 edges sums to at least the k·D_dp-th
// smallest row minima, k = 1..D_pp−1. Returns 0 for other models.
double costLowerBound(const CostModel& model);

// Number of balanced partitions of n devices into `way` unlabelled groups of
// d_dp plus a labelled idle set; saturates at INT64_MAX.
int64_t countPartitions(int n, int way, int d_dp);

}  // namespace geopipe::scheduler
