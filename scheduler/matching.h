// Bottleneck perfect matching between two equal-sized device groups: the
// paper's w(a,b), the cheapest possible slowest link between paired replicas.
#pragma once

#include <vector>

#include <Eigen/Dense>

namespace geopipe::scheduler {

struct BottleneckMatching {
  double bottleneck = 0;    // max over pairs of cost(i, match[i]) (minimised)
  std::vector<int> match;   // match[i] = column paired with row i
  // n − the size of a maximum matching on the edges strictly cheaper than
  // `bottleneck` (>= 1 for n > 0): how many rows cannot avoid the
  // bottleneck. When the answer is the lower bound it is only bounded from
  // below, by the number of rows (or columns) whose cheapest edge is the
  // bottleneck. Local search uses it to tell moves that bring a pair closer
  // to a cheaper matching from moves that do not (same bottleneck value).
  int deficiency = 0;
};

// Minimises max_i cost(i, match[i]) over perfect matchings of the square
// matrix `cost` (rows: devices of group a, columns: devices of group b).
// Binary search over the sorted distinct edge costs, starting at the lower
// bound max(max_i min_j c_ij, max_j min_i c_ij); each probe is a
// Hopcroft–Karp maximum matching on the edges with cost <= threshold. The
// returned `match` realises `bottleneck` (the paper's code only returns the
// value). O(n^2.5 log n^2). An empty matrix gives bottleneck 0.
BottleneckMatching bottleneckMatching(const Eigen::MatrixXd& cost);

// Same value without building the assignment vector (cheaper to call).
double bottleneckValue(const Eigen::MatrixXd& cost);

// Same value, warm-started from `hint`, a guess of the answer (the value of
// the pair before one device moved, in local search). The threshold search
// probes the largest distinct cost <= hint and its predecessor first: when
// the value did not change (the common case) that settles it in two
// Hopcroft–Karp runs instead of ~log2(n^2) (14 at n = 128). Any hint gives
// the exact answer; a bad one costs at most two extra probes.
double bottleneckValue(const Eigen::MatrixXd& cost, double hint);

// Value and deficiency (no assignment), warm-started from hint (< 0: none).
BottleneckMatching bottleneckValueAndDeficiency(const Eigen::MatrixXd& cost,
                                                double hint);

// Lower bound of the bottleneck value, O(n^2): every row and every column
// must use one of its edges, so max(max_i min_j c_ij, max_j min_i c_ij).
double bottleneckLowerBound(const Eigen::MatrixXd& cost);

}  // namespace geopipe::scheduler
