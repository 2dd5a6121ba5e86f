// Plan a job: pick the shape (D_pp x D_dp), search the placement with the
// configured algorithm and cost model, and price the baselines beside it.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "geopipe/job_spec.h"
#include "scheduler/cost_model.h"
#include "scheduler/search.h"

namespace geopipe::scheduler {

// One shape the planner priced.
struct ShapeTrial {
  int d_pp = 0;
  int d_dp = 0;
  double best_s = 0;  // best cost found for this shape (+inf if infeasible)
};

struct PlanResult {
  std::string cost_model;   // dtfm | geopipe
  std::string algorithm;    // the algorithm that produced `ours`
  int d_pp = 0;
  int d_dp = 0;
  SearchResult ours;        // the plan
  SearchResult in_order;    // Megatron's placement, same shape
  SearchResult random;      // best of as many random candidates, same shape
  bool has_baselines = false;
  double search_seconds = 0;  // wall-clock of the whole plan (all shapes)
  int64_t evaluations = 0;    // evaluations of the whole plan (all shapes)
  std::vector<ShapeTrial> shapes;
  std::shared_ptr<const CostModel> model;  // the model of the chosen shape
};

// The job as its tasklets will experience the network: when
// transport.emulate_links is on, every topology bandwidth is multiplied by
// transport.bandwidth_scale and every latency by latency_scale (and the
// scales reset to 1), as the link emulator will shape them. `plan`, `train`
// and the runtime's placement (train and launch) all price this job, so
// they predict the same step for the same placement.
JobSpec effectiveNetworkJob(const JobSpec& job);

// Search options from job.scheduler (algorithm, budgets, seed, threads).
SearchOptions searchOptionsFromJob(const JobSpec& job);

// Runs the scheduler for `job`. The shape is parallelism.pipeline_stages x
// data_parallel; with data_parallel: auto (0), dtfm uses N / D_pp and the
// geopipe model searches D_pp in [1, min(layers, N, 16)] and D_dp up to
// N / D_pp (idle devices allowed), screening every shape with a slice of the
// budget and searching the best three. Throws InfeasibleError when no shape
// fits (too few devices, memory) and ConfigError for bad settings.
//
// `acsgd_stores(d_dp)` sizes AC-SGD's m(xi) stores for a shape of d_dp
// replicas (config::plannerStores(job) from the job's data); a shape whose
// stores break buffer_budget_gb is not tried, and the geopipe model charges
// in-memory stores to each stage's devices. Empty: not charged.
using AcsgdStoresFn = std::function<AcsgdStores(int d_dp)>;
PlanResult plan(const JobSpec& job, const SearchOptions& options, bool with_baselines = true,
                const AcsgdStoresFn& acsgd_stores = {});

}  // namespace geopipe::scheduler
