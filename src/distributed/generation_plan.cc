// The devices a generation is planned over.
#include "src/distributed/generation_plan.h"

#include <algorithm>

namespace geopipe::distributed {

DevicePlan planDevices(const std::set<int>& named, int n_devices, int world,
                       const std::vector<int>* previous) {
  DevicePlan plan;
  plan.reuse = previous && static_cast<int>(previous->size()) == world &&
               std::all_of(named.begin(), named.end(), [&](int d) {
                 return std::count(previous->begin(), previous->end(), d) > 0;
               });
  if (plan.reuse || named.empty() || n_devices == 0) return plan;
  plan.devices.assign(named.begin(), named.end());
  for (int d = 0; d < n_devices && static_cast<int>(plan.devices.size()) < world; ++d)
    if (!named.count(d)) plan.devices.push_back(d);
  std::sort(plan.devices.begin(), plan.devices.end());
  return plan;
}

}  // namespace geopipe::distributed
