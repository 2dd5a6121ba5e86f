// Bottleneck matching and open TSP against brute force.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "geopipe/error.h"
#include "scheduler/matching.h"
#include "scheduler/tsp.h"

namespace geopipe::scheduler {
namespace {

// The warm-started threshold search gives the exact value for any hint
// (right, too low, too high, between values, off the matrix), and the
// deficiency is a true count: n − max matching below the bottleneck.
TEST(BottleneckMatching, WarmStartIsExactForAnyHint) {
  std::mt19937_64 rng(42);
  for (int trial = 0; trial < 300; ++trial) {
    const int n = 1 + static_cast<int>(rng() % 7);
    Eigen::MatrixXd c(n, n);
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j)
        c(i, j) = trial % 2 ? static_cast<double>(rng() % 5)
                            : std::uniform_real_distribution<double>(0, 1)(rng);
    const BottleneckMatching exact = bottleneckMatching(c);
    for (double hint : {exact.bottleneck, exact.bottleneck * 0.5,
                        exact.bottleneck * 1.5 + 0.1, c.maxCoeff(), 0.0,
                        c(0, 0), c(n - 1, 0) + 1e-3}) {
      const BottleneckMatching w = bottleneckValueAndDeficiency(c, hint);
      EXPECT_DOUBLE_EQ(w.bottleneck, exact.bottleneck)
          << "trial " << trial << " hint " << hint;
      EXPECT_DOUBLE_EQ(bottleneckValue(c, hint), exact.bottleneck);
      EXPECT_GE(w.deficiency, 1);
      EXPECT_LE(w.deficiency, n);
      // The same count as the cold search (n − the matching just below).
      EXPECT_EQ(w.deficiency, bottleneckValueAndDeficiency(c, -1.0).deficiency)
          << "trial " << trial << " hint " << hint;
    }
    EXPECT_LE(bottleneckLowerBound(c), exact.bottleneck);
  }
}

double bruteBottleneck(const Eigen::MatrixXd& c) {
  std::vector<int> p(c.rows());
  std::iota(p.begin(), p.end(), 0);
  double best = 1e300;
  do {
    double m = 0;
    for (int i = 0; i < c.rows(); ++i) m = std::max(m, c(i, p[i]));
    best = std::min(best, m);
  } while (std::next_permutation(p.begin(), p.end()));
  return best;
}

TEST(BottleneckMatching, MatchesBruteForceAndRealisesTheBottleneck) {
  std::mt19937_64 rng(42);
  for (int trial = 0; trial < 400; ++trial) {
    const int n = 1 + trial % 7;
    Eigen::MatrixXd c(n, n);
    // Few distinct values half the time, to exercise ties.
    const int levels = trial % 2 ? 4 : 1000;
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j) c(i, j) = static_cast<double>(rng() % levels);
    const BottleneckMatching m = bottleneckMatching(c);
    EXPECT_DOUBLE_EQ(m.bottleneck, bruteBottleneck(c)) << "trial " << trial;
    ASSERT_EQ(static_cast<int>(m.match.size()), n);
    std::vector<int> sorted = m.match;
    std::sort(sorted.begin(), sorted.end());
    for (int i = 0; i < n; ++i) EXPECT_EQ(sorted[i], i) << "not a permutation";
    double realised = 0;
    for (int i = 0; i < n; ++i) realised = std::max(realised, c(i, m.match[i]));
    EXPECT_DOUBLE_EQ(realised, m.bottleneck) << "trial " << trial;
    EXPECT_DOUBLE_EQ(bottleneckValue(c), m.bottleneck);
  }
}

TEST(BottleneckMatching, LowerBoundIsNotAlwaysTheAnswer) {
  // Row minima are all 1, but both rows want column 0.
  Eigen::MatrixXd c(2, 2);
  c << 1, 5, 1, 9;
  EXPECT_DOUBLE_EQ(bottleneckValue(c), 5);
}

double brutePath(const Eigen::MatrixXd& w) {
  std::vector<int> p(w.rows());
  std::iota(p.begin(), p.end(), 0);
  double best = 1e300;
  do best = std::min(best, pathCost(w, p));
  while (std::next_permutation(p.begin(), p.end()));
  return best;
}

Eigen::MatrixXd randomWeights(int n, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> u(0.1, 10);
  Eigen::MatrixXd w(n, n);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) w(i, j) = i == j ? 0 : u(rng);  // asymmetric
  return w;
}

TEST(OpenTsp, HeldKarpIsExact) {
  std::mt19937_64 rng(7);
  for (int n = 1; n <= 8; ++n) {
    for (int trial = 0; trial < 10; ++trial) {
      const Eigen::MatrixXd w = randomWeights(n, rng);
      const OpenPath p = heldKarpOpenPath(w);
      EXPECT_NEAR(p.cost, brutePath(w), 1e-9);
      EXPECT_NEAR(pathCost(w, p.order), p.cost, 1e-9);
      std::vector<int> sorted = p.order;
      std::sort(sorted.begin(), sorted.end());
      for (int i = 0; i < n; ++i) EXPECT_EQ(sorted[i], i);
    }
  }
  EXPECT_THROW(heldKarpOpenPath(Eigen::MatrixXd::Zero(17, 17)), Error);
}

// With a bound, Held-Karp returns the unbounded answer (cost and order)
// when the optimum is below it, and +inf with no order otherwise; integer
// weights make ties, where the order must still be the same one.
TEST(OpenTsp, HeldKarpCutAtABoundIsExactBelowIt) {
  std::mt19937_64 rng(13);
  for (int n = 2; n <= 10; ++n) {
    for (int trial = 0; trial < 20; ++trial) {
      Eigen::MatrixXd w = randomWeights(n, rng);
      if (trial % 2) w = w.array().floor();  // ties
      const OpenPath free = heldKarpOpenPath(w);
      for (double f : {0.5, 0.999, 1.0, 1.001, 2.0}) {
        const double bound = free.cost * f + (f > 1 ? 1e-9 : 0.0);
        const OpenPath cut = heldKarpOpenPath(w, bound);
        if (free.cost < bound) {
          EXPECT_EQ(cut.cost, free.cost) << "n=" << n << " f=" << f;
          EXPECT_EQ(cut.order, free.order) << "n=" << n << " f=" << f;
        } else {
          EXPECT_TRUE(std::isinf(cut.cost)) << "n=" << n << " f=" << f;
          EXPECT_TRUE(cut.order.empty());
        }
      }
    }
  }
}

TEST(OpenTsp, HeuristicIsCloseToExactWhereBothRun) {
  std::mt19937_64 rng(11);
  double ratio_sum = 0;
  int count = 0;
  for (int n = 9; n <= 13; ++n) {
    for (int trial = 0; trial < 6; ++trial) {
      const Eigen::MatrixXd w = randomWeights(n, rng);
      const double exact = heldKarpOpenPath(w).cost;
      const OpenPath h = heuristicOpenPath(w);
      EXPECT_GE(h.cost, exact - 1e-9);
      EXPECT_NEAR(pathCost(w, h.order), h.cost, 1e-9);
      EXPECT_LE(h.cost, 1.25 * exact) << "n=" << n;
      ratio_sum += h.cost / exact;
      ++count;
    }
  }
  EXPECT_LE(ratio_sum / count, 1.05);
  // Beyond the exact limit openTsp still returns a valid order.
  const Eigen::MatrixXd big = randomWeights(24, rng);
  const OpenPath p = openTsp(big);
  EXPECT_EQ(p.order.size(), 24u);
}

}  // namespace
}  // namespace geopipe::scheduler
