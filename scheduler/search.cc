// Evolutionary search and baselines.
#include "scheduler/search.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <memory>
#include <limits>
#include <numeric>
#include <random>
#include <thread>
#include <unordered_set>

#include "src/common/strings.h"
#include "geopipe/error.h"

namespace geopipe::scheduler {

namespace {

using Clock = std::chrono::steady_clock;
constexpr double kInf = std::numeric_limits<double>::infinity();

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

void checkShape(const CostModel& model) {
  const int n = model.network().size();
  const int need = model.dPp() * model.dDp();
  GEOPIPE_CHECK(need <= n, InfeasibleError, "the plan needs D_pp x D_dp = ",
                model.dPp(), " x ", model.dDp(), " = ", need,
                " devices but the topology has ", n,
                "; lower pipeline_stages or data_parallel, or add devices");
}

// Tracks the budget and the best candidate seen.
struct Tracker {
  const SearchOptions& opt;
  Clock::time_point t0 = Clock::now();
  SearchResult result;
  bool have_best = false;

  explicit Tracker(const SearchOptions& o) : opt(o) {}
  bool exhausted(int64_t evals) const {
    if (opt.budget_evaluations > 0 && evals >= opt.budget_evaluations)
      return true;
    return opt.budget_seconds > 0 && since(t0) >= opt.budget_seconds;
  }
  int64_t remaining(int64_t evals) const {
    return opt.budget_evaluations > 0 ? opt.budget_evaluations - evals
                                      : std::numeric_limits<int64_t>::max();
  }
  void offer(const Candidate& c, int64_t evals) {
    if (!have_best || c.cost < result.best.cost) {
      result.best = c;
      result.evaluations_to_best = evals;
      result.seconds_to_best = since(t0);
      have_best = true;
    }
  }
};

std::vector<int> randomLabel(int n, int way, int d_dp, std::mt19937_64& rng) {
  std::vector<int> label(n, way);
  for (int d = 0; d < way * d_dp; ++d) label[d] = d / d_dp;
  std::shuffle(label.begin(), label.end(), rng);
  return label;
}

std::vector<int> inOrderLabel(int n, int way, int d_dp) {
  std::vector<int> label(n, way);
  for (int d = 0; d < way * d_dp; ++d) label[d] = d / d_dp;
  return label;
}

std::vector<int> roundRobinLabel(int n, int way, int d_dp) {
  std::vector<int> label(n, way);
  for (int d = 0; d < way * d_dp; ++d) label[d] = d % way;
  return label;
}

// Each site spreads its devices over the groups, starting again at group 0
// for every site and skipping full groups: GPU k of every machine lands in
// group k. On the paper's spot scenario this is the 31.6 s plan that neither
// in-order (49.5 s) nor the global round-robin (49.5 s) reaches, and the
// search's local moves could not find from them (every intermediate step
// ties the worst data-parallel cost).
std::vector<int> siteSpreadLabel(const Network& net, int way, int d_dp) {
  const int n = net.size();
  std::vector<int> label(n, way), fill(way, 0);
  int placed = 0, cursor = 0, site = -1;
  for (int d = 0; d < n && placed < way * d_dp; ++d) {
    if (net.site(d) != site) site = net.site(d), cursor = 0;
    while (fill[cursor % way] >= d_dp) ++cursor;
    const int g = cursor % way;
    label[d] = g;
    ++fill[g];
    ++placed;
    ++cursor;
  }
  return label;
}

int uniformInt(std::mt19937_64& rng, int lo, int hi) {  // [lo, hi]
  return std::uniform_int_distribution<int>(lo, hi)(rng);
}

void finishResult(SearchResult& r, const Evaluator& ev, const Tracker& tr,
                  int64_t evals) {
  r.evaluations = evals;
  r.seconds = since(tr.t0);
  r.allocation = ev.allocation(r.best);
}

// Crossover: copy the group labels of a random subset of devices from
// parent b into a copy of parent a, then repair balance by moving random
// devices out of over-full groups into under-full ones.
std::vector<int> crossover(const std::vector<int>& a, const std::vector<int>& b,
                           int way, int d_dp, std::mt19937_64& rng) {
  const int n = static_cast<int>(a.size());
  std::vector<int> child = a;
  const int k = uniformInt(rng, 1, std::max(1, n / 2));
  for (int t = 0; t < k; ++t) {
    const int d = uniformInt(rng, 0, n - 1);
    child[d] = b[d];
  }
  std::vector<int> target(way + 1, d_dp);
  target[way] = n - way * d_dp;
  std::vector<std::vector<int>> members(way + 1);
  for (int d = 0; d < n; ++d) members[child[d]].push_back(d);
  std::vector<int> surplus;
  for (int g = 0; g <= way; ++g) {
    auto& m = members[g];
    std::shuffle(m.begin(), m.end(), rng);
    while (static_cast<int>(m.size()) > target[g]) {
      surplus.push_back(m.back());
      m.pop_back();
    }
  }
  std::shuffle(surplus.begin(), surplus.end(), rng);
  size_t next = 0;
  for (int g = 0; g <= way; ++g)
    for (int c = static_cast<int>(members[g].size()); c < target[g]; ++c)
      child[surplus[next++]] = g;
  return child;
}

// Picks the first (group, device) of a targeted cyclic move: a device that
// realises the max data-parallel term of the cost, so moving it can lower
// the max: a group with the largest DP term (a random one among ties:
// round-robin partitions have all groups equal) and its worst device
// (GroupStats::worst_device, the i of max_i Σ_j in DataPCost). The pipeline
// term has its own move, alignMove. Returns {-1, -1} when there is nothing
// to target.
std::pair<int, int> targetedStart(const Evaluator& ev, const Candidate& c,
                                  std::mt19937_64& rng) {
  const int way = ev.way();
  auto pickTied = [&](const std::vector<double>& v) {
    const double m = *std::max_element(v.begin(), v.end());
    const double tol = 1e-12 * std::max(1.0, std::abs(m));
    std::vector<int> at;
    for (size_t i = 0; i < v.size(); ++i)
      if (v[i] >= m - tol) at.push_back(static_cast<int>(i));
    return at[uniformInt(rng, 0, static_cast<int>(at.size()) - 1)];
  };
  std::vector<double> dp(way);
  for (int g = 0; g < way; ++g) dp[g] = c.stats[g].dpKey();
  const int g = pickTied(dp);
  const int d = c.stats[g].worst_device;
  if (d < 0 || c.label[d] != g) return {-1, -1};
  return {g, d};
}

// A repair move on the dearest edge (a,b) of the chosen path: take a row
// i ∈ a whose cheapest edge into b is already >= w(a,b) (it cannot avoid
// the bottleneck), bring into b the device j* ∉ b with the cheapest edge
// i -> j* (a device of i's own site, typically), and send a device x of b
// (one that is itself stuck at the bottleneck, if any) to j*'s group. The
// mirror move starts from a stuck column of b. One move rarely lowers w(a,b)
// by itself (every stuck row must be fixed), which is why ties are judged
// by the deficiency (Candidate::def_sum). Returns false if nothing applies.
bool alignMove(const Evaluator& ev, const Candidate& c, std::mt19937_64& rng,
               std::vector<std::pair<int, int>>& moves) {
  const int way = ev.way();
  const CostModel& model = ev.model();
  if (way < 2) return false;
  double worst = -1;
  std::vector<int> at;
  for (int s = 0; s + 1 < way; ++s) {
    const double e = c.w(c.order[s], c.order[s + 1]);
    if (e > worst + 1e-12 * std::max(1.0, worst)) {
      worst = e;
      at.assign(1, s);
    } else if (e >= worst - 1e-12 * std::max(1.0, worst)) {
      at.push_back(s);
    }
  }
  const int s = at[uniformInt(rng, 0, static_cast<int>(at.size()) - 1)];
  const bool forward = rng() & 1;  // fix a row of a, or a column of b
  const int a = forward ? c.order[s] : c.order[s + 1];  // the stuck side
  const int b = forward ? c.order[s + 1] : c.order[s];
  auto e = [&](int from_a, int to_b) {
    return forward ? model.edge(from_a, to_b) : model.edge(to_b, from_a);
  };
  const double w = worst, tol = 1e-12 * std::max(1.0, w);
  auto stuck = [&](int i, int g_other) {
    double m = std::numeric_limits<double>::infinity();
    for (int j : c.groups[g_other]) m = std::min(m, forward ? e(i, j) : e(i, j));
    return m >= w - tol;
  };
  std::vector<int> rows, cols;
  for (int i : c.groups[a])
    if (stuck(i, b)) rows.push_back(i);
  if (rows.empty()) return false;
  const int i = rows[uniformInt(rng, 0, static_cast<int>(rows.size()) - 1)];
  // j*: the cheapest partner of i outside b (random among ties).
  double best = std::numeric_limits<double>::infinity();
  std::vector<int> partners;
  for (int j = 0; j < ev.numDevices(); ++j) {
    if (j == i || c.label[j] == b) continue;
    const double v = e(i, j);
    if (v < best - 1e-12 * std::max(1.0, best)) {
      best = v;
      partners.assign(1, j);
    } else if (v <= best + 1e-12 * std::max(1.0, best)) {
      partners.push_back(j);
    }
  }
  if (partners.empty() || best >= w - tol) return false;
  const int j = partners[uniformInt(rng, 0, static_cast<int>(partners.size()) - 1)];
  // x: a device of b that nothing in a reaches below w, else any.
  for (int x : c.groups[b]) {
    double m = std::numeric_limits<double>::infinity();
    for (int y : c.groups[a]) m = std::min(m, e(y, x));
    if (m >= w - tol) cols.push_back(x);
  }
  const std::vector<int>& pool = cols.empty() ? c.groups[b] : cols;
  const int x = pool[uniformInt(rng, 0, static_cast<int>(pool.size()) - 1)];
  moves.clear();
  moves.emplace_back(j, b);
  moves.emplace_back(x, c.label[j]);
  return true;
}

// Kernighan–Lin style local search by cyclic moves: choose k groups
// g1..gk and one device in each; the device of g_t moves to g_{t+1} (and
// gk's to g1), which keeps every group's size. Half of the moves are
// targeted: g1 and its device come from targetedStart (the group or path
// edge that realises a max term); the rest are uniform. A move is kept when
// it lowers the cost, or ties it and lowers the sorted vector of group DP
// terms and path edges lexicographically (tieBreakLess), or ties both and
// lowers the smooth surrogate: that walks the plateaus of the max terms
// (e.g. the round-robin partition, whose eight groups all cost the same).
// Each trial is one evaluation; moves whose lower bound already exceeds the
// current cost are rejected without exact matchings (Evaluator::applyMoves).
void localSearch(Evaluator& ev, Candidate& c, int trials, int max_cycle,
                 std::mt19937_64& rng, const Clock::time_point* deadline) {
  const int way = ev.way();
  std::vector<int> parts;
  for (int g = 0; g < way; ++g) parts.push_back(g);
  if (!c.groups[way].empty()) parts.push_back(way);
  const int np = static_cast<int>(parts.size());
  if (np < 2) return;
  std::vector<std::pair<int, int>> moves;
  for (int t = 0; t < trials; ++t) {
    // A trial costs up to ~2·way bottleneck matchings of D_dp x D_dp
    // (milliseconds at D_dp = 128), so look at the clock every 4.
    if (deadline && (t & 3) == 3 && Clock::now() >= *deadline) return;
    // A third of the moves are uniform cycles, a third start at the
    // group with the largest DP term, a third repair the dearest path edge.
    const int kind = uniformInt(rng, 0, 2);
    if (kind == 2 && alignMove(ev, c, rng, moves)) {
      // moves filled
    } else {
      const int k = uniformInt(rng, 2, std::min(max_cycle, np));
      moves.clear();
      std::pair<int, int> start{-1, -1};
      if (kind == 1) start = targetedStart(ev, c, rng);
      // k distinct groups by partial Fisher–Yates (the targeted one first).
      int first = 0;
      if (start.first >= 0) {
        const int at = static_cast<int>(
            std::find(parts.begin(), parts.end(), start.first) - parts.begin());
        std::swap(parts[0], parts[at]);
        first = 1;
      }
      for (int i = first; i < k; ++i)
        std::swap(parts[i], parts[uniformInt(rng, i, np - 1)]);
      for (int i = 0; i < k; ++i) {
        const auto& g = c.groups[parts[i]];
        const int d = (i == 0 && start.first >= 0)
                          ? start.second
                          : g[uniformInt(rng, 0, static_cast<int>(g.size()) - 1)];
        moves.emplace_back(d, parts[(i + 1) % k]);
      }
    }
    Candidate next = c;
    const double tol = 1e-12 * std::max(1.0, std::abs(c.cost));
    if (!ev.applyMoves(next, moves, c.cost + tol)) continue;
    bool better = next.cost < c.cost - tol ||
                  (std::isinf(c.cost) && !std::isinf(next.cost));
    if (!better && std::abs(next.cost - c.cost) <= tol) {
      // Plateau (same cost): fewer groups at the DP max, then the sorted
      // term vector (tieBreakLess), then the smooth surrogate.
      if (next.dp_at_max != c.dp_at_max) {
        better = next.dp_at_max < c.dp_at_max;
      } else {
        better = tieBreakLess(next, c) ||
                 (!tieBreakLess(c, next) && next.surrogate < c.surrogate);
      }
    }
    if (better) c = std::move(next);
  }
}

}  // namespace

std::vector<std::string> algorithmNames() {
  return {"evolutionary", "in-order", "random", "exhaustive"};
}

SearchResult runSearch(const CostModel& model, const SearchOptions& options) {
  const std::string& a = options.algorithm;
  if (a == "evolutionary") return evolutionarySearch(model, options);
  if (a == "in-order") return inOrderPlacement(model);
  if (a == "random") return randomSearch(model, options);
  if (a == "exhaustive") return exhaustiveSearch(model, options);
  const std::string hint = common::closestMatch(a, algorithmNames());
  GEOPIPE_THROW(ConfigError, "scheduler.algorithm '", a, "' is not one of ",
                common::joinOr(algorithmNames()),
                hint.empty() ? std::string() : "; did you mean '" + hint + "'?");
}

SearchResult inOrderPlacement(const CostModel& model) {
  checkShape(model);
  SearchOptions opt;
  Tracker tr(opt);
  Evaluator ev(model);
  const int n = model.network().size(), way = model.dPp(), d_dp = model.dDp();
  Candidate c = ev.make(inOrderLabel(n, way, d_dp));
  Allocation a;
  a.d_pp = way;
  a.d_dp = d_dp;
  for (int s = 0; s < way; ++s) a.stages.push_back(c.groups[s]);
  a.idle = c.groups[way];
  c.order.resize(way);
  std::iota(c.order.begin(), c.order.end(), 0);
  c.eval = model.evaluateAllocation(a);
  c.cost = c.eval.total_s;
  a.layers = c.eval.layers;
  SearchResult r;
  r.algorithm = "in-order";
  r.best = c;
  r.allocation = a;
  r.evaluations = 1;
  r.evaluations_to_best = 1;
  r.seconds = r.seconds_to_best = since(tr.t0);
  return r;
}

SearchResult randomSearch(const CostModel& model, const SearchOptions& options) {
  checkShape(model);
  GEOPIPE_CHECK(options.budget_evaluations > 0 || options.budget_seconds > 0,
                ConfigError,
                "random search needs a budget: set scheduler.budget_evaluations "
                "or scheduler.budget_seconds");
  Tracker tr(options);
  Evaluator ev(model);
  std::mt19937_64 rng(options.seed ^ 0x5851f42d4c957f2dULL);
  const int n = model.network().size(), way = model.dPp(), d_dp = model.dDp();
  do {
    tr.offer(ev.make(randomLabel(n, way, d_dp, rng)), ev.evaluations());
  } while (!tr.exhausted(ev.evaluations()));
  tr.result.algorithm = "random";
  finishResult(tr.result, ev, tr, ev.evaluations());
  return tr.result;
}

int64_t countPartitions(int n, int way, int d_dp) {
  // C(n, idle) · (way·d_dp)! / (d_dp!^way · way!), computed in log space.
  const int used = way * d_dp;
  if (used > n) return 0;
  double lg = std::lgamma(n + 1.0) - std::lgamma(n - used + 1.0) -
              way * std::lgamma(d_dp + 1.0) - std::lgamma(way + 1.0);
  if (lg > 62 * std::log(2.0)) return std::numeric_limits<int64_t>::max();
  return static_cast<int64_t>(std::llround(std::exp(lg)));
}

SearchResult exhaustiveSearch(const CostModel& model,
                              const SearchOptions& options) {
  checkShape(model);
  const int n = model.network().size(), way = model.dPp(), d_dp = model.dDp();
  const int64_t count = countPartitions(n, way, d_dp);
  GEOPIPE_CHECK(count <= options.exhaustive_limit, InfeasibleError,
                "exhaustive search over ", n, " devices as ", way, " x ", d_dp,
                " has ", count, " partitions, more than the limit of ",
                options.exhaustive_limit, "; use algorithm evolutionary");
  Tracker tr(options);
  Evaluator ev(model);
  std::vector<int> label(n, -1), size(way + 1, 0);
  const int idle_cap = n - way * d_dp;
  // Devices are assigned in order; a stage group may be opened only as the
  // lowest unopened index, so each unlabelled partition is visited once.
  std::function<void(int, int)> rec = [&](int d, int opened) {
    if (d == n) {
      tr.offer(ev.make(label), ev.evaluations());
      return;
    }
    for (int g = 0; g < std::min(opened + 1, way); ++g) {
      if (size[g] == d_dp) continue;
      label[d] = g;
      ++size[g];
      rec(d + 1, std::max(opened, g + 1));
      --size[g];
    }
    if (size[way] < idle_cap) {
      label[d] = way;
      ++size[way];
      rec(d + 1, opened);
      --size[way];
    }
  };
  rec(0, 0);
  tr.result.algorithm = "exhaustive";
  finishResult(tr.result, ev, tr, ev.evaluations());
  return tr.result;
}

SearchResult evolutionarySearch(const CostModel& model,
                                const SearchOptions& options) {
  checkShape(model);
  GEOPIPE_CHECK(options.budget_evaluations > 0 || options.budget_seconds > 0,
                ConfigError,
                "evolutionary search needs a budget: set "
                "scheduler.budget_evaluations or scheduler.budget_seconds");
  GEOPIPE_CHECK(options.population >= 2, ConfigError,
                "population must be >= 2, got ", options.population);
  GEOPIPE_CHECK(options.threads >= 1, ConfigError,
                "scheduler.threads must be >= 1, got ", options.threads);
  const int n = model.network().size(), way = model.dPp(), d_dp = model.dDp();
  Tracker tr(options);
  std::mt19937_64 rng(options.seed);
  const int threads = options.threads;
  std::vector<std::unique_ptr<Evaluator>> evs;
  for (int t = 0; t < threads; ++t) evs.push_back(std::make_unique<Evaluator>(model));
  auto totalEvals = [&] {
    int64_t s = 0;
    for (const auto& e : evs) s += e->evaluations();
    return s;
  };
  // Trials per child: 2 per device in use, at least 64; capped at 256 so
  // that at D_dp = 128 a child costs well under a second and the GA still
  // breeds tens of generations in a minute.
  const int trials = options.local_search_trials > 0
                         ? options.local_search_trials
                         : std::clamp(2 * way * d_dp, 64, 256);
  const Clock::time_point deadline =
      tr.t0 + std::chrono::duration_cast<Clock::duration>(
                  std::chrono::duration<double>(options.budget_seconds));
  const Clock::time_point* dl = options.budget_seconds > 0 ? &deadline : nullptr;

  // Initial population: the two structured partitions (in-order: stage
  // groups of consecutive devices, i.e. by site; round-robin: device t of
  // the listing joins group t mod D_pp, i.e. one device per site in each
  // group, the paper's "trans"), each also polished by a local search of
  // 4 x trials, then random ones. Every step checks the budget: at 1024
  // devices one full evaluation of a random partition costs ~0.1 s.
  std::vector<Candidate> pop;
  std::unordered_set<uint64_t> seen;
  auto admit = [&](Candidate c) {
    tr.offer(c, totalEvals());
    if (seen.insert(c.fingerprint()).second) pop.push_back(std::move(c));
  };
  std::vector<Candidate> polished;
  for (const auto& label : {inOrderLabel(n, way, d_dp), roundRobinLabel(n, way, d_dp),
                            siteSpreadLabel(evs[0]->model().network(), way, d_dp)}) {
    polished.push_back(evs[0]->make(label));
    admit(polished.back());
  }
  for (Candidate& c : polished) {
    if (tr.exhausted(totalEvals())) break;
    const int64_t left = tr.remaining(totalEvals());
    localSearch(*evs[0], c, static_cast<int>(std::min<int64_t>(4 * trials, left)),
                options.max_cycle, rng, dl);
    admit(std::move(c));
  }
  while (static_cast<int>(pop.size()) < options.population &&
         !tr.exhausted(totalEvals())) {
    admit(evs[0]->make(randomLabel(n, way, d_dp, rng)));
  }
  // A few hundred random labels cannot be duplicates in practice; a tiny
  // instance may have fewer partitions than the population, which is fine.

  auto pickParent = [&]() -> const Candidate& {
    const Candidate& a = pop[uniformInt(rng, 0, static_cast<int>(pop.size()) - 1)];
    const Candidate& b = pop[uniformInt(rng, 0, static_cast<int>(pop.size()) - 1)];
    return a.cost <= b.cost ? a : b;
  };

  std::vector<Candidate> children(threads);
  std::vector<uint64_t> seeds(threads);
  std::vector<std::vector<int>> labels(threads);
  while (!tr.exhausted(totalEvals())) {
    const int64_t left = tr.remaining(totalEvals());
    // Each child costs 1 + its trials; split what is left of the budget.
    const int batch = static_cast<int>(std::min<int64_t>(threads, std::max<int64_t>(1, left)));
    const int my_trials = static_cast<int>(
        std::min<int64_t>(trials, std::max<int64_t>(0, left / batch - 1)));
    for (int t = 0; t < batch; ++t) {
      const Candidate& a = pickParent();
      const Candidate& b = pickParent();
      seeds[t] = rng();
      labels[t] = crossover(a.label, b.label, way, d_dp, rng);
    }
    auto breed = [&](int t) {
      std::mt19937_64 child_rng(seeds[t]);
      children[t] = evs[t]->make(labels[t]);
      localSearch(*evs[t], children[t], my_trials, options.max_cycle, child_rng, dl);
    };
    if (batch == 1) {
      breed(0);
    } else {
      std::vector<std::thread> pool;
      for (int t = 0; t < batch; ++t) pool.emplace_back(breed, t);
      for (auto& th : pool) th.join();
    }
    // Steady-state replacement, in child order (deterministic).
    for (int t = 0; t < batch; ++t) {
      Candidate& c = children[t];
      tr.offer(c, totalEvals());
      const uint64_t fp = c.fingerprint();
      if (seen.count(fp)) continue;
      auto worst = std::max_element(
          pop.begin(), pop.end(),
          [](const Candidate& x, const Candidate& y) { return x.cost < y.cost; });
      if (static_cast<int>(pop.size()) < options.population) {
        seen.insert(fp);
        pop.push_back(std::move(c));
      } else if (c.cost < worst->cost) {
        seen.erase(worst->fingerprint());
        seen.insert(fp);
        *worst = std::move(c);
      }
    }
  }
  tr.result.algorithm = "evolutionary";
  finishResult(tr.result, *evs[0], tr, totalEvals());
  return tr.result;
}

}  // namespace geopipe::scheduler
