// Candidate evaluation with cached group stats and pair costs.
#include "scheduler/evaluator.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>

#include "geopipe/error.h"
#include "scheduler/tsp.h"

namespace geopipe::scheduler {

namespace {
// Bounded so that clearing or destroying a cache stays well under 10 ms
// (a 2M-entry map took ~0.3 s, overrunning 2 s budgets).
constexpr size_t kMaxCacheEntries = 200'000;
}

uint64_t Candidate::fingerprint() const {
  // Sum of per-group hashes mixed so that relabelling groups does not change
  // it (the idle group is distinguished by its position).
  uint64_t f = 0;
  const size_t way = hash.empty() ? 0 : hash.size() - 1;
  for (size_t g = 0; g < way; ++g) f += hash[g] * 0xff51afd7ed558ccdULL;
  if (!hash.empty()) f ^= hash.back();
  return f;
}

Evaluator::Evaluator(const CostModel& model, uint64_t zobrist_seed)
    : model_(model), n_(model.network().size()) {
  std::mt19937_64 rng(zobrist_seed);
  zobrist_.resize(n_);
  for (auto& z : zobrist_) z = rng();
}

const GroupStats& Evaluator::statsOf(const std::vector<int>& g, uint64_t h) {
  auto it = stats_cache_.find(h);
  if (it != stats_cache_.end()) return it->second;
  if (stats_cache_.size() > kMaxCacheEntries) stats_cache_.clear();
  return stats_cache_.emplace(h, model_.groupStats(g)).first->second;
}

Evaluator::PairValue Evaluator::pairOf(int a, int b, const Candidate& c,
                                      double hint) {
  const auto key = std::make_pair(c.hash[a], c.hash[b]);
  auto it = pair_cache_.find(key);
  if (it != pair_cache_.end()) return it->second;
  if (pair_cache_.size() > kMaxCacheEntries) pair_cache_.clear();
  const BottleneckMatching m = model_.pairBottleneck(c.groups[a], c.groups[b], hint);
  const PairValue v{m.bottleneck, m.deficiency};
  pair_cache_.emplace(key, v);
  return v;
}

Candidate Evaluator::make(std::vector<int> label) {
  const int way = this->way();
  GEOPIPE_CHECK_EQ(static_cast<int>(label.size()), n_, Error,
                   "candidate label size");
  Candidate c;
  c.label = std::move(label);
  c.groups.assign(way + 1, {});
  c.hash.assign(way + 1, 0);
  for (int d = 0; d < n_; ++d) {
    const int g = c.label[d];
    GEOPIPE_CHECK(g >= 0 && g <= way, Error, "device ", d, " has group ", g);
    c.groups[g].push_back(d);
    c.hash[g] ^= zobrist_[d];
  }
  for (int g = 0; g < way; ++g)
    GEOPIPE_CHECK_EQ(static_cast<int>(c.groups[g].size()), model_.dDp(), Error,
                     "group ", g, " size");
  c.stats.resize(way);
  for (int g = 0; g < way; ++g) c.stats[g] = statsOf(c.groups[g], c.hash[g]);
  c.w.setZero(way, way);
  c.def.setZero(way, way);
  for (int a = 0; a < way; ++a)
    for (int b = 0; b < way; ++b)
      if (a != b) {
        const PairValue v = pairOf(a, b, c);
        c.w(a, b) = v.w;
        c.def(a, b) = v.deficiency;
      }
  finish(c);
  return c;
}

bool Evaluator::applyMoves(Candidate& c,
                           const std::vector<std::pair<int, int>>& moves,
                           double prune_above) {
  const int way = this->way();
  std::vector<char> changed(way + 1, 0);
  for (const auto& [d, to] : moves) {
    const int from = c.label[d];
    if (from == to) continue;
    auto& src = c.groups[from];
    src.erase(std::lower_bound(src.begin(), src.end(), d));
    auto& dst = c.groups[to];
    dst.insert(std::lower_bound(dst.begin(), dst.end(), d), d);
    c.hash[from] ^= zobrist_[d];
    c.hash[to] ^= zobrist_[d];
    c.label[d] = to;
    changed[from] = changed[to] = 1;
  }
  for (int g = 0; g < way; ++g)
    if (changed[g]) c.stats[g] = statsOf(c.groups[g], c.hash[g]);

  // Pairs touching a changed group: cached ones are exact at once; the rest
  // need a bottleneck matching (the expensive part at large D_dp).
  std::vector<std::pair<int, int>> todo;
  for (int g = 0; g < way; ++g) {
    if (!changed[g]) continue;
    for (int o = 0; o < way; ++o) {
      if (o == g || (changed[o] && o < g)) continue;  // each pair once
      for (const auto& [a, b] : {std::make_pair(g, o), std::make_pair(o, g)}) {
        auto it = pair_cache_.find(std::make_pair(c.hash[a], c.hash[b]));
        if (it != pair_cache_.end()) {
          c.w(a, b) = it->second.w;
          c.def(a, b) = it->second.deficiency;
        } else {
          todo.emplace_back(a, b);
        }
      }
    }
  }

  const bool prune =
      std::isfinite(prune_above) && model_.pathIsAdditive() && way <= kPruneMaxGroups;
  auto reject = [&] {
    ++evaluations_;
    ++pruned_;
    c.cost = std::numeric_limits<double>::infinity();
    return false;
  };
  // Lower bound: the cost is monotone in every w(a,b) (a max of group terms
  // plus 2·Σ w along the best order), so pricing the best order under
  // w_lb <= w gives a bound; Held–Karp cut at the path budget answers
  // whether any order stays under the threshold.
  Eigen::MatrixXd lb;
  // The path budget of the threshold, once per move (the groups' stats are
  // final here): the bound below and finish() share it.
  double budget = std::numeric_limits<double>::infinity();
  auto noPathUnder = [&] {
    return std::isinf(heldKarpOpenPath(model_.pathWeights(c.stats, lb), budget).cost);
  };
  const bool recheck = prune && way <= kHeldKarpMaxNodes && model_.dDp() >= kRecheckMinDp;
  // First the group terms alone (free).
  if (prune && model_.evaluatePath(c.stats, {}).total_s > prune_above) return reject();
  if (std::isfinite(prune_above) && model_.pathIsAdditive())
    budget = pathBudget(c.stats, prune_above);
  if (prune) {
    if (!todo.empty() && way <= kHeldKarpMaxNodes) {
      lb = c.w;
      for (const auto& [a, b] : todo) lb(a, b) = model_.pairLowerBound(c.groups[a], c.groups[b]);
      if (noPathUnder()) return reject();
      // Exact pairs, dearest bound first (the likeliest to close every
      // path); at large D_dp each costs far more than a cut Held–Karp, so
      // the bound is re-tried after each one that rose above its bound.
      if (recheck)
        std::stable_sort(todo.begin(), todo.end(), [&](const auto& x, const auto& y) {
          return lb(x.first, x.second) > lb(y.first, y.second);
        });
    }
  }
  for (size_t i = 0; i < todo.size(); ++i) {
    const auto [a, b] = todo[i];
    const PairValue v = pairOf(a, b, c, c.w(a, b));
    c.w(a, b) = v.w;
    c.def(a, b) = v.deficiency;
    if (recheck && i + 1 < todo.size() && v.w > lb(a, b)) {
      lb(a, b) = v.w;
      if (noPathUnder()) return reject();
    }
  }
  if (!finish(c, budget)) {
    ++pruned_;
    return false;
  }
  return true;
}

double Evaluator::pathBudget(const std::vector<GroupStats>& stats, double total_bound) const {
  // An additive model's total is its group terms plus a fixed multiple of
  // the path's edge sum; read both off evaluatePath. A relative 1e-9 of
  // slack keeps ties (plateau moves at equal cost) on the accepted side.
  const int way = this->way();
  if (!std::isfinite(total_bound) || way < 2) return std::numeric_limits<double>::infinity();
  const double base = model_.evaluatePath(stats, {}).total_s;
  std::vector<double> one(way - 1, 0.0);
  one[0] = 1.0;
  const double unit = model_.evaluatePath(stats, one).total_s - base;
  if (!(unit > 0)) return std::numeric_limits<double>::infinity();
  const double budget = (total_bound - base) / unit;
  return budget + 1e-9 * std::max(1.0, std::abs(budget));
}

PathEval Evaluator::priceOrder(const Candidate& c,
                               const std::vector<int>& order) const {
  std::vector<GroupStats> stats;
  std::vector<double> edges;
  for (size_t s = 0; s < order.size(); ++s) {
    stats.push_back(c.stats[order[s]]);
    if (s + 1 < order.size()) edges.push_back(c.w(order[s], order[s + 1]));
  }
  return model_.evaluatePath(stats, edges);
}

bool Evaluator::finish(Candidate& c, double path_budget) {
  ++evaluations_;
  const int way = this->way();
  if (!model_.pathIsAdditive() && way <= kBruteForceOrders) {
    // Small pipelines: price every order exactly, so the cost is a function
    // of the partition alone (not of how its groups happen to be labelled).
    std::vector<int> order(way);
    for (int g = 0; g < way; ++g) order[g] = g;
    bool first = true;
    do {
      PathEval e = priceOrder(c, order);
      if (first || e.total_s < c.eval.total_s) {
        c.eval = std::move(e);
        c.order = order;
        first = false;
      }
    } while (std::next_permutation(order.begin(), order.end()));
  } else if (model_.pathIsAdditive() && way <= kHeldKarpMaxNodes) {
    // Exact order; cut at the path budget (a move that cannot price below
    // it is rejected without its order).
    OpenPath p = heldKarpOpenPath(model_.pathWeights(c.stats, c.w), path_budget);
    if (std::isinf(p.cost)) {
      c.cost = std::numeric_limits<double>::infinity();
      return false;
    }
    c.order = std::move(p.order);
    c.eval = priceOrder(c, c.order);
  } else {
    c.order = openTsp(model_.pathWeights(c.stats, c.w)).order;
    c.eval = priceOrder(c, c.order);
    if (!model_.pathIsAdditive()) {
      // The TSP ran on a surrogate; the reversed order may price better.
      std::vector<int> rev(c.order.rbegin(), c.order.rend());
      PathEval e = priceOrder(c, rev);
      if (e.total_s < c.eval.total_s) {
        c.eval = std::move(e);
        c.order = std::move(rev);
      }
    }
  }
  c.cost = c.eval.total_s;
  double sur = 0;
  for (const GroupStats& g : c.stats) sur += g.dpKey();
  c.surrogate = sur + c.w.sum() / std::max(1, way);
  c.ties.clear();
  for (const GroupStats& g : c.stats) c.ties.push_back(g.dpKey());
  const double dp_max = c.ties.empty() ? 0 : *std::max_element(c.ties.begin(), c.ties.end());
  c.dp_at_max = 0;
  for (double v : c.ties)
    if (v >= dp_max - 1e-12 * std::max(1.0, dp_max)) ++c.dp_at_max;
  // Squared, so that progress concentrated on one pair (which can then
  // reach a cheaper matching) beats the same progress spread thinly.
  c.def_sum = static_cast<double>(c.def.cast<double>().array().square().sum()) /
              std::max(1, model_.dDp() * model_.dDp());
  std::sort(c.ties.begin(), c.ties.end(), std::greater<double>());
  const size_t k = c.ties.size();
  for (int s = 0; s + 1 < way; ++s) c.ties.push_back(c.w(c.order[s], c.order[s + 1]));
  std::sort(c.ties.begin() + k, c.ties.end(), std::greater<double>());
  return true;
}

bool tieBreakLess(const Candidate& a, const Candidate& b) {
  const size_t n = std::min(a.ties.size(), b.ties.size());
  for (size_t i = 0; i < n; ++i) {
    const double tol = 1e-12 * std::max(1.0, std::abs(b.ties[i]));
    if (a.ties[i] < b.ties[i] - tol) return true;
    if (a.ties[i] > b.ties[i] + tol) return false;
  }
  return false;
}

Allocation Evaluator::allocation(const Candidate& c) const {
  Allocation a;
  a.d_pp = way();
  a.d_dp = model_.dDp();
  a.layers = c.eval.layers;
  a.idle = c.groups[way()];
  for (size_t s = 0; s < c.order.size(); ++s) {
    const std::vector<int>& g = c.groups[c.order[s]];
    if (s == 0) {
      a.stages.push_back(g);
      continue;
    }
    // Pair replica r of stage s-1 with its bottleneck-matched device.
    const BottleneckMatching m = model_.pairMatching(a.stages[s - 1], g);
    std::vector<int> row(g.size());
    for (size_t r = 0; r < g.size(); ++r) row[r] = g[m.match[r]];
    a.stages.push_back(row);
  }
  return a;
}

}  // namespace geopipe::scheduler
