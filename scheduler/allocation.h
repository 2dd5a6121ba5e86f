// An allocation of tasklets (stage s, replica r) to devices, with the layers
// of each stage, and the predicted step-time breakdown of a plan.
#pragma once

#include <utility>
#include <vector>

#include "geopipe/topology.h"

namespace geopipe::scheduler {

// One tasklet: a slice [first_layer, last_layer) trained by `device` on
// replica `replica`'s shard of the batch. The layers are the model's, as the
// runtime numbers them (modelLayerRanges): layer 0 the embedding, then the
// blocks, the LM head last, so `plan`, `train` and `launch` print the same.
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
  // Blocks [first, last) per stage: indices into model.layers (the body),
  // without the embedding and head that ride on the first and last stage.
  std::vector<std::pair<int, int>> layers;
  std::vector<int> idle;  // devices left unused

  // Tasklets ordered by stage, then replica, with model-layer ranges.
  std::vector<Tasklet> tasklets(const TopologySpec& topology) const;
};

// Model-layer ranges [first, last) of the stages for their body-layer
// counts, the runtime's numbering: the first `prologue` model layers (a
// GPT's embedding) go with stage 0, the last `epilogue` ones (final norm and
// LM head) with the last stage; every built-in model has one of each.
// Example: 4 blocks over 2 stages are [0, 3) and [3, 6).
std::vector<std::pair<int, int>> modelLayerRanges(const std::vector<int>& body_per_stage,
                                                  int prologue = 1, int epilogue = 1);

}  // namespace geopipe::scheduler
