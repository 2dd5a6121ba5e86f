// Tasklet listing of an allocation.
#include "scheduler/allocation.h"

namespace geopipe::scheduler {

std::vector<std::pair<int, int>> modelLayerRanges(const std::vector<int>& body_per_stage,
                                                  int prologue, int epilogue) {
  std::vector<std::pair<int, int>> out;
  const int stages = static_cast<int>(body_per_stage.size());
  int next = prologue;
  for (int s = 0; s < stages; ++s) {
    const int first = s == 0 ? 0 : next;
    next += body_per_stage[static_cast<size_t>(s)];
    out.emplace_back(first, s == stages - 1 ? next + epilogue : next);
  }
  return out;
}

std::vector<Tasklet> Allocation::tasklets(const TopologySpec& topology) const {
  std::vector<int> body;
  for (const auto& [first, last] : layers) body.push_back(last - first);
  const auto model_layers = modelLayerRanges(body);
  std::vector<Tasklet> out;
  for (int s = 0; s < static_cast<int>(stages.size()); ++s) {
    for (int r = 0; r < static_cast<int>(stages[s].size()); ++r) {
      Tasklet t;
      t.stage = s;
      t.replica = r;
      t.device = stages[s][r];
      t.site = topology.devices[t.device].site;
      if (s < static_cast<int>(layers.size())) {
        t.first_layer = model_layers[static_cast<size_t>(s)].first;
        t.last_layer = model_layers[static_cast<size_t>(s)].second;
      }
      out.push_back(t);
    }
  }
  return out;
}

}  // namespace geopipe::scheduler
