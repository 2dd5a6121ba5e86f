// The pieces of `geopipe bench e2e` that price a run with the cost model,
// exposed for tests: the allocation a run's placement is, and the cost
// model calibrated to the compute measured on this machine.
#pragma once

#include <string>
#include <vector>

#include "geopipe/job_spec.h"
#include "scheduler/cost_model.h"

namespace geopipe::cli {

// The allocation of a run that puts tasklet (s, r) on device_of_rank[r * S + s]
// with layers[s] consecutive layers on stage s.
scheduler::Allocation allocationOf(const JobSpec& job, const std::vector<int>& device_of_rank,
                                   const std::vector<int>& layers);

// The geopipe cost model's evaluation of `alloc` on the network the run sees,
// with every device's TFLOPS set so that the model's compute term equals the
// measured compute `compute_s` (calibration: one number per shape; 0 leaves
// 1 TFLOPS).
scheduler::PathEval calibratedEvaluation(const JobSpec& base, const scheduler::Allocation& alloc,
                                         double compute_s);

// Eight single-device regions with the world-wide scenario's links (one
// device of each region of `worldwide_path`) x `scale`, the tiny GPT on
// fortunes, 4 stages x 2 replicas, links emulated: the placement grid's job.
JobSpec worldwidePlacementJob(const std::string& worldwide_path, double scale);

// The rank -> device table of an allocation (rank = replica x D_pp + stage).
std::vector<int> deviceOfRank(const scheduler::Allocation& a);

}  // namespace geopipe::cli
