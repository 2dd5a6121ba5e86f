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

#include "geopipe/error.h"
#include "scheduler/tsp.h"
#include "src/common/strings.h"

namespace geopipe::scheduler {

namespace {

using Clock = std::chrono::steady_clock;
constexpr double kInf = std::numeric_limits<double>::infinity();

// The evolutionary search's annealing walks (docs/scheduler.md, Search).
constexpr int kWalks = 3;                 // walks, one after the other
constexpr double kWalkShare = 0.9;        // of the budget (evaluations and seconds)
constexpr int64_t kWalkPerDevice = 5000;  // walks' evaluations at most, per device
constexpr double kWalkHot = 0.02;         // first walk's start temperature / cost
constexpr double kWalkReheat = 0.25;      // each next walk's start / the last's
constexpr double kWalkCold = 0.0001;      // end temperature / cost

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

  // Whether the adaptive stop (SearchOptions::stall_evaluations) applies:
  // to the searches that keep improving one incumbent, not to random
  // sampling or enumeration.
  bool adaptive = false;
  // Evaluations before this count are not a stall (the evolutionary
  // search's seeds and annealing walk run to their own length).
  int64_t stall_from = 0;

  explicit Tracker(const SearchOptions& o, bool adaptive_stop = false)
      : opt(o), adaptive(adaptive_stop) {}
  // True when the search must stop; records why in result.stop_reason.
  bool exhausted(int64_t evals) {
    if (opt.budget_evaluations > 0 && evals >= opt.budget_evaluations) {
      result.stop_reason = "budget_evaluations";
      return true;
    }
    if (opt.budget_seconds > 0 && since(t0) >= opt.budget_seconds) {
      result.stop_reason = "budget_seconds";
      return true;
    }
    if (adaptive && opt.stall_evaluations > 0 && have_best &&
        evals - std::max(result.evaluations_to_best, stall_from) >= opt.stall_evaluations) {
      result.stop_reason = "converged";
      return true;
    }
    return false;
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

void repairBalance(std::vector<int>& child, int way, int d_dp, std::mt19937_64& rng);

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
  repairBalance(child, way, d_dp, rng);
  return child;
}

// Moves random devices out of over-full groups (the idle set included) into
// under-full ones until every stage group holds d_dp devices.
void repairBalance(std::vector<int>& child, int way, int d_dp, std::mt19937_64& rng) {
  const int n = static_cast<int>(child.size());
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
// A walk (temperature > 0, cooling to `cold`) cools with its share of
// trials, or with its share of the time to walk_end when that is later, and
// ends at walk_end.
void localSearch(Evaluator& ev, Candidate& c, int trials, int max_cycle, std::mt19937_64& rng,
                 const Clock::time_point* deadline, double temperature = 0.0, double cold = -1.0,
                 const std::function<void(const Candidate&)>& on_best = {},
                 const Clock::time_point* walk_end = nullptr) {
  const int way = ev.way();
  std::vector<int> parts;
  for (int g = 0; g < way; ++g) parts.push_back(g);
  if (!c.groups[way].empty()) parts.push_back(way);
  const int np = static_cast<int>(parts.size());
  if (np < 2) return;
  std::vector<std::pair<int, int>> moves;
  // With a temperature the walk may go uphill (Metropolis); it ends on the
  // best candidate it visited.
  double temperature_now = temperature;
  std::unique_ptr<Candidate> best;
  if (temperature > 0) best = std::make_unique<Candidate>(c);
  auto finish = [&] {
    if (best && best->cost < c.cost) c = std::move(*best);
  };
  const Clock::time_point walk_start = Clock::now();
  const double walk_span =
      walk_end ? std::chrono::duration<double>(*walk_end - walk_start).count() : 0.0;
  for (int t = 0; t < trials; ++t) {
    // A trial costs up to ~2·way bottleneck matchings of D_dp x D_dp
    // (milliseconds at D_dp = 128), so look at the clock every 4.
    if (deadline && (t & 3) == 3 && Clock::now() >= *deadline) return finish();
    // A third of the moves are uniform cycles, a third start at the
    // group with the largest DP term, a third repair the dearest path edge.
    // An annealing walk uses uniform moves only: measured on the hard
    // instances, the targeted moves and plateau rules make it worse.
    const int kind = temperature > 0 ? 0 : uniformInt(rng, 0, 2);
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
    if (cold > 0 && temperature > 0) {
      double progress = double(t) / trials;
      if (walk_end) {
        const double p = walk_span > 0 ? since(walk_start) / walk_span : 1.0;
        if (p >= 1.0) return finish();
        progress = std::max(progress, p);
      }
      temperature_now = temperature * std::pow(cold / temperature, progress);
    }
    Candidate next = c;
    const double tol = 1e-12 * std::max(1.0, std::abs(c.cost));
    // Metropolis: a move is taken when new < cur − T·ln u.
    const double uphill =
        temperature > 0
            ? -temperature_now * std::log(std::uniform_real_distribution<double>(1e-300, 1.0)(rng))
            : 0.0;
    if (!ev.applyMoves(next, moves, c.cost + uphill + tol)) continue;
    bool better = next.cost < c.cost - tol ||
                  (std::isinf(c.cost) && !std::isinf(next.cost));
    if (!better && uphill > 0 && next.cost < c.cost + uphill) {
      if (next.cost < best->cost) {
        *best = next;
        if (on_best) on_best(*best);
      }
      c = std::move(next);
      continue;
    }
    if (better && best && next.cost < best->cost) {
      *best = next;
      if (on_best) on_best(*best);
    }
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
  finish();
}

// Cost of device i sending its share of a data-parallel exchange to j: the
// dtfm DataPCost term 2·(α_ij + 8·c_grad/(β_ij·D_dp)), or, for other models,
// the same with a 0.1 GB payload at the link's duplex bandwidth (only the
// ranking matters to the seeds).
double dpPairCost(const CostModel& model, int i, int j) {
  const auto* dtfm = dynamic_cast<const DtfmCostModel*>(&model);
  const double gb = (dtfm ? dtfm->cGradGb() : 0.1) / model.dDp();
  const Network& net = model.network();
  return 2.0 * (dtfm ? net.transferS(i, j, gb) : net.exchangeTransferS(i, j, gb));
}

// Pipeline-chain seed: D_dp chains of D_pp devices built greedily along the
// cheapest pipeline edges (each chain starts at the free device with the
// cheapest outgoing edge and extends to the free device its last device
// reaches most cheaply); stage group s holds the s-th device of every chain.
// With per-device links this puts each replica's pipeline inside a fast
// cluster, which no listing-order seed can see. Devices never picked idle.
std::vector<int> chainLabel(const CostModel& model) {
  const int n = model.network().size(), way = model.dPp(), d_dp = model.dDp();
  std::vector<int> label(n, way);
  std::vector<char> used(n, 0);
  auto cheapestFrom = [&](int i) {
    int best = -1;
    for (int j = 0; j < n; ++j)
      if (!used[j] && j != i && (best < 0 || model.edge(i, j) < model.edge(i, best))) best = j;
    return best;
  };
  // Chain starts: devices by their cheapest outgoing edge (computed once,
  // O(N²); recomputing it over the free devices for each chain would cost
  // O(D_dp·N²), a third of a second at 1024 devices).
  std::vector<double> row_min(n, kInf);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j)
      if (j != i) row_min[i] = std::min(row_min[i], model.edge(i, j));
  std::vector<int> starts(n);
  std::iota(starts.begin(), starts.end(), 0);
  std::stable_sort(starts.begin(), starts.end(),
                   [&](int a, int b) { return row_min[a] < row_min[b]; });
  size_t next_start = 0;
  for (int r = 0; r < d_dp; ++r) {
    while (used[starts[next_start]]) ++next_start;
    int cur = starts[next_start];
    for (int s = 0; s < way; ++s) {
      label[cur] = s;
      used[cur] = 1;
      if (s + 1 < way) cur = cheapestFrom(cur);
    }
  }
  return label;
}

// Data-parallel group seed: D_pp groups built greedily: each starts from the
// free pair with the cheapest mutual data-parallel cost and adds the free
// device that raises the group's worst row sum (its DataPCost term) least.
// Devices never picked idle.
std::vector<int> groupLabel(const CostModel& model) {
  const int n = model.network().size(), way = model.dPp(), d_dp = model.dDp();
  std::vector<int> label(n, way);
  std::vector<char> used(n, 0);
  Eigen::MatrixXd d(n, n);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) d(i, j) = i == j ? 0.0 : dpPairCost(model, i, j);
  for (int g = 0; g < way; ++g) {
    std::vector<int> members;
    std::vector<double> rows;  // row sums of the members
    if (d_dp == 1) {
      for (int i = 0; i < n && members.empty(); ++i)
        if (!used[i]) members.push_back(i);
    } else {
      int bi = -1, bj = -1;
      double best = kInf;
      for (int i = 0; i < n; ++i)
        for (int j = i + 1; j < n; ++j)
          if (!used[i] && !used[j] && std::max(d(i, j), d(j, i)) < best)
            best = std::max(d(i, j), d(j, i)), bi = i, bj = j;
      members = {bi, bj};
    }
    for (int m : members) used[m] = 1;
    for (int m : members) {
      double r = 0;
      for (int o : members) r += d(m, o);
      rows.push_back(r);
    }
    while (static_cast<int>(members.size()) < d_dp) {
      int pick = -1;
      double pick_max = kInf;
      for (int k = 0; k < n; ++k) {
        if (used[k]) continue;
        double worst = 0, own = 0;
        for (size_t t = 0; t < members.size(); ++t) {
          worst = std::max(worst, rows[t] + d(members[t], k));
          own += d(k, members[t]);
        }
        worst = std::max(worst, own);
        if (worst < pick_max) pick_max = worst, pick = k;
      }
      for (size_t t = 0; t < members.size(); ++t) rows[t] += d(members[t], pick);
      double own = 0;
      for (int m : members) own += d(pick, m);
      members.push_back(pick);
      rows.push_back(own);
      used[pick] = 1;
    }
    for (int m : members) label[m] = g;
  }
  return label;
}

// The structured seeds, k = 0..kNumSeeds−1 in a fixed order (built one at
// a time so that a search can stop between them: at 1024 devices a seed and
// its evaluation take a tenth of a second or more).
constexpr int kNumSeeds = 5;
std::vector<int> seedLabel(const CostModel& model, int k) {
  const int n = model.network().size(), way = model.dPp(), d_dp = model.dDp();
  switch (k) {
    case 0:
      return inOrderLabel(n, way, d_dp);
    case 1:
      return roundRobinLabel(n, way, d_dp);
    case 2:
      return siteSpreadLabel(model.network(), way, d_dp);
    case 3:
      return chainLabel(model);
    default:
      return groupLabel(model);
  }
}

// A uniform cyclic move: k in [2, max_cycle] distinct parts (stage groups
// and the idle set when it is not empty), one random device of each moves
// to the next part.
void uniformCycle(const Candidate& c, std::vector<int>& parts, int max_cycle, std::mt19937_64& rng,
                  std::vector<std::pair<int, int>>& moves) {
  const int np = static_cast<int>(parts.size());
  const int k = uniformInt(rng, 2, std::min(max_cycle, np));
  moves.clear();
  for (int i = 0; i < k; ++i) std::swap(parts[i], parts[uniformInt(rng, i, np - 1)]);
  for (int i = 0; i < k; ++i) {
    const auto& g = c.groups[parts[i]];
    moves.emplace_back(g[uniformInt(rng, 0, static_cast<int>(g.size()) - 1)], parts[(i + 1) % k]);
  }
}

std::vector<int> movableParts(const Candidate& c, int way) {
  std::vector<int> parts;
  for (int g = 0; g < way; ++g) parts.push_back(g);
  if (!c.groups[way].empty()) parts.push_back(way);
  return parts;
}

// Bui & Moon's normalisation before crossover: relabel b's stage groups so
// that they agree with a's on as many devices as possible (greedy on the
// overlap counts); the idle label stays the idle label.
std::vector<int> alignLabels(const std::vector<int>& a, const std::vector<int>& b, int way) {
  Eigen::MatrixXi overlap = Eigen::MatrixXi::Zero(way, way);
  for (size_t d = 0; d < a.size(); ++d)
    if (a[d] < way && b[d] < way) ++overlap(b[d], a[d]);
  std::vector<int> map(way + 1, -1);
  std::vector<char> taken(way, 0);
  map[way] = way;
  for (int step = 0; step < way; ++step) {
    int bg = -1, ag = -1, best = -1;
    for (int x = 0; x < way; ++x) {
      if (map[x] >= 0) continue;
      for (int y = 0; y < way; ++y)
        if (!taken[y] && overlap(x, y) > best) best = overlap(x, y), bg = x, ag = y;
    }
    map[bg] = ag;
    taken[ag] = 1;
  }
  std::vector<int> out(b.size());
  for (size_t d = 0; d < b.size(); ++d) out[d] = map[b[d]];
  return out;
}

// A warm start's label must be a balanced partition of the model's devices.
void checkWarmLabel(const std::vector<int>& label, int n, int way, int d_dp) {
  GEOPIPE_CHECK(static_cast<int>(label.size()) == n, ConfigError, "a warm start labels ",
                label.size(), " devices but the topology has ", n);
  std::vector<int> size(static_cast<size_t>(way) + 1, 0);
  for (int g : label) {
    GEOPIPE_CHECK(g >= 0 && g <= way, ConfigError, "a warm start's group ", g, " is outside [0, ",
                  way, "]");
    ++size[static_cast<size_t>(g)];
  }
  for (int g = 0; g < way; ++g)
    GEOPIPE_CHECK(size[static_cast<size_t>(g)] == d_dp, ConfigError, "a warm start's group ", g,
                  " holds ", size[static_cast<size_t>(g)], " devices, not D_dp = ", d_dp);
}

// Every budgeted algorithm refuses to run without a budget.
void requireBudget(const SearchOptions& options, const char* algorithm) {
  GEOPIPE_CHECK(options.budget_evaluations > 0 || options.budget_seconds > 0, ConfigError,
                algorithm, " needs a budget: set scheduler.budget_evaluations or "
                "scheduler.budget_seconds");
}

}  // namespace

std::vector<std::string> algorithmNames() {
  return {"evolutionary", "in-order", "random", "exhaustive", "seeds", "annealing", "dtfm-ga"};
}

SearchResult runSearch(const CostModel& model, const SearchOptions& options) {
  const std::string& a = options.algorithm;
  if (a == "evolutionary") return evolutionarySearch(model, options);
  GEOPIPE_CHECK(options.warm_starts.empty(), ConfigError, "the ", a,
                " search does not support warm starts; use the evolutionary search");
  if (a == "in-order") return inOrderPlacement(model);
  if (a == "random") return randomSearch(model, options);
  if (a == "exhaustive") return exhaustiveSearch(model, options);
  if (a == "seeds") return seedSearch(model);
  if (a == "annealing") return annealingSearch(model, options);
  if (a == "dtfm-ga") return dtfmGeneticSearch(model, options);
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
  requireBudget(options, "random search");
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
  // Exact means every candidate's best order is found: the Held–Karp TSP
  // for an additive path cost (dtfm), every order for the geopipe model.
  if (model.pathIsAdditive()) {
    GEOPIPE_CHECK(
        way <= kHeldKarpMaxNodes, InfeasibleError, "exhaustive search cannot be exact with ", way,
        " pipeline stages under cost model ", model.name(), ": beyond ", kHeldKarpMaxNodes,
        " stages the stage order comes from a heuristic TSP; use at "
        "most ",
        kHeldKarpMaxNodes, " pipeline_stages or algorithm evolutionary");
  } else {
    GEOPIPE_CHECK(way <= Evaluator::kBruteForceOrders, InfeasibleError,
                  "exhaustive search cannot be exact with ", way,
                  " pipeline stages under cost model ", model.name(), ": beyond ",
                  Evaluator::kBruteForceOrders,
                  " stages the stage order is chosen by a TSP on a surrogate "
                  "of the step time, not by pricing every order; use at most ",
                  Evaluator::kBruteForceOrders,
                  " pipeline_stages, cost_model dtfm, or algorithm evolutionary");
  }
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
  requireBudget(options, "evolutionary search");
  GEOPIPE_CHECK(options.population >= 2, ConfigError,
                "population must be >= 2, got ", options.population);
  GEOPIPE_CHECK(options.threads >= 1, ConfigError,
                "scheduler.threads must be >= 1, got ", options.threads);
  const int n = model.network().size(), way = model.dPp(), d_dp = model.dDp();
  Tracker tr(options, /*adaptive_stop=*/true);
  tr.stall_from = std::numeric_limits<int64_t>::max() / 2;  // until the GA
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

  // Initial population: the structured seeds (seedLabel), each also
  // polished by a descent of `trials`, the result of the annealing walk,
  // then random ones. Every step checks the budget: at 1024 devices one
  // full evaluation of a random partition costs ~0.1 s.
  std::vector<Candidate> pop;
  std::unordered_set<uint64_t> seen;
  auto admit = [&](Candidate c) {
    tr.offer(c, totalEvals());
    if (seen.insert(c.fingerprint()).second) pop.push_back(std::move(c));
  };
  std::vector<Candidate> polished;
  for (const SearchOptions::WarmStart& w : options.warm_starts) {
    if (w.d_pp != way || w.d_dp != d_dp) continue;
    checkWarmLabel(w.label, n, way, d_dp);
    if (!polished.empty() && tr.exhausted(totalEvals())) break;
    polished.push_back(evs[0]->make(w.label));
    admit(polished.back());
  }
  for (int k = 0; k < kNumSeeds; ++k) {
    if ((k > 0 || !polished.empty()) && tr.exhausted(totalEvals())) break;
    polished.push_back(evs[0]->make(seedLabel(model, k)));
    admit(polished.back());
  }
  std::stable_sort(polished.begin(), polished.end(),
                   [](const Candidate& x, const Candidate& y) { return x.cost < y.cost; });
  for (Candidate& c : polished) {
    if (tr.exhausted(totalEvals())) break;
    const int64_t left = tr.remaining(totalEvals());
    localSearch(*evs[0], c, static_cast<int>(std::min<int64_t>(trials, left)), options.max_cycle,
                rng, dl);
    admit(std::move(c));
  }
  // Annealing walks, each from the best candidate so far: the first hot
  // (kWalkHot of its cost), each next one reheated to kWalkReheat of the
  // last's start (it refines that basin); temperature falling geometrically
  // to kWalkCold of the start cost; uniform moves only; the adaptive stop
  // does not cut them. Together min(kWalkShare · budget_evaluations,
  // kWalkPerDevice · devices, partitions) evaluations (the last two alone
  // without an evaluation budget). A walk's temperature follows its share of trials;
  // when the time budget would end the walks first (projected from the
  // rate of the polishing descents above), it follows its share of
  // kWalkShare · budget_seconds instead, so that a time-bound walk still
  // cools down. Without that projection a run ending on its evaluation
  // budget stays a pure function of the seed.
  // A walk longer than the space it walks is wasted: tiny instances (whose
  // optimum the descents usually found already) walk at most as many moves
  // as there are partitions.
  const int64_t walk_cap = std::min(kWalkPerDevice * n, countPartitions(n, way, d_dp));
  const int64_t walks_total =
      options.budget_evaluations > 0
          ? std::min(walk_cap,
                     static_cast<int64_t>(kWalkShare * double(options.budget_evaluations)))
          : walk_cap;
  const double polish_s = since(tr.t0);
  const int64_t polish_evals = std::max<int64_t>(1, totalEvals());
  const double walks_s = kWalkShare * options.budget_seconds;
  const bool time_bound =
      options.budget_seconds > 0 && double(walks_total) * polish_s / double(polish_evals) > walks_s;
  double hot = kWalkHot;
  for (int w = 0; w < kWalks; ++w, hot *= kWalkReheat) {
    if (tr.exhausted(totalEvals()) || !std::isfinite(tr.result.best.cost)) break;
    Candidate walker = tr.result.best;
    const int64_t walk = std::min(tr.remaining(totalEvals()), walks_total / kWalks);
    const Clock::time_point walk_end =
        Clock::now() + std::chrono::duration_cast<Clock::duration>(
                           std::chrono::duration<double>(walks_s / kWalks));
    localSearch(
        *evs[0], walker, static_cast<int>(walk), options.max_cycle, rng, dl, hot * walker.cost,
        kWalkCold * walker.cost, [&](const Candidate& b) { tr.offer(b, totalEvals()); },
        time_bound ? &walk_end : nullptr);
    admit(std::move(walker));
  }
  tr.stall_from = totalEvals();
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

SearchResult seedSearch(const CostModel& model) {
  checkShape(model);
  SearchOptions opt;
  Tracker tr(opt);
  Evaluator ev(model);
  for (int k = 0; k < kNumSeeds; ++k) tr.offer(ev.make(seedLabel(model, k)), ev.evaluations());
  tr.result.algorithm = "seeds";
  tr.result.stop_reason = "complete";
  finishResult(tr.result, ev, tr, ev.evaluations());
  return tr.result;
}

SearchResult annealingSearch(const CostModel& model, const SearchOptions& options) {
  checkShape(model);
  requireBudget(options, "annealing");
  Tracker tr(options, /*adaptive_stop=*/true);
  Evaluator ev(model);
  std::mt19937_64 rng(options.seed ^ 0x2545f4914f6cdd1dULL);
  Candidate cur;
  bool have = false;
  for (int k = 0; k < kNumSeeds; ++k) {
    if (k > 0 && tr.exhausted(ev.evaluations())) break;
    Candidate c = ev.make(seedLabel(model, k));
    tr.offer(c, ev.evaluations());
    if (!have || c.cost < cur.cost) cur = std::move(c), have = true;
  }
  std::vector<int> parts = movableParts(cur, model.dPp());
  if (parts.size() < 2 || std::isinf(cur.cost)) {
    tr.result.algorithm = "annealing";
    finishResult(tr.result, ev, tr, ev.evaluations());
    return tr.result;
  }
  // Temperature from 2% to 0.01% of the starting cost, geometric in the
  // fraction of the budget spent (evaluations when there is an evaluation
  // budget, so the run is a pure function of the seed; else time).
  const double t0 = 0.02 * cur.cost, t1 = 1e-4 * cur.cost;
  std::vector<std::pair<int, int>> moves;
  while (!tr.exhausted(ev.evaluations())) {
    const double frac = options.budget_evaluations > 0
                            ? double(ev.evaluations()) / double(options.budget_evaluations)
                            : since(tr.t0) / options.budget_seconds;
    const double temp = t0 * std::pow(t1 / t0, std::min(1.0, frac));
    uniformCycle(cur, parts, options.max_cycle, rng, moves);
    // Metropolis: accept when new < cur − T·ln u (u drawn first, so the
    // evaluator can prune moves that cannot pass).
    const double u = std::uniform_real_distribution<double>(1e-300, 1.0)(rng);
    const double threshold = cur.cost - temp * std::log(u);
    Candidate next = cur;
    if (!ev.applyMoves(next, moves, threshold)) continue;
    if (next.cost < threshold) {
      cur = std::move(next);
      tr.offer(cur, ev.evaluations());
    }
  }
  tr.result.algorithm = "annealing";
  finishResult(tr.result, ev, tr, ev.evaluations());
  return tr.result;
}

SearchResult dtfmGeneticSearch(const CostModel& model, const SearchOptions& options) {
  checkShape(model);
  requireBudget(options, "dtfm-ga");
  GEOPIPE_CHECK(options.population >= 2, ConfigError, "population must be >= 2, got ",
                options.population);
  const int n = model.network().size(), way = model.dPp(), d_dp = model.dDp();
  Tracker tr(options, /*adaptive_stop=*/true);
  Evaluator ev(model);
  std::mt19937_64 rng(options.seed ^ 0x9fb21c651e98df25ULL);
  const int trials = options.local_search_trials > 0 ? options.local_search_trials
                                                     : std::clamp(2 * way * d_dp, 64, 256);
  std::vector<Candidate> pop;
  std::unordered_set<uint64_t> seen;
  while (static_cast<int>(pop.size()) < options.population && !tr.exhausted(ev.evaluations())) {
    Candidate c = ev.make(randomLabel(n, way, d_dp, rng));
    tr.offer(c, ev.evaluations());
    if (seen.insert(c.fingerprint()).second) pop.push_back(std::move(c));
  }
  auto pickParent = [&]() -> const Candidate& {
    const Candidate& a = pop[uniformInt(rng, 0, static_cast<int>(pop.size()) - 1)];
    const Candidate& b = pop[uniformInt(rng, 0, static_cast<int>(pop.size()) - 1)];
    return a.cost <= b.cost ? a : b;
  };
  std::vector<std::pair<int, int>> moves(2);
  while (!pop.empty() && !tr.exhausted(ev.evaluations())) {
    const Candidate& a = pickParent();
    const Candidate& b = pickParent();
    // Uniform crossover of a and the normalised b, then balance repair.
    std::vector<int> child = alignLabels(a.label, b.label, way);
    for (int d = 0; d < n; ++d)
      if (rng() & 1) child[d] = a.label[d];
    repairBalance(child, way, d_dp, rng);
    Candidate c = ev.make(std::move(child));
    // Local search by swapping two devices of different groups (the idle
    // set counts as one); strict improvements only.
    for (int t = 0; t < trials && !tr.exhausted(ev.evaluations()); ++t) {
      const int i = uniformInt(rng, 0, n - 1);
      const int j = uniformInt(rng, 0, n - 1);
      if (c.label[i] == c.label[j]) continue;
      moves[0] = {i, c.label[j]};
      moves[1] = {j, c.label[i]};
      Candidate next = c;
      if (!ev.applyMoves(next, moves, c.cost)) continue;
      if (next.cost < c.cost) c = std::move(next);
    }
    tr.offer(c, ev.evaluations());
    const uint64_t fp = c.fingerprint();
    if (seen.count(fp)) continue;
    auto worst =
        std::max_element(pop.begin(), pop.end(),
                         [](const Candidate& x, const Candidate& y) { return x.cost < y.cost; });
    if (c.cost < worst->cost) {
      seen.erase(worst->fingerprint());
      seen.insert(fp);
      *worst = std::move(c);
    }
  }
  tr.result.algorithm = "dtfm-ga";
  finishResult(tr.result, ev, tr, ev.evaluations());
  return tr.result;
}

double costLowerBound(const CostModel& model) {
  const auto* dtfm = dynamic_cast<const DtfmCostModel*>(&model);
  if (!dtfm) return 0.0;
  const int n = model.network().size(), way = model.dPp(), d_dp = model.dDp();
  const int used = way * d_dp;
  if (used > n) return 0.0;
  // DataPCost: every used device i shares a group with d_dp − 1 others, so
  // its row sum is at least r_i, the sum of its d_dp − 1 cheapest terms; the
  // used devices' max is at least the used-th smallest r_i.
  std::vector<double> r(n, 0.0), row_min(n, kInf), col_min(n, kInf);
  std::vector<double> terms;
  for (int i = 0; i < n; ++i) {
    terms.clear();
    for (int j = 0; j < n; ++j) {
      if (j == i) continue;
      terms.push_back(dpPairCost(model, i, j));
      row_min[i] = std::min(row_min[i], model.edge(i, j));
      col_min[i] = std::min(col_min[i], model.edge(j, i));
    }
    std::partial_sort(terms.begin(), terms.begin() + (d_dp - 1), terms.end());
    for (int k = 0; k < d_dp - 1; ++k) r[i] += terms[k];
  }
  std::sort(r.begin(), r.end());
  const double dp = r[used - 1];
  // PipelinePCost: the path's way − 1 edges leave way − 1 disjoint groups;
  // w(a,b) >= max_{i∈a} row_min[i], and the group with the k-th smallest
  // such max holds it above k·d_dp devices' row minima. Same for columns.
  auto pathBound = [&](std::vector<double> m) {
    std::sort(m.begin(), m.end());
    double sum = 0;
    for (int k = 1; k < way; ++k) sum += m[k * d_dp - 1];
    return sum;
  };
  const double pp = std::max(pathBound(row_min), pathBound(col_min));
  return dp + 2.0 * pp;
}

}  // namespace geopipe::scheduler
