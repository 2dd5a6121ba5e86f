// Bottleneck perfect matching between two equal-sized device groups: the
// paper's w(a,b), the cheapest possible slowest link between paired replicas.
#pragma once

#include <vector>

#include <Eigen/Dense>

namespace geopipe::scheduler {

struct BottleneckMatching {
  double bottleneck = 0;    // max over pairs of cost(i, match[i]) (minimised)
  std::vector<int> match;   // match[i] = column paired with row i
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

}  // namespace geopipe::scheduler
