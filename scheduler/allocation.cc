// Tasklet listing of an allocation.
#include "scheduler/allocation.h"

namespace geopipe::scheduler {

std::vector<Tasklet> Allocation::tasklets(const TopologySpec& topology) const {
  std::vector<Tasklet> out;
  for (int s = 0; s < static_cast<int>(stages.size()); ++s) {
    for (int r = 0; r < static_cast<int>(stages[s].size()); ++r) {
      Tasklet t;
      t.stage = s;
      t.replica = r;
      t.device = stages[s][r];
      t.site = topology.devices[t.device].site;
      if (s < static_cast<int>(layers.size())) {
        t.first_layer = layers[s].first;
        t.last_layer = layers[s].second;
      }
      out.push_back(t);
    }
  }
  return out;
}

}  // namespace geopipe::scheduler
