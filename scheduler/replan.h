// Elastic re-planning: when the live devices change (a device or a whole
// site lost with no spare to take its place, or new workers joining), price
// what the job would do without re-planning (the degraded plan) and search
// the best shape and placement on the devices that are there, warm-started
// from the degraded plan, within a bounded budget; commit only when the new
// plan's predicted step beats the degraded one by a margin. Torch-free; the
// coordinator calls it (fault_tolerance.replan) and `geopipe bench replan`
// measures it.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "geopipe/job_spec.h"
#include "scheduler/planner.h"

namespace geopipe::scheduler {

// The plan the job runs now, on global topology device indices.
struct CurrentPlan {
  int stages = 0;
  int replicas = 0;
  std::vector<int> device_of_rank;  // rank = replica * stages + stage
  std::vector<int> body_per_stage;  // body layers per stage
};

struct ReplanOptions {
  // Wall-clock bound of the whole re-plan (every shape); 0 = none.
  double budget_seconds = 5.0;
  // Bound in candidate evaluations (with only this bound the result is a
  // pure function of the seed); 0 = none.
  int64_t budget_evaluations = 0;
  // Commit when predicted_s < (1 - margin) * degraded_s
  // (fault_tolerance.replan_margin): strictly, so that a margin of 0 never
  // commits a plan no faster than the running one (a reshard for nothing).
  double margin = 0.10;
  uint64_t seed = 1;
};

struct ReplanResult {
  // Without re-planning: the current plan on the live devices. Replicas
  // with a lost device are dropped (the shrink the runtime does), the others
  // keep their devices; new devices stay unused. +inf when no whole replica
  // is left or the replicas left do not split the global batch into whole
  // micro-batches.
  int degraded_replicas = 0;
  // Its ranks' global devices (degraded_replicas x the current stages;
  // empty when no replica is left): what the runtime's shrink would run.
  std::vector<int> degraded_device_of_rank;
  double degraded_s = std::numeric_limits<double>::infinity();
  // The best plan found on the live devices (every shape that splits the
  // global batch, as data_parallel: auto tries), warm-started from the
  // degraded plan: its placement is an initial candidate of its shape's
  // search, so the result is never predicted slower than it.
  int stages = 0;
  int replicas = 0;
  std::vector<int> device_of_rank;  // global device indices
  std::vector<int> body_per_stage;
  double predicted_s = std::numeric_limits<double>::infinity();
  // predicted_s beats degraded_s by the margin (always, when the degraded
  // plan is infeasible and the new one is not).
  bool commit = false;
  double seconds = 0;               // wall-clock of replan()
  int64_t evaluations = 0;
  std::vector<ShapeTrial> shapes;   // every shape priced
  std::string summary;              // one line: degraded vs new, the decision
};

// `job`: as the tasklets experience the network (effectiveNetworkJob), the
// model's cost filled (ModelSpec::cost) when it gives one; its topology is
// the whole one, and parallelism.data_parallel and pipeline_stages are
// ignored (every shape is tried). `live`: the global indices of the devices
// that are there (sorted, unique, at least one). `stores`: as plan's.
// InfeasibleError when no shape fits the live devices.
ReplanResult replan(const JobSpec& job, const std::vector<int>& live, const CurrentPlan& current,
                    const ReplanOptions& options, const AcsgdStoresFn& stores = {});

// The topology restricted to `keep` (global device indices, sorted): sites
// without a kept device are dropped; device k of the result is keep[k].
TopologySpec subTopology(const TopologySpec& t, const std::vector<int>& keep);

// `allocation`, found on subTopology(t, devices), as a plan on t's global
// device indices (device k of the sub-topology is devices[k]), body layers
// per stage from its layer ranges.
CurrentPlan globalPlan(const Allocation& allocation, const std::vector<int>& devices);

}  // namespace geopipe::scheduler
