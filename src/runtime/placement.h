// Where each tasklet runs and which layers each stage holds: from the
// caller, from the scheduler's plan, or in order; and the link emulator that
// gives every pair of ranks the link between their devices.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "geopipe/job_spec.h"
#include "geopipe/model.h"
#include "src/transport/transport.h"

namespace geopipe::runtime {

struct Placement {
  std::vector<int> device_of_rank;                   // rank = replica * stages + stage
  std::vector<std::pair<int, int>> layers_of_stage;  // model layers [first, last)
  std::string source;                                // "caller", "scheduler" or "in-order"
};

// Body layers split as evenly as possible (earlier stages take the extra).
std::vector<int> evenSplit(int layers, int stages);

// Model-layer ranges for per-stage body-layer counts: stage 0 also holds the
// prologue layers, the last stage the epilogue layers
// (scheduler::modelLayerRanges, after checking the counts).
std::vector<std::pair<int, int>> stageLayerRanges(const ModelDef& model,
                                                  const std::vector<int>& body_per_stage);

// data_parallel: auto: the scheduler picks stages x replicas over the job's
// network (as `plan` would) and writes them into `job`. Returns the line
// saying what it chose; empty when the job names its shape. Used by `train`
// and the coordinator, so both pick the same shape.
std::string resolveAutoDataParallel(JobSpec& job);

// Chooses the placement: `devices` / `body_per_stage` when given (checked),
// otherwise the scheduler's plan for job on its links as emulated
// (scheduler::effectiveNetworkJob; when the topology has enough
// devices and the model's body matches job.model.layers), else in-order.
Placement choosePlacement(const ModelDef& model, const JobSpec& job,
                          const std::vector<int>& devices, const std::vector<int>& body_per_stage);

// Wraps `inner` (rank r's transport) in a link emulator whose link r -> q is
// the topology's link between their devices, scaled by job.transport.
std::shared_ptr<transport::Transport> emulateLinks(std::shared_ptr<transport::Transport> inner,
                                                   const JobSpec& job, const Placement& placement);

}  // namespace geopipe::runtime
