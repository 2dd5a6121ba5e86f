// Held–Karp exact open path and a nearest-neighbour + Or-opt + 2-opt
// heuristic for larger instances.
#include "scheduler/tsp.h"

#include <algorithm>
#include <limits>
#include <numeric>

#include "geopipe/error.h"

namespace geopipe::scheduler {

double pathCost(const Eigen::MatrixXd& w, const std::vector<int>& order) {
  double c = 0;
  for (size_t s = 0; s + 1 < order.size(); ++s) c += w(order[s], order[s + 1]);
  return c;
}

OpenPath heldKarpOpenPath(const Eigen::MatrixXd& w) {
  const int n = static_cast<int>(w.rows());
  GEOPIPE_CHECK(n <= kHeldKarpMaxNodes, Error, "Held-Karp limited to ",
                kHeldKarpMaxNodes, " nodes, got ", n);
  OpenPath out;
  if (n == 0) return out;
  if (n == 1) {
    out.order = {0};
    return out;
  }
  const double kInf = std::numeric_limits<double>::infinity();
  const size_t full = (size_t{1} << n) - 1;
  std::vector<double> dp((full + 1) * n, kInf);
  std::vector<signed char> parent((full + 1) * n, -1);
  for (int j = 0; j < n; ++j) dp[(size_t{1} << j) * n + j] = 0;
  for (size_t s = 1; s <= full; ++s) {
    for (int j = 0; j < n; ++j) {
      const double cur = dp[s * n + j];
      if (cur == kInf || !(s >> j & 1)) continue;
      for (int k = 0; k < n; ++k) {
        if (s >> k & 1) continue;
        const size_t t = s | (size_t{1} << k);
        const double c = cur + w(j, k);
        if (c < dp[t * n + k]) {
          dp[t * n + k] = c;
          parent[t * n + k] = static_cast<signed char>(j);
        }
      }
    }
  }
  int end = 0;
  for (int j = 1; j < n; ++j)
    if (dp[full * n + j] < dp[full * n + end]) end = j;
  out.cost = dp[full * n + end];
  size_t s = full;
  int j = end;
  while (j >= 0) {
    out.order.push_back(j);
    const int p = parent[s * n + j];
    s &= ~(size_t{1} << j);
    j = p;
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
