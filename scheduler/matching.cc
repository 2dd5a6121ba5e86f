// Bottleneck matching by threshold binary search and Hopcroft–Karp.
#include "scheduler/matching.h"

#include <algorithm>
#include <limits>

#include "geopipe/error.h"

namespace geopipe::scheduler {
namespace {

// Hopcroft–Karp on the dense bipartite graph {(i,j) : cost(i,j) <= t}.
// Returns the size of a maximum matching; fills match_row.
class HopcroftKarp {
 public:
  HopcroftKarp(const Eigen::MatrixXd& cost, double t)
      : c_(cost), t_(t), n_(static_cast<int>(cost.rows())) {}

  int run(std::vector<int>& match_row) {
    match_row.assign(n_, -1);
    match_col_.assign(n_, -1);
    dist_.assign(n_, 0);
    int size = 0;
    // Greedy start: most rows find a free column immediately.
    for (int i = 0; i < n_; ++i) {
      for (int j = 0; j < n_; ++j) {
        if (c_(i, j) <= t_ && match_col_[j] < 0) {
          match_row[i] = j;
          match_col_[j] = i;
          ++size;
          break;
        }
      }
    }
    row_ = &match_row;
    while (bfs()) {
      for (int i = 0; i < n_; ++i) {
        if (match_row[i] < 0 && dfs(i)) ++size;
      }
    }
    return size;
  }

 private:
  static constexpr int kInf = std::numeric_limits<int>::max();

  bool bfs() {
    std::vector<int> queue;
    queue.reserve(n_);
    for (int i = 0; i < n_; ++i) {
      if ((*row_)[i] < 0) {
        dist_[i] = 0;
        queue.push_back(i);
      } else {
        dist_[i] = kInf;
      }
    }
    bool found = false;
    for (size_t q = 0; q < queue.size(); ++q) {
      const int i = queue[q];
      for (int j = 0; j < n_; ++j) {
        if (c_(i, j) > t_) continue;
        const int k = match_col_[j];
        if (k < 0) {
          found = true;
        } else if (dist_[k] == kInf) {
          dist_[k] = dist_[i] + 1;
          queue.push_back(k);
        }
      }
    }
    return found;
  }

  bool dfs(int i) {
    for (int j = 0; j < n_; ++j) {
      if (c_(i, j) > t_) continue;
      const int k = match_col_[j];
      if (k < 0 || (dist_[k] == dist_[i] + 1 && dfs(k))) {
        (*row_)[i] = j;
        match_col_[j] = i;
        return true;
      }
    }
    dist_[i] = kInf;
    return false;
  }

