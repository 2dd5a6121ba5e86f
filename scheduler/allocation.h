// An allocation of tasklets (stage s, replica r) to devices, with the layers
// of each stage, and the predicted step-time breakdown of a plan.
#pragma once

#include <utility>
#include <vector>

#include "geopipe/topology.h"

namespace geopipe::scheduler {

// One tasklet: a slice [first_layer, last_layer) trained by `device` on
// replica `replica`'s shard of the batch.
struct Tasklet {
  int stage = 0;
  int replica = 0;
  int device = 0;  // index in TopologySpec::devices
  int site = 0;    // index in TopologySpec::sites
  int first_layer = 0;
  int last_layer = 0;
};

// Predicted step time split in four non-negative parts that add up to the
// total. dtfm fills only pipeline_comm_s (2·PipelinePCost) and dp_comm_s
// (DataPCost).
struct Breakdown {
  double compute_s = 0;        // busy time of the slowest stage
  double bubble_s = 0;         // pipeline fill and drain
  double pipeline_comm_s = 0;  // activation traffic not hidden by compute
  double dp_comm_s = 0;        // data-parallel gradient all-reduce
  double total() const {
    return compute_s + bubble_s + pipeline_comm_s + dp_comm_s;
  }
};

// D_pp stages x D_dp replicas. stages[s][r] is the device of tasklet (s, r);
// tasklets (s, r) and (s+1, r) exchange activations.
struct Allocation {
  int d_pp = 0;
  int d_dp = 0;
  std::vector<std::vector<int>> stages;
  std::vector<std::pair<int, int>> layers;  // [first, last) per stage
  std::vector<int> idle;                    // devices left unused

  // Tasklets ordered by stage, then replica.
  std::vector<Tasklet> tasklets(const TopologySpec& topology) const;
};

}  // namespace geopipe::scheduler
