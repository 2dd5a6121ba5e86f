// Hard instances: the generator, the lower bound, exhaustive search's
// refusals, the search against exhaustive, and the adaptive stop.
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "geopipe/error.h"
#include "scheduler/hard_instances.h"
#include "scheduler/planner.h"
#include "scheduler/search.h"
#include "test_util.h"

namespace geopipe::scheduler {
namespace {

std::unique_ptr<CostModel> modelOf(const JobSpec& job) {
  auto net = std::make_shared<const Network>(job.topology);
  return makeCostModel(job.scheduler.cost_model, net, ModelProfile::fromJob(job), job,
                       job.parallelism.pipeline_stages, job.parallelism.data_parallel);
}

SearchOptions evalBudget(int64_t evaluations, uint64_t seed = 1) {
  SearchOptions o;
  o.budget_seconds = 0;
  o.budget_evaluations = evaluations;
  o.seed = seed;
  return o;
}

bool sameLinks(const TopologySpec& a, const TopologySpec& b) {
  if (a.numDevices() != b.numDevices()) return false;
  for (int i = 0; i < a.numDevices(); ++i) {
    if (a.devices[i].tflops != b.devices[i].tflops ||
        a.devices[i].memory_gb != b.devices[i].memory_gb)
      return false;
    for (int j = 0; j < a.numDevices(); ++j) {
      if (i == j) continue;
      if (a.link(i, j).latency_ms != b.link(i, j).latency_ms ||
          a.link(i, j).bandwidth_gbps != b.link(i, j).bandwidth_gbps)
        return false;
    }
  }
  return true;
}

TEST(HardInstances, ReproducibleAndPerDevice) {
  for (HardFamily f : {HardFamily::CLUSTERS, HardFamily::SITES}) {
    const TopologySpec a = hardTopology(f, 32, 1);
    EXPECT_TRUE(sameLinks(a, hardTopology(f, 32, 1))) << hardFamilyName(f);
    EXPECT_FALSE(sameLinks(a, hardTopology(f, 32, 2))) << hardFamilyName(f);
    ASSERT_EQ(a.numDevices(), 32);
    EXPECT_EQ(a.numSites(), 32);  // per-device links
    Network net(a);               // valid, connected
    // A quarter of the pairs asymmetric, roughly; fast links exist.
    int asym = 0, pairs = 0, fast = 0;
    for (int i = 0; i < 32; ++i)
      for (int j = i + 1; j < 32; ++j) {
        ++pairs;
        asym += a.link(i, j).bandwidth_gbps != a.link(j, i).bandwidth_gbps;
        fast += a.link(i, j).bandwidth_gbps >= 5.0;
      }
    EXPECT_GT(asym, pairs / 8) << hardFamilyName(f);
    EXPECT_LT(asym, pairs / 2) << hardFamilyName(f);
    EXPECT_GT(fast, 0) << hardFamilyName(f);
  }
  const auto all = hardInstances({8, 12, 32}, 1);
  EXPECT_EQ(all.size(), 2u * 2 + 2u * 2 + 2u);  // geopipe variants up to 12
  EXPECT_EQ(hardInstance(HardFamily::SITES, 32, 1).job.parallelism.data_parallel, 3);
}

TEST(HardInstances, NoSeedIsOptimalAndTheSearchBeatsItsSeeds) {
  // On the reference kind of instance the structured seeds are far
  // from the search's result.
  const HardInstance h = hardInstance(HardFamily::CLUSTERS, 32, 1);
  auto model = modelOf(h.job);
  const SearchResult seeds = seedSearch(*model);
  const SearchResult ga = evolutionarySearch(*model, evalBudget(20000));
  EXPECT_LT(ga.best.cost, 0.97 * seeds.best.cost);
  // The targets at equal evaluations: >= 10% better than random
  // search, better than the DT-FM paper's GA.
  SearchOptions base = evalBudget(20000);
  base.stall_evaluations = 0;
  EXPECT_LT(ga.best.cost, 0.9 * randomSearch(*model, base).best.cost);
  EXPECT_LT(ga.best.cost, dtfmGeneticSearch(*model, base).best.cost);
}

TEST(LowerBound, BelowEveryMethodsCost) {
  for (HardFamily f : {HardFamily::CLUSTERS, HardFamily::SITES}) {
    for (int n : {8, 16}) {
      const HardInstance h = hardInstance(f, n, 3);
      auto model = modelOf(h.job);
      const double lb = costLowerBound(*model);
      EXPECT_GT(lb, 0) << h.name;
      const SearchOptions o = evalBudget(3000);
      for (const SearchResult& r :
           {evolutionarySearch(*model, o), randomSearch(*model, o), seedSearch(*model),
            dtfmGeneticSearch(*model, o), annealingSearch(*model, o)}) {
        EXPECT_LE(lb, r.best.cost * (1 + 1e-12)) << h.name << " " << r.algorithm;
      }
      if (n == 8) {
        EXPECT_LE(lb, exhaustiveSearch(*model, o).best.cost) << h.name;
      }
    }
  }
  // Not defined for the geopipe model: 0, a trivially sound bound.
  EXPECT_EQ(costLowerBound(*modelOf(hardInstance(HardFamily::SITES, 8, 1, "geopipe").job)), 0.0);
}

TEST(Exhaustive, RefusesWhatItCannotPriceExactly) {
  // geopipe beyond 6 stages: the order would come from a TSP surrogate.
  JobSpec g = testing::smallJob(testing::randomTopology(7, 5), 7, 1, "geopipe");
  auto gm = modelOf(g);
  try {
    exhaustiveSearch(*gm, evalBudget(1000));
    FAIL() << "exhaustive accepted 7 stages under geopipe";
  } catch (const InfeasibleError& e) {
    EXPECT_NE(std::string(e.what()).find("cannot be exact"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("evolutionary"), std::string::npos) << e.what();
  }
  // 6 stages are priced in every order: accepted.
  JobSpec g6 = testing::smallJob(testing::randomTopology(6, 5), 6, 1, "geopipe");
  EXPECT_NO_THROW(exhaustiveSearch(*modelOf(g6), evalBudget(1000)));
  // dtfm beyond 16 stages: heuristic TSP, even with a single partition.
  JobSpec d = testing::smallJob(testing::randomTopology(17, 5), 17, 1, "dtfm");
  d.model.layers = 17;
  auto dm = modelOf(d);
  EXPECT_EQ(countPartitions(17, 17, 1), 1);
  EXPECT_THROW(exhaustiveSearch(*dm, evalBudget(1000)), InfeasibleError);
}

TEST(HardInstances, SearchWithinTwoPercentOfExhaustive) {
  // A budget below the partitions of the 12-device instances (5775 to
  // 61600). 3000 evaluations sufficed before the geopipe model priced the
  // gradient exchange as the runtime runs it; clusters-12 under geopipe now
  // needs 10000 (1.13x the optimum at 3000, 1.04x at 6000).
  int random_misses = 0;
  for (const HardInstance& h : hardInstances({8, 12}, 1)) {
    auto model = modelOf(h.job);
    const SearchResult exact = exhaustiveSearch(*model, evalBudget(1000));
    const SearchResult ga = evolutionarySearch(*model, evalBudget(10000));
    EXPECT_LE(ga.best.cost, 1.02 * exact.best.cost) << h.name;
    EXPECT_GE(ga.best.cost, exact.best.cost * (1 - 1e-9)) << h.name;
    SearchOptions sampled = evalBudget(10000);
    sampled.algorithm = "random";
    if (randomSearch(*model, sampled).best.cost > 1.02 * exact.best.cost) ++random_misses;
  }
  // The instances stay hard enough that sampling alone fails the bar (it
  // missed two of the eight when this was written).
  EXPECT_GE(random_misses, 1);
}

TEST(AdaptiveStop, HaltsBeforeTheBudgetAndIsDeterministic) {
  const HardInstance h = hardInstance(HardFamily::CLUSTERS, 8, 1);
  auto model = modelOf(h.job);
  SearchOptions o = evalBudget(200000);
  o.stall_evaluations = 2000;
  const SearchResult a = evolutionarySearch(*model, o);
  EXPECT_EQ(a.stop_reason, "converged");
  // Seeds and the annealing walks (at most 5000 per device, and no more
  // than the 105 partitions there are), then the GA stops, far from the
  // budget.
  EXPECT_EQ(countPartitions(8, 4, 2), 105);
  EXPECT_LT(a.evaluations, 105 + 5 * 256 + 4 * o.stall_evaluations);
  EXPECT_GE(a.evaluations - a.evaluations_to_best, o.stall_evaluations);
  const SearchResult b = evolutionarySearch(*model, o);
  EXPECT_EQ(a.evaluations, b.evaluations);
  EXPECT_EQ(a.evaluations_to_best, b.evaluations_to_best);
  EXPECT_EQ(a.best.label, b.best.label);
  // Without the rule the search spends its whole budget.
  o.stall_evaluations = 0;
  o.budget_evaluations = 6000;
  const SearchResult c = evolutionarySearch(*model, o);
  EXPECT_EQ(c.stop_reason, "budget_evaluations");
  EXPECT_GE(c.evaluations, 6000);
}

}  // namespace
}  // namespace geopipe::scheduler