  const Eigen::MatrixXd& c_;
  double t_;
  int n_;
  std::vector<int>* row_ = nullptr;
  std::vector<int> match_col_;
  std::vector<int> dist_;
};

// hint < 0: no hint (plain binary search).
BottleneckMatching solve(const Eigen::MatrixXd& cost, bool want_match,
                         double hint) {
  GEOPIPE_CHECK(cost.rows() == cost.cols(), Error,
                "bottleneck matching needs a square matrix, got ", cost.rows(),
                "x", cost.cols());
  BottleneckMatching out;
  const int n = static_cast<int>(cost.rows());
  if (n == 0) return out;
  // Lower bound: every row and every column must use one of its edges.
  const double lb = bottleneckLowerBound(cost);
  std::vector<int> match;
  const int at_lb = HopcroftKarp(cost, lb).run(match);
  if (at_lb == n) {
    out.bottleneck = lb;
    // Rows and columns whose cheapest edge is lb cannot be matched below it
    // (a lower bound of the deficiency; an exact one would cost one more
    // Hopcroft–Karp per pair).
    int rows = 0, cols = 0;
    for (int i = 0; i < n; ++i) {
      if (cost.row(i).minCoeff() >= lb) ++rows;
      if (cost.col(i).minCoeff() >= lb) ++cols;
    }
    out.deficiency = std::max(rows, cols);
    if (want_match) out.match = std::move(match);
    return out;
  }
  std::vector<double> values;
  values.reserve(static_cast<size_t>(n) * n);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j)
      if (cost(i, j) > lb) values.push_back(cost(i, j));
  // Matching size at the largest infeasible threshold probed (lo; lo = -1
  // stands for lb, probed above): n − it is the deficiency at the end.
  int size_at_lo = at_lb;
  double lo_value = lb;
  auto probe = [&](double t) { return HopcroftKarp(cost, t).run(match); };
  // The answer: its bottleneck, the matching size one value below it (the
  // deficiency), and whether `match` already holds the answer's matching.
  auto answer = [&](double bottleneck, int size_below, bool match_is_answer) {
    out.bottleneck = bottleneck;
    out.deficiency = n - size_below;
    if (want_match) {
      if (!match_is_answer) HopcroftKarp(cost, bottleneck).run(match);
      out.match = std::move(match);
    }
    return out;
  };
  if (hint > lb) {
    // Warm start (a move rarely shifts a pair's bottleneck far): probe the
    // largest value <= hint, then its neighbour on the side the answer
    // must lie, found by linear scans; when the two bracket the answer no
    // sort is needed. Otherwise the bracket narrows what is sorted below.
    double at = lb, above = std::numeric_limits<double>::infinity();
    for (double v : values) {
      if (v <= hint) at = std::max(at, v);
      else above = std::min(above, v);
    }
    if (at > lb) {
      const int size = probe(at);
      if (size == n) {
        double below = lb;  // the next value under `at`
        for (double v : values)
          if (v < at) below = std::max(below, v);
        if (below <= lb) return answer(at, size_at_lo, true);  // lb itself was infeasible
        const int size_below = probe(below);
        if (size_below < n) return answer(at, size_below, false);
        // Answer <= below: keep values in (lb, below].
        values.erase(std::remove_if(values.begin(), values.end(),
                                    [&](double v) { return v > below; }),
                     values.end());
      } else {
        size_at_lo = size;
        lo_value = at;
        if (std::isfinite(above)) {
          const int size_above = probe(above);
          if (size_above == n) return answer(above, size, true);
          size_at_lo = size_above;
          lo_value = above;
        }
        values.erase(std::remove_if(values.begin(), values.end(),
                                    [&](double v) { return v <= lo_value; }),
                     values.end());
      }
    }
  }
  std::sort(values.begin(), values.end());
  values.erase(std::unique(values.begin(), values.end()), values.end());
  // Invariant: threshold values[hi] admits a perfect matching (the largest
  // value always does: the graph is then complete); values[lo] does not
  // (lo = -1: lo_value, probed above).
  int lo = -1, hi = static_cast<int>(values.size()) - 1;
  auto feasible = [&](int k) {
    const int size = probe(values[k]);
    if (size == n) return true;
    if (k > lo) size_at_lo = size;
    return false;
  };
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (feasible(mid)) {
      hi = mid;
    } else {
      lo = mid;
    }
  }
  return answer(values[hi], size_at_lo, false);
}

}  // namespace

BottleneckMatching bottleneckMatching(const Eigen::MatrixXd& cost) {
  return solve(cost, true, -1.0);
}

double bottleneckValue(const Eigen::MatrixXd& cost) {
  return solve(cost, false, -1.0).bottleneck;
}

double bottleneckValue(const Eigen::MatrixXd& cost, double hint) {
  return solve(cost, false, hint).bottleneck;
}

BottleneckMatching bottleneckValueAndDeficiency(const Eigen::MatrixXd& cost,
                                                double hint) {
  return solve(cost, false, hint);
}

double bottleneckLowerBound(const Eigen::MatrixXd& cost) {
  double lb = 0;
  for (int i = 0; i < cost.rows(); ++i) lb = std::max(lb, cost.row(i).minCoeff());
  for (int j = 0; j < cost.cols(); ++j) lb = std::max(lb, cost.col(j).minCoeff());
  return lb;
}

}  // namespace geopipe::scheduler
