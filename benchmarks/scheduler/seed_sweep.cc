// scheduler_seed_sweep: one search algorithm at its default budget on the
// hard instances of 32, 64 and 256 devices (instance seed 1), for search
// seeds 1..K, so that variants of the search are compared by the median
// over seeds and not by one seed (docs/benchmarks.md, "Hard instances").
//
//   scheduler_seed_sweep [algorithm=evolutionary] [seeds=3] [sizes=32,64,256]
//                        [budget_evaluations] [budget_seconds] [stall_evaluations]
//
// The last three default to SearchOptions' defaults (the job's default budget).
//
// Prints each run's cost / the best known of the docs table (the best any
// method found in the `bench scheduler --hard` run), its evaluations and
// seconds, the median over seeds per instance and the median over instances.
// The 256-device rows end on the 3 s budget, so they depend on the load.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "scheduler/cost_model.h"
#include "scheduler/hard_instances.h"
#include "scheduler/model_profile.h"
#include "scheduler/network.h"
#include "scheduler/search.h"

using namespace geopipe;

int main(int argc, char** argv) {
  const std::string algorithm = argc > 1 ? argv[1] : "evolutionary";
  const int seeds = argc > 2 ? std::atoi(argv[2]) : 3;
  std::vector<int> sizes = {32, 64, 256};
  if (argc > 3) {
    sizes.clear();
    std::stringstream ss(argv[3]);
    for (std::string t; std::getline(ss, t, ',');) sizes.push_back(std::stoi(t));
  }
  scheduler::SearchOptions base;
  if (argc > 4) base.budget_evaluations = std::atoll(argv[4]);
  if (argc > 5) base.budget_seconds = std::atof(argv[5]);
  if (argc > 6) base.stall_evaluations = std::atoll(argv[6]);
  // Best known (s) in docs/benchmarks.md's hard-instance table.
  const std::map<std::string, double> best_known = {{"clusters-32", 51.66},  {"sites-32", 36.66},
                                                    {"clusters-64", 59.73},  {"sites-64", 49.32},
                                                    {"clusters-256", 80.19}, {"sites-256", 52.96}};
  std::vector<double> row_medians;
  for (const scheduler::HardInstance& inst : scheduler::hardInstances(sizes, 1)) {
    const JobSpec& job = inst.job;
    const int pp = job.parallelism.pipeline_stages, dp = job.parallelism.data_parallel;
    auto network = std::make_shared<const scheduler::Network>(job.topology);
    const auto model = scheduler::makeCostModel(job.scheduler.cost_model, network,
                                                scheduler::ModelProfile::fromJob(job), job, pp, dp);
    const auto it = best_known.find(inst.name);
    const double ref = it != best_known.end() ? it->second : 1.0;
    std::vector<double> ratios;
    std::printf("%-20s", inst.name.c_str());
    for (int s = 1; s <= seeds; ++s) {
      scheduler::SearchOptions o = base;
      o.algorithm = algorithm;
      o.seed = static_cast<uint64_t>(s);
      const scheduler::SearchResult r = scheduler::runSearch(*model, o);
      ratios.push_back(r.best.cost / ref);
      std::printf(" %.3f(%lld,%.2fs)", ratios.back(), static_cast<long long>(r.evaluations),
                  r.seconds);
      std::fflush(stdout);
    }
    std::sort(ratios.begin(), ratios.end());
    row_medians.push_back(ratios[ratios.size() / 2]);
    std::printf("  median %.3f\n", row_medians.back());
  }
  std::sort(row_medians.begin(), row_medians.end());
  const size_t m = row_medians.size();
  if (m > 0) {
    const double med =
        m % 2 ? row_medians[m / 2] : (row_medians[m / 2 - 1] + row_medians[m / 2]) / 2;
    std::printf("median over instances of the per-instance median: %.4f%s\n", med,
                best_known.size() ? " (ratio to the docs' best known)" : "");
  }
  return 0;
}
