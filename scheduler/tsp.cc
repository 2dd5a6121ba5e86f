// Held–Karp exact open path and a nearest-neighbour + Or-opt + 2-opt
// heuristic for larger instances.
#include "scheduler/tsp.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>

#include "geopipe/error.h"

namespace geopipe::scheduler {

double pathCost(const Eigen::MatrixXd& w, const std::vector<int>& order) {
  double c = 0;
  for (size_t s = 0; s + 1 < order.size(); ++s) c += w(order[s], order[s + 1]);
  return c;
}

namespace {

// Held–Karp's table, dp[s·n + j] = cheapest path visiting subset s and
// ending at j, in a per-thread buffer (the evaluator calls this at least
// twice per move on 8-10 groups); wf = w row-major. States that cannot complete under
// `bound` (their cost plus the cheapest way into each group still to visit)
// are not extended: with w >= 0 every state on a path cheaper than `bound`
// is kept and exact. The loops visit only the members (j) and non-members
// (k) of each subset.
struct HeldKarpTable {
  int n = 0;
  uint32_t full = 0;
  std::vector<double>* dp = nullptr;
  std::vector<double>* wf = nullptr;
  double at(uint32_t s, int j) const { return (*dp)[static_cast<size_t>(s) * n + j]; }
};

HeldKarpTable fillHeldKarp(const Eigen::MatrixXd& w, double bound) {
  const int n = static_cast<int>(w.rows());
  GEOPIPE_CHECK(n <= kHeldKarpMaxNodes, Error, "Held-Karp limited to ",
                kHeldKarpMaxNodes, " nodes, got ", n);
  const double kInf = std::numeric_limits<double>::infinity();
  thread_local std::vector<double> dp, wf;
  HeldKarpTable t{n, (uint32_t{1} << n) - 1, &dp, &wf};
  dp.assign(static_cast<size_t>(t.full + 1) * n, kInf);
  wf.resize(static_cast<size_t>(n) * n);
  for (int j = 0; j < n; ++j)
    for (int k = 0; k < n; ++k) {
      wf[j * n + k] = w(j, k);
      if (!(w(j, k) >= 0)) bound = kInf;  // the cut needs w >= 0
    }
  // A partial path over s still has to enter every group outside s, each
  // by at least its cheapest incoming edge: entered[s] sums those minima
  // over s, so a state whose cost plus (all minima − entered[s]) reaches
  // `bound` is cut as well.
  thread_local std::vector<double> entered;
  std::vector<double> min_in(n, kInf);
  double all_in = 0;
  if (std::isfinite(bound)) {
    for (int k = 0; k < n; ++k) {
      for (int j = 0; j < n; ++j)
        if (j != k) min_in[k] = std::min(min_in[k], w(j, k));
      all_in += min_in[k];
    }
    entered.assign(t.full + 1, 0.0);
    for (uint32_t s = 1; s <= t.full; ++s)
      entered[s] = entered[s & (s - 1)] + min_in[__builtin_ctz(s)];
  }
  for (int j = 0; j < n; ++j) dp[(size_t{1} << j) * n + j] = 0;
  for (uint32_t s = 1; s < t.full; ++s) {
    const double* row = &dp[static_cast<size_t>(s) * n];
    const double rest = std::isfinite(bound) ? all_in - entered[s] : 0.0;
    for (uint32_t in = s; in; in &= in - 1) {
      const int j = __builtin_ctz(in);
      const double cur = row[j];
      if (!(cur + rest < bound)) continue;
      const double* wj = &wf[j * n];
      for (uint32_t out_bits = t.full & ~s; out_bits; out_bits &= out_bits - 1) {
        const int k = __builtin_ctz(out_bits);
        double& slot = dp[static_cast<size_t>(s | (uint32_t{1} << k)) * n + k];
        const double c = cur + wj[k];
        if (c < slot) slot = c;
      }
    }
  }
  return t;
}

int cheapestEnd(const HeldKarpTable& t) {
  int end = 0;
  for (int j = 1; j < t.n; ++j)
    if (t.at(t.full, j) < t.at(t.full, end)) end = j;
  return end;
}

}  // namespace

OpenPath heldKarpOpenPath(const Eigen::MatrixXd& w, double bound) {
  const int n = static_cast<int>(w.rows());
  OpenPath out;
  if (n == 0) return out;
  if (n == 1) {
    out.order = {0};
    return out;
  }
  const HeldKarpTable t = fillHeldKarp(w, bound);
  int k = cheapestEnd(t);
  if (!(t.at(t.full, k) < bound)) {
    out.cost = std::numeric_limits<double>::infinity();
    return out;
  }
  out.cost = t.at(t.full, k);
  // No parent table: the order is recovered backwards by finding, for the
  // last group k of subset s, the smallest j whose dp[s \ k][j] + w(j,k)
  // equals dp[s][k] (the same sum in the same rounding, and the parent the
  // forward pass's strict < kept). Every state on the way is under `bound`,
  // so exact, and a cut state cannot tie (its sum is at least `bound`).
  uint32_t s = t.full;
  out.order.push_back(k);
  while (s & (s - 1)) {  // more than one group left
    const uint32_t rest = s & ~(uint32_t{1} << k);
    int parent = -1;
    for (uint32_t in = rest; in; in &= in - 1) {
      const int j = __builtin_ctz(in);
      if (t.at(rest, j) + (*t.wf)[j * n + k] == t.at(s, k)) {
        parent = j;
        break;
      }
    }
    GEOPIPE_CHECK(parent >= 0, Error, "Held-Karp: no parent for a finite state");
    out.order.push_back(parent);
    s = rest;
    k = parent;
  }
  std::reverse(out.order.begin(), out.order.end());
  return out;
}

namespace {

// Improves `order` in place until no Or-opt or 2-opt move helps.
void improve(const Eigen::MatrixXd& w, std::vector<int>& order) {
  const int n = static_cast<int>(order.size());
  double best = pathCost(w, order);
  bool improved = true;
  std::vector<int> cand;
  while (improved) {
    improved = false;
    // 2-opt: reverse order[i..j].
    for (int i = 0; i < n && !improved; ++i) {
      for (int j = i + 1; j < n; ++j) {
        cand = order;
        std::reverse(cand.begin() + i, cand.begin() + j + 1);
        const double c = pathCost(w, cand);
        if (c < best - 1e-12) {
          order.swap(cand);
          best = c;
          improved = true;
          break;
        }
      }
    }
    // Or-opt: move segment [i, i+len) to position p.
    for (int len = 1; len <= 3 && !improved; ++len) {
      for (int i = 0; i + len <= n && !improved; ++i) {
        for (int p = 0; p + len <= n; ++p) {
          if (p == i) continue;
          cand = order;
          std::vector<int> seg(cand.begin() + i, cand.begin() + i + len);
          cand.erase(cand.begin() + i, cand.begin() + i + len);
          cand.insert(cand.begin() + p, seg.begin(), seg.end());
          const double c = pathCost(w, cand);
          if (c < best - 1e-12) {
            order.swap(cand);
            best = c;
            improved = true;
            break;
          }
        }
      }
    }
  }
}

}  // namespace

OpenPath heuristicOpenPath(const Eigen::MatrixXd& w) {
  const int n = static_cast<int>(w.rows());
  OpenPath best;
  best.cost = std::numeric_limits<double>::infinity();
  if (n == 0) {
    best.cost = 0;
    return best;
  }
  for (int start = 0; start < n; ++start) {
    std::vector<int> order{start};
    std::vector<char> used(n, 0);
    used[start] = 1;
    while (static_cast<int>(order.size()) < n) {
      int next = -1;
      for (int k = 0; k < n; ++k)
        if (!used[k] && (next < 0 || w(order.back(), k) < w(order.back(), next)))
          next = k;
      used[next] = 1;
      order.push_back(next);
    }
    improve(w, order);
    const double c = pathCost(w, order);
    if (c < best.cost) {
      best.cost = c;
      best.order = order;
    }
  }
  return best;
}

OpenPath openTsp(const Eigen::MatrixXd& w) {
  if (w.rows() <= kHeldKarpMaxNodes) return heldKarpOpenPath(w);
  return heuristicOpenPath(w);
}

}  // namespace geopipe::scheduler
