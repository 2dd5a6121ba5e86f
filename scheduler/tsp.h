// Open-loop travelling salesman over stage groups: the cheapest pipeline
// order visiting every group once (the paper's PipelinePCost).
#pragma once

#include <limits>
#include <vector>

#include <Eigen/Dense>

namespace geopipe::scheduler {

struct OpenPath {
  double cost = 0;          // sum of w(order[s], order[s+1])
  std::vector<int> order;   // order[s] = group at pipeline stage s
};

// Groups up to which openTsp() is exact (Held–Karp).
constexpr int kHeldKarpMaxNodes = 16;

// Exact open path (free start and end) by Held–Karp dynamic programming over
// subsets: dp[S][j] = cheapest path visiting S ending at j. O(2^n n^2) time,
// O(2^n n) memory; throws for n > kHeldKarpMaxNodes. w may be asymmetric
// (w(a,b) is the cost of stage a feeding stage b).
//
// With a finite `bound` (and w >= 0; a negative weight disables it) partial
// paths that reach `bound` are not extended: the result is the same when the
// optimum is below `bound`, else cost = +inf and an empty order. For pricing
// moves that are only wanted below a threshold (Evaluator::applyMoves).
OpenPath heldKarpOpenPath(const Eigen::MatrixXd& w,
                          double bound = std::numeric_limits<double>::infinity());

// Heuristic open path for any n: nearest-neighbour paths from every start,
// each improved to a local optimum by Or-opt (move a segment of 1..3 groups
// elsewhere, direction kept) and 2-opt (reverse a segment, priced in the
// reversed direction so asymmetric w stays correct); the best is returned.
// O(n^3) per improvement pass. Not optimal in general.
OpenPath heuristicOpenPath(const Eigen::MatrixXd& w);

// Exact for n <= kHeldKarpMaxNodes, heuristic beyond.
OpenPath openTsp(const Eigen::MatrixXd& w);

// Cost of a given order under w.
double pathCost(const Eigen::MatrixXd& w, const std::vector<int>& order);

}  // namespace geopipe::scheduler
