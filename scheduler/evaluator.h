// Incremental evaluation of candidates (a group label per device) with caches
// of per-group statistics and group-pair matching costs w(a,b).
#pragma once

#include <cstdint>
#include <limits>
#include <unordered_map>
#include <utility>
#include <vector>

#include <Eigen/Dense>

#include "scheduler/cost_model.h"

namespace geopipe::scheduler {

// A candidate partition: label[d] in [0, way) is device d's stage group,
// label[d] == way marks an idle device. Every group holds exactly D_dp
// devices. The rest is derived state that the Evaluator keeps in sync.
struct Candidate {
  std::vector<int> label;
  std::vector<std::vector<int>> groups;  // way + 1 sorted lists (last: idle)
  std::vector<uint64_t> hash;            // Zobrist hash per group
  std::vector<GroupStats> stats;         // per stage group
  Eigen::MatrixXd w;                     // w(a -> b), way x way
  std::vector<int> order;                // order[s] = group at stage s
  PathEval eval;
  double cost = 0;                       // eval.total_s
  // Smooth tie-breaker for local search on the plateaus of the max terms:
  // Σ_k group comm terms + mean w(a,b).
  double surrogate = 0;
  // Lexicographic tie-breaker (see tieBreakLess): the groups' data-parallel
  // terms sorted descending, then the pipeline path's edges w sorted
  // descending. On a plateau of the cost (the max terms did not move) a move
  // that lowers the second-largest group term, or the number of groups at
  // the max, is progress towards lowering the max itself.
  std::vector<double> ties;
  // deficiency(a -> b) of each pair's matching (BottleneckMatching), way x way.
  Eigen::MatrixXi def;
  // Groups whose DP term ties the max, and Σ_{a≠b} deficiency(a,b)/D_dp: the
  // plateau measures of local search. On equal cost, a move that lowers one
  // without raising the other is progress: the first towards lowering the
  // DP max, the second towards a pair whose matching avoids its slowest
  // links (compositions that match site by site, as in "trans").
  int dp_at_max = 0;
  double def_sum = 0;
  // Order-independent fingerprint of the partition (for duplicate checks).
  uint64_t fingerprint() const;
};

// Evaluates candidates for one CostModel. Not thread-safe: each search
// thread owns one Evaluator (its caches are private; they never change a
// value, so results do not depend on the thread count).
class Evaluator {
 public:
  // zobrist_seed only keys the caches.
  explicit Evaluator(const CostModel& model, uint64_t zobrist_seed = 0x9e3779b9);

  const CostModel& model() const { return model_; }
  int way() const { return model_.dPp(); }
  int numDevices() const { return n_; }

  // Full evaluation of a label vector (one evaluation).
  Candidate make(std::vector<int> label);

  // Moves each (device, to_group) and re-evaluates: only the groups that
  // changed get new stats and new rows / columns of w (one evaluation).
  // Pairs not in the cache are warm-started from their old value.
  //
  // prune_above: when the model is additive (dtfm) and has at most
  // kPruneMaxGroups groups, a lower bound of the new cost is computed first
  // from exact group stats and O(D_dp^2) lower bounds of the uncached pairs
  // (bottleneckLowerBound), with an exact Held–Karp over them (a TSP on
  // smaller weights is no dearer). If that bound exceeds prune_above the
  // exact matchings are skipped and false is returned; `c` is then left
  // half-updated (cost = +inf) and must be discarded. The same holds when
  // the exact pipeline order (Held–Karp, cut at the threshold) cannot price
  // at or below prune_above. Returns true when `c` holds the exact new cost.
  bool applyMoves(Candidate& c, const std::vector<std::pair<int, int>>& moves,
                  double prune_above = std::numeric_limits<double>::infinity());

  // The allocation a candidate stands for: groups in TSP order, replicas of
  // consecutive stages paired by their bottleneck matching.
  Allocation allocation(const Candidate& c) const;

  int64_t evaluations() const { return evaluations_; }
  // Of those, applyMoves calls settled by the lower bound alone.
  int64_t pruned() const { return pruned_; }

  static constexpr int kPruneMaxGroups = 10;
  // From this D_dp on, the pruning bound is re-tried after each exact pair
  // matching (one costs more than the cut Held–Karp there).
  static constexpr int kRecheckMinDp = 16;
  // Pipelines up to this many stages get every order priced exactly when
  // the model's path cost is not additive; beyond, a TSP on a surrogate
  // picks the order (exhaustive search refuses such shapes).
  static constexpr int kBruteForceOrders = 6;

 private:
  struct PairHash {
    size_t operator()(const std::pair<uint64_t, uint64_t>& k) const {
      return k.first * 0x9e3779b97f4a7c15ULL ^ (k.second + 0x7f4a7c15);
    }
  };
  const GroupStats& statsOf(const std::vector<int>& g, uint64_t h);
  struct PairValue {
    double w;
    int deficiency;
  };
  PairValue pairOf(int a, int b, const Candidate& c, double hint = -1.0);
  // Orders and prices c (one evaluation). False, with cost = +inf and c
  // half-updated, when an additive model's exact order has an edge sum over
  // path_budget (pathBudget of the move's threshold).
  bool finish(Candidate& c, double path_budget = std::numeric_limits<double>::infinity());
  // The largest edge sum (of pathWeights) a pipeline order may have for an
  // additive model's total to stay at or below total_bound; +inf if none.
  double pathBudget(const std::vector<GroupStats>& stats, double total_bound) const;
  PathEval priceOrder(const Candidate& c, const std::vector<int>& order) const;

  const CostModel& model_;
  int n_;
  std::vector<uint64_t> zobrist_;
  std::unordered_map<uint64_t, GroupStats> stats_cache_;
  std::unordered_map<std::pair<uint64_t, uint64_t>, PairValue, PairHash>
      pair_cache_;
  int64_t evaluations_ = 0;
  int64_t pruned_ = 0;
};

// True when a's tie-breaker vector is lexicographically smaller than b's
// (entries within a relative 1e-12 count as equal).
bool tieBreakLess(const Candidate& a, const Candidate& b);

}  // namespace geopipe::scheduler
