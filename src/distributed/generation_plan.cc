// The devices a generation is planned over, and the topology restricted to them.
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

TopologySpec subTopology(const TopologySpec& t, const std::vector<int>& keep) {
  TopologySpec s;
  s.name = t.name;
  s.description = t.description;
  s.source = t.source;
  std::vector<int> new_site(static_cast<size_t>(t.numSites()), -1);
  std::vector<int> old_site;
  for (int d : keep) {
    const int site = t.devices[static_cast<size_t>(d)].site;
    if (new_site[static_cast<size_t>(site)] < 0) {
      new_site[static_cast<size_t>(site)] = static_cast<int>(old_site.size());
      old_site.push_back(site);
      SiteSpec ss = t.sites[static_cast<size_t>(site)];
      ss.devices.clear();
      s.sites.push_back(ss);
    }
  }
  for (size_t k = 0; k < keep.size(); ++k) {
    DeviceSpec dev = t.devices[static_cast<size_t>(keep[k])];
    dev.site = new_site[static_cast<size_t>(dev.site)];
    s.sites[static_cast<size_t>(dev.site)].devices.push_back(static_cast<int>(k));
    s.devices.push_back(dev);
  }
  s.site_links.assign(old_site.size(), std::vector<LinkSpec>(old_site.size()));
  for (size_t a = 0; a < old_site.size(); ++a)
    for (size_t b = 0; b < old_site.size(); ++b)
      s.site_links[a][b] =
          t.site_links[static_cast<size_t>(old_site[a])][static_cast<size_t>(old_site[b])];
  return s;
}

}  // namespace geopipe::distributed
